"""Training on labelled images: ``train_supervised(cfg)`` reads the data, builds the model, trains
the epochs its plan decides (``plan.Plan``), starts once more, changed, when the plan says the run
is stuck at chance, and ends by calibrating the best checkpoint. It runs as one process or under
``torchrun`` (rank 0 reports and writes)."""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from captcha_recognize.data.arrays import ArrayDataset
from captcha_recognize.data.augment import column_spread, text_span
from captcha_recognize.data.folders import LabelledImages
from captcha_recognize.device import pick_device
from captcha_recognize.errors import DataError, Diverged
from captcha_recognize.files import output_lock, remove_stale_temporaries
from captcha_recognize.model import ModelConfig
from captcha_recognize.reading.calibration import calibrate_checkpoint
from captcha_recognize.reading.checkpoint import load_checkpoint
from captcha_recognize.reading.torch_model import evaluate
from captcha_recognize.reading.scores import format_scores, mistakes_table
from captcha_recognize.reading.spec import ModelSpec
from captcha_recognize.runtime import default_threads
from captcha_recognize.text import plural
from captcha_recognize.training import loop, plan
from captcha_recognize.training.base import base_start
from captcha_recognize.training.config import TrainConfig, check_config, last_path, plot_path
from captcha_recognize.training.distributed import ProcessGroup
from captcha_recognize.training.events import Events, silent
from captcha_recognize.training.plot import save_plot
from captcha_recognize.training.recipe import resolve_defaults
from captcha_recognize.training.result import TrainResult
from captcha_recognize.training.prepare import prepare
from captcha_recognize.training.resume import resumed_cycles
from captcha_recognize.training.saver import BestSaver
from captcha_recognize.training.state import ModelState, build_state
from captcha_recognize.training.task import (Split, build_datasets, choose_arch, fingerprint, ink_text,
                                             kept_from_checkpoint, label_rules, make_task, read_data)


@dataclass(frozen=True)
class Run:
    """What one attempt trains on and writes, fixed once it is set up."""
    cfg: TrainConfig  # every default resolved; the epochs as planned at the start (``Attempt.cfg`` follows the plan)
    given: TrainConfig  # as asked for, before the data's defaults: a restart starts from it
    spec: ModelSpec
    model_args: dict[str, Any]
    train_set: torch.utils.data.Dataset
    val: Split
    span: tuple[float, float] | None  # the text's columns, where splice cuts
    n_images: int  # labelled images read: a resumed run must find as many
    data_sha256: str  # their names, labels and sizes (task.fingerprint): a resumed run must find the same
    group: ProcessGroup
    events: Events
    start_weights: dict[str, torch.Tensor] | None = None  # the base model's, fitted (training.base)


@dataclass
class Attempt:
    """One attempt under way: what it trains on, the model, its plan, its best epoch, its history."""
    run: Run
    state: ModelState
    plan: plan.Plan
    saver: BestSaver
    history: list[dict[str, Any]]
    start: int = 1  # the first epoch this process trains

    @property
    def cfg(self) -> TrainConfig:
        """The run's config with the epochs its plan holds now."""
        return replace(self.run.cfg, epochs=self.plan.epochs)

    def record(self) -> dict[str, Any]:
        """What the checkpoints store of the run besides its weights."""
        return {"config": asdict(self.cfg), "history": self.history, "n_images": self.run.n_images,
                "data_sha256": self.run.data_sha256,
                "schedule": self.plan.to_dict()}


# ------------------------------------------------------------------------- setting up

def describe(run: Run, budget: float) -> str:
    """The run's one-line summary printed before the first epoch."""
    cfg, converter, pre, group = run.cfg, run.spec.converter, run.spec.preprocess, run.group
    return (f"{cfg.arch}: {len(run.train_set)} training / {len(run.val.labels)} validation images, alphabet "
            f"{converter.alphabet!r}, length {converter.fixed_length or 'any'}, input "
            f"{pre.width}x{pre.height}x{pre.channels}{ink_text(pre)}, {plural(cfg.epochs, 'epoch')}"
            + (f", splice {cfg.splice}" if cfg.splice and cfg.augment else "") + f", device {group.device}"
            + (f", {group.world} processes" if group.enabled else "")
            + f"; time budget {budget / 60:.3g} min; writing {cfg.out}")


def resolve_arch(cfg: TrainConfig, init: dict[str, Any] | None, resume: dict[str, Any] | None,
                 events: Events) -> TrainConfig:
    """A run from a checkpoint's weights takes its architecture, and names the given settings it keeps."""
    if init is not None and resume is None:
        for note in kept_from_checkpoint(cfg, ModelSpec.from_checkpoint(init)):
            events.note(note)
    if init is not None and init["model_args"]["arch"] != cfg.arch:
        if cfg.arch == "auto":
            events.note(f"arch auto: {init['model_args']['arch']}, as the --init-from checkpoint is one")
        cfg = replace(cfg, arch=init["model_args"]["arch"])
    return cfg


def set_up(cfg: TrainConfig, resume: dict[str, Any] | None, group: ProcessGroup, events: Events,
           pseudo: LabelledImages | None = None) -> tuple[Run, dict[str, Any] | None]:
    """Read the data, pick the architecture and the data's defaults: what the attempt trains on, and
    the checkpoint it starts from (``resume`` or ``--init-from``), if any."""
    given = cfg
    init = resume or (load_checkpoint(cfg.init_from) if cfg.init_from else None)
    cfg = resolve_arch(cfg, init, resume, events)
    data = read_data(cfg, init, events)
    if cfg.arch == "auto":
        arch, why = choose_arch(data, cfg, len(pseudo.labels) if pseudo is not None else 0)
        events.note(f"arch auto: {arch}, as {why} (--arch cnn or crnn to choose)")
        cfg = replace(cfg, arch=arch)
        check_config(cfg)
    converter, pre = make_task(cfg, data, init)
    train_set, val = build_datasets(cfg, data, converter, pre, events, pseudo)
    real = getattr(train_set, "datasets", [train_set])[0]
    spread = column_spread(real.arrays) if isinstance(real, ArrayDataset) else None  # (W,)
    span = text_span(spread) if spread is not None else None  # where splice cuts
    cfg = resolve_defaults(cfg, init, resume, len(train_set), getattr(real, "labels", []), spread, span, group.world)
    spec = ModelSpec(cfg.arch, converter.alphabet, converter.length, pre, label_rules(cfg, init),
                     fixed_length=converter.fixed)
    model_args = dict(init["model_args"]) if init is not None else asdict(ModelConfig(
        arch=cfg.arch, n_classes=len(converter.alphabet), n_positions=converter.length or 0,
        in_channels=pre.in_channels, img_h=pre.height, img_w=pre.width))
    n_images = len(data.labels) if data is not None else 0
    start = base_start(cfg, model_args, spec.alphabet, pre.channels, events) if init is None else None
    return Run(cfg, given, spec, model_args, train_set, val, span, n_images, fingerprint(data), group, events,
               start), init


def begin(run: Run, resume: dict[str, Any] | None, init: dict[str, Any] | None, may_restart: bool) -> Attempt:
    """The model state, the plan and the saver of an attempt (continued from ``resume`` when given)."""
    cfg, group = run.cfg, run.group
    start = init if init is not None else {"model": run.start_weights} if run.start_weights is not None else None
    state = build_state(cfg, run.train_set, run.model_args, start, group, group.device)
    budget = 60 * cfg.time_budget if cfg.time_budget else plan.default_budget(len(run.train_set))
    schedule = plan.Plan(
        [plan.Cycle(1, cfg.epochs, cfg.lr)], cfg.epochs, budget, fixed=run.given.epochs is not None,
        may_grow=cfg.stretch, may_restart=may_restart, steps_per_epoch=len(state.loader),
        slow_start_applies=cfg.arch == "crnn" and not cfg.init_from, n_val=len(run.val.labels),
        n_classes=len(run.spec.alphabet), ctc=run.spec.converter.ctc, agree=lambda v: group.gather(v)[0])
    attempt = Attempt(run, state, schedule, BestSaver(cfg.out, run.model_args, run.spec, group.main), [])
    if resume is not None:
        restore(attempt, resume)
    return attempt


def restore(attempt: Attempt, resume: dict[str, Any]) -> None:
    """Continue a run from its resumable checkpoint: plan, optimizer, schedule, epoch, scores, weight average."""
    run, schedule = attempt.run, attempt.plan
    if resume.get("n_images") not in (None, run.n_images):
        raise DataError(f"the data has {run.n_images} labelled images, the resumed run had {resume['n_images']}: "
                        "its validation split would change; start a new run (another --out) instead")
    if resume.get("data_sha256") not in (None, run.data_sha256):
        raise DataError(f"the {run.n_images} labelled images are not the ones the resumed run read (other names, "
                        "labels or sizes): its validation split would change; start a new run (another --out) "
                        "instead")
    cycles, schedule.planned, saved_length = resumed_cycles(resume, run.cfg.epochs, run.cfg.lr)
    schedule.cycles = cycles
    if cycles[-1].epochs != saved_length:
        change = "extending" if cycles[-1].epochs > saved_length else "shortening"
        run.events.note(f"{change} the schedule from {cycles[-1].first + saved_length - 1} to {run.cfg.epochs} "
                        "epochs")
    attempt.state.restore(resume, cycles[-1].peak, cycles[-1].epochs, saved_length)
    attempt.start = schedule.start = resume["epoch"] + 1
    attempt.history[:] = resume["history"]
    attempt.saver.resumed(resume)
    run.events.note(f"resuming at epoch {attempt.start} of {run.cfg.epochs} from {run.cfg.resume}")


# ------------------------------------------------------------------------- the epochs

def run_epoch(attempt: Attempt, epoch: int) -> None:
    """Train one epoch, validate, report its line, keep the best weights and write a save point if due."""
    run, state, cfg = attempt.run, attempt.state, attempt.cfg
    total, heads, batches = loop.train_epoch(state, cfg, run.spec.converter, run.span, epoch, run.group)
    sums = run.group.sum([total, batches] + heads)
    loss, per_head = sums[0] / sums[1], [h / sums[1] for h in sums[2:]]
    if not math.isfinite(loss):  # every process sees the summed loss: all stop together
        raise Diverged(f"the training loss is not finite in epoch {epoch} (peak learning rate {cfg.lr:g}): the "
                       "training diverged, and nothing of that epoch was saved; give a lower --lr")
    record = {"epoch": epoch, "loss": loss, "head_loss": per_head, "time": time.time() - attempt.plan.started}
    line = f"epoch {epoch}/{cfg.epochs} loss {loss:.4f}"
    if per_head:
        line += " (" + ", ".join(f"head {i} {h:.4f}" for i, h in enumerate(per_head, 1)) + ")"
    scores = None
    if run.val.labels:
        scores, _, _ = loop.validate(state.saved_model, run.val, run.spec.converter, state.device, run.group)
        record.update({k: scores[k] for k in ("sequence_accuracy", "character_accuracy", "position_accuracy")})
        line += "\n  " + format_scores(scores)
    attempt.history.append(record)
    improved = attempt.saver.observe(epoch, scores, attempt.plan.planned, state.saved_model)
    run.events("epoch", line + ("  [best]" if improved else ""), **record, epochs=cfg.epochs, best=improved)
    attempt.saver.save_point(epoch, improved, state, attempt.record())


def raw_accuracy(attempt: Attempt) -> float:
    """Validation accuracy of the weights being trained (where the saved ones are their average)."""
    run, state = attempt.run, attempt.state
    return loop.validate(state.raw_model, run.val, run.spec.converter, state.device, run.group)[0]["sequence_accuracy"]


def apply(attempt: Attempt, decision: plan.Decision) -> None:
    """Carry out the plan's decision on the learning-rate schedule, and say why."""
    cycle = attempt.plan.cycles[-1]
    if isinstance(decision, plan.Replan):
        attempt.state.resize_cycle(cycle.peak, cycle.epochs)
    elif isinstance(decision, plan.NewCycle):
        attempt.state.new_cycle(cycle.peak, cycle.epochs)
    attempt.run.events.note(decision.message)


def run_epochs(attempt: Attempt) -> plan.Restart | None:
    """The epochs, as the plan decides after each; returns the plan's restart, if it calls for one."""
    schedule, state = attempt.plan, attempt.state
    schedule.started = time.time()
    epoch = attempt.start
    while epoch <= schedule.epochs:
        state.set_epoch(epoch)
        t = time.time()
        run_epoch(attempt, epoch)
        report = plan.EpochReport(attempt.history, time.time() - t,
                                  (lambda: raw_accuracy(attempt)) if state.ema is not None else None)
        for decision in schedule.after_epoch(epoch, report):
            if isinstance(decision, plan.Restart):
                return decision
            apply(attempt, decision)
        epoch += 1
    attempt.saver.save_point(epoch - 1, False, state, attempt.record(), final=True)
    return None


def restart_config(run: Run, restart: plan.Restart) -> tuple[TrainConfig, str]:
    """How a run stuck at chance starts again, and the line that says so: the CNN as a CRNN, a run from
    a checkpoint at a third of the rate, a CRNN from another initialisation (seed + 1, the same validation
    split; random weights after the base model's), at a third of the rate if at chance."""
    cfg = run.cfg
    if cfg.arch == "cnn" and not cfg.init_from:
        new, change = replace(run.given, arch="crnn"), "starting again as a CRNN, which reads text at any place"
    elif cfg.init_from or cfg.arch != "crnn":
        new, change = replace(run.given, lr=cfg.lr / 3), f"starting again at learning rate {cfg.lr / 3:.2g}"
    else:
        lr = cfg.lr / 3 if restart.chance else cfg.lr
        new = replace(run.given, seed=cfg.seed + 1, split_seed=cfg.val_seed, lr=lr,
                      from_scratch=cfg.from_scratch or run.start_weights is not None)
        change = ("starting again from random weights" if run.start_weights is not None else
                  "starting again from another initialisation") + f" (seed {new.seed})" + \
            (f" at learning rate {lr:.2g}" if restart.chance else "")
    return new, f"after {plural(restart.epoch, 'epoch')} the {cfg.arch} still reads {restart.read}: {change}"


def attempts(cfg: TrainConfig, resume: dict[str, Any] | None, group: ProcessGroup, events: Events,
             pseudo: LabelledImages | None, current: list[Attempt]) -> Attempt:
    """Set up and train; a run the plan finds stuck at chance (or a CRNN slow to start) starts once
    more, changed, with what is left of the budget. ``current`` holds the attempt under way."""
    run, init = set_up(cfg, resume, group, events, pseudo)
    may_restart = resume is None
    while True:
        attempt = begin(run, resume, init, may_restart)
        current.append(attempt)
        events("start", describe(run, attempt.plan.budget), arch=run.cfg.arch, epochs=run.cfg.epochs,
               train_images=len(run.train_set), val_images=len(run.val.labels), budget_s=attempt.plan.budget,
               out=run.cfg.out)
        restart = run_epochs(attempt)
        if restart is None:
            return attempt
        new, message = restart_config(run, restart)
        events.note(message)
        torch.manual_seed(new.seed)
        spent = (time.time() - attempt.plan.started) / 60
        left = (cfg.time_budget or attempt.plan.budget / 60) - spent  # the retry gets what is left of the budget
        run, init = set_up(replace(new, time_budget=max(1.0, left)), None, group, events, pseudo)
        resume, may_restart = None, False


# ------------------------------------------------------------------------ the whole run

def train_supervised(cfg: TrainConfig, events: Events, pseudo: LabelledImages | None = None,
                     advise: bool = True) -> TrainResult:
    """Train per ``cfg`` (which is not changed); writes checkpoints on rank 0. ``pseudo``-labelled
    images join the training set but never the validation split. ``advise``: report the result's
    ``advice``, if any (self-training's rounds leave it to the round kept).

    Raises ``ConfigError`` for settings that cannot work (before anything is read), ``DataError``
    for unusable data, ``CheckpointError`` for a bad checkpoint and ``OutputBusy`` when another
    run is writing the same ``out``.
    """
    cfg, resume = prepare(cfg)
    group = ProcessGroup()
    lock = output_lock(cfg.out) if group.main else contextlib.nullcontext()
    finished = False
    try:
        with lock:
            result = train_locked(cfg, resume, group, events if group.main else silent(), pseudo, advise)
        finished = True
        return result
    finally:
        group.close(finished)


def train_locked(cfg: TrainConfig, resume: dict[str, Any] | None, group: ProcessGroup, events: Events,
                 pseudo: LabelledImages | None, advise: bool) -> TrainResult:
    """``train_supervised`` once this process may write ``cfg.out``."""
    group.setup(pick_device(cfg.device))
    if group.main:
        for f in remove_stale_temporaries(cfg.out) + remove_stale_temporaries(last_path(cfg.out)):
            events.note(f"note: removed {f.name}, left by an interrupted save")
    torch.manual_seed(cfg.seed)
    if group.device.type == "cpu" and not group.enabled:
        torch.set_num_threads(cfg.threads or default_threads())
    current: list[Attempt] = []
    try:
        attempt = attempts(cfg, resume, group, events, pseudo, current)
    except KeyboardInterrupt:
        saver = current[-1].saver if current else None
        events("interrupted", "\ninterrupted: " + (
            f"saved up to epoch {saver.saved_epoch}, the best of them in {cfg.out}; continue with --resume"
            if saver is not None and saver.saved else "no epoch had finished, nothing was saved"))
        raise
    return conclude(attempt, advise)


def conclude(attempt: Attempt, advise: bool) -> TrainResult:
    """Report the run, finish its outputs, and what ``train`` returns."""
    run, saver, cfg = attempt.run, attempt.saver, attempt.cfg
    seconds = time.time() - attempt.plan.started
    summary = (f"best epoch {saver.best.get('epoch')}: sequence accuracy {100 * saver.best['sequence_accuracy']:.2f}%"
               if run.val.labels else "no validation images, saved the last epoch")
    trained = cfg.epochs - attempt.start + 1
    why = f", as {attempt.plan.ending}" if attempt.plan.ending else ""
    run.events("trained", f"trained {plural(trained, 'epoch')} in {seconds:.1f}s{why}; {summary} -> {cfg.out}",
               stopped=attempt.plan.ending)
    advice = guessing_advice(attempt)
    if advice and advise:
        run.events.note(advice)
    if run.group.main:
        finish(attempt)
    run.events("done", epochs_trained=trained, seconds=seconds, best=saver.best, out=cfg.out)  # a run's last event
    return TrainResult(Path(cfg.out), saver.best, cfg, seconds, attempt.history, validation=run.val, advice=advice)


def guessing_advice(attempt: Attempt) -> str:
    """For a run on labelled files whose best model still reads its validation split no better than
    guessing: a warning saying what the user can do; else ""."""
    run, best = attempt.run, attempt.saver.best
    n_classes = len(run.spec.alphabet)
    if not run.n_images or run.cfg.val_split <= 0 or not plan.guessing(best, n_classes):
        return ""
    longer = "more --epochs" if attempt.plan.fixed else "a longer --time-budget"
    return (f"warning: the best model reads {100 * best['character_accuracy']:.0f}% of the validation "
            f"characters, no better than guessing among {n_classes}: check that the file names are the texts in "
            f"their images; if they are, these captchas need more than {plural(run.n_images, 'labelled image')} "
            f"or {longer}")


def finish(attempt: Attempt) -> None:
    """Calibrate the best checkpoint, show its validation mistakes, plot the curves, drop the resume file."""
    run, state = attempt.run, attempt.state
    cfg, val, events = run.cfg, run.val, run.events
    if attempt.saver.best_state is not None:
        state.raw_model.load_state_dict(attempt.saver.best_state)
    temperature = 1.0
    if val.arrays is None or not val.labels:
        events.note("note: no validation images, so the confidence is not calibrated (temperature 1) and there "
                    "is no accept threshold")
    else:
        cal = calibrate_checkpoint(cfg.out, val.arrays, val.labels, cfg.target_precision)
        events("calibrated", cal.describe(), **asdict(cal))
        temperature = cal.temperature
        report_mistakes(attempt, temperature)
    plot = plot_path(cfg)
    if plot is not None and attempt.history:
        save_plot(attempt.history, plot)
    Path(last_path(cfg.out)).unlink(missing_ok=True)


def report_mistakes(attempt: Attempt, temperature: float) -> None:
    """The best model's validation mistakes: how many, and the first ``--show-errors`` of them."""
    run, state = attempt.run, attempt.state
    val = run.val
    preds, confs = evaluate(state.raw_model, run.spec.converter, val.arrays, state.device, temperature=temperature)
    wrong = sum(p != t for p, t in zip(preds, val.labels))
    text = f"validation mistakes of the best model: {wrong}"
    if not wrong or run.cfg.show_errors == 0:
        text += " (--show-errors N lists them)" if wrong else ""
    else:
        rows = min(wrong, run.cfg.show_errors)
        text += (f", the first {rows}:" if rows < wrong else ":") + "\n" + \
            mistakes_table(val.names, val.labels, preds, confs, run.cfg.show_errors)
    run.events("mistakes", text, wrong=wrong)
