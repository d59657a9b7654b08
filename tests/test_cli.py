"""The scripts' command lines: the predict report and JSON, bad input as one line, the contact
sheet, closed pipes, and --help."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from captcha_recognize.cli.common import HelpFormatter
from captcha_recognize.reading.calibration import ACCEPT_NONE
from captcha_recognize.reading.checkpoint import atomic_save, load_checkpoint, seal
from conftest import ROOT, run_script


@pytest.mark.slow
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


@pytest.mark.slow
def test_predict_cli_without_labels_has_no_accuracy(cnn_ckpt, digits_dir, tmp_path):
    f = sorted(digits_dir.iterdir())[0]
    (tmp_path / "captcha.png").write_bytes(f.read_bytes())
    r = run_script("torch_model_predict.py", str(tmp_path / "captcha.png"), "--checkpoint", str(cnn_ckpt),
                   "--json", str(tmp_path / "r.json"))
    assert r.returncode == 0 and "Accuracy" not in r.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["summary"] == {"n": 1, "accepted": 1, "temperature": 1.0, "threshold": None}  # uncalibrated


@pytest.mark.slow
def test_predict_cli_says_when_the_checkpoint_accepts_nothing(cnn_ckpt, digits_dir, tmp_path):
    ckpt = load_checkpoint(cnn_ckpt)
    atomic_save(seal({**ckpt, "threshold": ACCEPT_NONE}), tmp_path / "unsure.pth")
    image = str(sorted(digits_dir.iterdir())[0])
    r = run_script("torch_model_predict.py", image, "--checkpoint", str(tmp_path / "unsure.pth"))
    assert r.returncode == 0 and "accepts no reading" in r.stderr and "--min-confidence P" in r.stderr
    r = run_script("torch_model_predict.py", image, "--checkpoint", str(tmp_path / "unsure.pth"),
                   "--min-confidence", "0.0")
    assert r.returncode == 0 and "accepts no reading" not in r.stderr
    assert "accepts no reading" not in run_script("torch_model_predict.py", image, "--checkpoint",
                                                  str(cnn_ckpt)).stderr  # uncalibrated: accepts every reading


@pytest.mark.slow
def test_predict_cli_nothing_readable_exits_1(cnn_ckpt, tmp_path):
    (tmp_path / "1234.png").write_text("nope")
    r = run_script("torch_model_predict.py", str(tmp_path), "--checkpoint", str(cnn_ckpt))
    assert r.returncode == 1 and "no readable images" in r.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_script("torch_model_predict.py", str(empty), "--checkpoint", str(cnn_ckpt))
    assert r.returncode == 1


@pytest.mark.slow
def test_train_cli_bad_data_is_one_line(tmp_path):
    (tmp_path / "data").mkdir()
    r = run_script("torch_model_train.py", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "x.pth"))
    assert r.returncode == 1 and r.stderr.strip().startswith("error: no images")
    assert not (tmp_path / "x.pth").exists()


@pytest.mark.slow
def test_errors_contact_sheet_shows_the_misread_images(cnn_ckpt, digits_dir, tmp_path):
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


@pytest.mark.slow
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


@pytest.mark.slow
@pytest.mark.parametrize("script", ["torch_model_train.py", "torch_model_predict.py", "torch_model_export.py",
                                    "check_labels.py", "make_captchas.py", "benchmarks/accuracy.py",
                                    "benchmarks/speed.py"])
def test_script_help_lists_defaults(script):
    r = run_script(script, "--help")
    text = " ".join(r.stdout.split())
    assert r.returncode == 0 and "(default: " in text and "(default: None)" not in text


@pytest.mark.slow
@pytest.mark.parametrize("script, argv, flag", [
    ("torch_model_train.py", ["--epochs", "0"], "--epochs"), ("torch_model_train.py", ["--epochs", "-3"], "--epochs"),
    ("torch_model_train.py", ["--batch-size", "0"], "--batch-size"), ("torch_model_train.py", ["--lr", "0"], "--lr"),
    ("torch_model_train.py", ["--val-split", "1"], "--val-split"),
    ("torch_model_train.py", ["--img-size", "8x8"], "--img-size"), ("torch_model_train.py", ["--data"], "--data"),
    ("torch_model_train.py", ["--arch", "crnn", "--img-size", "64x8"], "--img-size"),
    ("torch_model_train.py", ["--device", "cuda"], "--device"),
    ("torch_model_predict.py", ["--batch-size", "0"], "--batch-size"),
    ("torch_model_predict.py", ["new_images", "--json", "/proc/no/r.json"], "--json"),
    ("torch_model_predict.py", ["new_images", "--csv", "/proc/r.csv"], "--csv"),
])
def test_bad_flags_are_one_line_naming_the_flag_exit_2_before_any_work(script, argv, flag, tmp_path):
    import torch
    if flag == "--device" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    r = run_script(script, *argv, "--data" if script == "torch_model_train.py" else "--checkpoint",
                   str(tmp_path / "none"), cwd=tmp_path)  # nothing there: loading first would fail otherwise
    lines = r.stderr.strip().splitlines()  # no usage block: one line
    assert r.returncode == 2 and len(lines) == 1 and flag in lines[0], r.stderr
    assert "Traceback" not in r.stderr and not list(tmp_path.iterdir())


@pytest.mark.slow
def test_predict_writes_csv_and_json_into_new_folders(fresh_ckpt, digits_dir, tmp_path):
    import csv
    files = sorted(digits_dir.iterdir())[:5]
    r = run_script("torch_model_predict.py", *map(str, files), "--checkpoint", str(fresh_ckpt),
                   "--csv", str(tmp_path / "a" / "r.csv"), "--json", str(tmp_path / "b" / "c" / "r.json"))
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader((tmp_path / "a" / "r.csv").open()))
    report = json.loads((tmp_path / "b" / "c" / "r.json").read_text())
    assert [row["path"] for row in rows] == [f["path"] for f in report["files"]] == list(map(str, files))
    assert [row["prediction"] for row in rows] == [f["prediction"] for f in report["files"]]
    assert all(row["label"] == f.name[:4] and row["correct"] in ("True", "False") for row, f in zip(rows, files))


@pytest.mark.slow
def test_odd_file_names_never_crash_an_ascii_console(fresh_ckpt, digits_dir, tmp_path):
    first = sorted(digits_dir.iterdir())[0].read_bytes()
    folder = os.fsencode(tmp_path)
    for name in (b"\xff\xfe.png", "228ж7.png".encode(), b"1234.png"):
        with open(folder + b"/" + name, "wb") as f:
            f.write(first)
    r = run_script("torch_model_predict.py", str(tmp_path), "--checkpoint", str(fresh_ckpt), "--json", "-",
                   PYTHONIOENCODING="ascii")
    assert r.returncode == 0, r.stderr
    paths = sorted(f["path"] for f in json.loads(r.stdout)["files"])
    assert [p.rsplit("/", 1)[1] for p in paths] == ["1234.png", "228ж7.png", "\\xff\\xfe.png"]
    assert "\\xff\\xfe.png" in r.stderr and "228\\u0436" in r.stderr  # the table, escaped for ASCII


@pytest.mark.slow
def test_a_second_training_of_the_same_output_refuses_at_start(tmp_path):
    from captcha_recognize.files import output_lock
    (tmp_path / "data").mkdir()
    with output_lock(tmp_path / "m.pth"):  # a first run holds it
        r = run_script("torch_model_train.py", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "m.pth"))
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        f"error: another training (pid {os.getpid()}) is writing {tmp_path / 'm.pth'}: wait for it to finish or "
        "give another --out"]


@pytest.mark.slow
@pytest.mark.parametrize("argv, flag", [(["torch_model_export.py", "none.pth", "--out", "/proc/x/m.onnx"], "--out"),
                                        (["check_labels.py", "none", "--sheet", "/proc/s.png"], "--sheet")])
def test_outputs_that_cannot_be_written_fail_before_any_work(argv, flag, tmp_path):
    r = run_script(*argv, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [r.stderr.strip()] and flag in r.stderr, r.stderr


def test_make_captchas_count_and_seed_need_out(capsys):
    from captcha_recognize.cli.make_captchas import parse_args
    with pytest.raises(SystemExit) as e:
        parse_args(["--count", "5"])  # would otherwise rewrite the project's sets, ignoring it
    assert e.value.code == 2 and "--count and --seed go with --out" in capsys.readouterr().err
    args = parse_args(["--out", "x", "--count", "5", "--seed", "3"])
    assert (args.count, args.seed) == (5, 3)


def test_make_captchas_looks_refuses_what_it_would_ignore(capsys):
    from captcha_recognize.cli.make_captchas import parse_args
    with pytest.raises(SystemExit) as e:
        parse_args(["--looks", "--out", "x", "--length", "5"])
    assert e.value.code == 2 and "--length: --looks draws its own" in capsys.readouterr().err
    args = parse_args(["--out", "x"])
    assert (args.alphabet, args.length, args.size) == ("0123456789", 4, (50, 22))  # the defaults without --looks
