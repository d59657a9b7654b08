"""Checkpoint round trip, refused/incompatible checkpoints, the predict CLI, and --help."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, run_script
from dataset import HelpFormatter, list_images, load_images, to_arrays
from model import CLASSIC_CNN_CHANNELS, CLASSIC_CRNN_CHANNELS, ModelConfig, build_model
from torch_model_predict import (CaptchaRecognizer, CheckpointError, converter_from, evaluate, load_checkpoint,
                                 model_from_checkpoint)


def test_checkpoint_holds_everything_prediction_needs(cnn_ckpt):
    ckpt = load_checkpoint(cnn_ckpt)
    assert ckpt["alphabet"] == "0123456789" and ckpt["label_length"] == 4
    assert ckpt["preprocess"] == {"width": 50, "height": 22, "channels": 3}
    assert ckpt["model_args"]["arch"] == "cnn"
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in ckpt["model"])
    assert ckpt["optimizer"] is None  # the best checkpoint stays small; *_last.pth holds it
    assert not os.path.exists(str(cnn_ckpt).replace(".pth", "_last.pth"))  # removed after a full run


def test_round_trip_gives_the_same_predictions(cnn_ckpt, digits_dir, tmp_path):
    ckpt = load_checkpoint(cnn_ckpt)
    model = model_from_checkpoint(ckpt)
    images, paths = load_images(list_images([digits_dir]))
    arrays = to_arrays(images, CaptchaRecognizer(cnn_ckpt).spec)
    before, conf_before = evaluate(model, converter_from(ckpt), arrays)
    torch.save(ckpt, tmp_path / "copy.pth")
    rec = CaptchaRecognizer(tmp_path / "copy.pth")
    after = rec.predict_batch(paths)
    assert [t for t, _ in after] == before
    assert [c for _, c in after] == pytest.approx(conf_before, rel=1e-5)
    assert rec.predict(paths[0]) == after[0]
    # the short training actually learned its images
    labels = [p.name[:4] for p in paths]
    assert sum(p == t for p, t in zip(before, labels)) >= 0.9 * len(labels)


def load_as_saved(ckpt: dict, saved_args: dict, build_args: dict, image, tmp_path) -> CaptchaRecognizer:
    """Save weights built from ``build_args`` with ``saved_args`` as model_args, as an older version
    would have; load them; check the weights came back and the model reads an image."""
    old = build_model(ModelConfig(**build_args))
    torch.save({**ckpt, "model_args": saved_args, "model": old.state_dict()}, tmp_path / "old.pth")
    rec = CaptchaRecognizer(tmp_path / "old.pth")
    loaded = rec.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in old.state_dict().items())
    assert isinstance(rec.predict(image)[0], str)
    return rec


@pytest.mark.parametrize("which, field, classic", [("cnn_ckpt", "cnn_channels", CLASSIC_CNN_CHANNELS),
                                                    ("crnn_ckpt", "crnn_channels", CLASSIC_CRNN_CHANNELS)])
def test_checkpoint_from_before_the_width_fields_loads_the_classic_widths(which, field, classic, digits_dir,
                                                                          tmp_path, request):
    ckpt = load_checkpoint(request.getfixturevalue(which))
    args = {k: v for k, v in ckpt["model_args"].items() if k != field}  # as older versions saved
    rec = load_as_saved(ckpt, args, {**args, field: classic}, sorted(digits_dir.iterdir())[0], tmp_path)
    assert rec.model.features[0].out_channels == classic[0] == 32


def test_crnn_checkpoint_keeps_its_own_gru_size(crnn_ckpt, digits_dir, tmp_path):
    ckpt = load_checkpoint(crnn_ckpt)
    assert ckpt["model_args"]["rnn_hidden"] == ModelConfig().rnn_hidden == 96
    args = {**ckpt["model_args"], "rnn_hidden": 128}  # saved when 128 was the default
    rec = load_as_saved(ckpt, args, args, sorted(digits_dir.iterdir())[0], tmp_path)
    assert rec.model.rnn.hidden_size == 128


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned_marker",))


def test_pickled_code_is_refused_not_run(tmp_path):
    bad = tmp_path / "evil.pth"
    torch.save({"format": "captcha-recognize/1", "model": Exploit()}, bad)
    refusal = "holds pickled objects that a weights-only load does not allow"  # not "refused": tmp_path has it
    with pytest.raises(CheckpointError, match=refusal):
        load_checkpoint(bad)
    r = run_script("torch_model_predict.py", str(tmp_path), "--checkpoint", str(bad), cwd=tmp_path)
    assert r.returncode == 2 and refusal in r.stderr
    assert not (tmp_path / "pwned_marker").exists()


def test_missing_foreign_and_corrupt_checkpoints_exit_2(tmp_path, digits_dir):
    foreign = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, foreign)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"PK\x03\x04 garbage")
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    for ckpt, msg in [(tmp_path / "none.pth", "no checkpoint"), (foreign, "not a captcha checkpoint"),
                      (corrupt, "not a readable PyTorch checkpoint"), (text, "not a torch.save file")]:
        r = run_script("torch_model_predict.py", str(digits_dir), "--checkpoint", str(ckpt))
        assert r.returncode == 2, r.stderr
        assert msg in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_weights_that_do_not_fit_the_config_exit_2(cnn_ckpt, tmp_path):
    ckpt = load_checkpoint(cnn_ckpt)
    ckpt["model_args"]["n_positions"] = 5
    torch.save(ckpt, tmp_path / "mismatch.pth")
    with pytest.raises(CheckpointError, match="do not fit"):
        CaptchaRecognizer(tmp_path / "mismatch.pth")


def test_predict_cli_report_and_json(cnn_ckpt, digits_dir, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    files = sorted(digits_dir.iterdir())[:6]
    for f in files:
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / "unlabelled.png").write_bytes(files[0].read_bytes())
    (folder / "9999.png").write_bytes(b"")
    r = run_script("torch_model_predict.py", str(folder), "--checkpoint", str(cnn_ckpt), "--json", "-")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert len(report["files"]) == 7 and "9999.png" in r.stderr  # the empty file is reported, skipped
    by_name = {os.path.basename(f["path"]): f for f in report["files"]}
    assert by_name["unlabelled.png"]["label"] is None and by_name["unlabelled.png"]["correct"] is None
    first = by_name[files[0].name]
    assert first["label"] == files[0].name[:4]
    assert first["correct"] == (first["prediction"] == first["label"])
    s = report["summary"]
    assert s["n"] == 7 and s["labelled"] == 6 and len(s["position_accuracy"]) == 4
    right = sum(f["correct"] for f in report["files"] if f["correct"] is not None)
    assert s["sequence_accuracy"] == pytest.approx(right / 6)
    assert "Accuracy 1:" in r.stderr and "characters wrong" in r.stderr


def test_predict_cli_without_labels_has_no_accuracy(cnn_ckpt, digits_dir, tmp_path):
    f = sorted(digits_dir.iterdir())[0]
    (tmp_path / "captcha.png").write_bytes(f.read_bytes())
    r = run_script("torch_model_predict.py", str(tmp_path / "captcha.png"), "--checkpoint", str(cnn_ckpt),
                   "--json", str(tmp_path / "r.json"))
    assert r.returncode == 0 and "Accuracy" not in r.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["summary"] == {"n": 1}


def test_predict_cli_nothing_readable_exits_1(cnn_ckpt, tmp_path):
    (tmp_path / "1234.png").write_text("nope")
    r = run_script("torch_model_predict.py", str(tmp_path), "--checkpoint", str(cnn_ckpt))
    assert r.returncode == 1 and "no readable images" in r.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_script("torch_model_predict.py", str(empty), "--checkpoint", str(cnn_ckpt))
    assert r.returncode == 1


def test_train_cli_bad_data_is_one_line(tmp_path):
    r = run_script("torch_model_train.py", "--data", str(tmp_path), "--out", str(tmp_path / "x.pth"))
    assert r.returncode == 1 and r.stderr.strip().startswith("error: no images")
    assert not (tmp_path / "x.pth").exists()


def test_errors_contact_sheet_shows_the_misread_images(cnn_ckpt, digits_dir, tmp_path):
    from PIL import Image
    folder = tmp_path / "renamed"
    folder.mkdir()
    files = sorted(digits_dir.iterdir())[:3]
    for i, f in enumerate(files):  # give two images labels they cannot match
        name = f.name if i == 0 else f"{'0000' if f.name[:4] != '0000' else '1111'}_{i}.png"
        (folder / name).write_bytes(f.read_bytes())
    sheet = tmp_path / "errors.png"
    r = run_script("torch_model_predict.py", str(folder), "--checkpoint", str(cnn_ckpt), "--errors", str(sheet))
    assert r.returncode == 0, r.stderr
    n_wrong = r.stdout.count("WRONG")
    assert n_wrong >= 2 and f"wrote {n_wrong} misread images" in r.stderr
    with Image.open(sheet) as im:
        assert im.width >= 160 * n_wrong  # one captioned tile per misread image, side by side


@pytest.mark.parametrize("which", ["cnn_ckpt", "crnn_ckpt"])
def test_parallel_chunks_read_like_one_worker_in_order(which, request, digits_dir, tmp_path, capsys):
    from torch_model_predict import CPU_CHUNK, predict_files
    ckpt = request.getfixturevalue(which)
    files = sorted(digits_dir.iterdir()) * 3  # several chunks
    assert len(files) > 2 * CPU_CHUNK
    bad = [tmp_path / "0000.png", tmp_path / "1111.png"]
    bad[0].write_bytes(b"")
    bad[1].write_bytes(b"\x89PNG broken")
    files = bad[:1] + files + bad[1:]  # one bad file in the first chunk, one in the last
    one = predict_files(CaptchaRecognizer(ckpt, workers=1), files)
    capsys.readouterr()
    rec = CaptchaRecognizer(ckpt, workers=2)
    threads = torch.get_num_threads()
    many = predict_files(rec, files)
    assert torch.get_num_threads() == threads  # restored after the workers
    assert [r["path"] for r in many] == [str(f) for f in files[1:-1]]
    assert [r["prediction"] for r in many] == [r["prediction"] for r in one]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "skipped 2 unreadable images" in err[0]
    assert rec.predict_batch(files[1:-1]) == [(r["prediction"], pytest.approx(r["confidence"], abs=1e-5))
                                              for r in one]


def test_predict_into_a_closed_pipe_exits_without_traceback(cnn_ckpt, digits_dir):
    read_end, write_end = os.pipe()
    os.close(read_end)  # like `| head` that has already stopped reading
    try:
        r = subprocess.run([sys.executable, str(ROOT / "torch_model_predict.py"), str(digits_dir), "--checkpoint",
                            str(cnn_ckpt)], stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write_end)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr


def test_help_shows_each_default_once():
    p = argparse.ArgumentParser(formatter_class=HelpFormatter)
    p.add_argument("--a", type=int, default=3, help="plain")
    p.add_argument("--b", default=None, help="computed later")
    p.add_argument("--c", default="x", help="own wording (default: the folder's)")
    p.add_argument("--d", default="", help="empty")
    text = " ".join(p.format_help().split())
    assert "plain (default: 3)" in text and "(default: None)" not in text and "(default: )" not in text
    assert "(default: the folder's)" in text and "(default: x)" not in text


@pytest.mark.parametrize("script", ["torch_model_train.py", "torch_model_predict.py", "torch_model_export.py",
                                    "check_labels.py"])
def test_script_help_lists_defaults(script):
    r = run_script(script, "--help")
    text = " ".join(r.stdout.split())
    assert r.returncode == 0 and "(default: " in text and "(default: None)" not in text
