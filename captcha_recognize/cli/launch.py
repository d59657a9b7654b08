"""The entry points of the scripts and console scripts: each checks that what its tool needs is
installed (the light ``.onnx`` reader needs no PyTorch), then runs the tool's command line."""
from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Sequence

from captcha_recognize.errors import EXIT_UNREADABLE

NEEDS = {  # tool: (modules it imports, the extra that installs them)
    "train": (("torch", "tqdm", "captcha"), "train"),
    "predict": ((), ""),  # .pth checkpoints load PyTorch when given: CaptchaRecognizer says so
    "export": (("torch", "onnx", "onnxruntime"), "export"),
    "serve": (("torch", "fastapi", "uvicorn", "prometheus_client", "python_multipart"), "serve"),
    "label": (("torch", "fastapi", "uvicorn"), "serve"),
    "check_labels": (("torch", "tqdm", "captcha"), "train"),
    "make_captchas": (("torch", "tqdm", "captcha"), "train"),
}


def start(tool: str, argv: Sequence[str] | None = None) -> int:
    """Run ``tool``'s command line, or say in one line which package to install (exit 1)."""
    modules, extra = NEEDS[tool]
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        print(f"error: {tool.replace('_', ' ')} needs {', '.join(missing)}: pip install -r requirements.txt, or "
              f"pip install \"captcha-recognize[{extra}]\"", file=sys.stderr)
        return EXIT_UNREADABLE
    return importlib.import_module(f"captcha_recognize.cli.{tool}").main(argv)


def train() -> int:
    return start("train")


def predict() -> int:
    return start("predict")


def export() -> int:
    return start("export")


def serve() -> int:
    return start("serve")


def label() -> int:
    return start("label")


def check_labels() -> int:
    return start("check_labels")


def make_captchas() -> int:
    return start("make_captchas")
