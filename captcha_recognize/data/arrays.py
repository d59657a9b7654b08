"""Preprocessed images as tensors: uint8 ``(N, C, H, W)`` arrays, their normalisation to the
model's float input, and a dataset of them with their labels."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image

from captcha_recognize.data.images import ImageInput, open_image
from captcha_recognize.data.preprocess import Preprocess, image_to_array


def normalize(batch: torch.Tensor) -> torch.Tensor:
    """uint8 ``(B, C, H, W)`` -> float in [-1, 1], channels_last for fast CPU convs."""
    x = batch.float().div_(127.5).sub_(1.0)
    return x.contiguous(memory_format=torch.channels_last)


def preprocess(images: Sequence[ImageInput], spec: Preprocess) -> torch.Tensor:
    """Images -> model input ``(B, C, H, W)``: ``normalize(image_to_array(...))``."""
    arrays = [image_to_array(open_image(im), spec) for im in images]
    return normalize(torch.from_numpy(np.stack(arrays)))


class ArrayDataset(torch.utils.data.Dataset):
    """Preprocessed uint8 images ``(N, C, H, W)`` with their labels."""

    def __init__(self, arrays: torch.Tensor, labels: Sequence[str]):
        self.arrays, self.labels = arrays, list(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        return self.arrays[i], self.labels[i]


def to_arrays(images: Sequence[Image.Image], spec: Preprocess) -> torch.Tensor:
    """Decoded images -> uint8 ``(N, C, H, W)`` at the model's input size."""
    return torch.from_numpy(np.stack([image_to_array(im, spec) for im in images]))
