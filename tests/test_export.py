"""ONNX export: the same texts as PyTorch, the int8 export, and reading .onnx files."""
from __future__ import annotations

import json
import re

import pytest

from captcha_recognize.errors import CheckpointError
from conftest import run_script
from captcha_recognize.reading.recognizer import CaptchaRecognizer

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: pip install onnxruntime")
pytest.importorskip("onnx", reason="onnx is not installed: pip install onnx")


@pytest.mark.slow
@pytest.mark.parametrize("which", ["cnn_ckpt", "crnn_ckpt"])
def test_export_reads_like_pytorch(which, request, digits_dir, tmp_path):
    ckpt = request.getfixturevalue(which)
    out = tmp_path / "model.onnx"
    r = run_script("torch_model_export.py", str(ckpt), "--out", str(out), "--verify", str(digits_dir))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "64/64 identical texts" in r.stdout
    meta = json.loads(ort.InferenceSession(str(out)).get_modelmeta().custom_metadata_map["captcha"])
    assert meta["alphabet"] == "0123456789" and meta["preprocess"]["width"] == 50
    files = sorted(digits_dir.iterdir())
    a, b = CaptchaRecognizer(ckpt), CaptchaRecognizer(out)
    ra, rb = a.predict_batch(files), b.predict_batch(files)
    assert [t for t, _ in ra] == [t for t, _ in rb]
    assert [c for _, c in ra] == pytest.approx([c for _, c in rb], abs=1e-4)
    assert b.arch == a.arch
    # dynamic batch: one image at a time works too
    assert b.predict(files[0])[0] == ra[0][0]


@pytest.mark.slow
def test_int8_export_is_quantized_smaller_and_reads_like_pytorch(cnn_ckpt, digits_dir, tmp_path):
    import onnx

    fp32, int8 = tmp_path / "m.onnx", tmp_path / "m.int8.onnx"
    assert run_script("torch_model_export.py", str(cnn_ckpt), "--out", str(fp32), "--verify").returncode == 0
    # calibrates on the checkpoint's training folder (digits_dir), verifies on it too
    r = run_script("torch_model_export.py", str(cnn_ckpt), "--int8", "--out", str(int8), "--verify", str(digits_dir))
    assert r.returncode == 0, r.stderr[-2000:]
    assert re.search(r"verify: 64/64 identical texts", r.stdout), r.stdout
    ops = [n.op_type for n in onnx.load(str(int8)).graph.node]
    assert ops.count("QuantizeLinear") >= 8 and "DequantizeLinear" in ops
    assert int8.stat().st_size < fp32.stat().st_size / 3  # int8 weights: about a quarter
    rec = CaptchaRecognizer(int8)
    assert rec.arch == "cnn" and rec.converter.alphabet == "0123456789"
    texts = [t for t, _ in rec.predict_batch(sorted(digits_dir.iterdir()))]
    assert texts == [t for t, _ in CaptchaRecognizer(cnn_ckpt).predict_batch(sorted(digits_dir.iterdir()))]


@pytest.mark.slow
def test_int8_export_without_images_to_calibrate_is_one_line(cnn_ckpt, tmp_path):
    import torch

    ckpt = torch.load(cnn_ckpt, weights_only=True)
    ckpt["config"]["data"] = [str(tmp_path / "gone")]
    moved = tmp_path / "moved.pth"
    torch.save(ckpt, moved)
    r = run_script("torch_model_export.py", str(moved), "--int8", "--verify")
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        "error: --int8 needs images to calibrate on: give --calibrate INPUT"]
    assert not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob(".*"))


@pytest.mark.slow
def test_predict_cli_reads_onnx(cnn_ckpt, digits_dir, tmp_path):
    out = tmp_path / "m.onnx"
    assert run_script("torch_model_export.py", str(cnn_ckpt), "--out", str(out), "--verify").returncode == 0
    r1 = run_script("torch_model_predict.py", str(digits_dir), "--checkpoint", str(out), "--json", "-")
    r2 = run_script("torch_model_predict.py", str(digits_dir), "--checkpoint", str(cnn_ckpt), "--json", "-")
    assert r1.returncode == 0, r1.stderr
    p1 = [f["prediction"] for f in json.loads(r1.stdout)["files"]]
    assert p1 == [f["prediction"] for f in json.loads(r2.stdout)["files"]]


def test_not_an_onnx_export_is_a_checkpoint_error(tmp_path):
    bad = tmp_path / "x.onnx"
    bad.write_bytes(b"nope")
    with pytest.raises(CheckpointError):
        CaptchaRecognizer(bad)


def test_export_in_process_carries_the_spec_and_reads_the_same(fresh_ckpt, digits_dir, tmp_path):
    from captcha_recognize.reading.export import export_onnx, verify
    out = export_onnx(fresh_ckpt, tmp_path / "fresh.onnx")
    a, b = CaptchaRecognizer(fresh_ckpt), CaptchaRecognizer(out)
    assert b.spec == a.spec
    r = verify(fresh_ckpt, out, [digits_dir])
    assert r["identical"] == r["n"] == 64 and r["max_confidence_diff"] < 1e-4


def test_int8_verification_counts_the_readings_pytorch_accepts():
    from captcha_recognize.reading.export import verified
    r = {"n": 100, "identical": 98, "accepted": 62, "accepted_identical": 62}
    assert verified(r, int8=True)  # the two flips are among readings PyTorch itself is unsure of
    assert not verified({**r, "accepted_identical": 61}, int8=True)  # one flip among 62 accepted: 98.4%
    assert not verified(r, int8=False)  # fp32 must read every image alike
    assert verified({**r, "identical": 100, "accepted_identical": 62}, int8=False)
    none = {"n": 100, "identical": 98, "accepted": 0, "accepted_identical": 0}
    assert not verified(none, int8=True)  # nothing accepted: all images count
    assert verified({**none, "identical": 99}, int8=True)


def test_a_rejected_export_does_not_replace_the_file_it_was_to_write(fresh_ckpt, digits_dir, tmp_path,
                                                                     monkeypatch, capsys):
    from captcha_recognize.cli import export as torch_model_export
    out = tmp_path / "m.onnx"
    out.write_bytes(b"the good export of yesterday")
    monkeypatch.setattr(torch_model_export, "verified", lambda r, int8: False)
    assert torch_model_export.main([str(fresh_ckpt), "--out", str(out), "--verify", str(digits_dir)]) == 1
    assert capsys.readouterr().err.strip() == f"error: the ONNX model reads differently from PyTorch; {out} not written"
    assert out.read_bytes() == b"the good export of yesterday" and sorted(tmp_path.iterdir()) == [out]
    monkeypatch.undo()
    assert torch_model_export.main([str(fresh_ckpt), "--out", str(out), "--verify", str(digits_dir)]) == 0
    assert CaptchaRecognizer(out).arch == CaptchaRecognizer(fresh_ckpt).arch and sorted(tmp_path.iterdir()) == [out]
