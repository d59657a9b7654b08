"""Semi-supervised training: self-training on the unlabelled captchas a user already has.

Round 0 trains on the labelled images alone; with ``--arch auto`` and fewer than ``SMALL_SET``
labels it is a CRNN, whose one per-column classifier learns from every labelled character at
every place, where the CNN's position heads each see one character per image, and each of its
epochs mixes in generated captchas of the labels' alphabet and length, which teach the shapes of
the characters that a few dozen labels cannot. Each further
round reads the unlabelled images with the best model so far and keeps a reading as a
pseudo-label only when it is stable: the clean image and ``VIEWS`` slightly perturbed copies
(shift, rotation, scale, contrast) all read the same text; stable readings are trusted unless the
validation split's stable readings show them right less often than ``MIN_PRECISION`` (see
``trusted``). A fresh model then trains on the labelled images plus those pseudo-labels; the
validation split stays labelled images only, and a round is kept only if it reads that split at
least as well as the round before. Too few stable readings, untrusted ones, or a worse round, and
training stops with the better model and says so; when that happens right after round 0 and time
is left, round 0 first trains once more from another seed, as one draw of a short run on few
labels can fall far below the next. A round with pseudo-labels starts only while ``ROUND_SHARE``
of the budget is left, and the second try of round 0 leaves that much.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from captcha_recognize.data.arrays import to_arrays
from captcha_recognize.data.augment import Augment, augment
from captcha_recognize.data.folders import LabelledImages, labelled, list_images, load_images
from captcha_recognize.errors import ConfigError, DataError
from captcha_recognize.files import output_lock
from captcha_recognize.reading.calibration import binomial_cdf
from captcha_recognize.reading.checkpoint import atomic_save, load_checkpoint
from captcha_recognize.reading.inference import infer
from captcha_recognize.reading.recognizer import CaptchaRecognizer
from captcha_recognize.text import plural, shown
from captcha_recognize.training.config import TrainConfig, plot_path
from captcha_recognize.training.events import Events
from captcha_recognize.training.plan import default_budget
from captcha_recognize.training.plot import save_plot
from captcha_recognize.training.recipe import FIRST_LR, ROUND_EMA, SELF_TRAINING_BUDGET, SMALL_SET, SYNTHETIC_MIX
from captcha_recognize.training.result import TrainResult
from captcha_recognize.training.supervised import prepare, train_supervised
from captcha_recognize.training.task import label_rules, without_kept

VIEWS = 4  # perturbed copies that must read like the clean image
WEAK = Augment(shift=0.03, rotate=2.0, shear=0.05, scale=0.04, brightness=0.1, contrast=0.1, noise=0.02, lines=0.0)
MIN_SHARE = 0.05  # below this share of stable readings a round is not worth training
FIRST_SHARE = 0.4  # share of the budget the labelled-only round may take: the rounds after it train on more images
MIN_PRECISION = 0.9  # share of right stable readings that trusted() tests the validation split against
DOUBT = 0.1  # trusted()'s significance: how rarely a reader right MIN_PRECISION of the time may do as badly
AGAIN_SEED = 1000  # the labelled-only round's second try trains from seed + AGAIN_SEED
ROUND_SHARE = 0.25  # a pseudo-label round starts only with this share of the budget left
AGAIN_MIN = 0.5  # the second try runs only with at least this share of the first try's time for it


def read_unlabelled(folder: str, recursive: bool, labelled: list[str]) -> tuple[list[Image.Image], list[Path]]:
    """The decoded images of ``folder`` whatever their names, without copies of the labelled images
    (a validation image read back as a pseudo-label would flatter the validation score); unreadable
    ones are skipped with one warning."""
    seen = {digest(f) for f in list_images(labelled, recursive)}
    files = [f for f in list_images([folder], recursive) if digest(f) not in seen]
    images, paths = load_images(files)
    if not images:
        raise DataError(f"no readable images in --unlabelled {shown(folder)}")
    return images, paths


def digest(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def labelled_texts(cfg: TrainConfig) -> list[str]:
    """The labels of the labelled images."""
    return [lab for _, lab in labelled(cfg.data, cfg.alphabet, label_rules(cfg, None), cfg.recursive)]


def stable_readings(rec: CaptchaRecognizer, arrays: torch.Tensor, seed: int,
                    lengths: set[int]) -> list[tuple[str, float] | None]:
    """Per uint8 image ``(N, C, H, W)``: ``(text, confidence)`` when the clean image and ``VIEWS``
    perturbed copies read the same text of a labelled length, else None."""
    texts, confs = infer(rec.logits, rec.converter, arrays, rec.batch_size)
    same = [len(t) in lengths for t in texts]
    gen = torch.Generator().manual_seed(seed)
    for _ in range(VIEWS):
        seen, _ = infer(lambda x: rec.logits(augment(torch.from_numpy(x), WEAK, gen)), rec.converter, arrays,
                        rec.batch_size)
        same = [ok and a == b for ok, a, b in zip(same, texts, seen)]
    return [(t, c) if ok else None for t, c, ok in zip(texts, confs, same)]


def stable_validation(rec: CaptchaRecognizer, result: TrainResult, seed: int, lengths: set[int]) -> tuple[int, int]:
    """How many stable readings of the labelled validation split are right, and how many there were."""
    val = result.validation
    readings = stable_readings(rec, val.arrays, seed, lengths)
    stable = [(x[0], t) for x, t in zip(readings, val.labels) if x is not None]
    return sum(a == b for a, b in stable), len(stable)


def trusted(right: int, stable: int) -> bool:
    """Whether ``right`` of ``stable`` validation readings fit a reader right ``MIN_PRECISION`` of the
    time: not when such a reader would read ``right`` or fewer at most ``DOUBT`` of the time (a one-sided
    binomial test), nor when nothing reads stably. One misread of a small split says little (3 of 4 and
    8 of 10 pass); 3 of 5, 7 of 10 and a model that reads most images stably and wrongly do not."""
    if stable == 0:
        return False
    return binomial_cdf(right, stable, MIN_PRECISION) > DOUBT


def round_config(cfg: TrainConfig, work: Path, r: int, deadline: float, share: float = 1.0) -> TrainConfig:
    """Round ``r``'s training: its own output, no plot, and ``share`` of what is left of the budget,
    which a cycle far from reading its validation images halfway grows to fill, as a plain run's
    does. Rounds save their trained weights, not a weight average, unless ``--ema`` says otherwise."""
    return replace(cfg, unlabelled=None, out=str(work / f"round{r}.pth"), plot="none", resume=None,
                   time_budget=share * max(1.0, (deadline - time.time()) / 60),
                   ema=ROUND_EMA if cfg.ema is None else cfg.ema)


def self_train(cfg: TrainConfig, events: Events) -> TrainResult:
    """Train on ``cfg.data`` plus pseudo-labels of ``cfg.unlabelled`` (see the module docstring)."""
    if cfg.resume is not None:
        raise ConfigError("unlabelled", "cannot be combined with --resume; rerun the self-training instead")
    if cfg.val_split <= 0:
        raise ConfigError("unlabelled", "needs a validation split (--val-split > 0) to tell whether pseudo-labels "
                                        "can be trusted")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("unlabelled", "runs as one process; start it without torchrun")
    base, _ = prepare(replace(cfg, unlabelled=None))  # checks the settings and outputs before any round
    work = Path(base.out).with_name(f".{Path(base.out).stem}-rounds")
    t0 = time.time()
    with output_lock(base.out):
        images, paths = read_unlabelled(cfg.unlabelled, cfg.recursive, base.data)
        texts = labelled_texts(base)
        budget = 60 * cfg.time_budget if cfg.time_budget else max(SELF_TRAINING_BUDGET,
                                                                   default_budget(len(images) + len(texts)))
        events.note(f"self-training: {plural(len(images), 'unlabelled captcha')} in {shown(cfg.unlabelled)}, "
                    f"up to {plural(cfg.rounds, 'round')} after the labelled-only one, time budget "
                    f"{budget / 60:.3g} min for all of them")
        pool = Pool(images, paths, work, t0 + budget, budget)
        try:
            best, history = run_rounds(base, texts, cfg.rounds, pool, events)
            publish(best, base.out, cfg, history)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    events("rounds_done", f"self-training done in {time.time() - t0:.1f}s; kept round {history[-1]['kept']}: "
           f"validation sequence accuracy {100 * best.best['sequence_accuracy']:.2f}% -> {base.out}",
           kept=history[-1]["kept"], seconds=time.time() - t0, best=best.best, out=base.out)
    if best.advice:
        events.note(best.advice)
    return TrainResult(Path(base.out), best.best, replace(best.config, out=base.out, unlabelled=cfg.unlabelled),
                       time.time() - t0, best.history, history, advice=best.advice)


@dataclass
class Pool:
    """The unlabelled captchas, where the rounds write, and the time they share (``deadline`` ends
    ``budget`` seconds)."""
    images: list[Image.Image]
    paths: list[Path]
    work: Path
    deadline: float
    budget: float


def first_round(base: TrainConfig, texts: list[str], work: Path, deadline: float) -> tuple[TrainConfig, str]:
    """The labelled-only round's training, with ``FIRST_SHARE`` of the budget, and the line that
    announces it. Under ``SMALL_SET`` labels it is a CRNN when the architecture is left to ``auto``,
    and a CRNN round mixes ``SYNTHETIC_MIX`` generated captchas of the labels' alphabet and length
    into each epoch unless ``--synthetic`` says otherwise (labels of one length only), and trains at
    ``FIRST_LR`` unless ``--lr`` says otherwise."""
    cfg = round_config(base, work, 0, deadline, FIRST_SHARE)
    few = len(texts) < SMALL_SET and not base.init_from
    notes = []
    if base.arch == "auto" and few and not base.length:
        cfg = replace(cfg, arch="crnn")
        notes.append(f"as a CRNN (with {len(texts)} labels, under {SMALL_SET}, it reads unlabelled captchas better "
                     "than the CNN; later rounds choose their own architecture)")
    if cfg.arch == "crnn" and few and base.synthetic is None and len({len(t) for t in texts}) == 1:
        cfg = replace(cfg, synthetic=SYNTHETIC_MIX)
        notes.append(f"with {SYNTHETIC_MIX} generated captchas of the labels' alphabet and length in each epoch "
                     "(--synthetic 0 to leave them out)")
    if cfg.arch == "crnn" and few and base.lr is None:
        cfg = replace(cfg, lr=FIRST_LR)
        notes.append(f"at learning rate {FIRST_LR:g} (--lr to choose)")
    return cfg, "round 0: the labelled images alone" + "".join(f", {n}" for n in notes)


def run_rounds(base: TrainConfig, texts: list[str], rounds: int, pool: Pool,
               events: Events) -> tuple[TrainResult, list[dict[str, Any]]]:
    """The labelled-only round and the self-training rounds, each with what is left of the pool's
    budget until its deadline; returns the kept round and a summary."""
    first, line = first_round(base, texts, pool.work, pool.deadline)
    events.note(line)
    best = train_supervised(first, events, advise=False)  # self_train gives the kept round's advice
    base, first = without_kept(base), without_kept(first)  # round 0 named the flags its checkpoint overrides
    if best.validation is None or not best.validation.labels:
        raise DataError("too few labelled images for a validation split: self-training needs one")
    lengths = labelled_lengths(best, texts)
    history = [{"round": 0, "pseudo": 0, "val": best.best["sequence_accuracy"], "kept": 0, "tries": 1, "kept_try": 1}]
    r, retried = 1, False
    while r <= rounds:
        if not (r == 1 and retried) and not round_fits(pool.deadline - time.time(), pool.budget):
            events.note(f"under {ROUND_SHARE:.0%} of the time budget is left: keeping round {history[-1]['kept']} "
                        "(--time-budget MINUTES for more rounds)")
            break
        readings, reading_s, trust = read_pool(best, base.seed + r, lengths, pool, r, events)
        kept = [i for i, x in enumerate(readings) if x is not None]
        if not trust or len(kept) < MIN_SHARE * len(pool.images):
            again = None if retried or r != 1 else try_round_0_again(first, best, history, pool, reading_s, events)
            retried = retried or again is not None
            if again is not None and again is not best:
                best = again
                continue
            events.note(f"pseudo-labels are not confident enough: keeping round {history[-1]['kept']}"
                        + (" (labelled images only)" if history[-1]["kept"] == 0 else ""))
            break
        pseudo = LabelledImages([pool.images[i] for i in kept], [readings[i][0] for i in kept],
                                [pool.paths[i] for i in kept])
        result = train_supervised(round_config(base, pool.work, r, pool.deadline), events, pseudo=pseudo, advise=False)
        history.append(round_summary(r, result, best, history, [pool.paths[i] for i in kept],
                                     [readings[i][0] for i in kept]))
        if result.best["sequence_accuracy"] < best.best["sequence_accuracy"]:
            events.note(f"round {r} read the validation split worse ({100 * result.best['sequence_accuracy']:.2f}% "
                        f"against {100 * best.best['sequence_accuracy']:.2f}%): keeping round {history[-1]['kept']}")
            break
        best = result
        r += 1
    return best, history


def read_pool(best: TrainResult, seed: int, lengths: set[int], pool: Pool, r: int,
              events: Events) -> tuple[list[tuple[str, float] | None], float, bool]:
    """Round ``r`` reads the pool with the best model so far: the stable readings, the seconds that took
    (the next round reads the pool again), and whether the validation split's stable readings trust them."""
    started, rec = time.time(), CaptchaRecognizer(best.out)
    right, n_stable = stable_validation(rec, best, seed, lengths)
    trust = trusted(right, n_stable)
    readings = stable_readings(rec, to_arrays(pool.images, rec.preprocess), seed, lengths)
    check = (f"{right} of the {n_stable} stable validation readings are right" if n_stable
             else "no validation image reads stably")
    if trust and right < MIN_PRECISION * n_stable:
        check += f", under {MIN_PRECISION:.0%} but too few to show they are worse"
    events.note(f"round {r}: {sum(x is not None for x in readings)} of {len(pool.images)} unlabelled captchas read "
                f"the same under {VIEWS} perturbations; {check}")
    return readings, time.time() - started, trust


def try_round_0_again(first: TrainConfig, best: TrainResult, history: list[dict[str, Any]], pool: Pool,
                      reading_s: float, events: Events) -> TrainResult | None:
    """When the pseudo-labels right after round 0 are not trusted and time is left: round 0 once more
    from another seed. Returns the better of the two tries (``best`` itself when the first stays), or
    None when no time is left for a second try."""
    seconds = again_seconds(60 * first.time_budget, pool.deadline - time.time(), pool.budget, reading_s)
    if not seconds:
        return None
    again = labelled_round_again(first, pool.work, seconds, events)
    history[0].update(tries=2, again_val=again.best["sequence_accuracy"])
    if not better(again, best):
        events.note("round 0's second try reads the validation split no better: the first goes on")
        return best
    events.note(f"round 0's second try reads the validation split better ({100 * again.best['sequence_accuracy']:.2f}% "
                f"against {100 * best.best['sequence_accuracy']:.2f}%): the unlabelled captchas are read with it")
    history[0].update(val=again.best["sequence_accuracy"], kept_try=2)
    return again


def round_summary(r: int, result: TrainResult, best: TrainResult, history: list[dict[str, Any]],
                  files: list[Path], labels: list[str]) -> dict[str, Any]:
    """Round ``r``'s line of the self-training history: its pseudo-labels, its validation score, the round kept."""
    score = result.best["sequence_accuracy"]
    return {"round": r, "pseudo": len(files), "val": score,
            "kept": r if score >= best.best["sequence_accuracy"] else history[-1]["kept"],
            "pseudo_files": [shown(f.name) for f in files], "pseudo_labels": labels}


def round_fits(left: float, budget: float) -> bool:
    """Whether a pseudo-label round may start with ``left`` of the ``budget`` seconds."""
    return left >= ROUND_SHARE * budget


def again_seconds(first: float, left: float, budget: float, reading: float) -> float:
    """Seconds for round 0's second try, given the first try's ``first`` seconds of budget: what
    ``left`` holds after a pseudo-label round's share and another ``reading`` of the pool, at most
    ``first``; 0 (no second try) when that is under ``AGAIN_MIN`` of ``first``."""
    seconds = min(first, left - ROUND_SHARE * budget - reading)
    return seconds if seconds >= AGAIN_MIN * first else 0.0


def labelled_round_again(first: TrainConfig, work: Path, seconds: float, events: Events) -> TrainResult:
    """The labelled-only round once more, for ``seconds``, from another seed (order, augmentation, and the
    initialisation of what the base model does not give) on the same validation split; it starts from the
    base model as the first did, which few labels need more than a new initialisation."""
    seed = first.seed + AGAIN_SEED
    events.note(f"pseudo-labels are not confident enough: round 0 once more from seed {seed} on the same split, "
                "keeping whichever reads the validation split better")
    budget = min(first.time_budget, seconds / 60)  # seconds / 60 can round above it
    return train_supervised(replace(first, seed=seed, split_seed=first.val_seed, out=str(work / "round0-again.pth"),
                                    time_budget=budget), events, advise=False)


def better(a: TrainResult, b: TrainResult) -> bool:
    """Whether ``a`` reads the validation split better than ``b``: more captchas, or as many and more characters."""
    key = lambda t: (t.best["sequence_accuracy"], t.best.get("character_accuracy", -1.0))  # noqa: E731
    return key(a) > key(b)


def labelled_lengths(result: TrainResult, texts: list[str]) -> set[int]:
    """The label lengths a pseudo-label may have: the model's one length (``fixed_length``), else those of
    the labels ``texts``."""
    fixed = CaptchaRecognizer(result.out).converter.fixed_length
    return {fixed} if fixed else {len(t) for t in texts}


def publish(best: TrainResult, out: str, cfg: TrainConfig, history: list[dict[str, Any]]) -> None:
    """Write the kept round's checkpoint to ``out``, recording the self-training in its config."""
    ckpt = load_checkpoint(best.out)
    ckpt["config"] = {**ckpt["config"], "out": out, "unlabelled": cfg.unlabelled, "rounds": cfg.rounds}
    ckpt["self_training"] = [{k: v for k, v in h.items() if not k.startswith("pseudo_")} for h in history]
    atomic_save(ckpt, out)
    plot = plot_path(replace(cfg, out=out))
    if plot is not None:
        save_plot(best.history, plot)
