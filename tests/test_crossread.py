"""Cross-reading and check_labels.py: every image is read by a fold model that did not train on it;
the disagreements are listed."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from captcha_recognize.training import crossread
from conftest import run_script
from captcha_recognize.training.crossread import common_length, fold_files, suspects
from captcha_recognize.errors import DataError
from captcha_recognize.data.labels import parse_label
from captcha_recognize.training import TrainConfig


def test_fold_files_split_every_file_into_exactly_one_part():
    files = [Path(f"{i:04d}.png") for i in range(23)]
    parts = fold_files(files, 5, seed=0)
    assert len(parts) == 5
    assert sorted(f for p in parts for f in p) == files  # each file once
    assert {len(p) for p in parts} == {4, 5}
    assert fold_files(files, 5, seed=0) == parts and fold_files(files, 5, seed=1) != parts
    for bad in (1, 24):
        with pytest.raises(DataError, match="--folds"):
            fold_files(files, bad, seed=0)


def test_cross_read_never_reads_an_image_with_a_model_trained_on_it(monkeypatch, tmp_path):
    files = [Path(f"{i:04d}.png") for i in range(10)]
    trained_on: dict[str, set[str]] = {}

    def fake_train(cfg):
        trained_on[cfg.out] = set(cfg.data)
        assert cfg.arch == "crnn" and cfg.epochs == 3  # the config reaches training

    def fake_predict(rec, held):
        assert not trained_on[rec] & {str(f) for f in held}
        return [{"path": str(f), "prediction": f.stem, "confidence": 1.0, "label": f.stem, "correct": True}
                for f in held]

    monkeypatch.setattr(crossread, "train", fake_train)
    monkeypatch.setattr(crossread, "CaptchaRecognizer", str)
    monkeypatch.setattr(crossread, "predict_files", fake_predict)
    results = crossread.cross_read(files, 3, TrainConfig(arch="crnn", epochs=3), tmp_path)
    assert sorted(r["path"] for r in results) == sorted(map(str, files))
    assert len(trained_on) == 3
    assert all(len(data) in (6, 7) for data in trained_on.values())  # the other two parts


def test_common_length_is_the_most_common_label_length():
    files = [Path(n) for n in ("12345.png", "5678.png", "9012_2.png", "123.png", "12a4.png")]
    assert common_length(files) == 4
    assert common_length(files[:1]) == 5


def test_suspects_are_the_disagreements_most_confident_first():
    def r(name, pred, conf):
        return {"path": f"{name}.png", "prediction": pred, "confidence": conf, "label": name, "correct": pred == name}
    results = [r("1111", "1111", 0.99), r("2222", "2228", 0.40), r("3333", "8333", 0.97), r("4444", "4444", 0.5)]
    assert [s["path"] for s in suspects(results)] == ["3333.png", "2222.png"]


@pytest.mark.slow
def test_cli_lists_disagreements_and_writes_the_sheet(digits_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(digits_dir, data)
    (data / "not-a-label.png").write_bytes((data / sorted(p.name for p in data.iterdir())[0]).read_bytes())
    (data / "1234.png").write_bytes(b"")  # unreadable: skipped once, not once per fold
    first = sorted(digits_dir.iterdir())[0].read_bytes()
    (data / "12345.png").write_bytes(first)  # a typo of another length: read and listed, not fatal
    (data / "12a4.png").write_bytes(first)  # a character no fold model knows: still read and listed
    sheet = tmp_path / "suspects.png"
    r = run_script("check_labels.py", str(data), "--folds", "2", "--sheet", str(sheet),
                   "--train-args=--epochs 1")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "skipped 1 unlabelled file: not-a-label.png" in r.stderr
    assert r.stderr.count("skipped 1 unreadable image: 1234.png") == 1
    assert "fold 2/2: training on 33 images, then reading the other 33" in r.stderr
    rows = [ln for ln in r.stdout.splitlines() if ln.endswith(tuple("0123456789")) and " | " in ln]
    assert f"{len(rows)} of 66 images read differently from their names" in r.stdout
    assert {"12345.png", "12a4.png"} <= {row.split("|")[0].strip() for row in rows}
    for row in rows:
        name, label, pred, _ = (c.strip() for c in row.split("|"))
        assert parse_label(name) == label and pred != label
    with Image.open(sheet) as im:  # one captioned tile per listed image, 6 to a row
        assert im.width >= 160 * min(6, len(rows)) and im.height >= 72 * -(-len(rows) // 6)


@pytest.mark.slow
@pytest.mark.parametrize("content, args, message", [
    ("nothing", [], "no images"),
    ("corrupt", [], "none of the labelled images"),
    ("three images", ["--folds", "9"], "--folds must be between 2 and"),
])
def test_cli_bad_input_is_one_line_error(tmp_path, digits_dir, content, args, message):
    folder = tmp_path / "few"
    folder.mkdir()
    if content == "corrupt":
        (folder / "1234.png").write_bytes(b"not a png")
    if content == "three images":  # too few for 9 folds
        for f in sorted(digits_dir.iterdir())[:3]:
            shutil.copy(f, folder / f.name)
    r = run_script("check_labels.py", str(folder), *args)
    assert r.returncode == 1
    error = r.stderr.strip().splitlines()[-1]
    assert error.startswith("error: ") and message in error
    assert all(ln.startswith("warning: ") for ln in r.stderr.strip().splitlines()[:-1])
