"""Arithmetic captchas: the value of a reading, or no value and why, from Python and the command line."""
from __future__ import annotations

import csv
import json

import pytest

from captcha_recognize import CaptchaRecognizer, answer
from captcha_recognize.cli import predict
from captcha_recognize.reading.answer import Answer


@pytest.mark.parametrize("text, value", [
    ("12+3=?", 15), ("8-5=", 3), ("10x6=", 60), ("10X6", 60), ("3*4", 12), ("8/2=", 4), ("7/2", 3.5), ("9÷3=?", 3),
    ("2+3x4", 14), ("2x3+4", 10), ("1+2-3", 0), ("5-8=", -3), ("12 + 3 = ?", 15), ("6/4x2", 3),
])
def test_an_arithmetic_reading_has_its_value(text, value):
    got = answer(text)
    assert got == Answer(value) and type(got.value) is type(value)


@pytest.mark.parametrize("text, why", [
    ("0059", "is not numbers joined by"), ("12+", "is not numbers joined by"), ("+3", "is not numbers joined by"),
    ("12++3", "is not numbers joined by"), ("ab+1", "is not an arithmetic expression"),
    ("8/0=", "division by zero"), ("", "is not an arithmetic expression"), ("1=2+3", "is not an arithmetic expression"),
])
def test_anything_else_has_no_value_and_says_why(text, why):
    got = answer(text)
    assert got.value is None and why in got.why and str(got).startswith("none (")


def test_predictions_carry_the_answer_only_when_asked(fresh_ckpt, digits_dir):
    rec = CaptchaRecognizer(fresh_ckpt)
    f = sorted(digits_dir.iterdir())[0]
    plain, asked = rec.predict_details(f), rec.predict_details(f, answer=True)
    assert plain.answer is None and (asked.text, asked.confidence) == (plain.text, plain.confidence)
    assert asked.answer == answer(asked.text) and asked.answer.value is None  # digits only: no operator


def test_predict_answer_adds_a_column_and_fields(fresh_ckpt, digits_dir, tmp_path, capsys):
    files = [str(p) for p in sorted(digits_dir.iterdir())[:3]]
    assert predict.main([*files, "--checkpoint", str(fresh_ckpt), "--answer", "--json", str(tmp_path / "r.json"),
                         "--csv", str(tmp_path / "r.csv")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[-1] == "answer" and "none (" in out[1]
    rows = json.loads((tmp_path / "r.json").read_text())["files"]
    assert all(r["answer"] is None and "not numbers joined" in r["answer_error"] for r in rows)
    table = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert [r["answer_error"] for r in table] == [r["answer_error"] for r in rows]
    assert predict.main([*files, "--checkpoint", str(fresh_ckpt), "--json", str(tmp_path / "s.json")]) == 0
    assert "answer" not in json.loads((tmp_path / "s.json").read_text())["files"][0]
