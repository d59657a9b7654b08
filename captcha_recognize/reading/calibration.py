"""Confidence a client can act on: temperature scaling fitted on validation logits, the accept
threshold, and expected calibration error.

The confidence of a reading is the product of its chosen classes' probabilities
(``LabelConverter.log_confidence``), with the logits divided by a temperature. ``fit_temperature``
picks the temperature that makes that *sequence* confidence the best probability of the whole
answer being right (lowest binary negative log-likelihood on the validation split), so that of
the answers reported at 0.9 about 90% would be right; how near held-out answers come to that is
measured in ``benchmarks/accuracy.py``'s calibration columns. ``accept_threshold`` is then the lowest
calibrated confidence at which the validation answers at or above it vouch for
``target_precision`` right: they hold no more errors than a reader that right typically makes, and
enough of them are right to show better than ``EVIDENCE_PRECISION`` (``vouched``). A validation
split of a few dozen images cannot show that, so a model trained on few labels accepts nothing and
says so rather than pass answers its validation never tested. Training calls ``calibrate_checkpoint``
at the end of a run.
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from captcha_recognize.data.codec import LabelConverter
from captcha_recognize.reading.checkpoint import atomic_save, load_checkpoint, seal
from captcha_recognize.reading.inference import all_logits
from captcha_recognize.reading.recognizer import CaptchaRecognizer

TARGET_PRECISION = 0.995  # share of accepted validation answers that must be right
T_MIN, T_MAX = 0.05, 20.0  # the temperatures searched
EVIDENCE_PRECISION = 0.95  # accepted answers must be shown to be more often right than this
SURPRISE = 0.1  # the odds at or below which so few errors rule that precision out
TYPICAL = 0.5  # the errors above the threshold: no more than a reader of the target precision makes this often
FLOOR_Z = 1.645  # one-sided 95% normal quantile of the accepted answers' lower bound
ECE_BINS = 15
ACCEPT_NONE = math.nextafter(1.0, 2.0)  # the threshold when no confidence is vouched for: above any confidence


@dataclass
class Calibration:
    """What calibration found on ``n`` validation images; ``temperature`` and ``threshold`` go into the checkpoint."""
    n: int
    right: int
    temperature: float
    threshold: float
    target_precision: float
    ece_before: float
    ece_after: float
    accepted: int  # validation answers at or above the threshold
    accepted_right: int

    def describe(self) -> str:
        """One line for the training log."""
        if self.right == 0:
            fit = "temperature 1 (not fitted: none of the answers right)"
        elif self.right == self.n:
            fit = (f"temperature {self.temperature:.3f} (all answers right: the mean confidence is set to "
                   f"{100 * (self.n + 1) / (self.n + 2):.1f}%, (n+1)/(n+2))")
        else:
            fit = f"temperature {self.temperature:.3f}"
        needed = min_evidence(self.target_precision)
        if self.threshold > 1.0 and self.right < needed:
            shown = min(EVIDENCE_PRECISION, self.target_precision)
            accept = (f"nothing is accepted: {self.right} right validation answers cannot vouch for any "
                      f"confidence (it takes {needed} to show better than {100 * shown:g}% right); label more "
                      "images, or give predict --min-confidence P")
        elif self.threshold > 1.0:
            accept = (f"nothing is accepted: at no confidence do the validation answers vouch for "
                      f"{100 * self.target_precision:g}% right; give predict --min-confidence P to accept anyway")
        else:
            accept = (f"accept at confidence >= {self.threshold:.4f} ({self.accepted} of {self.n} answers, "
                      f"{100 * self.accepted_right / self.accepted:.1f}% right; on new images 95% sure of at least "
                      f"{100 * precision_floor(self.accepted_right, self.accepted):.1f}%)")
        return (f"calibrated on {self.n} validation images ({self.right} read right): {fit}, expected "
                f"calibration error {100 * self.ece_before:.1f}% -> {100 * self.ece_after:.1f}%; {accept}")


def precision_floor(right: int, n: int, z: float = FLOOR_Z) -> float:
    """The Wilson score lower bound (one-sided, ``z``) of the share right among answers like these
    ``n``, of which ``right`` were right: how far ``right / n`` can be trusted; 0 for no answers."""
    if n <= 0:
        return 0.0
    p, zz = right / n, z * z / n
    return max(0.0, (p + zz / 2 - z * math.sqrt(p * (1 - p) / n + zz / (4 * n))) / (1 + zz))


def expected_calibration_error(confs: Sequence[float], correct: Sequence[bool], bins: int = ECE_BINS) -> float:
    """Mean over equal-width confidence bins, weighted by their share of answers, of
    |share right - mean confidence|; 0 for no answers."""
    c = np.array(list(confs), dtype=np.float64)  # (N,)
    y = np.array(list(correct), dtype=np.float64)  # (N,)
    if not len(c):
        return 0.0
    which = np.clip((c * bins).astype(np.int64), 0, bins - 1)  # (N,) bin index
    total = 0.0
    for b in np.unique(which).tolist():
        m = which == b
        total += m.sum() * abs(y[m].mean() - c[m].mean())
    return float(total / len(c))


def nll(log_conf: np.ndarray, correct: np.ndarray) -> float:
    """Mean binary negative log-likelihood of ``correct`` ``(N,)`` under confidence ``exp(log_conf)``."""
    log_conf = np.minimum(log_conf, -1e-15)  # (N,) so that log(1 - p) stays finite
    log_wrong = np.log(-np.expm1(log_conf))  # log(1 - p)
    return float(-np.where(correct, log_conf, log_wrong).mean())


def fit_temperature(logits: np.ndarray, correct: Sequence[bool], converter: LabelConverter) -> float:
    """The temperature in [T_MIN, T_MAX] with the lowest ``nll`` of the answers being right:
    a log-spaced grid, then a golden-section search around its best point. When every answer
    is right the likelihood only grows as the temperature falls, so the mean confidence is set
    to the estimated accuracy instead (``all_right_temperature``); 1.0 when none is right."""
    y = np.array(list(correct), dtype=bool)  # (N,)
    if not y.any():
        return 1.0
    if y.all():
        return all_right_temperature(logits, converter)
    path = converter.best_path(logits)  # (N, T|P): the readings, whatever the temperature

    def loss(log_t: float) -> float:
        return nll(converter.log_confidence(logits, math.exp(log_t), path), y)

    grid = np.linspace(math.log(T_MIN), math.log(T_MAX), 61).tolist()
    best = min(range(len(grid)), key=lambda i: loss(grid[i]))
    lo, hi = grid[max(0, best - 1)], grid[min(len(grid) - 1, best + 1)]
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = loss(a), loss(b)
    for _ in range(40):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = loss(b)
    return math.exp((lo + hi) / 2)


def all_right_temperature(logits: np.ndarray, converter: LabelConverter) -> float:
    """For ``n`` validation answers that are all right: the temperature at which their mean
    confidence is ``(n + 1) / (n + 2)``, Laplace's estimate of the accuracy (the confidence
    of each answer grows as the temperature falls, so bisection on log T finds it)."""
    target = (len(logits) + 1) / (len(logits) + 2)
    lo, hi = math.log(T_MIN), math.log(T_MAX)
    path = converter.best_path(logits)  # (N, T|P)
    for _ in range(50):
        mid = (lo + hi) / 2
        if np.exp(converter.log_confidence(logits, math.exp(mid), path)).mean() > target:
            lo = mid  # too confident: a higher temperature
        else:
            hi = mid
    return math.exp((lo + hi) / 2)


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p)."""
    if k < 0:
        return 0.0
    if k >= n or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    q = math.log1p(-p)
    return min(1.0, sum(math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
                                 + i * math.log(p) + (n - i) * q) for i in range(k + 1)))


def vouched(accepted: int, wrong: int, target: float = TARGET_PRECISION) -> bool:
    """Whether ``accepted`` validation answers of which ``wrong`` were wrong vouch for accepting answers
    like them: a reader ``target`` right typically makes that many errors or more (odds above
    ``TYPICAL``), and one only ``EVIDENCE_PRECISION`` right (or ``target``, if lower) would rarely make
    so few (odds at most ``SURPRISE``)."""
    if accepted <= 0 or wrong > math.ceil(accepted * (1.0 - target)):  # above the median: as TYPICAL >= 1/2
        return False
    typical = 1.0 - binomial_cdf(wrong - 1, accepted, 1.0 - target) > TYPICAL
    return typical and binomial_cdf(wrong, accepted, 1.0 - min(EVIDENCE_PRECISION, target)) <= SURPRISE


def accept_threshold(confs: Sequence[float], correct: Sequence[bool], target: float = TARGET_PRECISION) -> float:
    """The lowest confidence ``c`` such that the validation answers of confidence >= ``c`` vouch for
    ``target`` precision (``vouched``); ``ACCEPT_NONE`` (above any confidence) when none do, which
    takes at least ``min_evidence()`` answers."""
    pairs = sorted(zip(confs, correct), reverse=True)  # most confident first
    threshold, wrong = ACCEPT_NONE, 0
    for i, (c, ok) in enumerate(pairs):
        wrong += not ok
        last_of_tie = i + 1 == len(pairs) or pairs[i + 1][0] < c  # equal confidences are accepted together
        if last_of_tie and vouched(i + 1, wrong, target):
            threshold = c
    return threshold


@functools.cache
def min_evidence(target: float = TARGET_PRECISION) -> int:
    """The fewest validation answers, all right, that can vouch for accepting anything."""
    return next(n for n in range(1, 100_000) if vouched(n, 0, target))


def calibrate(logits: np.ndarray, labels: Sequence[str], converter: LabelConverter,
              target: float = TARGET_PRECISION) -> Calibration:
    """Fit the temperature and threshold on validation logits ``(N, T|P, K)`` (best in float64:
    confidences near 1 keep their distance from 1) and their labels."""
    texts, raw = converter.decode(logits)
    correct = [t == s for t, s in zip(texts, labels)]
    temperature = fit_temperature(logits, correct, converter)
    _, confs = converter.decode(logits, temperature)
    threshold = accept_threshold(confs, correct, target)
    kept = [ok for c, ok in zip(confs, correct) if c >= threshold]
    return Calibration(len(labels), sum(correct), temperature, threshold, target,
                       expected_calibration_error(raw, correct), expected_calibration_error(confs, correct),
                       len(kept), sum(kept))


def held_out_report(confs_raw: Sequence[float], confs: Sequence[float], correct: Sequence[bool],
                    threshold: float | None) -> dict[str, Any]:
    """Calibration on held-out answers: ECE at temperature 1 and at the stored temperature, and at
    the stored threshold the share accepted and the accuracy on those (None if nothing is accepted)."""
    kept = [ok for c, ok in zip(confs, correct) if threshold is None or c >= threshold]
    return {"ece_before": expected_calibration_error(confs_raw, correct),
            "ece_after": expected_calibration_error(confs, correct),
            "accepted_share": len(kept) / len(correct) if correct else 0.0,
            "accepted_accuracy": sum(kept) / len(kept) if kept else None}


def calibrate_checkpoint(path: str | os.PathLike, arrays: np.ndarray, labels: Sequence[str],
                         target: float = TARGET_PRECISION) -> Calibration:
    """Calibrate the checkpoint at ``path`` on validation images ``(N, C, H, W)`` (uint8) and their
    labels, and store temperature, threshold and the numbers in it (atomically)."""
    rec = CaptchaRecognizer(path)
    logits = all_logits(rec.logits, arrays, rec.batch_size).astype(np.float64)  # (N, T|P, K)
    cal = calibrate(logits, labels, rec.converter, target)
    store(path, temperature=cal.temperature, threshold=cal.threshold, calibration=asdict(cal))
    return cal


def accept_none(path: str | os.PathLike) -> None:
    """Make the checkpoint at ``path`` accept no reading (atomically), its temperature and the
    calibration's numbers kept: for the base model, whose threshold was set on generated captchas,
    which cannot vouch for its answers on a site it has never seen."""
    store(path, threshold=ACCEPT_NONE)


def store(path: str | os.PathLike, **fields: Any) -> None:
    """Replace ``fields`` of the checkpoint at ``path``, sealed again, atomically."""
    atomic_save(seal({**load_checkpoint(path), **fields}), path)
