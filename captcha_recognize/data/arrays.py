"""Preprocessed images as PyTorch tensors, for training: uint8 ``(N, C, H, W)`` batches, their
normalisation to the model's float input, and a dataset of them with their labels."""
from __future__ import annotations

from typing import Sequence

import torch
from PIL import Image

from captcha_recognize.data.images import ImageInput, open_image
from captcha_recognize.data.preprocess import Preprocess, images_to_array, normalize_array


def normalize(batch: torch.Tensor) -> torch.Tensor:
    """uint8 ``(B, C, H, W)`` (on the CPU) -> float in [-1, 1] (``normalize_array``), channels_last for
    fast CPU convs."""
    return torch.from_numpy(normalize_array(batch.numpy())).contiguous(memory_format=torch.channels_last)


def preprocess(images: Sequence[ImageInput], pre: Preprocess) -> torch.Tensor:
    """Images -> model input ``(B, C, H, W)``: ``normalize(image_to_array(...))``."""
    return normalize(to_arrays([open_image(im) for im in images], pre))


class ArrayDataset(torch.utils.data.Dataset):
    """Preprocessed uint8 images ``(N, C, H, W)`` with their labels."""

    def __init__(self, arrays: torch.Tensor, labels: Sequence[str]):
        self.arrays, self.labels = arrays, list(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        return self.arrays[i], self.labels[i]


def to_arrays(images: Sequence[Image.Image], preprocess: Preprocess) -> torch.Tensor:
    """Decoded images -> uint8 ``(N, C, H, W)`` at the model's input size (``images_to_array``)."""
    return torch.from_numpy(images_to_array(images, preprocess))
