"""How long training runs: a planned one-cycle schedule that fits a time budget, extended by
further cycles while the validation score still improves, and a check for a run stuck at chance
or, for a CRNN, slow to start.

The plan is the recipe's step count (``training.default_epochs``). If the first epoch shows that
the plan would overrun the budget, the schedule is shortened to fit, and so again at each tenth of
the plan if later epochs run slower. A run that reads fewer than
``STRETCH_BELOW`` of its (at least ``STRETCH_MIN_VAL``) validation images halfway through its plan,
with its trained weights and with their average alike, needs more steps than planned: its cycle
grows to what the rest of the budget holds (timed by the median epoch, as the first carries
one-off costs), at most ``STRETCH_MAX`` times the plan. When the plan ends with the validation score
still rising (its best over the last quarter beats everything before by at least one validation
image), another cycle of half the plan's length, at half the peak learning rate, follows, as long
as the budget allows one; and so on.
"""
from __future__ import annotations

import math
import statistics
from typing import Any, Sequence

import torch

BUDGET_PER_1000 = 10 * 60.0  # default budget: seconds of training per 1000 training images
MIN_BUDGET = 5 * 60.0  # and never less than this
PCT_START = 0.15  # share of a cycle spent warming up
EXTEND_SHARE = 0.5  # an extension cycle is this share of the planned epochs
EXTEND_LR = 0.5  # its peak learning rate, relative to the planned cycle's
STRETCH_BELOW = 0.97  # validation sequence accuracy halfway through the plan under which the cycle grows
STRETCH_MIN_VAL = 40  # validation images needed to judge that (on fewer, one image moves it 2.5% or more)
STRETCH_MAX = 3  # a grown cycle has at most this many times the planned epochs
CHANCE_AT = 0.3  # share of the planned epochs after which a run still at chance is retried
CHANCE_MIN_STEPS = 400  # plans shorter than this are not judged
SLOW_BELOW = 0.5  # validation characters a CRNN reads at that check under which it starts again from another init
SLOW_MIN_VAL = 40  # validation images needed to judge that
REFIT_SHARE = 0.1  # after the first epoch, the budget is checked again each time this share of the plan is done
PACE_EPOCHS = 3  # epochs whose median time gives the pace of the rest


def default_budget(n_train: int) -> float:
    """Seconds of training a run of ``n_train`` images may take by default."""
    return max(MIN_BUDGET, BUDGET_PER_1000 * n_train / 1000)


def one_cycle(opt: torch.optim.Optimizer, peak_lr: float, steps: int) -> torch.optim.lr_scheduler.OneCycleLR:
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=peak_lr, total_steps=max(1, steps), pct_start=PCT_START)


def replan(sched: torch.optim.lr_scheduler.OneCycleLR, peak_lr: float,
           steps: int) -> torch.optim.lr_scheduler.OneCycleLR:
    """The same cycle stretched or shrunk to ``steps`` in all, at the step it has reached."""
    opt = sched.optimizer
    kept = [{k: g[k] for k in ("lr", "betas", "momentum") if k in g} for g in opt.param_groups]
    fresh = one_cycle(opt, peak_lr, steps)
    total, phases = fresh.total_steps, fresh._schedule_phases  # OneCycleLR's plan for the new length
    fresh.load_state_dict(sched.state_dict())
    fresh.total_steps, fresh._schedule_phases = total, phases
    for g, k in zip(opt.param_groups, kept):  # creating ``fresh`` reset them to a cycle's start
        g.update(k)
    return fresh


def epochs_in_budget(planned: int, done: int, seconds_per_epoch: float, budget_left: float) -> int:
    """How many epochs the schedule can hold: ``planned``, or fewer when they would overrun."""
    if seconds_per_epoch <= 0:
        return planned
    return max(done + 1, min(planned, done + math.floor(budget_left / seconds_per_epoch)))


def recent_pace(epoch_times: Sequence[float]) -> float:
    """Seconds an epoch takes now: the median of the last ``PACE_EPOCHS`` epochs."""
    return statistics.median(epoch_times[-PACE_EPOCHS:]) if epoch_times else 0.0


def grown_epochs(planned: int, done: int, accuracy: float, epoch_times: Sequence[float], budget_left: float) -> int:
    """Halfway through the plan, after ``done`` epochs: how many the cycle should have. ``planned``,
    unless validation reads fewer than ``STRETCH_BELOW`` of its images; then as many as the rest of
    the budget holds, timed by the median epoch after the first (which carries one-off costs), up to
    ``STRETCH_MAX`` times ``planned``."""
    if accuracy >= STRETCH_BELOW or not epoch_times:
        return planned
    per_epoch = statistics.median(epoch_times[1:] or epoch_times)
    held = done + math.floor(budget_left / per_epoch) if per_epoch > 0 else planned
    return max(planned, min(held, STRETCH_MAX * planned))


def still_improving(scores: Sequence[float], window: int, one: float) -> bool:
    """Whether the best of the last ``window`` scores beats every score before by at least ``one``
    (one validation image), and is not perfect yet."""
    if len(scores) <= window or window < 1:
        return False
    last, before = max(scores[-window:]), max(scores[:-window])
    return last < 1.0 and last >= before + one - 1e-9


def at_chance(history: Sequence[dict[str, Any]], n_classes: int, ctc: bool) -> bool:
    """Whether validation reads no better than guessing: characters right at most twice as often
    as a random pick from the alphabet, and (for the CNN, whose loss starts at chance) a training
    loss that has not fallen below 90% of its first epoch's."""
    s = history[-1]
    return guessing(s, n_classes) and (ctc or s["loss"] >= 0.9 * history[0]["loss"])


def guessing(s: dict[str, Any], n_classes: int) -> bool:
    """Whether a validation reading got characters right at most twice as often as a random pick
    from the alphabet (False when it has no characters to count, or an alphabet of 2 or fewer, where
    twice a random pick is every character)."""
    return n_classes > 2 and "character_accuracy" in s and s["character_accuracy"] <= 2.0 / n_classes


def slow_start(history: Sequence[dict[str, Any]], n_val: int) -> bool:
    """Whether a CRNN is still far from reading: under ``SLOW_BELOW`` of the characters of its (at
    least ``SLOW_MIN_VAL``) validation images. CTC leaves its all-blank plateau late or early
    depending on the initialisation, and a late start leaves too little of the budget to learn in."""
    s = history[-1]
    return n_val >= SLOW_MIN_VAL and s.get("character_accuracy", 1.0) < SLOW_BELOW
