"""A recognize request's images: the body read within its limits, the JSON or multipart form split
into images and a model name, and each image decoded through the recognizer's preprocessing, the
first bad one answered as that request's 4xx."""
from __future__ import annotations

import asyncio
import base64
import binascii
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Sequence
from urllib.parse import parse_qs

import numpy as np
from PIL import Image, UnidentifiedImageError
from pydantic import ValidationError
from python_multipart.multipart import parse_options_header

from captcha_recognize.data.images import ImageTooLarge
from captcha_recognize.reading.recognizer import CaptchaRecognizer
from captcha_recognize.serve.config import ServeConfig
from captcha_recognize.serve.schemas import RecognizeJSON


class RequestError(Exception):
    """A bad request: answered with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class ClientGone(Exception):
    """The client closed the connection before its request was read."""


async def read_body(receive: Callable[[], Awaitable[dict]], headers: dict[bytes, bytes], max_bytes: int,
                    timeout: float | None = None) -> bytes:
    """The ASGI request body, refused with 413 as soon as it is known to exceed ``max_bytes``, and with
    408 when it stops arriving for ``timeout`` seconds (a client that holds a connection open)."""
    too_big = f"request body over the limit of {max_bytes} bytes (--max-bytes)"
    declared = headers.get(b"content-length", b"")
    if declared.isdigit() and int(declared) > max_bytes:
        raise RequestError(413, too_big)
    chunks, size = [], 0
    while True:
        try:
            message = await asyncio.wait_for(receive(), timeout)
        except asyncio.TimeoutError:
            raise RequestError(408, f"the request body stopped arriving for {timeout:g} s (--body-timeout)") from None
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise RequestError(413, too_big)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def parse_json(body: bytes) -> tuple[list[bytes], dict[str, Any]]:
    """Images and options (``model``, ``answer``) of a JSON request."""
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
    return [b64_image(s, i) for i, s in enumerate(images)], {"model": req.model, "answer": req.answer}


def b64_image(text: str, index: int) -> bytes:
    """The bytes of base64 image ``index`` (0-based); a ``data:...;base64,`` prefix is allowed."""
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, f"image {index + 1} is not valid base64") from None


def parse_multipart(content_type: str, body: bytes, max_images: int) -> tuple[list[bytes], dict[str, Any]]:
    """Images (every file part, in order) and the ``model`` and ``answer`` fields of a multipart/form-data
    body (RFC 7578), split in memory: the body is already within ``--max-bytes``."""
    boundary = parse_options_header(content_type)[1].get(b"boundary")
    if not boundary:
        raise RequestError(400, "malformed multipart body: no boundary in its Content-Type")
    delimiter = b"\r\n--" + boundary
    body = b"\r\n" + body  # the first delimiter, like the others, then starts a line
    first, last = body.find(delimiter), body.rfind(delimiter + b"--")
    if first < 0 or last < 0:
        raise RequestError(400, "malformed multipart body: its boundary does not open and close it")
    images, options_given = [], {}
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
        elif options.get(b"name") in (b"model", b"answer"):
            options_given[options[b"name"].decode()] = data.decode("utf-8", "replace")
    return images, options_given


def too_many(limit: int) -> RequestError:
    return RequestError(413, f"too many images in one request: the limit is {limit} (--max-images)")


@dataclass
class Recognize:
    """What a recognize request asks for: its images (encoded), the model's name (None: the first
    served), and whether to give the value of arithmetic readings."""
    images: list[bytes]
    model: str | None = None
    answer: bool = False


def yes(value: Any) -> bool:
    """A form or query field's truth: ``1``, ``true``, ``yes``, ``on`` (any case)."""
    return value is True or str(value).strip().lower() in ("1", "true", "yes", "on")


async def request_images(scope: dict, receive: Callable[[], Awaitable[dict]], cfg: ServeConfig) -> Recognize:
    """The images and options of a recognize request (ASGI), in either form; the query string
    (``?model=NAME&answer=1``) supplies the options the body leaves out."""
    headers = dict(scope["headers"])
    body = await read_body(receive, headers, cfg.max_bytes, cfg.body_timeout)
    content_type = headers.get(b"content-type", b"").decode("latin-1")
    kind = content_type.split(";")[0].strip().lower()
    if not body:
        raise RequestError(400, "empty request body: send multipart files or JSON {\"image\": <base64>}")
    if kind == "application/json":
        images, options = parse_json(body)
    elif kind == "multipart/form-data":
        images, options = parse_multipart(content_type, body, cfg.max_images)
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
    query = {k: v[-1] for k, v in parse_qs(scope.get("query_string", b"").decode("latin-1")).items()}
    return Recognize(images, options.get("model") or query.get("model"),
                     yes(options.get("answer") or query.get("answer", False)))


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
