"""Images from any source (path, bytes, PIL image, array) and of any mode, fully decoded, with
decompression bombs refused on their header."""
from __future__ import annotations

import io
import os
from typing import Union

import numpy as np
from PIL import Image

ImageInput = Union[str, os.PathLike, bytes, Image.Image, np.ndarray]
MAX_PIXELS = 4_000_000  # an image's pixels, from its header: over it, refused before decoding
MAX_FRAMES = 32  # frames of an animated image that are read


class ImageTooLarge(ValueError):
    """An encoded image whose header declares more pixels than allowed (``open_image``'s ``max_pixels``)."""


def array_to_image(arr: np.ndarray) -> Image.Image:
    """An image from an array: ``(H, W)``, ``(H, W, C)`` or ``(C, H, W)`` with 1, 3 or 4 channels.
    uint8 is taken as is, 16-bit integers are scaled down, floats are read as 0..1 when they
    stay within it (else 0..255), booleans as black and white."""
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = arr.transpose(1, 2, 0)  # (C, H, W) -> (H, W, C)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)) or 0 in arr.shape:
        raise ValueError(f"an image array must be (H, W), (H, W, 3|4) or (3|4, H, W) and not empty, "
                         f"got shape {arr.shape}")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype.kind == "f":
        arr = np.nan_to_num(arr.astype(np.float64))
        arr = np.clip(arr * (255 if arr.max(initial=0) <= 1 else 1), 0, 255).round().astype(np.uint8)
    elif arr.dtype != np.uint8:
        arr = to_8bit(arr.astype(np.float64), int(arr.max(initial=0)))
    return Image.fromarray(np.ascontiguousarray(arr))


def to_8bit(values: np.ndarray, top: int) -> np.ndarray:
    """Integer samples as uint8: values above 255 mean a 16-bit range, scaled by 255/65535."""
    scale = 255 / 65535 if top > 255 else 1.0
    return np.clip(values * scale, 0, 255).round().astype(np.uint8)


def open_image(src: ImageInput, max_pixels: int | None = MAX_PIXELS) -> Image.Image:
    """A fully decoded PIL image from a path, bytes, PIL image or array; an animated one (GIF, APNG,
    WebP) as the merge of its frames (``merge_frames``).

    Raises ``OSError`` / ``ValueError`` for empty, truncated or non-image input, and
    ``ImageTooLarge`` for an encoded image of more than ``max_pixels`` pixels, checked on its
    header before any pixel is decoded (decompression bombs; None: no limit).
    """
    if isinstance(src, np.ndarray):
        return array_to_image(src)
    if isinstance(src, (bytes, bytearray)):
        src = io.BytesIO(src)
    img = src if isinstance(src, Image.Image) else Image.open(src)
    if max_pixels is not None and img.width * img.height > max_pixels:
        raise ImageTooLarge(f"{img.width}x{img.height} pixels is over the limit of {max_pixels} pixels")
    if getattr(img, "n_frames", 1) > 1:
        return merge_frames(img)
    img.load()  # decode now, so truncated files fail here
    return img


def merge_frames(img: Image.Image) -> Image.Image:
    """An animated captcha as one RGB image: at each pixel, the colour of the frame in which that pixel
    stands out most from the frame's own background (its most common colour). Captchas that show
    their characters one or a few at a time, or blink noise over them, then read as a whole; a still
    frame gives the same image. At most ``MAX_FRAMES`` frames are read."""
    best = score = None
    for i in range(min(img.n_frames, MAX_FRAMES)):
        img.seek(i)
        frame = np.asarray(on_white(img.convert("RGBA")), dtype=np.int16)  # (H, W, 3)
        colours, counts = np.unique(frame.reshape(-1, 3), axis=0, return_counts=True)
        away = np.abs(frame - colours[counts.argmax()]).max(-1)  # (H, W): distance from the background
        if best is None:
            best, score = frame.copy(), away
        else:
            take = away > score
            best[take], score = frame[take], np.maximum(score, away)
    img.seek(0)
    return Image.fromarray(best.astype(np.uint8), "RGB")


def on_white(rgba: Image.Image) -> Image.Image:
    """An RGBA image composited on white, as RGB."""
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")


def eight_bit(img: Image.Image) -> Image.Image:
    """16-bit and 32-bit greyscale (``I;16``, ``I``, ``F``) as 8-bit ``L`` with its range kept:
    Pillow's own conversion clips them at 255."""
    if img.mode == "F":
        return array_to_image(np.asarray(img, dtype=np.float32))
    if img.mode == "I" or img.mode.startswith("I;16"):
        arr = np.asarray(img).astype(np.float64)
        top = 65535 if img.mode.startswith("I;16") else int(arr.max(initial=0))
        return Image.fromarray(to_8bit(arr, top))
    return img
