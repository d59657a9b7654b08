"""The one preprocessing path, shared by training, prediction, export and the service: any image
becomes the model's uint8 input ``(C, H, W)`` (``image_to_array``), at a size chosen from the
folder's images (``auto_size``), with one mask per flat ink colour the site draws in (``find_ink``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

from captcha_recognize.data.images import eight_bit


@dataclass
class Preprocess:
    """How an image becomes the model's input; stored in the checkpoint."""
    width: int = 50
    height: int = 22
    channels: int = 3  # 3: RGB, 1: grayscale
    # ink colours (RGB): each adds one input channel, the mask of the pixels drawn in that flat
    # colour (within INK_TOLERANCE), taken at the image's own size before it is resized
    ink: tuple[tuple[int, int, int], ...] = ()

    def __post_init__(self) -> None:
        self.ink = tuple(tuple(int(v) for v in colour) for colour in self.ink)  # lists from JSON / checkpoints

    @property
    def in_channels(self) -> int:
        """Channels of the model input: the image's, then one mask per ink colour."""
        return self.channels + len(self.ink)


# Default model input per family: the cap on its height and its channels (the CNN reads
# colour at the classic small size, the CRNN grey and a little larger).
MAX_HEIGHT = {"cnn": 24, "crnn": 32}
CHANNELS = {"cnn": 3, "crnn": 1}
# tall captchas (at least TALL pixels high) lose their glyphs' details at 32 pixels: the CRNN keeps
# up to TALL_MAX_HEIGHT of their height
TALL, TALL_MAX_HEIGHT = 60, 64
INK_TOLERANCE = 3  # an ink pixel's channels are within this of its colour
INK_SHARE, INK_COMMON = 0.05, 0.8  # an ink colour covers 5% of an image, in 80% of the images
INK_PALETTE, INK_FLAT = 8, 0.9  # flat-colour captchas: 8 colours cover 90% of the pixels (80% of the images)
INK_MAX, INK_SAMPLE = 3, 300  # at most 3 ink channels, found on up to 300 images
MIN_SIDE = 16  # the smallest input height both families read, and the CNN's width: they halve them 4 times


def max_height(arch: str, sizes: Sequence[tuple[int, int]]) -> int:
    """The default input height cap of ``arch`` for images of these sizes."""
    h = most_common(sizes)[1] if sizes else 0
    return TALL_MAX_HEIGHT if arch == "crnn" and h >= TALL else MAX_HEIGHT[arch]


def most_common(sizes: Sequence[tuple[int, int]]) -> tuple[int, int]:
    return max(set(sizes), key=list(sizes).count)


def auto_size(sizes: Sequence[tuple[int, int]], max_height: int = 24) -> tuple[int, int]:
    """Model input (width, height) for a folder: its most common image size, scaled (aspect
    kept) to at most ``max_height`` and at least MIN_SIDE pixels high, and at least MIN_SIDE wide."""
    w, h = most_common(sizes)
    target = min(max(h, MIN_SIDE), max_height)
    if target != h:
        w, h = round(w * target / h), target
    return max(MIN_SIDE, w), h


def image_to_array(img: Image.Image, spec: Preprocess) -> np.ndarray:
    """Any mode/size -> uint8 ``(C, H, W)`` at the model's input size.

    Transparency is composited on white; palette/greyscale/CMYK/16-bit become RGB or L.
    """
    img = eight_bit(img)
    opaque = img.mode in ("RGBA", "LA") and img.getchannel("A").getextrema()[0] == 255
    if not opaque and (img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, rgba)
    masks = ink_masks(img.convert("RGB"), spec.ink) if spec.ink else []
    img = img.convert("RGB" if spec.channels == 3 else "L")
    size = (spec.width, spec.height)
    img, *masks = [im if im.size == size else im.resize(size, Image.BILINEAR) for im in [img, *masks]]
    arr = np.asarray(img, dtype=np.uint8)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)  # (C, H, W)
    return np.concatenate([arr, *(np.asarray(m, dtype=np.uint8)[None] for m in masks)]) if masks else arr


def ink_masks(rgb: Image.Image, ink: Sequence[tuple[int, int, int]]) -> list[Image.Image]:
    """One 8-bit mask per ink colour, at the image's size: 0 where a pixel is that colour (each
    channel within INK_TOLERANCE), 255 elsewhere, so ink stays dark on white as in the image."""
    arr = np.asarray(rgb, dtype=np.int16)  # (H, W, 3)
    return [Image.fromarray(np.where((np.abs(arr - np.array(c)) <= INK_TOLERANCE).all(-1), 0, 255).astype(np.uint8))
            for c in ink]


def find_ink(images: Sequence[Image.Image], sample: int = INK_SAMPLE) -> tuple[tuple[int, int, int], ...]:
    """The flat colours a site draws in, when its captchas are made of a few flat colours: the
    colours (other than each image's background) that cover at least INK_SHARE of nearly every
    image (INK_COMMON), most common first, at most INK_MAX. Empty for photographic or antialiased
    images, JPEGs, and sites whose colours change from image to image."""
    step = max(1, len(images) // sample)
    picked = images[::step][:sample]
    counts: dict[int, int] = {}
    flat = 0
    for im in picked:
        arr = np.asarray(image_to_array(im, Preprocess(im.width, im.height, 3)), dtype=np.uint32)  # (3, H, W)
        packed = (arr[0] << 16 | arr[1] << 8 | arr[2]).ravel()
        colours, n = np.unique(packed, return_counts=True)
        order = np.argsort(-n)
        share = n[order] / packed.size
        flat += share[:INK_PALETTE].sum() >= INK_FLAT
        for colour in colours[order[1:]][share[1:] >= INK_SHARE]:  # order[0]: the background
            counts[int(colour)] = counts.get(int(colour), 0) + 1
    if not picked or flat < INK_COMMON * len(picked):
        return ()
    common = sorted((c for c, k in counts.items() if k >= INK_COMMON * len(picked)), key=lambda c: -counts[c])
    return tuple((c >> 16, c >> 8 & 255, c & 255) for c in common[:INK_MAX])


def images_to_array(images: Sequence[Image.Image], preprocess: Preprocess) -> np.ndarray:
    """Decoded images -> uint8 ``(N, C, H, W)`` at the model's input size."""
    return np.stack([image_to_array(im, preprocess) for im in images])


def normalize_array(batch: np.ndarray) -> np.ndarray:
    """uint8 ``(B, C, H, W)`` -> float32 in [-1, 1]: the model's input, for training and reading alike."""
    return batch.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
