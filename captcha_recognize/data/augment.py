"""Training-time augmentation of normalized batches ``(B, C, H, W)``: a random affine warp and
smooth bend, colour jitter, noise, random strokes across the text, and ``splice``, which
recombines equal-length captchas at character boundaries (with the text-column heuristics that place those
boundaries)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F


@dataclass
class Augment:
    """Strength of the training augmentation (0 disables a part)."""
    shift: float = 0.06  # max translation, fraction of width/height
    rotate: float = 5.0  # degrees
    shear: float = 0.15
    scale: float = 0.08  # +- relative zoom
    brightness: float = 0.2
    contrast: float = 0.25
    noise: float = 0.04
    lines: float = 0.3  # probability of each random stroke
    strokes: int = 1  # strokes drawn (each with probability ``lines``)
    arcs: float = 0.0  # share of the strokes that are circle arcs instead of straight lines
    width: float = 1.0  # strokes are 1 to ``width`` pixels wide, scaled up on inputs taller than STROKE_ROWS
    warp: float = 0.0  # max smooth local displacement, fraction of the input's height


# Stroke widths are given for inputs up to this many rows high and grow with taller inputs: the
# lines across a 64-row captcha are about twice as wide as across a 32-row one.
STROKE_ROWS = 32


# ``--strokes``: real captchas cross their characters with lines and arcs. "arcs" (the
# default) draws two strokes, half of them circle arcs, up to 2 pixels wide; "line" one
# straight 1-pixel line (both per STROKE_ROWS rows of input).
STROKES = {"arcs": Augment(lines=0.5, strokes=2, arcs=0.5, width=2.0), "line": Augment()}


def augment(x: torch.Tensor, aug: Augment, gen: torch.Generator | None = None) -> torch.Tensor:
    """Random affine warp, colour jitter, noise and lines on a normalized batch ``(B, C, H, W)``."""
    b, c, h, w = x.shape
    u = lambda *s: torch.rand(*s, generator=gen) * 2 - 1  # noqa: E731  uniform in [-1, 1]
    ang = u(b) * aug.rotate * torch.pi / 180
    sc = 1 + u(b) * aug.scale
    sh = u(b) * aug.shear
    cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin * h / w + sh
    theta[:, 1, 0], theta[:, 1, 1] = sin * w / h, cos
    theta[:, :, 2] = u(b, 2) * aug.shift * 2
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (B, H, W, 2)
    if aug.warp > 0:
        grid = grid + _smooth_displacement(b, h, w, aug.warp, gen)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    contrast = 1 + u(b, 1, 1, 1) * aug.contrast
    bright = u(b, 1, 1, 1) * aug.brightness
    x = (x - mean) * contrast + mean + bright
    if c == 3:
        x = x + u(b, 3, 1, 1) * aug.brightness * 0.5  # per-channel colour shift
    if aug.lines > 0:
        x = _draw_strokes(x, aug, gen)
    x = x + torch.randn(x.shape, generator=gen) * aug.noise
    return x.clamp_(-1, 1).contiguous(memory_format=torch.channels_last)


def column_spread(arrays: torch.Tensor, sample: int = 5000) -> torch.Tensor:
    """How much each column's pixels vary across a set of images ``(W,)``. Looks at the
    first ``sample`` images, so large sets are not copied to float whole."""
    if len(arrays) < 2:  # nothing varies across one image
        return torch.zeros(arrays.shape[-1])
    return arrays[:sample].float().std(0).mean(dim=(0, 1))  # (W,) from (N, C, H, W)


def text_span(spread: torch.Tensor) -> tuple[float, float]:
    """Columns ``[x0, x1)`` where the text of a set of captchas lies: those whose
    ``column_spread`` is above the mean (margins hold background and noise, which vary
    less than glyphs); the mean is steadier on small sets than the midpoint of the range."""
    cols = (spread > spread.mean()).nonzero().flatten()
    return (float(cols[0]), float(cols[-1]) + 1) if len(cols) else (0.0, float(len(spread)))


def evenly_spaced(spread: torch.Tensor, span: tuple[float, float], length: int) -> bool:
    """Whether ``length`` characters sit at fixed, evenly spaced places over the text
    ``span`` (a fixed-pitch layout): the columns where ``splice`` cuts, or their
    neighbours, then vary clearly less across the images (under 0.8x) than the text on
    average, being the gaps between characters."""
    x0, x1 = span
    if length < 2 or x1 - x0 < 2 * length:
        return False
    cuts = cut_columns(span, length).tolist()
    at_cuts = torch.stack([spread[max(0, c - 1):c + 2].min() for c in cuts]).mean()
    return bool(at_cuts < 0.8 * spread[int(x0):int(x1)].mean())


def cut_columns(span: tuple[float, float], length: int) -> torch.Tensor:
    """Columns ``(length - 1,)`` of the boundaries between ``length`` characters evenly
    spaced over ``span``: where ``splice`` cuts."""
    x0, x1 = span
    return torch.round(x0 + torch.arange(1, length) * (x1 - x0) / length).long()


def splice(x: torch.Tensor, labels: Sequence[str], p: float, span: tuple[float, float] | None = None,
           gen: torch.Generator | None = None) -> tuple[torch.Tensor, list[str]]:
    """Recombine a batch of equal-length captchas: with probability ``p`` per image, the
    columns right of a character boundary (boundaries evenly spaced over the text
    ``span``, default the whole width) come from another image of the batch, and so do
    the label's characters after it.

    New label combinations keep a model from reading a small training set by recognising
    whole images. Batches with labels of different lengths are returned unchanged.
    """
    b, _, _, w = x.shape  # (B, C, H, W)
    n = len(labels[0]) if labels else 0
    if p <= 0 or n < 2 or b < 2 or any(len(s) != n for s in labels):
        return x, list(labels)
    use = torch.rand(b, generator=gen) < p  # (B,)
    partner = torch.randperm(b, generator=gen)  # (B,)
    k = torch.randint(1, n, (b,), generator=gen)  # boundary after character k
    cut = cut_columns(span or (0.0, float(w)), n)[k - 1]  # (B,)
    right = (torch.arange(w).view(1, w) >= cut.view(b, 1)) & use.view(b, 1)  # (B, W)
    out = torch.where(right.view(b, 1, 1, w), x[partner], x)  # (B, C, H, W)
    new = [s[:j] + labels[i][j:] if u else s
           for s, i, j, u in zip(labels, partner.tolist(), k.tolist(), use.tolist())]
    return out.contiguous(memory_format=torch.channels_last), new


# default ``Augment.warp`` of training per family (``--warp``): the CRNN reads text that sites bend;
# the CNN is chosen only for characters at fixed, evenly spaced places, text no site warped
WARP = {"cnn": 0.0, "crnn": 0.05}
MAX_WARP = 0.5  # the largest ``--warp`` allowed
WARP_KNOTS = 3  # random displacements per input height that the warp interpolates between


def _smooth_displacement(b: int, h: int, w: int, warp: float, gen: torch.Generator | None) -> torch.Tensor:
    """A random smooth displacement field ``(B, H, W, 2)`` in ``grid_sample`` units: random
    offsets of up to ``warp`` input heights at WARP_KNOTS knots per height, bicubically
    interpolated, so strokes bend as in captchas drawn through a wave distortion."""
    kh, kw = WARP_KNOTS, max(WARP_KNOTS, round(WARP_KNOTS * w / h))
    knots = (torch.rand(b, 2, kh, kw, generator=gen) * 2 - 1) * warp * h  # (B, 2, kh, kw) in pixels
    field = F.interpolate(knots, size=(h, w), mode="bicubic", align_corners=True)  # (B, 2, H, W)
    field = field.clamp(-warp * h, warp * h)  # bicubic overshoots its knots a little
    field = field * torch.tensor([2 / w, 2 / h]).view(1, 2, 1, 1)  # pixels -> [-1, 1] units (x, y)
    return field.permute(0, 2, 3, 1)  # (B, H, W, 2)


def _draw_strokes(x: torch.Tensor, aug: Augment, gen: torch.Generator | None) -> torch.Tensor:
    """``aug.strokes`` times, with probability ``aug.lines`` per image, a thin stroke of random
    intensity: a straight line or (share ``aug.arcs``) an arc of a circle, its width in pixels
    scaled by the input's height over ``STROKE_ROWS`` where that is over 1."""
    b, c, h, w = x.shape
    rows = max(1.0, h / STROKE_ROWS)
    ys = torch.linspace(-1, 1, h).view(1, h, 1)
    xs = torch.linspace(-1, 1, w).view(1, 1, w)
    r = lambda *s: torch.rand(*s, generator=gen)  # noqa: E731
    # arcs and widths draw random numbers only when asked for: ``Augment()`` (one 1-pixel line)
    # keeps the random stream it always had, so its results reproduce
    for _ in range(aug.strokes):
        y0, slope = (r(b) * 1.6 - 0.8).view(b, 1, 1), (r(b) - 0.5).view(b, 1, 1)
        dist = (ys - (y0 + slope * xs)).abs()  # (B, H, W), in units of half the height
        if aug.arcs > 0:
            arc = _arc_distance(ys, xs * (w / h), b, r)  # (B, H, W)
            dist = torch.where((r(b) < aug.arcs).view(b, 1, 1), arc, dist)
        px = 1.0 if aug.width <= 1 else (1 + r(b) * (aug.width - 1)).view(b, 1, 1)  # pixels per STROKE_ROWS rows
        mask = (dist < px * rows / h).float() * (r(b) < aug.lines).float().view(b, 1, 1)
        value = (r(b, c) * 2 - 1).view(b, c, 1, 1)
        mask = mask.unsqueeze(1)  # (B, 1, H, W)
        x = x * (1 - mask) + value * mask
    return x


def _arc_distance(ys: torch.Tensor, xs: torch.Tensor, b: int, r) -> torch.Tensor:
    """Distance ``(B, H, W)`` of each pixel from a random circle per image (centre anywhere
    over the image, radius 0.25 to 1.25 image heights); ``xs`` in the units of ``ys``."""
    cx = ((r(b) * 2 - 1) * xs.max()).view(b, 1, 1)
    cy = (r(b) * 2 - 1).view(b, 1, 1)
    rad = (0.5 + r(b) * 2).view(b, 1, 1)
    return (((xs - cx) ** 2 + (ys - cy) ** 2).sqrt() - rad).abs()
