"""Label parsing, the label converter, alphabet inference, bad input, preprocessing, splits."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from PIL import Image

from captcha_recognize.reading.spec import ModelSpec
from captcha_recognize.errors import DataError
from captcha_recognize.data.codec import LabelConverter, ctc_path_of_length
from captcha_recognize.data.folders import LabelledImages, read_labelled, split_indices
from captcha_recognize.data.preprocess import Preprocess, auto_size, find_ink, image_to_array
from captcha_recognize.data.labels import infer_alphabet, parse_label
from captcha_recognize.data.arrays import preprocess
from captcha_recognize.data.synthetic import render_captcha
from captcha_recognize.training import TrainConfig
from captcha_recognize.training.task import make_task


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


def one_hot_steps(steps: list[int], k: int, high: float = 10.0) -> torch.Tensor:
    """Logits ``(1, T, k)`` that pick ``steps[t]`` at step t."""
    logits = torch.full((1, len(steps), k), -high)
    logits[0, torch.arange(len(steps)), torch.tensor(steps)] = high
    return logits


def test_fixed_length_ctc_reads_a_doubled_letter_the_greedy_decode_merges():
    free, fixed = LabelConverter("abc", 3, ctc=True), LabelConverter("abc", 3, ctc=True, fixed=True)
    logits = one_hot_steps([1, 1, 1, 0, 2, 0], 4, high=2.0)  # a a a _ b _: greedy "ab"
    logits[0, 1, 0] = 1.5  # the blank between the two a's is the runner-up at step 1
    assert free.decode(logits)[0] == ["ab"]
    texts, confs = fixed.decode(logits)
    assert texts == ["aab"] and confs[0] < free.decode(logits)[1][0]  # a less likely path, a lower confidence
    right = one_hot_steps([1, 0, 1, 0, 2, 2], 4)  # greedy already reads 3 characters: unchanged
    assert fixed.decode(right) == free.decode(right)
    assert fixed.fixed_length == 3 and free.fixed_length is None and not fixed.accepts("ab")


def test_fixed_length_ctc_path_is_the_most_probable_of_that_length():
    conv = LabelConverter("ab", 2, ctc=True, fixed=True)
    gen = torch.Generator().manual_seed(0)
    log_p = (2 * torch.randn(40, 5, 3, generator=gen)).log_softmax(-1)  # (B, T, K)
    paths = torch.tensor(list(itertools.product(range(3), repeat=5)))  # (3^5, T): every alignment
    lengths = torch.tensor([len(kept) for kept in conv.collapse(paths)])
    scores = log_p[:, torch.arange(5), paths].sum(-1)  # (B, 3^5)
    best = scores.masked_fill(lengths != 2, float("-inf")).max(-1).values  # (B,)
    got = torch.from_numpy(ctc_path_of_length(log_p.numpy(), 2, log_p.argmax(-1).numpy()))
    assert [len(kept) for kept in conv.collapse(got)] == [2] * 40
    assert torch.allclose(log_p.gather(-1, got.unsqueeze(-1)).squeeze(-1).sum(-1), best)
    short = ctc_path_of_length(log_p[:1, :2].numpy(), 3, log_p[:1, :2].argmax(-1).numpy())  # 2 steps hold no 3
    assert torch.equal(torch.from_numpy(short), log_p[:1, :2].argmax(-1))


def test_a_crnn_reads_the_one_length_its_labels_have(tmp_path):
    for label in ("ab12", "cd34", "ef5"):
        render_captcha(label, 0, 120, 40).save(tmp_path / f"{label}.png")
    data = read_labelled([tmp_path])
    mixed, _ = make_task(TrainConfig(arch="crnn"), data, None)
    one = LabelledImages(data.images[:2], data.labels[:2], data.paths[:2])
    fixed, _ = make_task(TrainConfig(arch="crnn"), one, None)
    assert (mixed.fixed, mixed.fixed_length) == (False, None) and (fixed.fixed, fixed.fixed_length) == (True, 4)


def test_ctc_encode_concatenates_targets():
    conv = LabelConverter("abc", ctc=True)
    targets, lengths = conv.encode(["ab", "c"])
    assert targets.tolist() == [1, 2, 3] and lengths.tolist() == [2, 1]


def test_cnn_converter_round_trip():
    conv = LabelConverter("0123456789", 4)
    targets, _ = conv.encode(["3568", "0001"])
    logits = torch.nn.functional.one_hot(torch.from_numpy(targets), 10).float() * 5  # (B, P, K)
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


def test_auto_size_scales_tiny_images_up_to_what_the_models_read():
    assert auto_size([(10, 5)]) == (32, 16)
    assert auto_size([(12, 20)]) == (16, 20)
    assert auto_size([(400, 20)], 32) == (400, 20)


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


def arithmetic_folder(folder, texts):
    folder.mkdir()
    for i, t in enumerate(texts):
        render_captcha(t, i, 100, 40).save(folder / f"{t}_{i}.png")
    return folder


def test_symbols_that_recur_in_most_names_join_the_labels_and_training_says_which(tmp_path, capsys):
    texts = ["3+4=", "12-5=", "8x6=", "9+1=", "7-2=", "5+5=", "6x3=", "4-1="]
    data = read_labelled([arithmetic_folder(tmp_path / "math", texts)])
    assert sorted(data.labels) == sorted(texts)
    err = capsys.readouterr().err
    assert "labels: '+', '-', '=' recur in 8 of the 8 file names and are read as characters of the labels" in err
    assert "unlabelled" not in err


def test_a_few_names_with_symbols_among_labels_stay_unlabelled(tmp_path, capsys):
    texts = [f"{i:04d}" for i in range(20)] + ["copy (1)", "copy (2)", "copy (3)"]
    data = read_labelled([arithmetic_folder(tmp_path / "mixed", texts)])
    assert len(data.labels) == 20 and all(t.isdigit() for t in data.labels)  # 3 of 23 names: no label text
    assert "skipped 3 unlabelled files" in capsys.readouterr().err


@pytest.mark.parametrize("alphabet, hint", [
    (None, "the names hold '+', '-': if they are part of the captchas' text, give every character with "
           "--alphabet +-1345"),
    ("0123456789", "the names hold '+', '-', which --alphabet '0123456789' lacks"),
])
def test_no_name_a_label_names_the_alphabet_to_give(tmp_path, alphabet, hint):
    folder = arithmetic_folder(tmp_path / "two", ["3+4", "5-1"])  # too few to recur: no label text
    with pytest.raises(DataError, match="none of the 2 file names") as e:
        read_labelled([folder], alphabet)
    assert str(e.value).endswith(hint)


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


# ------------------------------------------------------------------ every image mode, odd inputs

def grey_captcha() -> Image.Image:
    return render_captcha("0059", 3, 100, 40).convert("L")


def as_mode(base: Image.Image, mode: str) -> tuple[Image.Image, Image.Image]:
    """``base`` (greyscale) stored in ``mode``, and the RGB image holding the same pixels."""
    arr = np.asarray(base)
    if mode in ("I;16", "I"):
        wide = arr.astype(np.uint16 if mode == "I;16" else np.int32) * 257  # the 16-bit range
        img = Image.fromarray(wide.astype(np.uint16)) if mode == "I;16" else Image.fromarray(wide, "I")
        return img, base.convert("RGB")
    if mode == "F":
        return Image.fromarray(arr.astype(np.float32) / 255, "F"), base.convert("RGB")
    if mode == "1":
        img = base.convert("1")
        return img, img.convert("RGB")
    if mode in ("LA", "PA", "RGBA"):
        img = base.convert(mode.replace("PA", "P").replace("LA", "L").replace("RGBA", "RGB"))
        img = img.convert(mode) if mode != "PA" else img.convert("PA")
        return img, base.convert("RGB")
    return base.convert(mode), base.convert("RGB")


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "I", "I;16", "F"])
@pytest.mark.parametrize("channels", [1, 3])
def test_every_mode_reads_like_the_same_image_in_rgb(mode, channels, tmp_path):
    img, rgb = as_mode(grey_captcha(), mode)
    assert img.mode == mode
    spec = Preprocess(50, 22, channels)
    got, want = image_to_array(img, spec).astype(int), image_to_array(rgb, spec).astype(int)
    assert np.abs(got - want).max() <= 1, mode  # CMYK and palettes may round by one level


def test_a_16_bit_png_file_keeps_its_range(tmp_path):
    base = grey_captcha()
    wide = Image.fromarray(np.asarray(base).astype(np.uint16) * 257)
    wide.save(tmp_path / "0059.png")
    with Image.open(tmp_path / "0059.png") as check:
        assert check.mode.startswith("I")  # stored as 16-bit
    spec = Preprocess(50, 22, 3)
    assert (preprocess([tmp_path / "0059.png"], spec) - preprocess([base.convert("RGB")], spec)).abs().max() < 0.01


@pytest.mark.parametrize("make", [
    lambda a: a.astype(np.float32) / 255,  # floats in 0..1
    lambda a: a.astype(np.float64),  # floats in 0..255
    lambda a: a.astype(np.uint16) * 257,  # 16-bit
    lambda a: np.stack([a] * 3, 0),  # (C, H, W)
    lambda a: a[..., None],  # (H, W, 1)
])
def test_arrays_of_any_type_and_layout_read_like_uint8(make):
    base = np.asarray(grey_captcha())
    spec = Preprocess(50, 22, 1)
    assert (preprocess([make(base)], spec) - preprocess([base], spec)).abs().max() < 0.01


@pytest.mark.parametrize("bad", [np.zeros((0, 0), np.uint8), np.zeros(10, np.uint8), np.zeros((5, 5, 2), np.uint8)])
def test_arrays_that_are_no_image_are_a_clear_value_error(bad):
    with pytest.raises(ValueError, match="image array must be"):
        preprocess([bad], Preprocess(50, 22, 1))


# ------------------------------------------------------------------------- Unicode labels, rules

@pytest.mark.parametrize("name, label", [("228ж7.jpg", "228ж7"), ("验证码.png", "验证码"), ("ΑβΓ9_2.png", "ΑβΓ9"),
                                         ("и\u0306ка.png", "йка")])  # the last as macOS writes it (NFD)
def test_labels_are_any_unicode_letters_and_digits(name, label):
    assert parse_label(name) == label


def test_label_map_turns_file_name_characters_into_the_captchas(tmp_path):
    from captcha_recognize.data.labels import LabelRules, read_label_map
    (tmp_path / "map.txt").write_text("# arithmetic captchas\nx *\np +\n")
    rules = LabelRules(label_map=read_label_map(tmp_path / "map.txt"))
    assert parse_label("3x4p1.png", rules=rules) == "3*4+1"
    assert parse_label("3-4.png", rules=rules) is None  # still not a label
    (tmp_path / "bad.txt").write_text("xx *\n")
    with pytest.raises(DataError, match="line 1"):
        read_label_map(tmp_path / "bad.txt")


def test_case_rules_fold_labels_and_mixed_case_is_found():
    from captcha_recognize.data.labels import LabelRules, mixed_case
    assert parse_label("AbC1.png", rules=LabelRules("lower")) == "abc1"
    assert parse_label("AbC1.png", rules=LabelRules("upper")) == "ABC1"
    assert mixed_case(["ab1", "AB2", "cd"]) == ["a", "b"] and mixed_case(["ab", "CD"]) == []


def test_images_only_in_subfolders_are_named_or_read_with_recursive(tmp_path):
    from captcha_recognize.data.folders import list_images
    (tmp_path / "day1").mkdir()
    render_captcha("1234", 0, 100, 40).save(tmp_path / "day1" / "1234.png")
    with pytest.raises(DataError, match="only in its subfolders: give --recursive"):
        list_images([tmp_path])
    assert [p.name for p in list_images([tmp_path], recursive=True)] == ["1234.png"]


def test_file_names_that_are_not_utf8_print_as_escapes(tmp_path, capsys):
    import os
    from captcha_recognize.data.folders import labelled_files
    from captcha_recognize.text import shown
    folder = os.fsencode(tmp_path)
    render_captcha("1234", 0, 100, 40).save(os.fsdecode(folder + b"/1234.png"))
    with open(folder + b"/\xff\xfe.png", "wb") as f:
        f.write(b"")
    labelled_files([tmp_path])
    err = capsys.readouterr().err
    assert "\\xff\\xfe.png" in err and shown(os.fsdecode(b"a\xff")) == "a\\xff"
    err.encode("ascii")  # printable on any console


TEXT, LINES = (140, 140, 140), (112, 112, 112)


def flat_captcha(seed: int, text=TEXT, noise: float = 0.0) -> Image.Image:
    """White, four text-like blocks in one flat grey and two lines of a darker one across them, as
    sites with flat colours draw them (``noise``: Gaussian noise of that many grey levels on top)."""
    from PIL import ImageDraw
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (120, 48), "white")
    draw = ImageDraw.Draw(img)
    for i in range(4):
        x, y = 8 + 28 * i + int(rng.integers(0, 6)), int(rng.integers(6, 20))
        draw.rectangle([x, y, x + 16, y + 20], fill=tuple(text))
    for _ in range(2):
        draw.line([(0, int(rng.integers(0, 48))), (120, int(rng.integers(0, 48)))], fill=LINES, width=3)
    if noise:
        arr = np.asarray(img, dtype=float) + rng.normal(0, noise, (48, 120, 3))
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return img


def test_flat_colour_captchas_have_their_shared_colours_found_as_ink():
    assert find_ink([flat_captcha(s) for s in range(20)]) == (TEXT, LINES)


def test_noisy_captchas_and_colours_that_change_per_image_are_no_ink():
    assert find_ink([flat_captcha(s, noise=8) for s in range(20)]) == ()
    changing = [flat_captcha(s, text=(40 + 9 * s, 90, 200 - 7 * s)) for s in range(20)]
    assert find_ink(changing) == (LINES,)


def test_each_ink_colour_adds_a_mask_channel_taken_before_resizing():
    img = Image.new("RGB", (100, 40), TEXT)
    img.paste(LINES, (50, 0, 100, 40))  # left half text grey, right half line grey
    arr = image_to_array(img, Preprocess(50, 20, 1, (TEXT, LINES)))  # (3, 20, 50)
    assert arr.shape == (3, 20, 50)
    assert np.array_equal(arr[0], image_to_array(img, Preprocess(50, 20, 1))[0])  # the image itself unchanged
    assert (arr[1, :, :24] == 0).all() and (arr[1, :, 26:] == 255).all()  # text mask: dark where text is
    assert (arr[2, :, :24] == 255).all() and (arr[2, :, 26:] == 0).all()
    near = Image.new("RGB", (10, 10), (143, 137, 140))  # within 3 of the ink in each channel
    assert (image_to_array(near, Preprocess(10, 10, 1, (TEXT,)))[1] == 0).all()


def test_ink_survives_the_json_of_onnx_metadata():
    spec = ModelSpec("crnn", "0123", 4, Preprocess(120, 48, 1, (TEXT, LINES)))
    back = ModelSpec.from_meta(json.loads(json.dumps(spec.to_meta())))
    assert back.preprocess == spec.preprocess and back.preprocess.in_channels == 3


def test_only_the_crnn_reads_ink_and_off_turns_it_off(tmp_path):
    for s in range(12):
        flat_captcha(s).save(tmp_path / f"{1000 + s}.png")
    data = read_labelled([tmp_path])
    got = {(arch, ink): make_task(TrainConfig(data=[str(tmp_path)], arch=arch, ink=ink), data, None)[1].ink
           for arch in ("cnn", "crnn") for ink in ("auto", "off")}
    assert got == {("cnn", "auto"): (), ("cnn", "off"): (), ("crnn", "auto"): (TEXT, LINES), ("crnn", "off"): ()}


def animated(path, frames: int = 3):
    """A GIF whose frame k shows only the k-th of ``frames`` black squares."""
    from PIL import ImageDraw
    images = []
    for k in range(frames):
        im = Image.new("RGB", (20 * frames, 20), "white")
        ImageDraw.Draw(im).rectangle([5 + 20 * k, 5, 14 + 20 * k, 14], fill="black")
        images.append(im)
    images[0].save(path, save_all=True, append_images=images[1:], duration=100, loop=0)
    return images


def test_an_animated_captcha_is_read_from_all_its_frames(tmp_path):
    from captcha_recognize.data.folders import decode_files
    from captcha_recognize.data.images import open_image
    frames = animated(tmp_path / "1234.gif")
    merged = np.asarray(open_image(tmp_path / "1234.gif").convert("L"))
    assert (merged < 128).sum() == sum((np.asarray(f.convert("L")) < 128).sum() for f in frames) == 300
    first = Image.open(tmp_path / "1234.gif")  # what reading the first frame alone gives
    assert (np.asarray(first.convert("L")) < 128).sum() == 100
    assert np.array_equal(np.asarray(open_image(first).convert("L")), merged)  # a PIL image too
    images, ok, bad = decode_files([tmp_path / "1234.gif"])  # training and prediction read files so
    assert not bad and np.array_equal(np.asarray(images[0].convert("L")), merged)
    frames[0].save(tmp_path / "still.png")
    assert np.array_equal(np.asarray(open_image(tmp_path / "still.png").convert("RGB")), np.asarray(frames[0]))


def test_an_image_too_large_is_skipped_with_its_size_everywhere(tmp_path, capsys):
    from captcha_recognize.data.folders import load_images
    Image.new("1", (5000, 5000)).save(tmp_path / "1234.png")  # 25 megapixels in a file of a few KB
    Image.new("RGB", (50, 22), "white").save(tmp_path / "5678.png")
    assert (tmp_path / "1234.png").stat().st_size < 20_000
    images, ok = load_images(sorted(tmp_path.iterdir()))
    assert [p.name for p in ok] == ["5678.png"]
    assert "1234.png (5000x5000 pixels is over the limit of 4000000 pixels)" in capsys.readouterr().err
