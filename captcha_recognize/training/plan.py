"""How long training runs, as a plan that decides after each epoch what comes next: keep going,
shorten the cycle to fit the time budget, grow it when far from done halfway, start once more when
the run is stuck at chance, or add another cycle while validation still improves.

The plan is the recipe's step count (``recipe.default_epochs``). If the first epoch shows that
the plan would overrun the budget, the schedule is shortened to fit, and so again at each tenth of
the plan if later epochs run slower. A run that reads fewer than ``STRETCH_BELOW`` of its (at
least ``STRETCH_MIN_VAL``) validation images halfway through its plan, with its trained weights and
with their average alike, needs more steps than planned: its cycle grows to what the rest of the
budget holds (timed by the median epoch, as the first carries one-off costs), at most
``STRETCH_MAX`` times the plan. When the plan ends with the validation score still rising (its best
over the last quarter beats everything before by at least one validation image), another cycle of
half the plan's length, at half the peak learning rate, follows, as long as the budget allows one;
and so on. The plan holds no model: the loop applies its decisions to the learning-rate schedule.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from captcha_recognize.text import plural

BUDGET_PER_1000 = 10 * 60.0  # default budget: seconds of training per 1000 training images
MIN_BUDGET = 5 * 60.0  # and never less than this
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


def stop_reason(scores: Sequence[float], window: int, n_val: int) -> str:
    """Why a schedule ends at the end of a cycle whose validation ``scores`` do not call for another one."""
    if not n_val or not scores:
        return "the planned epochs are done (no validation images tell whether more would help)"
    if max(scores) >= 1.0:
        return f"validation read every image right (epoch {scores.index(max(scores)) + 1})"
    if len(scores) <= window:
        return "the planned epochs are done (too few to tell whether more would help)"
    return (f"validation stopped improving (the last {plural(window, 'epoch')} read no more images right "
            "than the best before them)")


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


# ------------------------------------------------------------------------ the plan

@dataclass
class Cycle:
    """One one-cycle learning-rate schedule: its first epoch, how many epochs it has, its peak rate."""
    first: int
    epochs: int
    peak: float

    @property
    def last(self) -> int:
        return self.first + self.epochs - 1


@dataclass
class Replan:
    """The current cycle now ends at another epoch (shortened to fit the budget, or grown)."""
    message: str


@dataclass
class NewCycle:
    """Another, shorter cycle follows the one that just ended."""
    message: str


@dataclass
class Restart:
    """The run starts once more, changed: after ``epoch`` it reads no better than guessing (``chance``),
    or it is a CRNN still far from reading; ``read`` says what it reads."""
    chance: bool
    epoch: int
    read: str


@dataclass
class Note:
    """Nothing changes, but the user should know why (the budget is spent while validation improves)."""
    message: str


Decision = Replan | NewCycle | Restart | Note


@dataclass
class EpochReport:
    """What the plan looks at after an epoch: the run's history of per-epoch records (``loss``, and
    validation scores when there is a validation split), that epoch's seconds, and the validation
    accuracy of the weights being trained where the saved ones are their average (asked only when needed)."""
    history: Sequence[dict[str, Any]]
    seconds: float
    raw_accuracy: Callable[[], float] | None = None


@dataclass
class Plan:
    """The run's cycles and its time budget. ``after_epoch`` decides, from the epoch's report, what
    changes; ``agree`` makes every process of a distributed run take rank 0's reading of the clock."""
    cycles: list[Cycle]
    planned: int  # the planned cycle's length (extensions come after it)
    budget: float  # seconds this process may train
    start: int = 1  # the first epoch this process trains (later when resumed)
    fixed: bool = False  # the epochs were given (or come from a resumed run): they never grow
    may_grow: bool = True  # the planned cycle may grow halfway (TrainConfig.stretch)
    may_restart: bool = True  # a run stuck at chance (or a CRNN slow to start) may start once more
    slow_start_applies: bool = False  # a fresh CRNN: a slow start is a reason to start again
    steps_per_epoch: int = 1
    n_val: int = 0  # validation images
    n_classes: int = 10
    ctc: bool = False
    agree: Callable[[Any], Any] = lambda value: value
    started: float = field(default_factory=time.time)
    grown_from: int = 0  # the plan's length before it grew halfway (0: it did not)
    chance_due: int = 0  # the epoch that checks for a run stuck at chance, fixed at the first check
    times: list[float] = field(default_factory=list)  # each epoch's seconds in this process
    ending: str = ""  # why the schedule ended, once it has (``extend``)

    @property
    def epochs(self) -> int:
        """The last epoch of the schedule as it stands."""
        return self.cycles[-1].last

    @property
    def seconds_left(self) -> float:
        return self.budget - (time.time() - self.started)

    def to_dict(self) -> dict[str, Any]:
        """What a resumable checkpoint stores of the plan."""
        return {"plan_epochs": self.planned, "segments": [[c.first, c.epochs, c.peak] for c in self.cycles]}

    def after_epoch(self, epoch: int, report: EpochReport) -> list[Decision]:
        """Fit to the budget, grow halfway, check for a run stuck at chance, and at the end of the
        schedule extend it: the decisions taken after ``epoch``, in that order (a restart ends the list)."""
        self.times.append(report.seconds)
        decisions = [d for d in (self.fit_budget(epoch), self.grow(epoch, report)) if d is not None]
        restart = self.check_chance(epoch, report.history)
        if restart is not None:
            return decisions + [restart]
        if epoch == self.epochs:
            decisions += [d for d in [self.extend(epoch, report)] if d is not None]
        return decisions

    def resize(self, n: int) -> None:
        """Make the current cycle end after epoch ``n``."""
        self.cycles[-1].epochs = n - self.cycles[-1].first + 1
        if len(self.cycles) == 1:
            self.planned = n

    def fit_budget(self, epoch: int) -> Replan | None:
        """After the first epoch, and each ``REFIT_SHARE`` of the plan after it: shorten the current
        cycle if the rest of it, at the pace of the latest epochs, would overrun the budget (epochs can
        slow down as a run goes on)."""
        every = max(1, math.ceil(REFIT_SHARE * self.planned))
        if epoch >= self.epochs or (epoch != self.start and epoch % every):
            return None
        pace = recent_pace(self.times)
        n = self.agree(epochs_in_budget(self.epochs, epoch, pace, self.seconds_left))
        if n >= self.epochs:
            return None
        message = (f"the time budget ({self.budget / 60:.3g} min) holds {n} of the {self.epochs} planned epochs "
                   f"at {pace:.2g} s an epoch: the schedule is shortened to fit (--time-budget MINUTES for more)")
        self.resize(n)
        return Replan(message)

    def grow(self, epoch: int, report: EpochReport) -> Replan | None:
        """At the planned cycle's midpoint: a run that reads fewer than ``STRETCH_BELOW`` of its
        validation images with its trained weights and with their average alike needs more steps than
        planned, so the cycle grows (once) to what the budget holds, at most ``STRETCH_MAX`` times the plan."""
        if self.fixed or not self.may_grow or self.grown_from or len(self.cycles) > 1 \
                or self.n_val < STRETCH_MIN_VAL or epoch != max(2, self.planned // 2):
            return None
        acc = report.history[-1].get("sequence_accuracy", 1.0)
        if report.raw_accuracy is not None:  # the average lags behind the trained weights early, smooths them later
            acc = max(acc, report.raw_accuracy())
        n = self.agree(grown_epochs(self.epochs, epoch, acc, self.times, self.seconds_left))
        if n <= self.epochs:
            return None
        held = f"{STRETCH_MAX} times the plan" if n >= STRETCH_MAX * self.epochs else \
            f"what the time budget ({self.budget / 60:.3g} min) holds"
        message = (f"validation reads {100 * acc:.1f}% halfway through the plan: the schedule grows from "
                   f"{self.epochs} to {n} epochs, {held}")
        self.grown_from = self.planned
        self.resize(n)
        return Replan(message)

    def check_chance(self, epoch: int, history: Sequence[dict[str, Any]]) -> Restart | None:
        """A third of the way into the plan (at least 5 epochs): a run still reading no better than
        guessing, or a fresh CRNN still far from reading (``slow_start``), starts again once."""
        self.chance_due = due = self.chance_due or max(5, math.ceil(CHANCE_AT * self.planned))  # a later refit
        # of the plan to the budget does not move it
        short = self.planned * self.steps_per_epoch < CHANCE_MIN_STEPS  # too short to judge
        if not self.may_restart or short or not self.n_val or epoch != due or due > self.planned:
            return None
        chance = at_chance(history, self.n_classes, self.ctc)
        if not chance and not (self.slow_start_applies and slow_start(history, self.n_val)):
            return None
        read = "the validation images no better than guessing" if chance else \
            f"only {100 * history[-1]['character_accuracy']:.0f}% of the validation characters"
        return Restart(chance, epoch, read)

    def extend(self, epoch: int, report: EpochReport) -> NewCycle | Note | None:
        """At the end of a cycle: another, shorter one while validation still improves and the budget allows."""
        scores = [h["sequence_accuracy"] for h in report.history if "sequence_accuracy" in h]
        window = self.cycles[-1].epochs if len(self.cycles) > 1 else max(1, self.planned // 4)
        if not self.n_val or not still_improving(scores, window, 1 / self.n_val):
            self.ending = stop_reason(scores, window, self.n_val)
            return None
        n, left = max(1, math.ceil(EXTEND_SHARE * self.planned)), self.seconds_left
        if self.agree(n * self.times[-1] > left):
            self.ending = "the time budget is spent while validation still improves"
            return Note(f"validation is still improving, but the time budget ({self.budget / 60:.3g} min) is "
                        "spent: --time-budget MINUTES lets it train longer")
        peak = self.cycles[-1].peak * EXTEND_LR
        self.cycles.append(Cycle(epoch + 1, n, peak))
        return NewCycle(f"validation is still improving: {plural(n, 'more epoch')} at peak learning rate "
                        f"{peak:.2g} ({left / 60:.1f} min of the budget left)")
