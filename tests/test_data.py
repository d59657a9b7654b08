"""Label parsing, alphabet inference, bad input, preprocessing and augmentation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dataset import (Augment, DataError, LabelConverter, Preprocess, augment, auto_size,
                     column_spread, evenly_spaced, image_to_array, infer_alphabet, normalize, parse_label,
                     STROKES, preprocess, read_labelled, render_captcha, splice, split_indices, text_span)
from torch_model_train import default_splice, make_task, parse_args


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
        _, got = make_task(parse_args(["--data", str(tmp_path), "--arch", arch]), data, None)
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


def test_augment_keeps_shape_and_range_and_changes_pixels():
    x = normalize(torch.randint(0, 256, (8, 3, 22, 50), dtype=torch.uint8))
    y = augment(x, Augment(), torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1
    assert not torch.allclose(x, y)
    z = augment(x, Augment(), torch.Generator().manual_seed(0))
    assert torch.equal(y, z)  # reproducible from the generator
    still = augment(x, Augment(0, 0, 0, 0, 0, 0, 0, 0), torch.Generator().manual_seed(0))
    assert torch.allclose(still, x, atol=1e-5)  # all strengths 0: identity


def stroke_marks(**stroke: float) -> torch.Tensor:
    """Pixels ``(N, H, W)`` that strokes alone (every other strength 0) drew on blank images."""
    x = torch.zeros(64, 3, 22, 50)
    y = augment(x, Augment(0, 0, 0, 0, 0, 0, 0, lines=1.0, **stroke), torch.Generator().manual_seed(0))
    return (y != 0).any(1)


def off_line(marks: torch.Tensor) -> float:
    """Mean distance in rows of the marked pixels from each image's least-squares line."""
    out = []
    for m in marks:
        rows, cols = m.nonzero(as_tuple=True)
        if len(rows) >= 10:
            a = torch.stack([cols.float(), torch.ones(len(cols))], 1)  # (n, 2)
            fit = torch.linalg.lstsq(a, rows.float().unsqueeze(1)).solution
            out.append((a @ fit).squeeze(1).sub(rows).abs().mean())
    return float(torch.stack(out).mean())


def test_strokes_count_width_and_arcs():
    one = stroke_marks().sum().item()
    assert stroke_marks(strokes=2).sum().item() > 1.6 * one
    assert stroke_marks(width=2.0).sum().item() > 1.3 * one
    assert off_line(stroke_marks(arcs=1.0)) > 3 * off_line(stroke_marks())


def test_strokes_flag_picks_the_stroke_augmentation():
    def drawn(*argv: str) -> int:
        aug = STROKES[parse_args(["--data", "x", *argv]).strokes]
        return int(stroke_marks(**{k: getattr(aug, k) for k in ("strokes", "arcs", "width")}).sum())
    line, arcs = drawn("--strokes", "line"), drawn("--strokes", "arcs")
    assert arcs > 2 * line
    curved = lambda name: off_line(stroke_marks(arcs=STROKES[name].arcs))  # noqa: E731  one stroke each
    assert curved("arcs") > 3 * curved("line")  # "arcs" bends some strokes, "line" none
    assert drawn() == arcs and drawn("--arch", "crnn") == arcs  # the default for both families
    assert drawn("--arch", "crnn", "--strokes", "line") == line


@pytest.mark.parametrize("argv, strokes", [(["--strokes", "line"], "line"), (["--arch", "crnn"], "arcs")])
def test_training_draws_the_strokes_it_was_given(digits_dir, tmp_path, monkeypatch, argv, strokes):
    import torch_model_train
    seen = []
    monkeypatch.setattr(torch_model_train, "augment", lambda x, aug, gen: seen.append(aug) or x)
    torch_model_train.train(parse_args(["--data", str(digits_dir), "--epochs", "1", *argv,
                                        "--plot", "none", "--out", str(tmp_path / "m.pth")]))
    assert seen and all(a == STROKES[strokes] for a in seen)


def test_splice_moves_pixels_and_label_suffix_together():
    b, w, n = 8, 40, 4
    x = torch.arange(b, dtype=torch.float).view(b, 1, 1, 1).expand(b, 1, 3, w).contiguous()  # image i is all i
    labels = [str(i) * n for i in range(b)]
    out, new = splice(x, labels, 1.0, span=(0.0, float(w)), gen=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and len(new) == b
    for img, label, old in zip(out, new, labels):
        assert label[0] == old[0]  # the first character always stays
        for j, ch in enumerate(label):  # character j's 10 columns come from the image it names
            assert img[0, :, j * 10:(j + 1) * 10].eq(int(ch)).all()
    assert new != labels


def test_splice_leaves_mixed_lengths_and_p0_alone():
    x = torch.rand(3, 1, 4, 20)
    for labels, p in ((["ab", "abc", "abcd"], 1.0), (["abc", "def", "ghi"], 0.0)):
        out, new = splice(x, labels, p, gen=torch.Generator().manual_seed(0))
        assert torch.equal(out, x) and new == labels


def test_text_span_finds_the_varying_columns():
    g = torch.Generator().manual_seed(0)
    arrays = torch.randint(190, 211, (50, 1, 8, 40), generator=g, dtype=torch.uint8)  # margins: faint noise
    arrays[:, :, :, 10:30] = torch.randint(0, 256, (50, 1, 8, 20), generator=g)  # text: varies a lot
    assert text_span(column_spread(arrays)) == (10.0, 30.0)


def test_text_span_leaves_out_noisy_margins_beside_a_blank_edge():
    # a blank edge column and margins varying a little over half as much as the text
    spread = torch.tensor([0.0] + [35.0] * 4 + [60.0] * 30 + [35.0] * 4 + [0.0])
    assert text_span(spread) == (5.0, 35.0)


def glyph_rows(n: int, offsets: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """``n`` grey images ``(n, 1, 8, 60)``: 4 random 10-column glyphs 2 columns apart from ``offsets``."""
    x = torch.full((n, 1, 8, 60), 200, dtype=torch.uint8)
    for i in range(n):
        for k in range(4):
            c = int(offsets[i]) + 12 * k
            x[i, :, :, c:c + 10] = torch.randint(0, 256, (1, 8, 10), generator=g)
    return x


def fixed_and_moving() -> tuple[torch.Tensor, torch.Tensor]:
    """90 fixed-pitch images (every glyph at the same place) and 90 whose text shifts per image."""
    g = torch.Generator().manual_seed(0)
    fixed = glyph_rows(90, torch.full((90,), 6), g)
    return fixed, glyph_rows(90, torch.randint(0, 13, (90,), generator=g), g)


def test_evenly_spaced_tells_fixed_pitch_from_shifting_text():
    fixed, moving = fixed_and_moving()
    for arrays, expected in ((fixed, True), (moving, False)):
        spread = column_spread(arrays)
        assert evenly_spaced(spread, text_span(spread), 4) is expected
    assert not evenly_spaced(column_spread(fixed), (6.0, 52.0), 1)  # nothing to cut


def test_the_crnn_splices_fixed_pitch_text_only():
    fixed, moving = fixed_and_moving()

    def choice(arch: str, arrays: torch.Tensor, labels: list[str]) -> float:
        spread = column_spread(arrays)
        return default_splice(arch, spread, text_span(spread), labels)
    assert choice("crnn", fixed, ["1234"] * 90) == 0.5
    assert choice("crnn", moving, ["1234"] * 90) == 0.0
    assert choice("crnn", fixed, ["1234"] * 89 + ["12"]) == 0.0  # mixed lengths: splice cannot pair them
    assert choice("cnn", moving, ["1234"] * 90) == 0.5


def test_render_captcha_is_reproducible():
    a, b = render_captcha("5678", 9, 100, 40), render_captcha("5678", 9, 100, 40)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(render_captcha("5678", 10, 100, 40)))
