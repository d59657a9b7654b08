"""PyTorch models for reading: a ``.pth`` checkpoint loaded for inference (BatchNorm folded into its
convs), and ``evaluate``, the inference loop with a model being trained (validation)."""
from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.nn.utils.fusion import fuse_conv_bn_eval

from captcha_recognize.data.codec import LabelConverter
from captcha_recognize.device import pick_device
from captcha_recognize.reading.checkpoint import build_from_checkpoint, load_checkpoint
from captcha_recognize.reading.inference import infer
from captcha_recognize.reading.spec import ModelSpec


def fold_batch_norm(model: torch.nn.Module) -> torch.nn.Module:
    """An eval-mode ``model`` with each BatchNorm folded into the conv before it: the same logits
    up to float rounding, with one layer less to run per conv block."""
    for seq in model.modules():
        if isinstance(seq, torch.nn.Sequential):
            for i in range(len(seq) - 1):
                if isinstance(seq[i], torch.nn.Conv2d) and isinstance(seq[i + 1], torch.nn.BatchNorm2d):
                    seq[i], seq[i + 1] = fuse_conv_bn_eval(seq[i], seq[i + 1]), torch.nn.Identity()
    return model.to(memory_format=torch.channels_last)


def as_input(x: Any, device: torch.device) -> torch.Tensor:
    """A normalized batch (array or tensor) as the model's input tensor on ``device``, channels last."""
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    return t.to(device).contiguous(memory_format=torch.channels_last)


class TorchModel:
    """A ``.pth`` checkpoint ready to read: its ``ModelSpec`` and its logits."""

    def __init__(self, path: str | os.PathLike, device: str = "cpu"):
        self.torch_device = pick_device(device)
        self.device = self.torch_device.type
        ckpt = load_checkpoint(path)
        self.spec = ModelSpec.from_checkpoint(ckpt)
        self.net = fold_batch_norm(build_from_checkpoint(ckpt, self.torch_device))

    def logits(self, x: Any) -> np.ndarray:
        """Logits ``(B, T|P, K)`` of a normalized batch ``(B, C, H, W)``."""
        with torch.inference_mode():
            return self.net(as_input(x, self.torch_device)).float().cpu().numpy()

    @staticmethod
    def threads() -> int:
        return torch.get_num_threads()

    @staticmethod
    @contextlib.contextmanager
    def one_core_per_thread(cpu: bool) -> Iterator[None]:
        """Around a pool whose threads each take one core: the caller's thread count comes back after
        (OpenMP builds keep the setting per thread; other thread pools share it)."""
        threads = torch.get_num_threads()
        try:
            yield
        finally:
            torch.set_num_threads(threads)

    @staticmethod
    def worker_setup(cpu: bool) -> Callable[[], None] | None:
        """What each pool thread runs first: one torch thread on the CPU."""
        return (lambda: torch.set_num_threads(1)) if cpu else None


@torch.inference_mode()
def evaluate(model: torch.nn.Module, converter: LabelConverter, arrays: Any, device: torch.device | str = "cpu",
             batch_size: int = 256, temperature: float = 1.0) -> tuple[list[str], list[float]]:
    """``infer`` with a PyTorch model in eval mode (its training mode is restored after)."""
    was_training = model.training
    model.eval()
    device = torch.device(device)
    try:
        return infer(lambda x: model(as_input(x, device)).float().cpu().numpy(), converter, arrays, batch_size,
                     temperature)
    finally:
        model.train(was_training)
