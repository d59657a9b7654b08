"""Training-time augmentation: the warp, the strokes, splice and the text columns it cuts at."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from captcha_recognize.data.augment import (STROKES, WARP, Augment, augment, column_spread, evenly_spaced, splice,
                                            text_span)
from captcha_recognize.cli.train import train_config
from captcha_recognize.data.arrays import normalize
from captcha_recognize.training.recipe import default_splice


def test_augment_keeps_shape_and_range_and_changes_pixels():
    x = normalize(torch.randint(0, 256, (8, 3, 22, 50), dtype=torch.uint8))
    y = augment(x, Augment(), torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1
    assert not torch.allclose(x, y)
    z = augment(x, Augment(), torch.Generator().manual_seed(0))
    assert torch.equal(y, z)  # reproducible from the generator
    still = augment(x, Augment(0, 0, 0, 0, 0, 0, 0, 0), torch.Generator().manual_seed(0))
    assert torch.allclose(still, x, atol=1e-5)  # all strengths 0: identity


def test_warp_bends_straight_strokes_smoothly_and_within_its_reach():
    """A vertical bar, warped alone: its centre moves from row to row (no affine warp does
    that to a vertical line without tilting it as a whole), by at most ``warp`` heights."""
    h, w = 64, 160
    x = -torch.ones(32, 1, h, w)
    x[..., 78:82] = 1.0  # a bar 4 columns wide at the centre
    y = augment(x, Augment(0, 0, 0, 0, 0, 0, 0, 0, warp=0.05), torch.Generator().manual_seed(0))
    cols = torch.arange(w, dtype=torch.float32)
    ink = (y[:, 0] + 1).clamp(min=0)  # (N, H, W)
    centre = (ink * cols).sum(-1) / ink.sum(-1)  # (N, H): the bar's centre in each row
    assert (centre - 79.5).abs().max() <= 0.05 * h + 0.5
    straight = torch.linspace(0, 1, h)
    fit = torch.stack([straight, torch.ones(h)], 1)  # best straight (tilted) line through each bar
    off = [(fit @ torch.linalg.lstsq(fit, c.unsqueeze(1)).solution).squeeze(1).sub(c).abs().max() for c in centre]
    assert float(torch.stack(off).mean()) > 0.5  # bent, not only shifted or tilted
    assert (centre.diff(dim=1).abs().max()) < 0.5  # smooth: under half a pixel from row to row


def stroke_marks(size: tuple[int, int] = (50, 22), **stroke: float) -> torch.Tensor:
    """Pixels ``(N, H, W)`` that strokes alone (every other strength 0) drew on blank images."""
    x = torch.zeros(64, 3, size[1], size[0])
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


def test_strokes_grow_with_the_input_height():
    """Up to 32 rows a stroke is 1-2 pixels wide whatever the height; at 64 rows twice that."""
    def per_column(w: int, h: int) -> float:  # marked pixels per image column
        return stroke_marks((w, h), width=2.0).sum().item() / w
    assert per_column(80, 22) == pytest.approx(per_column(80, 32), rel=0.15)
    assert per_column(80, 64) == pytest.approx(2 * per_column(80, 32), rel=0.15)


def test_strokes_flag_picks_the_stroke_augmentation():
    def drawn(*argv: str) -> int:
        aug = STROKES[train_config(["--data", "x", *argv]).strokes]
        return int(stroke_marks(**{k: getattr(aug, k) for k in ("strokes", "arcs", "width")}).sum())
    line, arcs = drawn("--strokes", "line"), drawn("--strokes", "arcs")
    assert arcs > 2 * line
    curved = lambda name: off_line(stroke_marks(arcs=STROKES[name].arcs))  # noqa: E731  one stroke each
    assert curved("arcs") > 3 * curved("line")  # "arcs" bends some strokes, "line" none
    assert drawn() == arcs and drawn("--arch", "crnn") == arcs  # the default for both families
    assert drawn("--arch", "crnn", "--strokes", "line") == line


@pytest.mark.slow
@pytest.mark.parametrize("argv, strokes, warp", [(["--arch", "cnn", "--strokes", "line"], "line", WARP["cnn"]),
                                                (["--arch", "crnn"], "arcs", WARP["crnn"]),
                                                (["--warp", "0.1"], "arcs", 0.1),
                                                (["--arch", "cnn", "--warp", "0.05"], "arcs", 0.05)])
def test_training_draws_the_strokes_and_warp_it_was_given(digits_dir, tmp_path, monkeypatch, argv, strokes, warp):
    from captcha_recognize.training import loop, train
    seen = []
    monkeypatch.setattr(loop, "augment", lambda x, aug, gen: seen.append(aug) or x)
    train(train_config(["--data", str(digits_dir), "--epochs", "1", *argv, "--plot", "none",
                        "--out", str(tmp_path / "m.pth"), "--show-errors", "0"]))
    assert seen and all(a == replace(STROKES[strokes], warp=warp) for a in seen)


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
