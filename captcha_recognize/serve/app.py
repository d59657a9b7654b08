"""The recognition service: an HTTP API on FastAPI that reads captchas with one or more models.

    from captcha_recognize.serve.app import ServeConfig, create_app
    app = create_app(ServeConfig(models={"default": "captcha_recognize.pth"}))  # then uvicorn.run(app)

* ``POST /v1/recognize``: multipart files, or JSON ``{"image": b64 | [b64, ...], "model": name}``;
  per image ``text``, calibrated ``confidence``, ``accept`` and ``model``, plus timing.
* ``GET /v1/models``, ``/healthz``, ``/readyz``, ``/metrics`` (Prometheus), ``/docs``.

``Service`` holds the models (``registry``), one ``Batcher`` per model and the metrics; ``Front``
answers ``/v1/recognize`` ahead of FastAPI, which serves the rest and the docs.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException

from captcha_recognize.reading.answer import answer as evaluate
from captcha_recognize.reading.recognizer import Prediction
from captcha_recognize.serve.batcher import Batcher
from captcha_recognize.serve.config import ServeConfig, config_from_env
from captcha_recognize.serve.front import RECOGNIZE, Front, send_json
from captcha_recognize.serve.metrics import Metrics
from captcha_recognize.serve.registry import Registry
from captcha_recognize.serve.requests import ClientGone, RequestError, request_images
from captcha_recognize.serve.schemas import ErrorResponse, ModelInfo, RecognizeJSON, RecognizeResponse

log = logging.getLogger("captcha.serve")


class Service:
    """What one app serves: the models, their batchers, the metrics, the reload watcher."""

    def __init__(self, cfg: ServeConfig, parent: int | None = None):
        self.cfg, self.parent = cfg, parent  # parent: the server process of a --workers process
        self.registry = Registry(cfg.models, cfg.device)
        self.metrics = Metrics()
        self.batchers: dict[str, Batcher] = {}
        self.watcher: asyncio.Task | None = None
        self.ready = False

    async def start(self) -> None:
        await asyncio.to_thread(self.registry.load_all)
        passes = self.cfg.forward_passes()
        for name in self.registry.models:
            self.batchers[name] = Batcher(self.cfg.max_batch, self.cfg.max_wait_ms / 1000,
                                          self.metrics.batch_observer(name), passes, self.cfg.max_pixels)
            await self.batchers[name].warm(self.registry.models[name].recognizer)
            self.batchers[name].start()
        self.watcher = asyncio.get_running_loop().create_task(self.watch())
        gc.freeze()  # torch, the models and the framework: never scanned again by the collector
        self.ready = True
        log.info("serving %s", ", ".join(f"{n} ({m.path})" for n, m in self.registry.models.items()))

    async def stop(self) -> None:
        self.ready = False
        if self.watcher is not None:
            self.watcher.cancel()
            await asyncio.gather(self.watcher, return_exceptions=True)
        for b in self.batchers.values():
            await b.stop()

    async def watch(self) -> None:
        """Check the model files every ``reload_interval`` seconds, loading in a thread; a ``--workers``
        process whose server process is gone (killed) stops, rather than serve the port alone."""
        while True:
            await asyncio.sleep(self.cfg.reload_interval)
            if self.parent is not None and os.getppid() != self.parent:
                log.warning("the server process that started this worker is gone: stopping")
                os.kill(os.getpid(), signal.SIGTERM)  # uvicorn's own, graceful stop
                return
            errors = {n: m.error for n, m in self.registry.models.items()}
            for name in await asyncio.to_thread(self.registry.check):
                self.metrics.reloads.labels(name, "ok").inc()
            for name, m in self.registry.models.items():
                if m.error is not None and m.error != errors[name]:
                    self.metrics.reloads.labels(name, "failed").inc()

    async def recognize(self, scope: dict, receive: Callable[[], Awaitable[dict]],
                        send: Callable[[dict], Awaitable[None]]) -> None:
        """``POST /v1/recognize`` as plain ASGI: a ``RecognizeResponse`` or an ``ErrorResponse``, as JSON
        (validating our own answer per request costs time)."""
        if scope["method"] != "POST":
            return await send_json(send, 405, {"error": f"{scope['method']} is not allowed here: POST the images"},
                                   [(b"allow", b"POST")])
        t0 = time.perf_counter()
        try:
            wanted = await request_images(scope, receive, self.cfg)
            model = self.registry.get(wanted.model)
            done = await self.batchers[model.name].submit(wanted.images, model.recognizer)
        except ClientGone:
            raise
        except RequestError as e:
            return await send_json(send, e.status, {"error": e.message})
        except Exception as e:
            log.exception("recognize failed")
            return await send_json(send, 500, {"error": f"internal error: {str(e)[:200] or type(e).__name__}"})
        readings = [reading(p, model.name, wanted.answer) for p in done.predictions]
        timing = {"decode_ms": done.decode_ms, "queue_ms": done.queue_ms, "model_ms": done.model_ms,
                  "total_ms": 1000 * (time.perf_counter() - t0), "batch_images": done.batch_images}
        try:
            await send_json(send, 200, {"results": readings, "timing": timing})
        except ValueError:  # not sent: a confidence that is not a number, from a model that diverged
            await send_json(send, 500, {"error": "internal error: the model's confidence is not a number"})


def reading(p: Prediction, model: str, answer: bool) -> dict[str, Any]:
    """One image's part of the answer (``schemas.Reading``); with ``answer`` the value of arithmetic."""
    out = {"text": p.text, "confidence": p.confidence, "accept": p.accept, "model": model}
    if answer:
        value = evaluate(p.text)
        out.update(answer=value.value, answer_error=value.why)
    return out


RECOGNIZE_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "file": {"type": "array", "items": {"type": "string", "format": "binary"},
                 "description": "one or more image files (any field name)"},
        "model": {"type": "string"},
        "answer": {"type": "boolean", "description": "also give the value of arithmetic readings"}}}},
    "application/json": {"schema": RecognizeJSON.model_json_schema()}}}}
ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 405, 408, 413, 415)}


def recognize_route() -> APIRoute:
    """``POST /v1/recognize`` as OpenAPI describes it. ``Front`` answers it ahead of FastAPI, so this
    route is never mounted: it only lends the typed request and answer to ``/docs``."""
    async def recognize(request: Request) -> RecognizeResponse:
        """Read one or more images (multipart files, or JSON with base64)."""
        raise RuntimeError("answered by Front")
    return APIRoute(RECOGNIZE, recognize, methods=["POST"], response_model=RecognizeResponse, responses=ERRORS,
                    openapi_extra=RECOGNIZE_BODY)


def create_app(cfg: ServeConfig, parent: int | None = None) -> Front:
    """The ASGI app serving ``cfg``: ``Front`` ahead of the FastAPI app (``.app``), in whose lifespan
    (startup) the models load; ``parent``: the server process a ``--workers`` process lives under."""
    key = cfg.api_key()
    service = Service(cfg, parent)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="captcha-recognize", lifespan=lifespan,
                  description="Reads captchas. Confidence is calibrated; `accept` says whether to trust the answer.")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:  # unknown path, wrong method
        return JSONResponse({"error": str(e.detail)}, e.status_code, headers=e.headers)

    @app.exception_handler(Exception)
    async def server_error(request: Request, e: Exception) -> JSONResponse:
        return JSONResponse({"error": f"internal error: {str(e)[:200] or type(e).__name__}"}, 500)

    @app.get("/v1/models", response_model=list[ModelInfo])
    async def models() -> list[ModelInfo]:
        return [m.info() for m in service.registry.models.values()]

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"model": ErrorResponse}})
    async def readyz() -> JSONResponse:
        if not service.ready:
            return JSONResponse({"error": "not ready"}, 503)
        return JSONResponse({"status": "ready", "models": list(service.registry.models)})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(service.metrics.text(), media_type=CONTENT_TYPE_LATEST)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                             routes=[recognize_route(), *app.routes])
        return app.openapi_schema
    app.openapi = openapi  # type: ignore[method-assign]
    return Front(app, service, key)  # outside FastAPI's own middleware, which costs time per request


def log_to_console() -> None:
    """The service's own lines (models served, reloaded, failing) on standard error, in the server
    process and in each ``--workers`` process alike."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(name)s: %(message)s")


def app_from_env() -> Front:
    """The app of each ``--workers`` process: its configuration comes in ``CAPTCHA_SERVE_CONFIG``."""
    log_to_console()
    return create_app(config_from_env(), parent=os.getppid())
