"""Images from any source (path, bytes, PIL image, array) and of any mode, fully decoded, with
decompression bombs refused on their header."""
from __future__ import annotations

import io
import os
from typing import Union

import numpy as np
from PIL import Image

ImageInput = Union[str, os.PathLike, bytes, Image.Image, np.ndarray]


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


def open_image(src: ImageInput, max_pixels: int | None = None) -> Image.Image:
    """A fully decoded PIL image from a path, bytes, PIL image or array.

    Raises ``OSError`` / ``ValueError`` for empty, truncated or non-image input, and
    ``ImageTooLarge`` for an encoded image of more than ``max_pixels`` pixels, checked on its
    header before any pixel is decoded (decompression bombs).
    """
    if isinstance(src, Image.Image):
        return src
    if isinstance(src, np.ndarray):
        return array_to_image(src)
    if isinstance(src, (bytes, bytearray)):
        src = io.BytesIO(src)
    img = Image.open(src)
    if max_pixels is not None and img.width * img.height > max_pixels:
        raise ImageTooLarge(f"{img.width}x{img.height} pixels is over the limit of {max_pixels} pixels")
    img.load()  # decode now, so truncated files fail here
    return img


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
