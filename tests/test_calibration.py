"""Calibration: temperature fitting, the accept threshold, ECE, and the calibration a checkpoint
and an export carry to every reader."""
from __future__ import annotations

import pytest
import torch

from captcha_recognize.reading.calibration import (ACCEPT_NONE, Calibration, accept_threshold, calibrate,
                                                   expected_calibration_error, fit_temperature, held_out_report,
                                                   min_evidence, precision_floor, vouched)
from captcha_recognize.reading.spec import ModelSpec
from captcha_recognize.reading.checkpoint import atomic_save, load_checkpoint, seal
from conftest import run_script
from captcha_recognize.data.codec import LabelConverter
from captcha_recognize.data.folders import list_images
from captcha_recognize.data.arrays import preprocess
from captcha_recognize.reading.recognizer import CaptchaRecognizer


def synthetic_readings(true_t: float, n: int = 3000, seed: int = 0) -> tuple[torch.Tensor, list[str], LabelConverter]:
    """CNN logits ``(n, 4, 10)`` whose labels are drawn from ``softmax(logits / true_t)``: the
    sequence confidence at ``true_t`` is then exactly the chance that the reading is right."""
    g = torch.Generator().manual_seed(seed)
    conv = LabelConverter("0123456789", 4)
    logits = torch.randn(n, 4, 10, generator=g, dtype=torch.float64) * 3.0  # (N, P, K)
    draws = torch.multinomial((logits / true_t).softmax(-1).view(-1, 10), 1, generator=g).view(n, 4)
    labels = ["".join(conv.alphabet[k] for k in row) for row in draws.tolist()]
    return logits, labels, conv


@pytest.mark.parametrize("true_t", [0.5, 2.0])
def test_fitted_temperature_is_the_one_the_answers_follow(true_t):
    logits, labels, conv = synthetic_readings(true_t)
    cal = calibrate(logits, labels, conv)
    assert cal.temperature == pytest.approx(true_t, rel=0.1)
    assert cal.ece_before > 0.05 and cal.ece_after < 0.03  # over- (T 2) or underconfident (T 0.5) at first
    texts, confs = conv.decode(logits, cal.temperature)
    assert texts == conv.decode(logits)[0]  # the temperature changes confidences, never texts


def test_decode_confidence_is_the_product_at_the_temperature():
    logits = torch.tensor([[[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]]])  # (1, 2 positions, 3 classes)
    conv = LabelConverter("abc", 2)
    for t in (1.0, 0.5, 3.0):
        texts, confs = conv.decode(logits, t)
        assert texts == ["ab"]
        assert confs[0] == pytest.approx(((logits / t).softmax(-1).max(-1).values.prod()).item(), rel=1e-6)


def test_ece_of_known_cases():
    assert expected_calibration_error([0.9] * 10, [True] * 9 + [False]) == pytest.approx(0.0)
    assert expected_calibration_error([1.0] * 4, [True, False, True, False]) == pytest.approx(0.5)
    # two bins: 0.25 with 1 of 2 right (gap 0.25), 0.95 with 2 of 2 right (gap 0.05)
    assert expected_calibration_error([0.25, 0.25, 0.95, 0.95], [True, False, True, True]) == pytest.approx(0.15)
    # bins weighted by their answers: 1 at 0.25 with none right, 3 at 0.95 with 2 right
    assert expected_calibration_error([0.25, 0.95, 0.95, 0.95], [False, True, True, False]) == \
        pytest.approx((0.25 + 3 * (0.95 - 2 / 3)) / 4)
    assert expected_calibration_error([], []) == 0.0


def descending(n: int) -> list[float]:
    return [1.0 - i / 1000 for i in range(n)]  # n distinct confidences, most confident first


def test_too_few_validation_answers_accept_nothing_and_say_so():
    assert min_evidence() == 45  # 0.95 ** 45 < 0.1 <= 0.95 ** 44: fewer, all right, are no surprise at 95% right
    assert min_evidence(0.9) == 22  # a lower target asks for less: 0.9 ** 22 < 0.1
    assert accept_threshold([0.9, 0.8, 0.7], [True, False, True], 1.0) == ACCEPT_NONE  # no error is typical at 100%
    assert accept_threshold(descending(44), [True] * 44) == ACCEPT_NONE > 1.0
    assert accept_threshold(descending(45), [True] * 45) == descending(45)[-1]
    cal = Calibration(n=20, right=20, temperature=0.5, threshold=ACCEPT_NONE, target_precision=0.995,
                      ece_before=0.0, ece_after=0.0, accepted=0, accepted_right=0)
    assert "nothing is accepted: 20 right validation answers cannot vouch for any confidence (it takes 45" \
        in cal.describe()


def test_the_threshold_stops_above_errors_the_target_precision_would_not_make():
    # 60 right, then 40 wrong at the bottom: one error more already shows too few right (0.18 > 0.1 odds)
    assert accept_threshold(descending(100), [True] * 60 + [False] * 40) == descending(100)[59]
    # of 160 answers a reader 99.5% right gets one or more wrong more often than not (0.55), two or more not (0.19)
    assert vouched(160, 1) and not vouched(160, 2)
    # one confident error among 300 is what 99.5% right makes: everything is accepted
    assert vouched(300, 1) and accept_threshold(descending(300), [False] + [True] * 299) == descending(300)[-1]
    # two among the 100 most confident are not (P(>= 2 errors of 100 at 0.5%) = 0.09): nothing is
    assert not vouched(100, 2) and accept_threshold(descending(100), [False, False] + [True] * 98) == ACCEPT_NONE
    # five among 300 show better than 95% right, but are more than 99.5% right typically makes (P = 0.02)
    assert not vouched(300, 5) and accept_threshold(descending(300), [False] * 5 + [True] * 295) == ACCEPT_NONE


def test_threshold_keeps_equal_confidences_together():
    confs = descending(50) + [0.9, 0.9, 0.9]
    # the right answer at 0.9 comes with the two wrong ones, which would be too many errors for 99.5% right
    assert accept_threshold(confs, [True] * 51 + [False, False]) == descending(50)[-1]
    assert accept_threshold(confs, [True] * 53) == 0.9


def test_the_accepted_answers_share_right_comes_with_how_low_it_may_be_on_new_images():
    assert precision_floor(25, 25) == pytest.approx(25 / (25 + 1.645 ** 2))  # Wilson's bound when all are right
    assert precision_floor(24, 25) < precision_floor(25, 25) < precision_floor(290, 290) < 1
    assert precision_floor(0, 5) == precision_floor(0, 0) == 0.0
    cal = Calibration(n=40, right=38, temperature=1.0, threshold=0.9, target_precision=0.995, ece_before=0.0,
                      ece_after=0.0, accepted=25, accepted_right=25)
    assert "(25 of 40 answers, 100.0% right; on new images 95% sure of at least 90.2%)" in cal.describe()


def test_all_right_sets_the_mean_confidence_to_the_estimated_accuracy_and_enough_accept_everything():
    logits = torch.tensor([[[5.0, 0.0]], [[0.0, 3.0]]])  # (2, 1, 2): read "a", "b"
    conv = LabelConverter("ab", 1)
    cal = calibrate(logits, ["a", "b"], conv)
    _, confs = conv.decode(logits, cal.temperature)
    assert sum(confs) / 2 == pytest.approx(3 / 4, abs=1e-6)  # (n + 1) / (n + 2), from raw 0.99 and 0.95
    assert cal.threshold == ACCEPT_NONE and cal.accepted == 0  # two answers vouch for nothing
    assert "all answers right: the mean confidence is set to 75.0%" in cal.describe()
    many = torch.tensor([[[1.0, 0.0]]] * 98)  # (98, 1, 2): a smoothed model, 73% sure of right answers
    t = fit_temperature(many, [True] * 98, conv)
    assert t < 1 and conv.decode(many, t)[1][0] == pytest.approx(99 / 100, abs=1e-6)
    varied = torch.linspace(0.5, 3.0, 60).reshape(60, 1, 1) * torch.tensor([1.0, 0.0])  # (60, 1, 2): all "a"
    cal = calibrate(varied, ["a"] * 60, conv)
    assert cal.accepted == cal.accepted_right == 60 and cal.threshold == pytest.approx(
        min(conv.decode(varied, cal.temperature)[1]), abs=1e-9)
    assert fit_temperature(logits, [False, False], conv) == 1.0


def test_held_out_report_counts_the_accepted():
    r = held_out_report([0.9, 0.8, 0.3, 0.2], [0.95, 0.85, 0.4, 0.1], [True, True, False, True], threshold=0.5)
    assert r["accepted_share"] == 0.5 and r["accepted_accuracy"] == 1.0
    assert held_out_report([0.5], [0.5], [True], threshold=None)["accepted_share"] == 1.0
    assert held_out_report([0.5], [0.5], [True], threshold=ACCEPT_NONE)["accepted_accuracy"] is None


def calibrated(fresh_ckpt, tmp_path, temperature: float, threshold: float | None):
    """A copy of ``fresh_ckpt`` carrying the given calibration, as training stores it."""
    out = tmp_path / "cal.pth"
    atomic_save(seal({**load_checkpoint(fresh_ckpt), "temperature": temperature, "threshold": threshold}), out)
    return out


def test_every_reader_reports_the_calibrated_confidence(fresh_ckpt, digits_dir, tmp_path):
    files = list_images([digits_dir])[:8]
    raw = CaptchaRecognizer(fresh_ckpt)
    assert raw.temperature == 1.0 and raw.threshold is None  # written without calibration: old files load so
    logits = raw.logits(preprocess(files, raw.preprocess))  # (8, P, K)
    _, at_t = raw.converter.decode(logits, 0.25)
    threshold = sorted(at_t)[4]
    rec = CaptchaRecognizer(calibrated(fresh_ckpt, tmp_path, 0.25, threshold))
    details = rec.predict_batch_details(files)
    assert [d.confidence for d in details] == pytest.approx(at_t, rel=1e-5)
    assert [d.accept for d in details] == [c >= threshold for c in at_t] and 0 < sum(d.accept for d in details) < 8
    assert rec.predict(files[0]) == (details[0].text, details[0].confidence)  # the old API, calibrated too
    assert [d.text for d in details] == [t for t, _ in raw.predict_batch(files)]
    override = CaptchaRecognizer(rec.path, min_confidence=0.0)
    assert all(d.accept for d in override.predict_batch_details(files))


def test_export_carries_the_calibration(fresh_ckpt, digits_dir, tmp_path):
    from captcha_recognize.reading.export import export_onnx
    ckpt = calibrated(fresh_ckpt, tmp_path, 0.5, 0.01)
    onnx = CaptchaRecognizer(export_onnx(ckpt, tmp_path / "cal.onnx"))
    assert (onnx.temperature, onnx.threshold) == (0.5, 0.01)
    files = list_images([digits_dir])[:4]
    assert [c for _, c in onnx.predict_batch(files)] == pytest.approx(
        [c for _, c in CaptchaRecognizer(ckpt).predict_batch(files)], rel=1e-4)


def test_spec_without_calibration_fields_loads_uncalibrated():
    old = {"arch": "cnn", "alphabet": "01", "label_length": 2, "preprocess": {"width": 8, "height": 8, "channels": 1}}
    spec = ModelSpec.from_meta(old)
    assert (spec.temperature, spec.threshold) == (1.0, None)
    assert ModelSpec.from_meta(spec.to_meta()) == spec
    assert ModelSpec.from_meta({**old, "temperature": 0.7, "threshold": 0.9}).to_meta()["threshold"] == 0.9


@pytest.mark.slow
def test_predict_cli_reports_accept_and_min_confidence_overrides(fresh_ckpt, digits_dir, tmp_path):
    import json
    ckpt = calibrated(fresh_ckpt, tmp_path, 0.25, 2.0)  # a threshold above any confidence: nothing accepted
    r = run_script("torch_model_predict.py", str(digits_dir), "--checkpoint", str(ckpt), "--json", "-")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["summary"]["accepted"] == 0 and report["summary"]["threshold"] == 2.0
    assert all(f["accept"] is False for f in report["files"]) and "accepted 0 of 64 readings" in r.stderr
    r = run_script("torch_model_predict.py", str(digits_dir), "--checkpoint", str(ckpt), "--json", "-",
                   "--min-confidence", "0")
    assert json.loads(r.stdout)["summary"]["accepted"] == 64
    r = run_script("torch_model_predict.py", "--min-confidence", "1.5")
    assert r.returncode == 2 and "--min-confidence" in r.stderr


@pytest.mark.slow
def test_training_stores_the_calibration_of_its_best_model(calibrated_ckpt):
    ckpt = load_checkpoint(calibrated_ckpt)
    cal = ckpt["calibration"]
    assert 0 < cal["right"] < cal["n"] == 128  # half of 256: mistakes and right answers to fit on
    assert ckpt["temperature"] == cal["temperature"] != 1.0 and ckpt["threshold"] == cal["threshold"] <= 1.0
    assert cal["ece_after"] < cal["ece_before"]
    assert 0 < cal["accepted"] and vouched(cal["accepted"], cal["accepted"] - cal["accepted_right"])
    rec = CaptchaRecognizer(calibrated_ckpt)
    assert (rec.temperature, rec.threshold) == (ckpt["temperature"], ckpt["threshold"])


@pytest.mark.slow
def test_training_without_validation_says_it_is_not_calibrated(digits_dir, tmp_path):
    out = tmp_path / "noval.pth"
    r = run_script("torch_model_train.py", "--data", str(digits_dir), "--epochs", "1", "--val-split", "0",
                   "--out", str(out), "--plot", "none")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "no validation images, so the confidence is not calibrated (temperature 1)" in r.stdout
    ckpt = load_checkpoint(out)
    assert ckpt["temperature"] == 1.0 and ckpt["threshold"] is None and "calibration" not in ckpt
