"""The base model: captchas of many looks, starting a training from its weights, reading with it."""
from __future__ import annotations

import random
from dataclasses import asdict

import numpy as np
import pytest
import torch

from captcha_recognize.data.codec import LabelConverter
from captcha_recognize.data.labels import parse_label
from captcha_recognize.data.looks import BASE_ALPHABET, FONTS_HINT, font_files, looks_captcha, looks_text
from captcha_recognize.data.preprocess import Preprocess
from captcha_recognize.errors import ConfigError
from captcha_recognize.model import ModelConfig, build_model
from captcha_recognize.reading.checkpoint import load_checkpoint
from captcha_recognize.reading.recognizer import CaptchaRecognizer
from captcha_recognize.reading.spec import BASE_CHECKPOINT, model_path
from captcha_recognize.training import TrainConfig, base, supervised
from captcha_recognize.training.base import base_start, fit_weights, tile_rows
from captcha_recognize.training.events import Events
from tests.conftest import fresh_checkpoint, run_script

NEEDS_FONTS = pytest.mark.skipif(not font_files(), reason=f"needs fonts that draw Latin and Cyrillic ({FONTS_HINT})")


def crnn_args(alphabet: str, in_channels: int = 1, height: int = 32, width: int = 128) -> dict:
    return asdict(ModelConfig(arch="crnn", n_classes=len(alphabet), in_channels=in_channels, img_h=height,
                              img_w=width))


@pytest.fixture
def fake_base(tmp_path):
    """A freshly initialised CRNN of the base model's alphabet and input, as the base."""
    return load_checkpoint(fresh_checkpoint(tmp_path / "base.pth", "crnn", BASE_ALPHABET, 8, Preprocess(128, 32, 1)))


@NEEDS_FONTS
def test_looks_are_reproducible_varied_and_labelled(tmp_path):
    texts = [looks_text(random.Random(i)) for i in range(200)]
    assert all(3 <= len(t) <= 8 and set(t) <= set(BASE_ALPHABET) for t in texts)
    assert any(c in t for t in texts for c in "+-")  # arithmetic among them
    assert any(set(t) & set("бвгд") for t in texts) and any(t.isupper() for t in texts)
    a, b = looks_captcha("ab3Ж", 7), looks_captcha("ab3Ж", 7)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(looks_captcha("ab3Ж", 8)))
    assert len({looks_captcha("ab3Ж", s).size[1] for s in range(10)}) > 3  # each look its own size


@NEEDS_FONTS
@pytest.mark.slow
def test_make_captchas_writes_labelled_looks(tmp_path):
    assert run_script("make_captchas.py", "--looks", "--out", str(tmp_path / "mix"), "--count", "12").returncode == 0
    names = list((tmp_path / "mix").iterdir())
    assert len(names) == 12 and all(parse_label(p, BASE_ALPHABET) for p in names)


def test_weights_fit_a_run_of_other_characters_channels_and_height(fake_base):
    alphabet = "2456789бвгдежклмнпрстБ"  # е, р, с are drawn as Latin e, p, c; Б is new
    args = crnn_args(alphabet, in_channels=3, height=64, width=160)  # grey + 2 ink masks
    weights, known, alike = fit_weights(fake_base, args, alphabet)
    fresh = build_model(ModelConfig(**args))
    fresh.load_state_dict(weights)  # fits
    assert (known, alike) == (18, 3)
    src = fake_base["model"]
    assert torch.equal(weights["features.4.weight"], src["features.4.weight"])  # the backbone
    assert torch.equal(weights["features.0.weight"][:, :1], src["features.0.weight"])  # grey channel
    assert not weights["features.0.weight"][:, 1:].any()  # ink masks start at zero
    assert torch.equal(weights["proj.weight"], tile_rows(src["proj.weight"], 128, 128 * 4))
    index = {c: i + 1 for i, c in enumerate(BASE_ALPHABET)}
    for i, c in enumerate(alphabet[:-1], 1):
        j = index[{"е": "e", "р": "p", "с": "c"}.get(c, c)]
        assert torch.equal(weights["classifier.weight"][i], src["classifier.weight"][j])
    assert torch.equal(weights["classifier.weight"][0], src["classifier.weight"][0])  # the blank
    assert not any(torch.equal(weights["classifier.weight"][-1], row) for row in src["classifier.weight"])  # Б


def test_a_colour_input_starts_from_the_grey_kernel(fake_base):
    args = crnn_args("0123456789", in_channels=3)  # RGB, no ink masks
    weights, _, _ = fit_weights(fake_base, args, "0123456789", image_channels=3)
    grey = fake_base["model"]["features.0.weight"][:, 0]  # (C1, 3, 3)
    rgb = weights["features.0.weight"]  # (C1, 3, 3, 3)
    assert torch.allclose(rgb.sum(1), grey * 1.0, atol=1e-6) and torch.allclose(rgb[:, 1], grey * 0.587)


@pytest.mark.parametrize("height", [16, 48, 64])
def test_feature_maps_of_other_heights_project_as_the_base_does(height):
    torch.manual_seed(0)
    base_model = build_model(ModelConfig(**crnn_args("01")))
    other = build_model(ModelConfig(**crnn_args("01", height=height)))
    other.proj.weight.data = tile_rows(base_model.proj.weight.data, 128, other.proj.in_features)
    other.proj.bias.data = base_model.proj.bias.data  # (D,): the same shape, copied as it is
    rows = torch.randn(1, 128, 1, 8)  # (B, C, 1, T): features that do not change down a column

    def project(model, h):  # the projection's output in the model's own forward, on those features h high
        model.features.register_forward_hook(lambda m, i, o: rows.expand(1, 128, h, 8))  # (B, C, H', T)
        out = []
        model.proj.register_forward_hook(lambda m, i, o: out.append(o))
        model.eval()(torch.zeros(1, 1, 16 * h, 32))
        return out[0]  # (B, T, D)
    assert torch.allclose(project(base_model, 2), project(other, height // 16), atol=1e-4)


def test_training_starts_from_the_base_unless_told_otherwise(fake_base, tmp_path, monkeypatch):
    path = tmp_path / "base.pth"
    monkeypatch.setattr(base, "BASE_CHECKPOINT", path)
    notes: list[str] = []
    events = Events(None, [lambda e: notes.append(e["text"]) if e["event"] == "note" else None])
    args = crnn_args("0123456789")
    cfg = TrainConfig()
    start = base_start(cfg, args, "0123456789", 1, events)
    assert start is not None and "starting from the base model" in notes[-1] and "--from-scratch" in notes[-1]
    assert torch.equal(start["features.0.weight"], fake_base["model"]["features.0.weight"])
    assert base_start(TrainConfig(from_scratch=True), args, "0123456789", 1, events) is None
    assert base_start(TrainConfig(init_from="x.pth"), args, "0123456789", 1, events) is None
    cnn = asdict(ModelConfig(arch="cnn"))
    assert base_start(cfg, cnn, "0123456789", 3, events) is None and "the base model is a CRNN" in notes[-1]
    path.unlink()
    assert base_start(cfg, args, "0123456789", 1, events) is None and "no base model at" in notes[-1]


def test_reading_can_be_restricted_to_some_characters(tmp_path):
    ckpt = fresh_checkpoint(tmp_path / "m.pth", "cnn", "0123456789abc", 4, Preprocess(50, 22, 3))
    image = np.zeros((22, 50, 3), np.uint8)
    logits = np.zeros((1, 4, 13), np.float32)  # (B, P, K): 'a' first everywhere, '1' second
    logits[..., 10], logits[..., 1] = 5.0, 1.0
    free, digits = CaptchaRecognizer(ckpt), CaptchaRecognizer(ckpt, alphabet="0123456789")
    for rec in (free, digits):
        rec.model.logits = lambda x: logits
    assert free.predict(image)[0] == "aaaa"
    assert digits.predict(image)[0] == "1111"
    cyrillic = CaptchaRecognizer(ckpt, alphabet="0с")  # Cyrillic с is read as the Latin c the model knows
    shifted = np.roll(logits, 2, axis=-1)  # c first, then 3
    cyrillic.model.logits = lambda x: shifted
    assert cyrillic.predict(image)[0] == "сссс"
    with pytest.raises(ConfigError, match="does not read 'xy'"):
        CaptchaRecognizer(ckpt, alphabet="0xy")
    mask = LabelConverter("abc", ctc=True).class_mask("c")
    assert mask.tolist() == [True, False, False, True]  # the blank and c


def test_reading_can_be_held_to_one_length(tmp_path):
    ckpt = fresh_checkpoint(tmp_path / "m.pth", "crnn", "0123456789", 4, Preprocess(64, 32, 1))
    image = np.random.default_rng(0).integers(0, 255, (32, 64), np.uint8)
    assert len(CaptchaRecognizer(ckpt).predict(image)[0]) != 5  # fresh: mostly blank
    assert len(CaptchaRecognizer(ckpt, length=5).predict(image)[0]) == 5
    cnn = fresh_checkpoint(tmp_path / "c.pth", "cnn", "0123456789", 4, Preprocess(50, 22, 3))
    assert len(CaptchaRecognizer(cnn, length=4).predict(np.zeros((22, 50, 3), np.uint8))[0]) == 4  # its own: fine
    with pytest.raises(ConfigError, match="reads 4 characters, not 5"):
        CaptchaRecognizer(cnn, length=5)


def test_base_names_the_shipped_base_model(tmp_path, monkeypatch):
    assert model_path("base") == BASE_CHECKPOINT
    monkeypatch.chdir(tmp_path)
    (tmp_path / "base").mkdir()
    assert model_path("base") == BASE_CHECKPOINT  # a folder of that name (of images, say) does not
    (tmp_path / "base").rmdir()
    (tmp_path / "base").write_bytes(b"")
    assert model_path("base").resolve() == (tmp_path / "base").resolve()  # a file of that name wins


def test_a_missing_base_model_says_how_to_make_it(tmp_path, monkeypatch):
    from captcha_recognize.errors import CheckpointError
    from captcha_recognize.reading import spec
    monkeypatch.setattr(spec, "BASE_CHECKPOINT", tmp_path / "base_model.pth")
    with pytest.raises(CheckpointError, match="python -m captcha_recognize.cli.base_model"):
        load_checkpoint("base")


@NEEDS_FONTS
@pytest.mark.slow
def test_the_base_model_is_made_and_a_training_starts_from_it(tmp_path, monkeypatch, digits_dir):
    from captcha_recognize.cli import base_model
    from captcha_recognize.training import train
    out = tmp_path / "base.pth"
    assert base_model.main(["--images", str(tmp_path / "looks"), "--count", "40", "--epochs", "2",
                            "--out", str(out)]) == 0
    assert not (tmp_path / "looks.partial").exists() and len(list((tmp_path / "looks").iterdir())) == 40
    made = load_checkpoint(out)
    assert made["alphabet"] == BASE_ALPHABET and made["model_args"]["img_h"] == 32
    monkeypatch.setattr(base, "BASE_CHECKPOINT", out)
    starts = []
    build_state = supervised.build_state
    monkeypatch.setattr(supervised, "build_state", lambda *a: starts.append(a[3]) or build_state(*a))
    notes: list[str] = []
    cfg = TrainConfig(data=[str(digits_dir)], arch="crnn", epochs=2, out=str(tmp_path / "m.pth"), plot="none",
                      quiet=True)
    train(cfg, lambda e: notes.append(e["text"]) if e["event"] == "note" else None)
    assert any(n.startswith("starting from the base model: its backbone, 10 of the 10") for n in notes)
    assert torch.equal(starts[0]["model"]["features.4.weight"], made["model"]["features.4.weight"])


def test_predict_reads_with_the_base_model_held_to_the_sites_characters(fake_base, digits_dir, tmp_path,
                                                                         monkeypatch):
    import json

    from captcha_recognize.cli import predict
    from captcha_recognize.reading import spec
    monkeypatch.setattr(spec, "BASE_CHECKPOINT", tmp_path / "base.pth")  # fake_base's file
    report = tmp_path / "r.json"
    assert predict.main([str(digits_dir), "--checkpoint", "base", "--alphabet", "0123456789", "--length", "4",
                         "--json", str(report)]) == 0
    results = json.loads(report.read_text())["files"]
    assert len(results) == 64 and all(len(r["prediction"]) == 4 and r["prediction"].isdigit() for r in results)
    assert all(r["label"] is not None for r in results)  # the names are scored against the digits
    assert predict.main([str(digits_dir), "--checkpoint", "base", "--alphabet", "0*"]) == 2


def test_the_shipped_base_model_accepts_no_reading_of_a_site(digits_dir, tmp_path, capsys):
    import json

    from captcha_recognize.cli import predict
    report = tmp_path / "r.json"
    assert predict.main([str(digits_dir), "--checkpoint", "base", "--alphabet", "0123456789", "--json",
                         str(report)]) == 0
    results = json.loads(report.read_text())["files"]
    assert len(results) == 64 and not any(r["accept"] for r in results)
    assert "accepts no reading" in capsys.readouterr().err
    assert CaptchaRecognizer("base", min_confidence=0.5).accepts(0.6)  # the user can still choose a threshold


def test_the_base_model_command_leaves_it_accepting_no_reading(tmp_path, monkeypatch, digits_dir):
    import shutil

    from captcha_recognize.cli import base_model
    from captcha_recognize.reading.checkpoint import seal
    trained = fresh_checkpoint(tmp_path / "trained.pth", "crnn", BASE_ALPHABET, 8, Preprocess(128, 32, 1))
    ckpt = load_checkpoint(trained)
    torch.save(seal({**ckpt, "threshold": 0.5}), trained)  # as if calibrated on generated captchas
    out = tmp_path / "base.pth"
    during: list[bool] = []

    def fake_train(cfg):
        shutil.copy(trained, cfg.out)
        during.append(out.exists())
    monkeypatch.setattr(base_model, "train", fake_train)
    assert base_model.main(["--images", str(digits_dir), "--out", str(out)]) == 0
    assert during == [False]  # trained elsewhere: --out is written when it is done, never half-trained
    assert CaptchaRecognizer(out).accepts_nothing


def test_accept_none_keeps_everything_but_the_threshold(tmp_path):
    from captcha_recognize.reading.calibration import accept_none
    path = fresh_checkpoint(tmp_path / "m.pth", "crnn", "0123456789", 4, Preprocess(64, 32, 1))
    before = load_checkpoint(path)
    assert not CaptchaRecognizer(path).accepts_nothing
    accept_none(path)
    after = load_checkpoint(path)  # still sealed: it loads
    assert CaptchaRecognizer(path).accepts_nothing
    assert after["temperature"] == before["temperature"] and after["alphabet"] == before["alphabet"]
    assert all(torch.equal(after["model"][k], v) for k, v in before["model"].items())
