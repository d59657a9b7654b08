"""The labelling page: a FastAPI app over a ``store.Store``, the model that proposes readings and
orders the queue (least confident first), and the background training run started from the page.

    session = Session(Settings(mode="label", source=Path("raw"), out=Path("labelled")))
    app = create_app(session)      # serve with uvicorn on 127.0.0.1

The state (``<out>.sqlite``) and the trained models (``<out>.models/``) live next to the output
folder, so stopping and starting again resumes where it stopped.
"""
from __future__ import annotations

import hmac
import io
import secrets
import sys
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Callable, Literal
from urllib.parse import urlsplit

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field

from captcha_recognize.data.folders import decode_files, list_images
from captcha_recognize.data.images import open_image
from captcha_recognize.labelling.files import Conflict, Refused
from captcha_recognize.labelling.store import Row, Store
from captcha_recognize.labelling.trainer import Trainer, train_command
from captcha_recognize.reading.recognizer import CaptchaRecognizer, predict_files

PAGE = Path(__file__).resolve().parent / "static" / "label.html"
ItemId = Annotated[int, Field(ge=0, lt=2 ** 63)]  # an image's id: SQLite's integers


def state_path(out: Path) -> Path:
    """The SQLite state of an output folder: ``<out>.sqlite`` beside it."""
    return out.with_name(out.name + ".sqlite")


def models_dir(out: Path) -> Path:
    """Where the page's trainings write their checkpoints and logs: ``<out>.models/`` beside it."""
    return out.with_name(out.name + ".models")


@dataclass
class Settings:
    """What the page works on; ``source`` is None in review mode (the output is reviewed)."""
    mode: Literal["label", "review"]
    out: Path
    source: Path | None = None
    checkpoint: Path | None = None
    alphabet: str | None = None
    arch: str = "cnn"  # for trainings started from the page when there is no model yet
    train_args: list[str] = field(default_factory=list)  # more training flags (--train-args)


class Session:
    """The store, the current model and the trainer of one page."""

    def __init__(self, settings: Settings):
        self.settings = s = settings
        self.store = Store(state_path(s.out), s.mode, s.out, s.alphabet)
        self.model: Path | None = None
        self.arch = s.arch
        self.model_version = 0
        self.trainer = Trainer(self.train_command, models_dir(s.out), self.use_model)

    def open(self) -> None:
        """Put right what a crash left, find the images, and read them with the model if there is one."""
        fixed = self.store.recover()
        if fixed:
            print(f"recovered {fixed} image(s) from an interrupted save or undo", file=sys.stderr)
        if self.settings.mode == "label":
            self.scan()
            remembered = self.store.meta("model")
            model = self.settings.checkpoint or (Path(remembered) if remembered else None)
            if model is not None and model.is_file():
                print(self.use_model(model), file=sys.stderr)

    def scan(self) -> None:
        """Record the source folder's images; the unreadable ones are listed and left out."""
        files = list_images([self.settings.source])
        known = {r.path for r in self.store.todo()}
        _, _, bad = decode_files([f for f in files if f.resolve() not in known])
        bad_paths = {p for p, _ in bad}
        self.store.scan([f for f in files if f not in bad_paths], bad)

    def use_model(self, ckpt: Path) -> str:
        """Propose with ``ckpt`` from now on: re-read the images still to label and re-order them."""
        rec = CaptchaRecognizer(ckpt)
        todo = self.store.todo()
        by_path = {str(r.path): r.id for r in todo}
        results = predict_files(rec, [r.path for r in todo]) if todo else []
        self.store.set_proposals({by_path[str(Path(r["path"]))]: (r["prediction"], r["confidence"])
                                  for r in results})
        self.store.set_meta("model", str(ckpt.resolve()))
        self.model, self.arch = ckpt, rec.arch
        self.model_version += 1
        return f"proposals from {ckpt.name}: read {len(results)} images"

    def train_command(self, ckpt: Path) -> list[str]:
        """The default recipe on the output folder, into ``ckpt``."""
        s = self.settings
        return train_command(s.out, ckpt, self.arch, s.alphabet, s.train_args)

    def start_training(self) -> Path:
        if self.settings.mode != "label":
            raise Conflict("training is started from the labelling page, not from review")
        if not list_images([self.settings.out]):
            raise Conflict(f"nothing labelled in {self.settings.out} yet")
        return self.trainer.start()


# ----------------------------------------------------------------------- the API

class Item(BaseModel):
    id: int
    name: str
    url: str
    proposal: str | None
    confidence: float | None
    named: str | None  # review: the label its file name has


class ClientRequest(BaseModel):
    client: str = Field(min_length=1, max_length=100)


class ClaimRequest(ClientRequest):
    keep: list[ItemId] = Field(default_factory=list, max_length=50)
    n: int = Field(3, ge=1, le=20)


class ItemRequest(ClientRequest):
    id: ItemId


class LabelRequest(ItemRequest):
    label: str = Field(max_length=200)
    proposal: str | None = None  # the proposal the page showed


class Stats(BaseModel):
    labelled: int
    remaining: int
    unreadable: int
    renamed: int
    accepted: int
    with_proposal: int
    per_minute: float | None


class Unreadable(BaseModel):
    name: str
    reason: str


class Training(BaseModel):
    state: Literal["idle", "running", "done", "failed"]
    epoch: int | None
    epochs: int | None
    accuracy: float | None
    message: str


class Status(BaseModel):
    mode: Literal["label", "review"]
    source: str
    out: str
    alphabet: str | None
    model: str | None
    model_version: int
    stats: Stats
    training: Training
    unreadable: list[Unreadable]


class Claimed(BaseModel):
    items: list[Item]


class Done(BaseModel):
    message: str
    stats: Stats


class Undone(Done):
    item: Item | None
    label: str | None  # the label the image had, for the page to pre-fill


def to_item(r: Row) -> Item:
    return Item(id=r.id, name=r.current.name, url=f"/api/image/{r.id}", proposal=r.proposal,
                confidence=r.confidence, named=r.named)


def png_bytes(path: Path) -> bytes:
    """Any readable image as PNG, which every browser shows (TIFF, for one, is not shown)."""
    img = open_image(path)
    img = img.convert("RGBA" if "A" in img.getbands() or "transparency" in img.info else "RGB")
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
TOKEN_HEADER = "x-labelling-token"


def refusal(request: Request, token: str) -> str | None:
    """Why a request is refused, or None: the page answers only its own host (a rebound DNS name of
    another site is refused), only its own origin, and changes state only with this start's token."""
    host = urlsplit("//" + request.headers.get("host", "")).hostname
    if host not in LOCAL_HOSTS:
        return f"refused: this page answers requests to 127.0.0.1 or localhost only, not {host!r}"
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).hostname not in LOCAL_HOSTS:
        return "refused: a request from another site's page"
    given = request.headers.get(TOKEN_HEADER) or request.query_params.get("token") or ""
    if request.method not in ("GET", "HEAD") and not hmac.compare_digest(given, token):
        return "refused: the page's token is missing or wrong (reload the page)"
    return None


def create_app(session: Session) -> FastAPI:
    """The page and its JSON API; the lifespan opens the session and stops a running training."""
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        session.open()
        yield
        session.trainer.stop()

    app = FastAPI(title="captcha labelling", lifespan=lifespan)
    app.state.token = secrets.token_urlsafe(24)  # this start's: a page of another site cannot read it
    store = session.store

    @app.middleware("http")
    async def local_only(request: Request, call_next: Callable) -> Response:
        refused = refusal(request, app.state.token)
        return JSONResponse({"detail": refused}, status_code=403) if refused else await call_next(request)

    @app.exception_handler(Refused)
    async def refused(request: Request, e: Refused) -> JSONResponse:
        return JSONResponse({"detail": f"refused: {e}"}, status_code=422)

    @app.exception_handler(Conflict)
    async def conflict(request: Request, e: Conflict) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, status_code=409)

    def stats() -> Stats:
        return Stats(**store.stats())

    @app.get("/", include_in_schema=False)
    def page() -> HTMLResponse:
        token = f'<meta name="labelling-token" content="{app.state.token}">'
        html = PAGE.read_text(encoding="utf-8").replace('<meta charset="utf-8">', f'<meta charset="utf-8">\n{token}')
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    @app.get("/api/status")
    def status() -> Status:
        s = session.settings
        training = Training(**vars(session.trainer.status()))  # first: "done" means the model below is the new one
        return Status(mode=s.mode, source=str(s.source or s.out), out=str(s.out), alphabet=s.alphabet,
                      model=session.model.name if session.model else None, model_version=session.model_version,
                      stats=stats(), training=training,
                      unreadable=[Unreadable(name=n, reason=r) for n, r in store.unreadable()])

    add_queue_routes(app, session, stats)
    return app


def add_queue_routes(app: FastAPI, session: Session, stats: Callable[[], Stats]) -> None:
    """The routes that claim, show, label, skip, mark and undo images, and start a training."""
    store = session.store

    @app.post("/api/claim")
    def claim(req: ClaimRequest) -> Claimed:
        return Claimed(items=[to_item(r) for r in store.claim(req.client, req.keep, req.n)])

    @app.post("/api/release")
    def release(req: ClientRequest) -> Done:
        store.release(req.client)
        return Done(message="released", stats=stats())

    @app.get("/api/image/{item_id}")
    def image(item_id: ItemId) -> Response:
        path = store.item(item_id).current
        try:
            data = png_bytes(path)
        except (OSError, ValueError) as e:
            raise HTTPException(404, f"cannot read {path.name}: {e}") from None
        return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=600"})

    @app.post("/api/label")
    def label(req: LabelRequest) -> Done:
        row = store.label(req.client, req.id, req.label, req.proposal)
        return Done(message=f"saved {row.saved_as.name}", stats=stats())

    @app.post("/api/skip")
    def skip(req: ItemRequest) -> Done:
        if session.settings.mode == "review":  # reviewing, skipping keeps the name as it is
            row = store.item(req.id)
            store.label(req.client, req.id, row.named, row.proposal)
            return Done(message=f"kept {row.path.name}", stats=stats())
        store.skip(req.client, req.id)
        return Done(message="skipped: it comes back at the end", stats=stats())

    @app.post("/api/unreadable")
    def unreadable(req: ItemRequest) -> Done:
        store.mark_unreadable(req.client, req.id)
        return Done(message="marked unreadable", stats=stats())

    @app.post("/api/undo")
    def undo(req: ClientRequest) -> Undone:
        done = store.undo(req.client)
        if done is None:
            return Undone(message="nothing to undo", stats=stats(), item=None, label=None)
        row, old = done
        return Undone(message=f"undone: {row.path.name}" + (f" (was {old})" if old else ""), stats=stats(),
                      item=to_item(row), label=old)

    @app.post("/api/train")
    def train() -> Training:
        ckpt = session.start_training()
        return Training(**{**vars(session.trainer.status()), "message": f"training {ckpt.name}"})
