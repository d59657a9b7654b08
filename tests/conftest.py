"""Shared fixtures: small generated captcha folders, quickly trained checkpoints and a fresh one."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from checkpoint import ModelSpec, atomic_save, checkpoint_dict  # noqa: E402
from dataset import Preprocess  # noqa: E402
from model import ModelConfig, build_model  # noqa: E402
from synthetic import generate  # noqa: E402
from training import TrainConfig, train  # noqa: E402


def run_script(*args: str, cwd: Path | None = None, timeout: int = 600, **env: str) -> subprocess.CompletedProcess:
    """Run one of the project's scripts in a fresh Python process."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", TQDM_DISABLE="1", **env)
    args = tuple(str(ROOT / a) if a.endswith(".py") else a for a in args)  # scripts run from any cwd
    return subprocess.run([sys.executable, *args], cwd=cwd or ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def fresh_checkpoint(path: Path, arch: str = "cnn", alphabet: str = "0123456789", length: int = 4,
                     pre: Preprocess = Preprocess(50, 22, 3), seed: int = 0) -> Path:
    """An untrained checkpoint of the given shape, written the way training writes one."""
    import torch
    torch.manual_seed(seed)
    cfg = ModelConfig(arch=arch, n_classes=len(alphabet), n_positions=length, in_channels=pre.in_channels,
                      img_h=pre.height, img_w=pre.width)
    atomic_save(checkpoint_dict(build_model(cfg).state_dict(), asdict(cfg), ModelSpec(arch, alphabet, length, pre)),
                path)
    return path


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    """64 four-digit captchas, 50x22."""
    out = tmp_path_factory.mktemp("digits")
    generate(out, 64, seed=11, show=False)
    return out


@pytest.fixture(scope="session")
def fresh_ckpt(tmp_path_factory) -> Path:
    """An untrained CNN checkpoint for 4-digit 50x22 captchas (no training: for fast tests)."""
    return fresh_checkpoint(tmp_path_factory.mktemp("fresh") / "fresh.pth")


@pytest.fixture(scope="session")
def cnn_ckpt(tmp_path_factory, digits_dir) -> Path:
    """A CNN overfitted on ``digits_dir`` (no augmentation, no validation split)."""
    out = tmp_path_factory.mktemp("cnn") / "cnn.pth"
    train(TrainConfig(data=[str(digits_dir)], arch="cnn", epochs=30, val_split=0, augment=False, batch_size=16, lr=3e-3,
                      label_smoothing=0, plot="none", out=str(out), quiet=True))
    return out


@pytest.fixture(scope="session")
def crnn_ckpt(tmp_path_factory, digits_dir) -> Path:
    """A briefly trained CRNN on ``digits_dir``."""
    out = tmp_path_factory.mktemp("crnn") / "crnn.pth"
    train(TrainConfig(data=[str(digits_dir)], arch="crnn", epochs=4, val_split=0.25, batch_size=16, plot="none",
                      out=str(out), quiet=True))
    return out


@pytest.fixture(scope="session")
def calibrated_ckpt(tmp_path_factory) -> Path:
    """The shipped model fine-tuned for one epoch on 256 generated captchas, half of them held out:
    training ends by calibrating it on validation answers both right and wrong (fast, slow tests)."""
    data = tmp_path_factory.mktemp("digits256")
    generate(data, 256, seed=12, show=False)
    out = tmp_path_factory.mktemp("calibrated") / "calibrated.pth"
    train(TrainConfig(data=[str(data)], init_from=str(ROOT / "captcha_recognize.pth"), epochs=1, lr=1e-4,
                      val_split=0.5, plot="none", out=str(out), quiet=True))
    return out
