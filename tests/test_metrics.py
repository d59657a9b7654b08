"""Scores, edit distance, confusions, the mistakes table, the report and the contact sheet."""
from __future__ import annotations

import pytest
from PIL import Image

from captcha_recognize.reading.report import build_report, caption_font, contact_sheet, format_results
from captcha_recognize.reading.scores import confused_pairs, edit_distance, mistakes_table, score


@pytest.mark.parametrize("a, b, d", [("", "", 0), ("abc", "abc", 0), ("abc", "abd", 1), ("abc", "ab", 1),
                                     ("ab", "ba", 2), ("", "abcd", 4), ("kitten", "sitting", 3)])
def test_edit_distance(a, b, d):
    assert edit_distance(a, b) == d == edit_distance(b, a)


def test_score_counts_positions_characters_and_sequences():
    s = score(["1234", "1235", "123", "9234"], ["1234", "1234", "1234", "1234"])
    assert s["correct"] == 1 and s["sequence_accuracy"] == 0.25
    assert s["position_accuracy"] == [0.75, 1.0, 1.0, 0.5]
    assert s["characters_wrong"] == 3 and s["character_accuracy"] == pytest.approx(1 - 3 / 16)


def test_score_of_a_ctc_reading_that_drops_a_character_is_one_wrong_not_a_shifted_tail():
    s = score(["bcd"], ["abcd"])
    assert s["characters_wrong"] == 1 and s["position_accuracy"] == [0.0, 0.0, 0.0, 0.0]


def test_confused_pairs_are_the_most_frequent_swaps():
    pairs = confused_pairs(["1734", "1784", "7777", "123"], ["1234", "1234", "1777", "34"])
    assert pairs[0] == ("2", "7", 2)
    assert sorted(pairs[1:]) == [("1", "7", 1), ("3", "8", 1)]  # "123" against "34": another length, not counted


def test_mistakes_table_lists_only_the_misread_up_to_the_limit():
    names, labels, preds = ["a.png", "b.png", "c.png"], ["1111", "2222", "3333"], ["1111", "2229", "3339"]
    table = mistakes_table(names, labels, preds, [0.9, 0.5, 0.4], limit=1)
    assert table.splitlines()[1].split("|")[-1].strip() == "b.png" and len(table.splitlines()) == 2
    assert mistakes_table(names, labels, labels, [1.0] * 3) == "no mistakes"


def test_report_scores_only_the_labelled_files():
    results = [{"path": "1234.png", "prediction": "1234", "confidence": 0.9, "accept": True, "label": "1234",
                "correct": True},
               {"path": "1111.png", "prediction": "1117", "confidence": 0.4, "accept": False, "label": "1111",
                "correct": False},
               {"path": "2222.png", "prediction": "2227", "confidence": 0.7, "accept": True, "label": "2222",
                "correct": False},
               {"path": "x.png", "prediction": "5555", "confidence": 0.8, "accept": True, "label": None,
                "correct": None}]
    s = build_report(results)["summary"]
    assert s["n"] == 4 and s["labelled"] == 3 and s["sequence_accuracy"] == pytest.approx(1 / 3)
    assert s["characters_wrong"] == 2
    assert s["accepted"] == 3 and s["accepted_accuracy"] == 0.5  # 1234 right and 2222 wrong were accepted
    text = format_results(results)
    assert "WRONG (label 1111)" in text and "3 of 4 file names are labels" in text and "1->7 x1" in text
    assert "accepted 3 of 4 readings" in text and "accepted and labelled: 1 of 2 right (50.0%)" in text
    rows = {line.split()[0]: line.split() for line in text.splitlines()[1:5]}
    assert rows["1111.png"][3] == "no" and rows["1234.png"][3] == "yes"


def test_contact_sheet_has_one_tile_per_image(tmp_path):
    img = Image.new("RGB", (100, 40), "white")
    contact_sheet([(img, "1234", "1284", 0.5)] * 8, tmp_path / "s.png", columns=6)
    with Image.open(tmp_path / "s.png") as sheet:
        assert sheet.size == (6 * 168, 2 * 72)  # 6 columns, 2 rows of 50-pixel tiles with captions


def test_contact_sheet_tiles_are_as_wide_as_their_captions(tmp_path):
    caption = "3a4ey3uxyz -> 3a4ey3vxyz (1.00)"  # wider than its 60-pixel image and than 160 pixels
    contact_sheet([(Image.new("RGB", (60, 50), "white"), "3a4ey3uxyz", "3a4ey3vxyz", 1.0)] * 2, tmp_path / "s.png")
    with Image.open(tmp_path / "s.png") as sheet:
        tile_w = sheet.width // 2
        assert tile_w >= 4 + caption_font().getlength(caption) > 164
        strip = sheet.convert("RGB").crop((0, 54, sheet.width, 72))  # the captions' row
        red = [x for x in range(strip.width) for y in range(strip.height) if strip.getpixel((x, y))[1] < 100]
        assert max(x for x in red if x < tile_w) < tile_w - 2  # the first caption ends inside its own tile


def test_contact_sheet_is_a_png_whatever_the_name_says(tmp_path):
    contact_sheet([(Image.new("RGB", (100, 40), "white"), "1234", "1284", 0.5)], tmp_path / "errors.txt")
    with Image.open(tmp_path / "errors.txt") as sheet:
        assert sheet.format == "PNG"
    assert [p.name for p in tmp_path.iterdir()] == ["errors.txt"]  # no temporary file left


def test_contact_sheet_captions_show_cyrillic_labels(tmp_path):
    img = Image.new("RGB", (100, 40), "white")
    sheets = []
    for label in ("282бб", "282дд"):  # a font without Cyrillic draws both as the same empty boxes
        contact_sheet([(img, label, label, 0.5)], tmp_path / "s.png")
        with Image.open(tmp_path / "s.png") as sheet:
            sheets.append(sheet.crop((0, 52, 168, 72)).tobytes())  # the caption strip
    assert sheets[0] != sheets[1]
