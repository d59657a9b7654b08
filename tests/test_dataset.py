"""Label parsing, the label converter, alphabet inference, bad input, preprocessing, splits."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dataset import (DataError, LabelConverter, Preprocess, auto_size, image_to_array, infer_alphabet, parse_label,
                     preprocess, read_labelled, split_indices)
from synthetic import render_captcha
from training import TrainConfig, make_task


@pytest.mark.parametrize("name,label", [
    ("3568.png", "3568"), ("3568_2.png", "3568"), ("b5pnn.png", "b5pnn"), ("dir/x7Y.jpeg", "x7Y"),
    ("12.34.png", "12"), (".hidden.png", None), ("_1234.png", None), ("screen shot.png", None),
    ("IMG-001.png", None),
])
def test_parse_label(name, label):
    assert parse_label(name) == label


def test_parse_label_with_alphabet():
    assert parse_label("1234.png", "0123456789") == "1234"
    assert parse_label("12a4.png", "0123456789") is None


def test_infer_alphabet_and_length():
    assert infer_alphabet(["b5pnn", "226md"]) == "256bdmnp"


def test_ctc_decode_collapses_repeats_and_drops_blanks():
    conv = LabelConverter("abc", ctc=True)  # blank 0, a 1, b 2, c 3
    steps = [1, 1, 0, 1, 2, 2, 0, 0, 3, 3, 0]  # a a _ a b b _ _ c c _ -> "aabc"
    logits = torch.full((1, len(steps), 4), -10.0)
    logits[0, torch.arange(len(steps)), torch.tensor(steps)] = 10.0
    texts, confs = conv.decode(logits)
    assert texts == ["aabc"]
    assert 0.99 < confs[0] <= 1.0


def test_ctc_encode_concatenates_targets():
    conv = LabelConverter("abc", ctc=True)
    targets, lengths = conv.encode(["ab", "c"])
    assert targets.tolist() == [1, 2, 3] and lengths.tolist() == [2, 1]


def test_cnn_converter_round_trip():
    conv = LabelConverter("0123456789", 4)
    targets, _ = conv.encode(["3568", "0001"])
    logits = torch.nn.functional.one_hot(targets, 10).float() * 5  # (B, P, K)
    assert conv.decode(logits)[0] == ["3568", "0001"]
    assert conv.accepts("1234") and not conv.accepts("123") and not conv.accepts("12a4")


def test_converter_rejects_duplicate_alphabet():
    with pytest.raises(ValueError):
        LabelConverter("aab")


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "LA", "CMYK", "1"])
def test_any_mode_and_size_becomes_model_input(mode):
    img = Image.new("RGB", (120, 40), (200, 30, 30)).convert(mode)
    for channels in (1, 3):
        arr = image_to_array(img, Preprocess(50, 22, channels))
        assert arr.shape == (channels, 22, 50) and arr.dtype == np.uint8


def test_transparent_background_becomes_white():
    img = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    assert image_to_array(img, Preprocess(10, 10, 1)).min() == 255


def test_opaque_and_partly_transparent_rgba():
    rgb = render_captcha("1234", 0, 100, 40)
    spec = Preprocess(50, 22, 3)
    opaque = rgb.convert("RGBA")
    assert np.array_equal(image_to_array(opaque, spec), image_to_array(rgb, spec))
    half = opaque.copy()
    half.putalpha(128)  # half-transparent: composited on white, so brighter than the RGB image
    assert image_to_array(half, spec).astype(int).sum() > image_to_array(rgb, spec).astype(int).sum()


def test_preprocess_accepts_paths_bytes_pil_and_arrays(tmp_path):
    img = render_captcha("1234", 0, 100, 40)
    img.save(tmp_path / "1234.png")
    spec = Preprocess(50, 22, 3)
    a = preprocess([tmp_path / "1234.png"], spec)
    b = preprocess([(tmp_path / "1234.png").read_bytes()], spec)
    c = preprocess([img], spec)
    d = preprocess([np.asarray(img)], spec)
    assert a.shape == (1, 3, 22, 50)
    for other in (b, c, d):
        assert torch.equal(a, other)
    assert a.min() >= -1 and a.max() <= 1


def test_auto_size_scales_tall_images_to_24():
    assert auto_size([(50, 22)] * 3 + [(60, 30)]) == (50, 22)
    assert auto_size([(200, 50)]) == (96, 24)
    assert auto_size([(200, 50)], 32) == (128, 32)


def test_default_input_is_96x24_colour_for_the_cnn_and_128x32_grey_for_the_crnn(tmp_path):
    for label in ("ab12", "cd34"):
        render_captcha(label, 0, 200, 50).save(tmp_path / f"{label}.png")
    data = read_labelled([tmp_path])
    for arch, spec in (("cnn", Preprocess(96, 24, 3)), ("crnn", Preprocess(128, 32, 1))):
        _, got = make_task(TrainConfig(data=[str(tmp_path)], arch=arch), data, None)
        assert got == spec


def write_bad_files(folder):
    (folder / "1111.png").write_bytes(b"")  # zero bytes
    (folder / "2222.png").write_text("not an image at all")  # not an image
    good = folder / "3333.png"
    render_captcha("3333", 1, 100, 40).save(good)
    (folder / "4444.png").write_bytes(good.read_bytes()[:200])  # truncated PNG
    render_captcha("5555", 2, 100, 40).save(folder / "5555_2.png")


def test_bad_files_are_skipped_with_one_warning(tmp_path, capsys):
    write_bad_files(tmp_path)
    data = read_labelled([tmp_path])
    assert sorted(data.labels) == ["3333", "5555"]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "skipped 3 unreadable images" in err[0]
    for name in ("1111.png", "2222.png", "4444.png"):
        assert name in err[0]


def test_unlabelled_files_are_skipped(tmp_path, capsys):
    render_captcha("1234", 0, 100, 40).save(tmp_path / "1234.png")
    render_captcha("1234", 0, 100, 40).save(tmp_path / "photo (1).png")
    data = read_labelled([tmp_path])
    assert data.labels == ["1234"]
    assert "skipped 1 unlabelled file: photo (1).png" in capsys.readouterr().err


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no images"):
        read_labelled([tmp_path])


def test_folder_without_labels_says_what_a_label_looks_like(tmp_path):
    render_captcha("1234", 0, 100, 40).save(tmp_path / "IMG-0001.png")
    with pytest.raises(DataError, match="3568.png"):
        read_labelled([tmp_path])


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        read_labelled([tmp_path / "nope"])


def test_split_is_deterministic_and_disjoint():
    a = split_indices(100, [0.1, 0.2], seed=3)
    assert a == split_indices(100, [0.1, 0.2], seed=3)
    assert a != split_indices(100, [0.1, 0.2], seed=4)
    assert [len(p) for p in a] == [70, 10, 20]
    assert sorted(sum(a, [])) == list(range(100))


def test_render_captcha_is_reproducible():
    a, b = render_captcha("5678", 9, 100, 40), render_captcha("5678", 9, 100, 40)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(render_captcha("5678", 10, 100, 40)))
