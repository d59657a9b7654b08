"""Train each architecture briefly on fresh captchas, then read them through the CLI."""
from __future__ import annotations

import json

import pytest

from conftest import run_script
from captcha_recognize.reading.checkpoint import load_checkpoint
from captcha_recognize.data.synthetic import generate


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["cnn", "crnn"])
def test_train_then_predict_cli(arch, tmp_path):
    data = tmp_path / "data"
    generate(data, 48, seed=5, alphabet="0123456789", length=4, show=False)
    if arch == "crnn":  # the CRNN also gets labels of another length
        generate(data, 16, seed=6, alphabet="0123456789", length=3, show=False)
    out = tmp_path / f"{arch}.pth"
    r = run_script("torch_model_train.py", "--data", str(data), "--arch", arch, "--epochs", "40",
                   "--val-split", "0.25", "--no-augment", "--batch-size", "16", "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Accuracy 1:" in r.stdout and "sequence" in r.stdout and "Ground truth | Prediction" in r.stdout
    assert out.with_suffix(".png").is_file()  # training curves
    ckpt = load_checkpoint(out)
    assert ckpt["model_args"]["arch"] == arch and ckpt["epoch"] >= 1
    assert ckpt["label_length"] == 4  # the CNN's length; for the CRNN the longest label
    r = run_script("torch_model_predict.py", str(data), "--checkpoint", str(out), "--json", "-")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["summary"]["n"] == (64 if arch == "crnn" else 48)
    # after 40 epochs on its own images the model reads most of them
    assert report["summary"]["character_accuracy"] > 0.6, report["summary"]
