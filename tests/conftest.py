"""Shared fixtures: small generated captcha folders and a quickly trained checkpoint."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from make_captchas import generate  # noqa: E402


def run_script(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run one of the project's scripts in a fresh Python process."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", TQDM_DISABLE="1")
    args = tuple(str(ROOT / a) if a.endswith(".py") else a for a in args)  # scripts run from any cwd
    return subprocess.run([sys.executable, *args], cwd=cwd or ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    """64 four-digit captchas, 50x22."""
    out = tmp_path_factory.mktemp("digits")
    generate(out, 64, seed=11, show=False)
    return out


@pytest.fixture(scope="session")
def cnn_ckpt(tmp_path_factory, digits_dir) -> Path:
    """A CNN overfitted on ``digits_dir`` (no augmentation, no validation split)."""
    out = tmp_path_factory.mktemp("cnn") / "cnn.pth"
    r = run_script("torch_model_train.py", "--data", str(digits_dir), "--epochs", "30", "--val-split", "0",
                   "--no-augment", "--batch-size", "16", "--lr", "3e-3", "--label-smoothing", "0",
                   "--plot", "none", "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    return out


@pytest.fixture(scope="session")
def crnn_ckpt(tmp_path_factory, digits_dir) -> Path:
    """A briefly trained CRNN on ``digits_dir``."""
    out = tmp_path_factory.mktemp("crnn") / "crnn.pth"
    r = run_script("torch_model_train.py", "--data", str(digits_dir), "--arch", "crnn", "--epochs", "4",
                   "--val-split", "0.25", "--batch-size", "16", "--plot", "none", "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    return out
