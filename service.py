"""The recognition service: an HTTP API on FastAPI that reads captchas with one or more models.

    from service import ServeConfig, create_app
    app = create_app(ServeConfig(models={"default": "captcha_recognize.pth"}))  # then uvicorn.run(app)

* ``POST /v1/recognize``: multipart files, or JSON ``{"image": b64 | [b64, ...], "model": name}``;
  per image ``text``, calibrated ``confidence``, ``accept`` and ``model``, plus timing.
* ``GET /v1/models``, ``/healthz``, ``/readyz``, ``/metrics`` (Prometheus), ``/docs``.

Concurrent requests for a model are gathered into one forward pass (``Batcher``) that decodes
their images and runs the model in a thread, off the event loop. ``Registry`` reloads a model whose
file is replaced on disk; a file that does not load leaves the old model serving. Images are read
by the recognizer's own preprocessing (``CaptchaRecognizer.prepare``) after the byte and pixel
limits are checked. ``Front``, the ASGI layer ahead of FastAPI, checks the API key, counts every
request, and answers ``/v1/recognize`` itself; FastAPI serves the rest and the docs.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import gc
import hmac
import io
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator, Sequence
from urllib.parse import parse_qs

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from PIL import Image, UnidentifiedImageError
from python_multipart.multipart import parse_options_header
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, Field, ValidationError

from checkpoint import DEFAULT_CHECKPOINT, CheckpointError
from dataset import ImageTooLarge
from recognizer import CaptchaRecognizer, Prediction

log = logging.getLogger("captcha.serve")
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
CONFIG_ENV = "CAPTCHA_SERVE_CONFIG"  # how ``--workers N`` hands the configuration to each worker process
PUBLIC_PATHS = {"/healthz", "/readyz"}  # answered without the API key
RECOGNIZE = "/v1/recognize"
RECOGNIZE_PATHS = {RECOGNIZE, RECOGNIZE + "/"}  # answered alike: a client's trailing slash is no error
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # the folder where worker processes keep their metrics, read at import
METRIC_PATHS = {RECOGNIZE, "/v1/models", "/healthz", "/readyz", "/metrics", "/docs", "/openapi.json"}


@dataclass
class ServeConfig:
    """Everything a service process is a function of (the flags of ``torch_model_serve.py``)."""
    models: dict[str, str] = field(default_factory=lambda: {"default": DEFAULT_CHECKPOINT})
    max_batch: int = 64  # images in a model's forward passes at once
    max_wait_ms: float = 5.0  # how long a forward pass waits at most for more requests to join it
    max_bytes: int = 1_000_000  # request body limit
    max_pixels: int = 4_000_000  # per image, from its header, before decoding
    max_images: int = 64  # per request
    api_key_env: str | None = None  # environment variable holding the API key
    reload_interval: float = 1.0  # seconds between checks of the model files
    device: str = "cpu"
    passes: int | None = None  # forward passes at once per model, one core each; None: forward_passes()
    workers: int = 1  # server processes sharing the machine's cores

    def __post_init__(self) -> None:
        bad = [n for n in self.models if not MODEL_NAME.match(n)]
        if bad:
            raise ValueError(f"model name {bad[0]!r} must be 1-64 letters, digits, '_', '.' or '-'")
        if not self.models:
            raise ValueError("no model to serve")

    def api_key(self) -> str | None:
        """The key read from ``api_key_env``; a set but empty or missing variable is an error."""
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env, "")
        if not key:
            raise ValueError(f"--api-key-env {self.api_key_env}: that environment variable is not set or empty")
        return key

    def forward_passes(self) -> int:
        """``passes``, or by default one per core this process has: cores / ``workers`` (1 on a GPU)."""
        if self.passes:
            return self.passes
        return max(1, (os.cpu_count() or 1) // self.workers) if self.device == "cpu" else 1


class RequestError(Exception):
    """A bad request: answered with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


# ------------------------------------------------------------------------- API models

class RecognizeJSON(BaseModel):
    """The JSON form of a request."""
    image: str | list[str] = Field(description="base64 image (a data: URL is fine), or a list of them")
    model: str | None = Field(None, description="model name (default: the first model served)")


class Reading(BaseModel):
    text: str
    confidence: float = Field(description="calibrated: of the answers given at 0.9, about 90% are right")
    accept: bool = Field(description="confidence at or above the model's accept threshold (always, without one)")
    model: str


class Timing(BaseModel):
    decode_ms: float = Field(description="reading the images into model input")
    queue_ms: float = Field(description="waiting for the forward pass")
    model_ms: float = Field(description="the forward pass this request was part of")
    total_ms: float
    batch_images: int = Field(description="images in that forward pass, this request's and others'")


class RecognizeResponse(BaseModel):
    results: list[Reading]
    timing: Timing


class InputSize(BaseModel):
    width: int
    height: int
    channels: int
    ink: list[tuple[int, int, int]] = Field(default=[], description="flat colours (RGB) whose masks the model "
                                            "reads after the image's channels")


class ModelInfo(BaseModel):
    name: str
    arch: str
    alphabet: str
    length: int | None
    input: InputSize
    format: str
    temperature: float
    threshold: float | None
    loaded_at: str
    error: str | None = Field(description="why the last reload of the file failed (the old model keeps serving)")


class ErrorResponse(BaseModel):
    error: str


# ---------------------------------------------------------------------------- models

def file_stamp(path: Path) -> tuple[int, int, int]:
    """What changes when a file is rewritten or renamed over: inode, modification time, size."""
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, st.st_size


@dataclass(frozen=True)
class Loaded:
    """One model as it is served now; replaced whole on reload."""
    name: str
    path: Path
    recognizer: CaptchaRecognizer
    stamp: tuple[int, int, int]
    loaded_at: float
    error: str | None = None  # the last failed reload
    failed_stamp: tuple[int, int, int] | None = None

    def info(self) -> ModelInfo:
        rec = self.recognizer
        return ModelInfo(name=self.name, arch=rec.arch, alphabet=rec.converter.alphabet,
                         length=rec.converter.fixed_length,
                         input=InputSize(**asdict(rec.spec)), format=self.path.suffix.lstrip(".") or "pth",
                         temperature=rec.temperature, threshold=rec.threshold,
                         loaded_at=datetime.fromtimestamp(self.loaded_at, timezone.utc).isoformat(timespec="milliseconds"),
                         error=self.error)


class Registry:
    """The served models by name. Names are only keys: a request never names a file."""

    def __init__(self, paths: dict[str, str], device: str = "cpu"):
        self.paths = {name: Path(p) for name, p in paths.items()}
        self.device = device
        self.models: dict[str, Loaded] = {}

    @property
    def default(self) -> str:
        return next(iter(self.paths))

    def load(self, name: str) -> Loaded:
        path = self.paths[name]
        stamp = file_stamp(path)  # before reading: a newer file seen later is loaded again
        return Loaded(name, path, CaptchaRecognizer(path, device=self.device, workers=1), stamp, time.time())

    def load_all(self) -> None:
        """Load every model; raises ``CheckpointError`` naming the first that does not load."""
        for name in self.paths:
            self.models[name] = self.load(name)

    def get(self, name: str | None) -> Loaded:
        name = self.default if name is None else name
        if name not in self.models:
            raise RequestError(404, f"unknown model {name!r} (served: {', '.join(self.models)})")
        return self.models[name]

    def check(self) -> list[str]:
        """Reload the models whose files changed; returns their names. A file that is missing or
        does not load leaves the old model serving, with the error logged and kept in ``error``."""
        reloaded = []
        for name, old in list(self.models.items()):
            try:
                stamp = file_stamp(old.path)
            except OSError as e:
                stamp, failure = None, f"{old.path} is missing ({type(e).__name__})"
            else:
                if stamp in (old.stamp, old.failed_stamp):
                    continue
                try:
                    self.models[name] = self.load(name)
                    reloaded.append(name)
                    log.info("reloaded model %s from %s", name, old.path)
                    continue
                except (CheckpointError, OSError) as e:
                    failure = f"reload of {old.path} failed: {e}"
            if old.error != failure:
                log.error("model %s: %s; the previous version keeps serving", name, failure)
            self.models[name] = Loaded(old.name, old.path, old.recognizer, old.stamp, old.loaded_at, failure,
                                       stamp)
        return reloaded


# -------------------------------------------------------------------------- batching

def batch_sizes(max_batch: int) -> list[int]:
    """The sizes a forward pass is padded to (1, 2, 4, then multiples of 8, and ``max_batch``): the
    CPU kernels keep buffers per input shape, and 64 shapes per thread grew the server by 300 MB."""
    return sorted({s for s in (1, 2, 4) if s < max_batch} | set(range(8, max_batch, 8)) | {max_batch})


@dataclass
class Job:
    """One request's images, waiting for a forward pass."""
    images: Sequence[bytes]  # encoded: decoded in the forward pass, by ``recognizer``
    recognizer: CaptchaRecognizer  # the model version the request was given to
    future: asyncio.Future
    queued: float = field(default_factory=time.perf_counter)


@dataclass
class BatchResult:
    predictions: list[Prediction]
    decode_ms: float
    queue_ms: float
    model_ms: float
    batch_images: int


@dataclass
class Pass:
    """What a forward thread hands back: per job its arrays' readings or its ``RequestError``."""
    readings: list[list[tuple[str, float]] | RequestError]
    decode_ms: list[float]
    model_ms: float
    images: int


class Batcher:
    """Gathers the jobs of one model into forward passes, waiting up to ``max_wait`` seconds for
    more, and runs up to ``passes`` of them at once, each of up to ``max_batch / passes`` images
    (so that a full queue keeps every thread busy, not one with all of it), each in its
    own thread with one torch thread (as ``CaptchaRecognizer.map_chunks`` does: on the CPU one
    core per pass beats all cores per pass, and a busy core does not stall the others). While
    every thread is busy, new jobs queue up and join the next pass. The forward thread also decodes
    the pass's images (``prepare_all``), as ``map_chunks`` does, so that the event loop only speaks
    HTTP. Jobs given to another version of the model (a reload in between) go into a pass of their
    own, with that version."""

    def __init__(self, max_batch: int, max_wait: float, on_batch: Callable[[int], None], passes: int = 1,
                 max_pixels: int | None = None):
        self.max_wait, self.on_batch, self.max_pixels = max_wait, on_batch, max_pixels
        self.answered, self.finished = 0, 0.0  # jobs of the last pass that finished, and when (perf_counter)
        self.queue: asyncio.Queue[Job] = asyncio.Queue()
        self.free = asyncio.Semaphore(passes)
        self.share = -(-max_batch // passes)  # images per pass at most (a larger request runs whole)
        self.passes, self.sizes = passes, batch_sizes(max_batch)
        self.executor = ThreadPoolExecutor(passes, thread_name_prefix="forward", initializer=torch.set_num_threads,
                                           initargs=(1,))
        self.task: asyncio.Task | None = None
        self.running: set[asyncio.Task] = set()

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, *self.running, return_exceptions=True)
        self.executor.shutdown(wait=True)

    async def warm(self, rec: CaptchaRecognizer) -> None:
        """Decode a PNG and run every padded batch size once on each forward thread, so that
        Pillow's decoders load and the kernels' buffers for each shape are allocated now rather
        than over the first minutes of traffic."""
        pre = rec.spec
        barrier = threading.Barrier(self.passes)  # each thread takes exactly one of the calls
        png = io.BytesIO()
        Image.new("L", (pre.width, pre.height), 255).save(png, "PNG")

        def run() -> None:
            barrier.wait()
            rec.prepare(png.getvalue(), self.max_pixels)
            for size in self.sizes:
                rec.predict_arrays(torch.zeros(size, pre.in_channels, pre.height, pre.width, dtype=torch.uint8))
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self.executor, run) for _ in range(self.passes)))

    async def submit(self, images: Sequence[bytes], rec: CaptchaRecognizer) -> BatchResult:
        """Readings of ``images`` (encoded) by ``rec``; a ``RequestError`` names a bad image."""
        job = Job(images, rec, asyncio.get_running_loop().create_future())
        self.queue.put_nowait(job)
        return await job.future

    async def gather(self, first: Job) -> tuple[list[Job], Job | None]:
        """``first`` and the jobs that join its pass; the job that could not join, if any. Jobs already
        queued always join; the pass waits (up to ``max_wait``) for more only until it holds as many
        jobs as the last pass that finished answered, as those clients are sending their next request.
        A request that comes more than ``max_wait`` after that pass ended is no such stream: it runs
        at once, as does a lone client's (one job a pass)."""
        loop = asyncio.get_running_loop()
        expect = self.answered if first.queued - self.finished <= self.max_wait else 1
        jobs, n, deadline = [first], len(first.images), loop.time() + self.max_wait
        while n < self.share:
            try:
                job = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                wait = deadline - loop.time()
                if wait <= 0 or len(jobs) >= expect:
                    break
                try:
                    job = await asyncio.wait_for(self.queue.get(), wait)
                except asyncio.TimeoutError:
                    break
            if job.recognizer is not first.recognizer or n + len(job.images) > self.share:
                return jobs, job
            jobs.append(job)
            n += len(job.images)
        return jobs, None

    async def run(self) -> None:
        held: Job | None = None
        loop = asyncio.get_running_loop()
        while True:
            first = held or await self.queue.get()
            await self.free.acquire()  # jobs that arrive meanwhile join this pass
            jobs, held = await self.gather(first)
            task = loop.create_task(self.execute(jobs))
            self.running.add(task)
            task.add_done_callback(self.done)

    def done(self, task: asyncio.Task) -> None:
        self.running.discard(task)
        self.free.release()

    async def execute(self, jobs: list[Job]) -> None:
        """One forward pass for ``jobs``; each future gets its own slice of the answers, or its error."""
        rec = jobs[0].recognizer
        start = time.perf_counter()
        try:
            done = await asyncio.get_running_loop().run_in_executor(self.executor, self.forward, rec, jobs)
        except Exception as e:  # a model that fails on its input fails these requests only
            log.exception("forward pass failed")
            for j in jobs:
                if not j.future.done():
                    j.future.set_exception(RuntimeError(f"forward pass failed: {type(e).__name__}"))
            return
        finally:
            self.answered, self.finished = len(jobs), time.perf_counter()
        if done.images:
            self.on_batch(done.images)
        for j, readings, decode_ms in zip(jobs, done.readings, done.decode_ms):
            if j.future.done():  # the client went away
                continue
            if isinstance(readings, RequestError):
                j.future.set_exception(readings)
            else:
                mine = [Prediction(t, c, rec.accepts(c)) for t, c in readings]
                j.future.set_result(BatchResult(mine, decode_ms, 1000 * (start - j.queued), done.model_ms,
                                                done.images))

    def forward(self, rec: CaptchaRecognizer, jobs: list[Job]) -> Pass:
        """In a forward thread: decode each job's images, then read them all in one padded pass."""
        prepared: list[list[np.ndarray] | RequestError] = []
        decode_ms = []
        for j in jobs:
            t = time.perf_counter()
            try:
                prepared.append(prepare_all(rec, j.images, self.max_pixels))
            except RequestError as e:
                prepared.append(e)
            decode_ms.append(1000 * (time.perf_counter() - t))
        arrays = [a for p in prepared if not isinstance(p, RequestError) for a in p]
        n, t = len(arrays), time.perf_counter()
        if n:
            pad = next((size for size in self.sizes if size >= n), n) - n
            batch = torch.from_numpy(np.stack(arrays + [np.zeros_like(arrays[0])] * pad))  # (N + pad, C, H, W) uint8
            readings = rec.predict_arrays(batch)
        model_ms = 1000 * (time.perf_counter() - t)
        out: list[list[tuple[str, float]] | RequestError] = []
        i = 0
        for p in prepared:
            if isinstance(p, RequestError):
                out.append(p)
            else:
                out.append(readings[i:i + len(p)])
                i += len(p)
        return Pass(out, decode_ms, model_ms, n)


# ------------------------------------------------------------------------ the inputs

class ClientGone(Exception):
    """The client closed the connection before its request was read."""


async def read_body(receive: Callable[[], Awaitable[dict]], headers: dict[bytes, bytes], max_bytes: int) -> bytes:
    """The ASGI request body, refused with 413 as soon as it is known to exceed ``max_bytes``."""
    too_big = f"request body over the limit of {max_bytes} bytes (--max-bytes)"
    declared = headers.get(b"content-length", b"")
    if declared.isdigit() and int(declared) > max_bytes:
        raise RequestError(413, too_big)
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise RequestError(413, too_big)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def parse_json(body: bytes) -> tuple[list[bytes], str | None]:
    """Images and model name of a JSON request."""
    try:
        req = RecognizeJSON.model_validate_json(body)
    except ValidationError as e:
        err = e.errors()[0]
        if err["type"] == "json_invalid":
            raise RequestError(400, f"malformed JSON body: {err['msg']}") from None
        where = ".".join(str(p) for p in err["loc"]) or "body"
        raise RequestError(400, f"bad JSON request: {where}: {err['msg']} "
                                '(expected {"image": <base64> | [<base64>, ...], "model": "name"})') from None
    images = [req.image] if isinstance(req.image, str) else req.image
    return [b64_image(s, i) for i, s in enumerate(images)], req.model


def b64_image(text: str, index: int) -> bytes:
    """The bytes of base64 image ``index`` (0-based); a ``data:...;base64,`` prefix is allowed."""
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, f"image {index + 1} is not valid base64") from None


def parse_multipart(content_type: str, body: bytes, max_images: int) -> tuple[list[bytes], str | None]:
    """Images (every file part, in order) and the ``model`` field of a multipart/form-data body
    (RFC 7578), split in memory: the body is already within ``--max-bytes``."""
    boundary = parse_options_header(content_type)[1].get(b"boundary")
    if not boundary:
        raise RequestError(400, "malformed multipart body: no boundary in its Content-Type")
    delimiter = b"\r\n--" + boundary
    body = b"\r\n" + body  # the first delimiter, like the others, then starts a line
    first, last = body.find(delimiter), body.rfind(delimiter + b"--")
    if first < 0 or last < 0:
        raise RequestError(400, "malformed multipart body: its boundary does not open and close it")
    images, model = [], None
    for part in body[first + len(delimiter):last].split(delimiter):
        head, blank, data = part.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        if not blank or lines[0].strip(b" \t"):  # the delimiter line may end in spaces only
            raise RequestError(400, "malformed multipart body: a part without its headers")
        headers = dict((k.strip().lower(), v.strip()) for k, _, v in (h.partition(b":") for h in lines[1:]))
        _, options = parse_options_header(headers.get(b"content-disposition", b""))
        if b"filename" in options:
            images.append(data)
            if len(images) > max_images:
                raise too_many(max_images)
        elif options.get(b"name") == b"model":
            model = data.decode("utf-8", "replace")
    return images, model


def too_many(limit: int) -> RequestError:
    return RequestError(413, f"too many images in one request: the limit is {limit} (--max-images)")


async def request_images(scope: dict, receive: Callable[[], Awaitable[dict]],
                         cfg: ServeConfig) -> tuple[list[bytes], str | None]:
    """The images and model name of a recognize request (ASGI), in either form."""
    headers = dict(scope["headers"])
    body = await read_body(receive, headers, cfg.max_bytes)
    content_type = headers.get(b"content-type", b"").decode("latin-1")
    kind = content_type.split(";")[0].strip().lower()
    if not body:
        raise RequestError(400, "empty request body: send multipart files or JSON {\"image\": <base64>}")
    if kind == "application/json":
        images, model = parse_json(body)
    elif kind == "multipart/form-data":
        images, model = parse_multipart(content_type, body, cfg.max_images)
    else:
        raise RequestError(415, f"unsupported content type {kind or 'none'!r}: send multipart/form-data "
                                "or application/json")
    if not images:
        raise RequestError(400, "no image in the request")
    if len(images) > cfg.max_images:
        raise too_many(cfg.max_images)
    for i, data in enumerate(images):
        if not data:
            raise RequestError(400, f"{image_name(i, len(images))} is empty")
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    return images, model or query.get("model", [None])[-1]


def image_name(i: int, n: int) -> str:
    return f"image {i + 1}" if n > 1 else "the image"


def prepare_all(rec: CaptchaRecognizer, images: Sequence[bytes], max_pixels: int | None) -> list[np.ndarray]:
    """Each image as model input, through the recognizer's preprocessing; the first bad one is a
    ``RequestError`` naming it."""
    out = []
    for i, data in enumerate(images):
        what = image_name(i, len(images))
        try:
            out.append(rec.prepare(data, max_pixels))
        except (ImageTooLarge, Image.DecompressionBombError) as e:
            raise RequestError(413, f"{what} is too large: {e} (--max-pixels)") from None
        except UnidentifiedImageError:
            raise RequestError(400, f"{what} is not an image Pillow can read (PNG, JPEG, GIF, BMP, ...)") from None
        except (OSError, ValueError, SyntaxError) as e:
            raise RequestError(400, f"{what} is truncated or corrupt ({str(e)[:80] or type(e).__name__})") from None
        except Exception as e:  # whatever else a decoder raises on crafted bytes fails this request only
            raise RequestError(400, f"{what} cannot be decoded ({type(e).__name__}: {str(e)[:80]})") from None
    return out


# --------------------------------------------------------------- metrics and the key

class Metrics:
    """The service's Prometheus metrics, in a registry of its own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("captcha_requests", "HTTP requests by path and status", ["path", "status"],
                                registry=self.registry)
        self.latency = Histogram("captcha_request_seconds", "HTTP request latency", ["path"], registry=self.registry,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5))
        self.batch = Histogram("captcha_batch_images", "images per forward pass", ["model"], registry=self.registry,
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.images = Counter("captcha_images", "images read, per model", ["model"], registry=self.registry)
        self.reloads = Counter("captcha_model_reloads", "model file reloads by result", ["model", "result"],
                               registry=self.registry)

    def batch_observer(self, model: str) -> Callable[[int], None]:
        def observe(n: int) -> None:
            self.batch.labels(model).observe(n)
            self.images.labels(model).inc(n)
        return observe

    def text(self) -> bytes:
        """The exposition: with ``--workers N`` (``MULTIPROC_ENV`` set) the sum over every worker
        process, as a scrape reaches just one of them; else this app's own counts."""
        if os.environ.get(MULTIPROC_ENV):
            from prometheus_client import multiprocess
            summed = CollectorRegistry()
            multiprocess.MultiProcessCollector(summed)
            return generate_latest(summed)
        return generate_latest(self.registry)


ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


class Front:
    """The ASGI layer ahead of FastAPI. It counts and times every HTTP request; with an API key it
    refuses every path but the health checks without it (``X-API-Key: KEY`` or ``Authorization:
    Bearer KEY``); and it answers ``POST /v1/recognize`` itself (``Service.recognize``), the one
    path that carries load, leaving the others to FastAPI."""

    def __init__(self, app: ASGIApp, service: Service, key: str | None):
        self.app, self.service, self.metrics = app, service, service.metrics
        self.key = key.encode() if key else None

    def authorized(self, scope: dict) -> bool:
        if self.key is None or scope["path"] in PUBLIC_PATHS:
            return True
        headers = dict(scope["headers"])
        given = headers.get(b"x-api-key") or headers.get(b"authorization", b"").removeprefix(b"Bearer ")
        return hmac.compare_digest(given, self.key)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = RECOGNIZE if scope["path"] in RECOGNIZE_PATHS else (
            scope["path"] if scope["path"] in METRIC_PATHS else "other")  # bounded label values
        start, status = time.perf_counter(), [500]

        async def send_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)
        try:
            if not self.authorized(scope):
                await send_json(send_status, 401, {"error": "missing or wrong API key (send it as the X-API-Key header)"})
            elif scope["path"] in RECOGNIZE_PATHS:
                await self.service.recognize(scope, receive, send_status)
            else:
                await self.app(scope, receive, send_status)
        except ClientGone:  # nothing to answer; counted as 499, as nginx does, not as a server error
            status[0] = 499
        finally:
            self.metrics.requests.labels(path, str(status[0])).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - start)


async def send_json(send: Callable[[dict], Awaitable[None]], status: int, payload: Any,
                    extra: Sequence[tuple[bytes, bytes]] = ()) -> None:
    """An ASGI JSON response; ``ValueError`` before anything is sent if ``payload`` holds NaN or infinity."""
    body = json.dumps(payload, allow_nan=False).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *extra]})
    await send({"type": "http.response.body", "body": body})


# --------------------------------------------------------------------------- the app

class Service:
    """What one app serves: the models, their batchers, the metrics, the reload watcher."""

    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
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
        """Check the model files every ``reload_interval`` seconds, loading in a thread."""
        while True:
            await asyncio.sleep(self.cfg.reload_interval)
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
            images, name = await request_images(scope, receive, self.cfg)
            model = self.registry.get(name)
            done = await self.batchers[model.name].submit(images, model.recognizer)
        except ClientGone:
            raise
        except RequestError as e:
            return await send_json(send, e.status, {"error": e.message})
        except Exception as e:
            log.exception("recognize failed")
            return await send_json(send, 500, {"error": f"internal error: {str(e)[:200] or type(e).__name__}"})
        readings = [{"text": p.text, "confidence": p.confidence, "accept": p.accept, "model": model.name}
                    for p in done.predictions]
        timing = {"decode_ms": done.decode_ms, "queue_ms": done.queue_ms, "model_ms": done.model_ms,
                  "total_ms": 1000 * (time.perf_counter() - t0), "batch_images": done.batch_images}
        try:
            await send_json(send, 200, {"results": readings, "timing": timing})
        except ValueError:  # not sent: a confidence that is not a number, from a model that diverged
            await send_json(send, 500, {"error": "internal error: the model's confidence is not a number"})


RECOGNIZE_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "file": {"type": "array", "items": {"type": "string", "format": "binary"},
                 "description": "one or more image files (any field name)"},
        "model": {"type": "string"}}}},
    "application/json": {"schema": RecognizeJSON.model_json_schema()}}}}
ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 405, 413, 415)}


def recognize_route() -> APIRoute:
    """``POST /v1/recognize`` as OpenAPI describes it. ``Front`` answers it ahead of FastAPI, so this
    route is never mounted: it only lends the typed request and answer to ``/docs``."""
    async def recognize(request: Request) -> RecognizeResponse:
        """Read one or more images (multipart files, or JSON with base64)."""
        raise RuntimeError("answered by Front")
    return APIRoute(RECOGNIZE, recognize, methods=["POST"], response_model=RecognizeResponse, responses=ERRORS,
                    openapi_extra=RECOGNIZE_BODY)


def create_app(cfg: ServeConfig) -> Front:
    """The ASGI app serving ``cfg``: ``Front`` ahead of the FastAPI app (``.app``), in whose lifespan
    (startup) the models load."""
    key = cfg.api_key()
    service = Service(cfg)

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


def config_to_env(cfg: ServeConfig) -> str:
    return json.dumps(asdict(cfg))


def app_from_env() -> Front:
    """The app of each ``--workers`` process: its configuration comes in ``CAPTCHA_SERVE_CONFIG``."""
    return create_app(ServeConfig(**json.loads(os.environ[CONFIG_ENV])))


# ------------------------------------------------------------ a server in a process

SCRIPT = Path(__file__).resolve().parent / "torch_model_serve.py"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextmanager
def server_process(args: Sequence[str], log_path: str | os.PathLike, env: dict[str, str] | None = None,
                   timeout: float = 120) -> Iterator[tuple[str, subprocess.Popen]]:
    """``torch_model_serve.py ARGS`` in a child process on a free 127.0.0.1 port (output in
    ``log_path``); yields its URL once ``/healthz`` answers, and stops it on exit (tests, benchmarks)."""
    port = free_port()
    with open(log_path, "w") as out:
        proc = subprocess.Popen([sys.executable, str(SCRIPT), "--host", "127.0.0.1", "--port", str(port), *args],
                                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while not healthy(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start: {Path(log_path).read_text()[-2000:]}")
            time.sleep(0.1)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False
