"""``Front``, the ASGI layer ahead of FastAPI: it counts and times every request, checks the API key,
and answers ``POST /v1/recognize`` itself, the one path that carries load."""
from __future__ import annotations

import hmac
import json
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Sequence

from captcha_recognize.serve.requests import ClientGone

if TYPE_CHECKING:
    from captcha_recognize.serve.app import Service

PUBLIC_PATHS = {"/healthz", "/readyz"}  # answered without the API key
RECOGNIZE = "/v1/recognize"
RECOGNIZE_PATHS = {RECOGNIZE, RECOGNIZE + "/"}  # answered alike: a client's trailing slash is no error


METRIC_PATHS = {RECOGNIZE, "/v1/models", "/healthz", "/readyz", "/metrics", "/docs", "/openapi.json"}


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
                await send_json(send_status, 401,
                                {"error": "missing or wrong API key (send it as the X-API-Key header)"})
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
                    headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    """An ASGI JSON response; ``ValueError`` before anything is sent if ``payload`` holds NaN or infinity."""
    body = json.dumps(payload, allow_nan=False).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})
