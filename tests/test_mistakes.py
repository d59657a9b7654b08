"""A careful user's and an attacker's mistakes: each ends in one clear line (or the right result),
never a traceback, a hang or a silently wrong result."""
from __future__ import annotations

import json
import shutil

import pytest

from captcha_recognize.data.folders import list_images
from captcha_recognize.data.labels import read_label_map
from captcha_recognize.errors import ConfigError, DataError
from captcha_recognize.text import json_text, shown
from captcha_recognize.training import TrainConfig, train
from conftest import ROOT


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("tool, argv, flag", [
    ("export", ["captcha_recognize.pth", "--opset", "99"], "--opset"),
    ("serve", ["--port", "99999"], "--port"),
    ("label", ["new_images", "--out", "x", "--port", "70000"], "--port"),
    ("make_captchas", ["--out", "x", "--alphabet", ""], "--alphabet"),
    ("make_captchas", ["--out", "x", "--alphabet", "1/2"], "--alphabet"),
    ("make_captchas", ["--out", "x", "--alphabet", "1_2."], "--alphabet"),
    ("make_captchas", ["--out", "x", "--size", "100000x100000"], "--size"),
    ("train", ["--lr", "inf"], "--lr"),
    ("train", ["--weight-decay", "nan"], "--weight-decay"),
])
def test_a_value_that_cannot_work_is_one_line_naming_its_flag(tool, argv, flag, capsys):
    import importlib
    main = importlib.import_module(f"captcha_recognize.cli.{tool}").main
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and flag in one_line(capsys)


@pytest.mark.parametrize("tool, argv, message", [
    ("serve", ["--model", "a=captcha_recognize.pth", "--model", "a=captcha_recognize.pth"],
     "--model: the name 'a' is given to more than one model"),
    ("check_labels", ["new_images", "--train-args", "--epochs '1"], "--train-args: No closing quotation"),
    ("make_captchas", ["--out", "/proc/no/such", "--count", "1"], "--out: cannot create the folder /proc/no/such"),
])
def test_a_setting_that_cannot_work_is_one_line_and_exit_2_before_any_work(tool, argv, message, capsys,
                                                                           monkeypatch):
    import importlib
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr("uvicorn.run", lambda *a, **k: pytest.fail("the server started"))
    assert importlib.import_module(f"captcha_recognize.cli.{tool}").main(argv) == 2
    assert message in one_line(capsys)


def test_the_service_asked_for_a_gpu_that_is_not_there_says_so(capsys, monkeypatch):
    import torch
    from captcha_recognize.cli import serve
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.setattr("uvicorn.run", lambda *a, **k: pytest.fail("the server started"))
    assert serve.main(["--device", "cuda", "--model", f"m={ROOT / 'captcha_recognize.pth'}"]) == 2
    assert "--device: cuda was asked for, but PyTorch sees no CUDA GPU" in one_line(capsys)


def test_conflicting_label_map_lines_are_refused_and_repeats_are_one(tmp_path):
    (tmp_path / "map.txt").write_text("x *\n# a comment\nx /\n")
    with pytest.raises(DataError, match=r"lines 1 and 3: 'x' maps to both '\*' and '/'; keep one"):
        read_label_map(tmp_path / "map.txt")
    (tmp_path / "map.txt").write_text("x *\nx *\nd /\n")
    assert read_label_map(tmp_path / "map.txt") == (("d", "/"), ("x", "*"))


def test_a_folder_given_twice_is_read_once(capsys):
    once = list_images([ROOT / "new_images"])
    twice = list_images([ROOT / "new_images", ROOT / "new_images", ROOT / "new_images" / once[3].name])
    assert twice == once  # in training, a second copy would sit in training and validation alike
    assert "note: 101 images named more than once" in capsys.readouterr().err


def test_names_from_outside_print_as_one_harmless_line():
    forged = "1234.png\nfake line: 100% right\x1b[2J\x07"
    assert shown(forged) == "1234.png\\nfake line: 100% right\\x1b[2J\\x07"
    assert shown(b"\xff\xfe.png") == "\\xff\\xfe.png" and shown("228ж7 a.png") == "228ж7 a.png"
    assert json.loads(json_text({"confidence": float("nan"), "n": [1.5, float("inf")]})) == {
        "confidence": None, "n": [1.5, None]}


def test_predict_prints_a_forged_name_as_one_escaped_line(fresh_ckpt, tmp_path, capsys):
    from captcha_recognize.cli import predict
    name = "1234\nfake 100%\x1b[31m.png"
    shutil.copy(ROOT / "new_images" / "0059.png", tmp_path / name)
    assert predict.main([str(tmp_path), "--checkpoint", str(fresh_ckpt)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\\x1b[31m.png" in out and "\nfake" not in out


def test_the_curve_may_not_land_among_the_captchas(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(ROOT / "new_images", data)
    with pytest.raises(ConfigError, match="--out: .*model.png would be written among the captchas"):
        train(TrainConfig(data=[str(data)], out=str(data / "model.pth")))
    with pytest.raises(ConfigError, match="--plot: "):
        train(TrainConfig(data=[str(data)], out=str(tmp_path / "m.pth"), plot=str(data / "curve.png")))
    assert not (data / "model.png").exists() and len(list(data.iterdir())) == 100


@pytest.mark.slow
def test_an_input_too_narrow_for_the_labels_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="--img-size: 8x16 gives the CRNN 2 columns to read, too few for 4 "
                                          "characters: give at least 32 pixels of width"):
        train(TrainConfig(data=[str(ROOT / "new_images")], arch="crnn", img_size=(8, 16), out=str(tmp_path / "m.pth")))


@pytest.mark.slow
def test_a_diverging_training_stops_with_one_line_and_saves_nothing_not_finite(tmp_path):
    from conftest import run_script
    r = run_script("torch_model_train.py", "--data", str(ROOT / "new_images"), "--arch", "cnn", "--lr", "1e6",
                   "--epochs", "3", "--out", str(tmp_path / "m.pth"), "--plot", "none")
    assert r.returncode in (1, 2) and r.stderr.strip().splitlines()[-1].startswith("error: the ")
    assert "not finite" in r.stderr and "Traceback" not in r.stderr
    if (tmp_path / "m.pth").exists():  # an epoch before the divergence may have been saved: it loads
        from captcha_recognize.reading.checkpoint import load_checkpoint
        load_checkpoint(tmp_path / "m.pth")


@pytest.mark.slow
def test_a_resumed_run_finds_its_own_images_or_says_they_changed(interrupted_run, tmp_path, capsys):
    out, last, data = interrupted_run
    swapped = sorted(data.iterdir())[:3]
    for f in swapped:  # three images swapped for others: as many files, another validation split
        f.rename(f.with_name("9" + f.name[1:]))
    with pytest.raises(DataError, match="are not the ones the resumed run read"):
        train(TrainConfig(resume=str(last)))
    for f in swapped:
        f.with_name("9" + f.name[1:]).rename(f)
    result = train(TrainConfig(resume=str(last), epochs=2, show_errors=0))
    assert "shortening the schedule from 3 to 2 epochs" in capsys.readouterr().out
    assert [h["epoch"] for h in result.history] == [1, 2]


@pytest.fixture
def interrupted_run(digits_dir, tmp_path, monkeypatch):
    """A 3-epoch CNN run on a copy of the digits, stopped by Ctrl-C after epoch 2: (best, last, data)."""
    from captcha_recognize.training import saver, supervised
    data = tmp_path / "data"
    shutil.copytree(digits_dir, data)
    monkeypatch.setattr(saver, "SAVE_EVERY", 0.0)
    real = supervised.run_epoch
    monkeypatch.setattr(supervised, "run_epoch", lambda a, e: (_ for _ in ()).throw(KeyboardInterrupt) if e == 3
                        else real(a, e))
    out = tmp_path / "run" / "m.pth"
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(data=[str(data)], arch="cnn", epochs=3, batch_size=16, out=str(out), plot="none",
                          quiet=True))
    monkeypatch.undo()
    return out, out.with_name("m_last.pth"), data
