"""Training, callable from Python without building argv strings:

    from training import TrainConfig, train
    result = train(TrainConfig(data=["../my_captchas"], arch="crnn", out="runs/my.pth"))
    print(result.best["sequence_accuracy"], result.out)

``train`` writes the best checkpoint (by validation sequence accuracy) to ``cfg.out`` and, while
training, the latest state to ``<out>_last.pth`` for ``resume``; both atomically. It runs as
one process or under ``torchrun`` (DistributedDataParallel; rank 0 prints and saves).
"""
from __future__ import annotations

import contextlib
import copy
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from runtime import ConfigError, check_writable, default_threads  # before torch loads: it sets how OpenMP threads wait

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, DataLoader, DistributedSampler
from tqdm import tqdm

import schedule
from augment import MAX_WARP, STROKES, WARP, augment, column_spread, evenly_spaced, splice, text_span
from calibration import TARGET_PRECISION, calibrate_run
from checkpoint import (DEFAULT_CHECKPOINT, CheckpointError, ModelSpec, atomic_save, checkpoint_dict, load_checkpoint, output_lock,
                        remove_stale_temporaries)
from dataset import (CHANNELS, IMAGE_EXTS, MIN_SIDE, ArrayDataset, DataError, LabelConverter, LabelledImages,
                     LabelRules, Preprocess, auto_size, find_ink, infer_alphabet, max_height, mixed_case, normalize, plural,
                     read_label_map, read_labelled, split_indices, to_arrays)
from metrics import format_scores, mistakes_table, score
from model import ModelConfig, build_model
from recognizer import evaluate, pick_device
from synthetic import SyntheticCaptchas

DEFAULT_STEPS = 1600  # optimizer steps of a default run
SMALL_SET, SMALL_SET_STEPS = 150, 2400  # sets under SMALL_SET training images get more steps
MIN_EPOCHS = 32  # large sets still get this many passes
SPLICE = 0.5  # --splice default where it applies (default_splice)
FEW_IMAGES = 100  # below this many training images, training warns
SAVE_EVERY = 20.0  # seconds between save points: Ctrl-C loses at most this much training


@dataclass
class TrainConfig:
    """Everything a training run is a function of; the command-line flags map onto these fields.
    ``None`` means "pick the default from the data" (see ``resolve_defaults``)."""
    data: list[str] | None = None  # folders/files of labelled images; None: train_images (unless synthetic only)
    arch: str = "auto"  # "cnn", "crnn", or "auto": chosen from the labels and images (choose_arch)
    epochs: int | None = None
    batch_size: int = 32
    lr: float | None = None  # peak learning rate; None: DEFAULT_LR of the architecture
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1  # CNN cross-entropy
    clip_grad: float = 5.0  # 0: off
    ema: float | None = None  # decay of the weight average that is validated and saved; 0: off; None: EMA_DECAY[arch]
    val_split: float = 0.1
    seed: int = 0
    split_seed: int | None = None  # seed of the validation split; None: seed
    device: str = "auto"
    out: str | None = None  # None: captcha_recognize.pth for train_images/, else runs/<folder>/model.pth
    resume: str | None = None  # checkpoint to continue from; "": <out>_last.pth
    init_from: str | None = None  # weights to start from (fine-tuning)
    alphabet: str | None = None
    case: str | None = None  # keep, lower, upper; None: keep, with a warning when labels mix cases
    label_map: str | None = None  # file of "FROM TO" character pairs for characters file names cannot hold
    recursive: bool = False  # also read the data folders' subfolders
    length: int | None = None  # CNN label length
    img_size: tuple[int, int] | None = None  # (width, height) of the model input
    channels: int | None = None  # 3 colour, 1 grey
    ink: str = "auto"  # auto: the CRNN adds a mask channel per flat colour the captchas are drawn in (find_ink); off
    splice: float | None = None
    strokes: str = "arcs"  # key of augment.STROKES
    warp: float | None = None  # max smooth displacement of training images, fraction of input height; None: WARP[arch]
    augment: bool = True
    synthetic: int | None = None  # freshly generated captchas added per epoch; None: none (selftrain.py may add some)
    unlabelled: str | None = None  # folder of unlabelled captchas for semi-supervised training (selftrain.py)
    rounds: int = 3  # with unlabelled: self-training rounds after the labelled-only one
    time_budget: float | None = None  # minutes training may take; None: schedule.default_budget
    stretch: bool = True  # a run far from reading its validation images halfway through grows to fill the budget
    workers: int | None = None  # DataLoader worker processes
    threads: int | None = None  # CPU threads; None: one per core
    amp: str = "auto"  # CUDA mixed precision: auto, bf16, fp16, off
    show_errors: int = 10  # validation mistakes printed at the end
    plot: str = "auto"  # training-curve PNG; auto: <out>.png, none: skip
    target_precision: float = TARGET_PRECISION  # accept threshold: validation answers at least this right
    quiet: bool = False  # no progress bars or per-epoch lines

    @property
    def val_seed(self) -> int:
        """The seed of the validation split."""
        return self.seed if self.split_seed is None else self.split_seed


# flags that define what a run learns: resuming with another value is an error, not a silent switch
RESUME_CONFLICTS = ("data", "arch", "alphabet", "case", "label_map", "recursive", "length", "img_size", "channels", "ink",
                    "seed", "split_seed", "val_split", "batch_size", "synthetic")
# how this call runs and reports, not what the run is: a resumed run takes them from the call
NOT_RESUMED = {"resume", "init_from", "device", "workers", "threads", "amp", "show_errors", "plot", "quiet",
               "time_budget"}
DEFAULT_LR = {"cnn": 3e-3, "crnn": 1e-3}  # peak of the one-cycle schedule per family
EMA_DECAY = {"cnn": 0.0, "crnn": 0.999}  # default decay of the saved weight average per family
MIN_SIZE = {"cnn": (MIN_SIDE, MIN_SIDE), "crnn": (8, MIN_SIDE), "auto": (8, MIN_SIDE)}  # smallest (width, height) each family allows


@dataclass
class Split:
    """Validation images as one uint8 tensor ``(N, C, H, W)``, their labels and names."""
    arrays: torch.Tensor | None = None
    labels: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)


@dataclass
class TrainResult:
    """What ``train`` returns: the best epoch's validation scores and where it was saved."""
    out: Path
    best: dict[str, Any]
    config: TrainConfig  # with every default resolved
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)  # self-training: one summary per round
    validation: Split | None = None  # the validation images, as uint8 arrays at the input size
    advice: str = ""  # a warning that the best model still reads no better than guessing, and what to do


# ------------------------------------------------------------------------ distributed

class Dist:
    """Process-group facts; a single process is rank 0 of world 1."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def setup(self, device: torch.device) -> torch.device:
        """Join the process group (NCCL on CUDA, Gloo on CPU); returns this rank's device."""
        if not self.enabled:
            return device
        if device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        self.device = device
        return device

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks."""
        if not self.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)  # NCCL needs CUDA tensors
        dist.all_reduce(t)
        return t.cpu().tolist()

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def close(self, finished: bool = False) -> None:
        """Leave the process group; after a finished run, only once every rank is done with it (a rank
        that tears down Gloo while another still uses it can abort at exit)."""
        if self.enabled and dist.is_initialized():
            if finished:
                dist.barrier()
            dist.destroy_process_group()


def make_sampler(dataset, d: Dist, seed: int) -> DistributedSampler:
    """Per-epoch shuffled shards (call ``set_epoch``); under DDP, ranks get disjoint shards."""
    return DistributedSampler(dataset, num_replicas=d.world, rank=d.rank, shuffle=True, seed=seed,
                              drop_last=d.enabled)


# -------------------------------------------------------------------------- defaults

def last_path(out: str | os.PathLike) -> str:
    """Path of the resumable latest-state checkpoint that goes with ``out``."""
    root, ext = os.path.splitext(os.fspath(out))
    return f"{root}_last{ext or '.pth'}"


def default_out(data: Sequence[str]) -> str:
    """``captcha_recognize.pth`` (the shipped demo model) for ``train_images/`` and generated
    captchas; for any other data ``runs/<its folder name>/model.pth``, so it is never overwritten."""
    if not data or [Path(d).resolve() for d in data] == [Path("train_images").resolve()]:
        return DEFAULT_CHECKPOINT
    first = Path(data[0]).resolve()
    name = first.parent.name if first.suffix.lower() in IMAGE_EXTS else first.name
    return str(Path("runs") / (name + ("-and-more" if len(data) > 1 else "")) / "model.pth")


def input_defaults(cfg: TrainConfig) -> TrainConfig:
    """The data folder, output and resume file when not given."""
    data = cfg.data
    if data is None:
        data = [] if cfg.synthetic and cfg.alphabet and cfg.length else ["train_images"]
    out = cfg.out or default_out(data)
    return replace(cfg, data=list(data), out=out, resume=last_path(out) if cfg.resume == "" else cfg.resume)


def check_config(cfg: TrainConfig) -> None:
    """Settings that cannot work whatever the data, checked before anything is loaded."""
    if cfg.arch not in MIN_SIZE:
        raise ConfigError("arch", f"must be one of {', '.join(MIN_SIZE)}, got {cfg.arch!r}")
    if cfg.img_size:
        (w, h), (mw, mh) = cfg.img_size, MIN_SIZE[cfg.arch]
        if w < mw or h < mh:
            family = "smaller family" if cfg.arch == "auto" else cfg.arch
            raise ConfigError("img_size", f"must be at least {mw}x{mh} for the {family}, got {w}x{h}")
    if cfg.case not in (None, "keep", "lower", "upper"):
        raise ConfigError("case", f"must be keep, lower or upper, got {cfg.case!r}")
    if cfg.strokes not in STROKES:
        raise ConfigError("strokes", f"must be one of {', '.join(STROKES)}, got {cfg.strokes!r}")
    if cfg.warp is not None and not 0 <= cfg.warp <= MAX_WARP:
        raise ConfigError("warp", f"must be in [0, {MAX_WARP:g}] (a fraction of the input height), got {cfg.warp!r}")
    if cfg.alphabet is not None and (not cfg.alphabet or len(set(cfg.alphabet)) != len(cfg.alphabet)):
        raise ConfigError("alphabet", f"must list each character once, got {cfg.alphabet!r}")
    pick_device(cfg.device)


def stored_config(ckpt: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's training config as ``TrainConfig`` fields (older checkpoints' spellings too)."""
    config = dict(ckpt.get("config") or {})
    if "no_augment" in config:
        config["augment"] = not config.pop("no_augment")
    if isinstance(config.get("img_size"), str):
        config["img_size"] = tuple(int(v) for v in config["img_size"].lower().split("x"))
    if isinstance(config.get("img_size"), list):
        config["img_size"] = tuple(config["img_size"])
    names = {f.name for f in fields(TrainConfig)} - NOT_RESUMED
    return {k: v for k, v in config.items() if k in names}


def same_setting(name: str, a: Any, b: Any) -> bool:
    """Whether two values of a setting mean the same (data folders compare as resolved paths)."""
    if name == "synthetic":
        return (a or 0) == (b or 0)
    if name in ("data", "label_map") and a is not None and b is not None:
        paths = lambda v: [Path(x).resolve() for x in ([v] if isinstance(v, str) else v)]  # noqa: E731
        return paths(a) == paths(b)
    return a == b


def with_resumed(cfg: TrainConfig) -> tuple[TrainConfig, dict[str, Any] | None]:
    """For a resumed run: the checkpoint, and the config it stored with this call's explicit
    settings (those that differ from ``TrainConfig``'s defaults) on top."""
    if cfg.resume is None:
        return cfg, None
    out = input_defaults(cfg).out
    path = cfg.resume or last_path(out)
    if cfg.resume == "" and not Path(path).is_file() and Path(out).is_file():
        raise CheckpointError(f"no resume file at {path}: a run that finished leaves none; start a new run from "
                              f"its weights with --init-from {out}")
    ckpt = load_checkpoint(path)
    if ckpt.get("optimizer") is None:
        last = last_path(path)
        hint = f"resume from {last}" if Path(last).is_file() else f"its run's {Path(last).name} is gone"
        raise CheckpointError(f"{path} is a best checkpoint without optimizer state, which a run cannot continue "
                              f"from: {hint}, or start a new run from its weights with --init-from {path}")
    stored, merged = stored_config(ckpt), {}
    for f in fields(TrainConfig):
        mine, explicit = getattr(cfg, f.name), getattr(cfg, f.name) != f.default
        theirs = stored.get(f.name, f.default)
        if explicit and f.name in RESUME_CONFLICTS and f.name in stored and not same_setting(f.name, mine, theirs):
            raise ConfigError(f.name, f"{mine} differs from the resumed run's {theirs} ({path}): leave it out to "
                                      "continue that run, or give another --out to start a new one")
        merged[f.name] = mine if explicit or f.name not in stored else theirs
    merged["resume"] = str(path)
    if merged["epochs"] is not None and merged["epochs"] < ckpt["epoch"]:
        raise ConfigError("epochs", f"the resumed run has already trained {plural(ckpt['epoch'], 'epoch')}: give "
                                    f"at least {ckpt['epoch']}, more to extend it")
    return TrainConfig(**merged), ckpt


def default_splice(arch: str, spread: torch.Tensor | None, span: tuple[float, float] | None,
                   labels: Sequence[str]) -> float:
    """``--splice`` default: ``SPLICE`` for the CNN, whose position heads otherwise memorise small
    sets; for the CRNN only on fixed-pitch text (``evenly_spaced``), where the cuts fall between
    characters rather than through them."""
    if arch == "cnn":
        return SPLICE
    lengths = {len(s) for s in labels}
    if spread is None or span is None or len(lengths) != 1:
        return 0.0
    return SPLICE if evenly_spaced(spread, span, lengths.pop()) else 0.0


def default_epochs(n_train: int, batch: int, world: int, target_steps: int | None = None) -> int:
    """Enough epochs for about ``target_steps`` optimizer steps (default: ``DEFAULT_STEPS``,
    ``SMALL_SET_STEPS`` under ``SMALL_SET`` training images), and at least ``MIN_EPOCHS``:
    small training sets get more epochs, so at least as many steps as large ones."""
    if target_steps is None:
        target_steps = SMALL_SET_STEPS if n_train < SMALL_SET else DEFAULT_STEPS
    steps = max(1, math.ceil(n_train / (batch * world)))  # optimizer steps per epoch
    return max(MIN_EPOCHS, math.ceil(target_steps / steps))


def resolve_defaults(cfg: TrainConfig, init: dict[str, Any] | None, resume: dict[str, Any] | None,
                     n_train: int, labels: Sequence[str], spread: torch.Tensor | None,
                     span: tuple[float, float] | None, world: int) -> TrainConfig:
    """The recipe's data-dependent defaults: architecture (a checkpoint's own when starting from
    one), learning rate, warp, weight average, splice probability and number of epochs."""
    arch = init["model_args"]["arch"] if init is not None else cfg.arch
    splice_p = cfg.splice if cfg.splice is not None else default_splice(arch, spread, span, labels)
    epochs = cfg.epochs
    if epochs is None:
        epochs = resume["config"]["epochs"] if resume else default_epochs(n_train, cfg.batch_size, world)
    warp = cfg.warp if cfg.warp is not None else WARP[arch]
    ema = cfg.ema if cfg.ema is not None else EMA_DECAY[arch]
    return replace(cfg, arch=arch, lr=cfg.lr or DEFAULT_LR[arch], warp=warp, ema=ema, splice=splice_p, epochs=epochs)


def label_rules(cfg: TrainConfig, init: dict[str, Any] | None) -> LabelRules:
    """How file names become labels: a checkpoint's own when starting from one, else the config's."""
    if init is not None:
        return ModelSpec.from_checkpoint(init).rules
    return LabelRules(cfg.case or "keep", read_label_map(cfg.label_map) if cfg.label_map else ())


def make_task(cfg: TrainConfig, data: LabelledImages | None,
              init: dict[str, Any] | None) -> tuple[LabelConverter, Preprocess]:
    """Alphabet, label length and input size: from a checkpoint when resuming/fine-tuning,
    else from the config, else inferred from the data."""
    if init is not None:
        spec = ModelSpec.from_checkpoint(init)
        return spec.converter, spec.preprocess
    labels = data.labels if data is not None else []
    alphabet = cfg.alphabet or infer_alphabet(labels)
    lengths = sorted({len(s) for s in labels}) or [cfg.length]
    length = cfg.length or lengths[-1]
    if cfg.arch == "cnn" and (cfg.length is None and len(lengths) > 1):
        raise DataError(f"labels have different lengths {lengths}: the CNN needs one length "
                        f"(give --length, or use --arch crnn)")
    if cfg.img_size:
        w, h = cfg.img_size
    elif data is not None:
        sizes = [im.size for im in data.images]
        w, h = auto_size(sizes, max_height(cfg.arch, sizes))
    else:
        w, h = 50, 22
    channels = cfg.channels or CHANNELS[cfg.arch]
    # ink channels for the CRNN only: the one flat colour percent4-digits' images share is their grey frame
    ink = find_ink(data.images) if data is not None and cfg.arch == "crnn" and cfg.ink == "auto" else ()
    ctc = cfg.arch == "crnn"  # a CRNN whose labels all have one length reads that length only
    fixed = ctc and len(lengths) == 1 and length is not None
    return LabelConverter(alphabet, length, ctc=ctc, fixed=fixed), Preprocess(w, h, channels, ink)


def kept_from_checkpoint(cfg: TrainConfig, spec: ModelSpec) -> list[str]:
    """One note per setting this call gives that a run from ``spec``'s weights cannot follow: those
    weights were made for the checkpoint's alphabet, length, input and label rules, which it keeps."""
    pre = spec.preprocess
    size = lambda wh: "x".join(map(str, wh))  # noqa: E731
    pairs = lambda m: ", ".join(" ".join(p) for p in m) or "none"  # noqa: E731
    given = [  # (this call's value or None when not given, the checkpoint's, the flag, the checkpoint's as text)
        (None if cfg.arch == "auto" else cfg.arch, spec.arch, f"--arch {cfg.arch}", f"architecture {spec.arch!r}"),
        (cfg.alphabet, spec.alphabet, f"--alphabet {cfg.alphabet}", f"alphabet {spec.alphabet!r}"),
        (cfg.length, spec.label_length, f"--length {cfg.length}",
         f"label length {spec.label_length}" if spec.label_length else "labels of any length"),
        (tuple(cfg.img_size) if cfg.img_size else None, (pre.width, pre.height), f"--img-size {size(cfg.img_size or ())}",
         f"input size {size((pre.width, pre.height))}"),
        (cfg.channels, pre.channels, f"--channels {cfg.channels}", "grey input" if pre.channels == 1 else "colour input"),
        (() if cfg.ink == "off" else None, pre.ink, "--ink off", ink_text(pre).removeprefix(" + ")),
        (cfg.case, spec.rules.case, f"--case {cfg.case}", f"case rule {spec.rules.case!r}"),
        (read_label_map(cfg.label_map) if cfg.label_map else None, spec.rules.label_map,
         f"--label-map {cfg.label_map}", f"label map ({pairs(spec.rules.label_map)})"),
    ]
    return [f"note: using the checkpoint's {theirs_text}, not {flag}: its weights were made for it"
            for mine, theirs, flag, theirs_text in given if mine is not None and mine != theirs]


def without_kept(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` less the settings a run from its ``--init-from`` checkpoint takes from the checkpoint
    instead: for runs after one whose notes (``kept_from_checkpoint``) have named them. ``--alphabet``
    stays, as it also chooses which labelled files are read."""
    if not cfg.init_from:
        return cfg
    return replace(cfg, arch=load_checkpoint(cfg.init_from)["model_args"]["arch"], length=None, img_size=None,
                   channels=None, ink="auto", case=None, label_map=None)


def choose_arch(data: LabelledImages | None, cfg: TrainConfig) -> tuple[str, str]:
    """``--arch auto``: the CNN when every label has one length and the characters sit at fixed,
    evenly spaced places (its position heads then each see one character), else the CRNN, which
    reads any length and layout. Returns the choice and the reason, for the log."""
    if cfg.length:
        return "cnn", f"--length {cfg.length} was given"
    if data is None:
        return "cnn", "generated captchas of one length"
    lengths = sorted({len(s) for s in data.labels})
    if len(lengths) > 1:
        return "crnn", f"the labels have {len(lengths)} lengths"
    sizes = [im.size for im in data.images]
    w, h = cfg.img_size or auto_size(sizes, max_height("cnn", sizes))
    spread = column_spread(to_arrays(data.images[:2000], Preprocess(w, h, CHANNELS["cnn"])))  # (W,)
    if evenly_spaced(spread, text_span(spread), lengths[0]):
        return "cnn", f"the {lengths[0]} characters sit at fixed, evenly spaced places"
    return "crnn", "the characters are not at fixed, evenly spaced places"


def warn_mixed_case(cfg: TrainConfig, labels: Sequence[str], log: Callable[..., None]) -> None:
    """Say once when the labels hold both cases of a letter and no --case was chosen."""
    both = mixed_case(labels)
    if both and cfg.case is None:
        log(f"warning: the labels hold both cases of {', '.join(both[:8])}{' ...' if len(both) > 8 else ''}: if "
            "the site ignores case, give --case lower (or upper) so each letter is learnt once; "
            "--case keep keeps them apart and silences this")


# -------------------------------------------------------------------------- datasets

def build_datasets(cfg: TrainConfig, data: LabelledImages | None, conv: LabelConverter, spec: Preprocess,
                   log: Callable[..., None], extra: LabelledImages | None = None
                   ) -> tuple[torch.utils.data.Dataset, Split]:
    """The training set and the validation split; validation comes from the real folder when there
    is one. ``extra`` images (pseudo-labelled ones) join the training set only."""
    parts: list[torch.utils.data.Dataset] = []
    val = Split()
    if data is not None:
        keep = [i for i, s in enumerate(data.labels) if conv.accepts(s)]
        if len(keep) < len(data.labels):
            log(f"warning: skipped {plural(len(data.labels) - len(keep), 'image')} whose label does not fit "
                f"alphabet {conv.alphabet!r}" + (f" and length {conv.fixed_length}" if conv.fixed_length else ""))
        if not keep:
            raise DataError("no image has a label that fits the alphabet and length")
        arrays = to_arrays([data.images[i] for i in keep], spec)  # (N, C, H, W) uint8
        labels = [data.labels[i] for i in keep]
        names = [data.paths[i].name for i in keep]
        tr, va = split_indices(len(labels), [cfg.val_split], cfg.val_seed) if cfg.val_split > 0 else (
            list(range(len(labels))), [])
        train_arrays, train_labels = arrays[tr], [labels[i] for i in tr]
        fit = [i for i, s in enumerate(extra.labels) if conv.accepts(s)] if extra is not None else []
        if fit:
            train_arrays = torch.cat([train_arrays, to_arrays([extra.images[i] for i in fit], spec)])
            train_labels += [extra.labels[i] for i in fit]
        parts.append(ArrayDataset(train_arrays, train_labels))
        if len(tr) < FEW_IMAGES and not cfg.synthetic and extra is None:
            log(f"warning: only {len(tr)} training images; real captchas need {FEW_IMAGES} or more "
                "labelled images to read well")
        if va:
            val = Split(arrays[va], [labels[i] for i in va], [names[i] for i in va])
    if cfg.synthetic:
        parts.append(SyntheticCaptchas(cfg.synthetic, conv.alphabet, conv.length, spec, seed=cfg.seed))
        if val.arrays is None:
            val = materialize(SyntheticCaptchas(max(200, cfg.synthetic // 20), conv.alphabet, conv.length, spec,
                                                seed=cfg.seed + 7919))
    if not parts or not len(parts[0]):
        raise DataError("nothing to train on")
    return (parts[0] if len(parts) == 1 else ConcatDataset(parts)), val


def materialize(ds: torch.utils.data.Dataset) -> Split:
    """All images and labels of a (small) dataset as one ``Split``."""
    items = [ds[i] for i in range(len(ds))]
    return Split(torch.stack([a for a, _ in items]), [s for _, s in items],
                 [f"synthetic #{i}" for i in range(len(items))])


# ----------------------------------------------------------------------------- losses

def compute_loss(logits: torch.Tensor, labels: Sequence[str], conv: LabelConverter,
                 label_smoothing: float) -> tuple[torch.Tensor, list[float]]:
    """Mean loss and per-head losses (CNN) for a batch of logits."""
    targets, lengths = conv.encode(labels)
    targets, logits = targets.to(logits.device), logits.float()
    if conv.ctc:
        log_probs = logits.log_softmax(-1).transpose(0, 1)  # (T, B, K + 1)
        t, b = log_probs.shape[:2]
        in_len = torch.full((b,), t, dtype=torch.long)
        loss = F.ctc_loss(log_probs, targets, in_len, lengths, blank=conv.blank, zero_infinity=True)
        return loss, []
    per_head = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), label_smoothing=label_smoothing,
                               reduction="none").view_as(targets).mean(0)  # (P,)
    return per_head.mean(), per_head.tolist()


class EMA:
    """Exponential moving average of a model's weights and BatchNorm statistics.

    The decay warms up as ``(1 + n) / (10 + n)`` over the first steps, so early averages
    are not dominated by the random initialisation.
    """

    def __init__(self, model: torch.nn.Module, decay: float, steps: int = 0):
        self.decay, self.steps = decay, steps
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.steps += 1
        d = min(self.decay, (1 + self.steps) / (10 + self.steps))
        for avg, cur in zip(self.model.state_dict().values(), model.state_dict().values()):
            if avg.dtype.is_floating_point:
                avg.lerp_(cur, 1 - d)
            else:
                avg.copy_(cur)


def is_best(s: dict[str, Any], best: dict[str, Any], epoch: int, epochs: int) -> bool:
    """Whether validation scores ``s`` of ``epoch`` make it the best epoch so far.

    Ties go to the later epoch: small validation splits tie often, and later weights have
    had more steps at a lower learning rate. For the same reason the second half of the
    schedule starts afresh: a lucky early epoch on a small validation split must not win
    over the annealed weights.
    """
    if epoch == epochs // 2 + 1:
        return True
    return s["sequence_accuracy"] > best["sequence_accuracy"] or (
        s["sequence_accuracy"] == best["sequence_accuracy"]
        and s["character_accuracy"] >= best.get("character_accuracy", -1))


def autocast_for(device: torch.device, amp: str):
    """Mixed-precision context for CUDA and its gradient scaler (fp16 only); a no-op elsewhere."""
    if device.type != "cuda" or amp == "off":
        return contextlib.nullcontext(), None
    dtype = torch.float16 if amp == "fp16" or (amp == "auto" and not torch.cuda.is_bf16_supported()) \
        else torch.bfloat16
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return torch.autocast("cuda", dtype=dtype), scaler


# --------------------------------------------------------------------------- training

@dataclass
class Run:
    """The state of one training run, shared by its epochs."""
    cfg: TrainConfig
    d: Dist
    device: torch.device
    log: Callable[..., None]
    spec: ModelSpec
    model_args: dict[str, Any]
    train_set: torch.utils.data.Dataset
    val: Split
    span: tuple[float, float] | None
    raw_model: torch.nn.Module
    model: torch.nn.Module
    loader: DataLoader
    sampler: DistributedSampler
    opt: torch.optim.Optimizer
    sched: Any
    ema: EMA | None
    amp_ctx: Any = None
    scaler: Any = None
    start: int = 1
    best: dict[str, Any] = field(default_factory=lambda: {"sequence_accuracy": -1.0})
    best_state: dict[str, torch.Tensor] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    saved: bool = False  # a checkpoint of this run exists
    saved_at: float = 0.0  # when the last save point was written (time.time())
    saved_epoch: int = 0  # the epoch it was written after
    best_unsaved: bool = False  # a new best epoch since then, kept in ``best_state`` only
    given: TrainConfig | None = None  # the config before the data-dependent defaults, for a retry
    can_retry: bool = True  # a run stuck at chance (or a CRNN slow to start) may start once more, changed
    plan_epochs: int = 0  # the planned cycle's length (extensions come after it)
    grown_from: int = 0  # the plan's length before it grew halfway (0: it did not)
    chance_due: int = 0  # the epoch that checks for a run stuck at chance, fixed by the plan at the first check
    segments: list[list[Any]] = field(default_factory=list)  # [first epoch, epochs, peak lr] per cycle
    budget: float = 0.0  # seconds this process may train
    started: float = 0.0  # when this process started training (time.time())
    epoch_times: list[float] = field(default_factory=list)  # each epoch's duration in this process
    n_images: int = 0  # labelled images read: a resumed run must find as many

    @property
    def converter(self) -> LabelConverter:
        return self.spec.converter

    @property
    def seconds_left(self) -> float:
        """What is left of this process's time budget."""
        return self.budget - (time.time() - self.started)


def train_epoch(run: Run, epoch: int) -> tuple[float, list[float], int]:
    """One pass over the loader; returns summed loss, summed per-head losses, batches."""
    cfg, model, conv = run.cfg, run.model, run.converter
    model.train()
    aug = replace(STROKES[cfg.strokes], warp=cfg.warp) if cfg.augment else None
    gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch * 1009 + run.d.rank)
    total, heads, batches = 0.0, [], 0
    bar = tqdm(run.loader, desc=f"epoch {epoch}/{cfg.epochs}", leave=False, dynamic_ncols=True,
               disable=None if run.d.main and not cfg.quiet else True)
    for arrays, labels in bar:
        x = normalize(arrays)  # (B, C, H, W)
        if aug is not None:
            x, labels = splice(x, labels, cfg.splice, run.span, gen)  # no-op at splice 0
            x = augment(x, aug, gen)
        x = x.to(run.device, non_blocking=True)
        with run.amp_ctx:
            logits = model(x)
        loss, per_head = compute_loss(logits, labels, conv, cfg.label_smoothing)
        step(run, loss)
        total += loss.item()
        heads = [a + b for a, b in zip(heads, per_head)] if heads else per_head
        batches += 1
        bar.set_postfix(loss=f"{total / batches:.4f}")
    return total, heads, batches


def step(run: Run, loss: torch.Tensor) -> None:
    """Backward pass, clipping, optimizer and scheduler step, weight average."""
    run.opt.zero_grad(set_to_none=True)
    if run.scaler is not None:
        run.scaler.scale(loss).backward()
        run.scaler.unscale_(run.opt)
    else:
        loss.backward()
    if run.cfg.clip_grad > 0:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.cfg.clip_grad)
    if run.scaler is not None:
        run.scaler.step(run.opt)
        run.scaler.update()
    else:
        run.opt.step()
    run.sched.step()
    if run.ema is not None:
        run.ema.update(run.raw_model)


def validate(model: torch.nn.Module, val: Split, conv: LabelConverter, device: torch.device,
             d: Dist) -> tuple[dict[str, Any], list[str], list[float]]:
    """Score the validation split, each rank reading its shard; all ranks get the same numbers."""
    shard = list(range(d.rank, len(val.labels), d.world))
    preds, confs = evaluate(model, conv, val.arrays[shard], device) if shard else ([], [])
    out_p, out_c = [""] * len(val.labels), [0.0] * len(val.labels)
    for idx, p, c in d.gather((shard, preds, confs)):
        for i, pi, ci in zip(idx, p, c):
            out_p[i], out_c[i] = pi, ci
    return score(out_p, val.labels), out_p, out_c


def save_state(run: Run, epoch: int, improved: bool, final: bool = False) -> None:
    """Rank 0: a save point, the best checkpoint and the resumable latest state written together, after
    the first epoch, at the end (``final``) and otherwise at most every ``SAVE_EVERY`` seconds. Between
    save points a new best is kept in memory (``run.best_state``), so the two files always agree."""
    if not run.d.main:
        return
    run.best_unsaved = run.best_unsaved or improved
    if final and run.saved_epoch == epoch:
        return
    if run.saved and not final and time.time() - run.saved_at < SAVE_EVERY:
        return
    extra = {"config": asdict(run.cfg), "epoch": epoch, "best": run.best, "history": run.history,
             "n_images": run.n_images, "schedule": {"plan_epochs": run.plan_epochs, "segments": run.segments}}
    if run.best_unsaved and run.best_state is not None:
        best = run.best["epoch"]  # the best file as it was when that epoch ended
        history = [h for h in run.history if h["epoch"] <= best]
        atomic_save(checkpoint_dict(run.best_state, run.model_args, run.spec, **{**extra, "epoch": best,
                                                                                "history": history},
                                    optimizer=None, scheduler=None, ema=None), run.cfg.out)
    ema = {"model": run.ema.model.state_dict(), "steps": run.ema.steps} if run.ema is not None else None
    atomic_save(checkpoint_dict(run.raw_model.state_dict(), run.model_args, run.spec, **extra,
                                optimizer=run.opt.state_dict(), scheduler=run.sched.state_dict(), ema=ema),
                last_path(run.cfg.out))
    run.saved, run.saved_at, run.saved_epoch, run.best_unsaved = True, time.time(), epoch, False


def run_epoch(run: Run, epoch: int, t0: float) -> None:
    """Train one epoch, validate, print its line, keep and save the best weights."""
    cfg = run.cfg
    total, heads, batches = train_epoch(run, epoch)
    eval_model = run.ema.model if run.ema is not None else run.raw_model  # the weights that get saved
    sums = run.d.sum([total, batches] + heads)
    loss, per_head = sums[0] / sums[1], [h / sums[1] for h in sums[2:]]
    record = {"epoch": epoch, "loss": loss, "head_loss": per_head, "time": time.time() - t0}
    line = f"epoch {epoch}/{cfg.epochs} loss {loss:.4f}"
    if per_head:
        line += " (" + ", ".join(f"head {i} {h:.4f}" for i, h in enumerate(per_head, 1)) + ")"
    if run.val.labels:
        s, _, _ = validate(eval_model, run.val, run.converter, run.device, run.d)
        record.update({k: s[k] for k in ("sequence_accuracy", "character_accuracy", "position_accuracy")})
        line += "\n  " + format_scores(s)
        improved = is_best(s, run.best, epoch, run.plan_epochs)
    else:
        s, improved = {"sequence_accuracy": 0.0}, True
    run.history.append(record)
    if improved:
        run.best = {"epoch": epoch, **s}
        run.best_state = copy.deepcopy(eval_model.state_dict())
        line += "  [best]"
    run.log(line)
    save_state(run, epoch, improved)


def read_data(cfg: TrainConfig, init: dict[str, Any] | None, log: Callable[..., None]) -> LabelledImages | None:
    """The labelled images of ``cfg.data`` (None for synthetic-only runs)."""
    if not cfg.data:
        return None
    data = read_labelled(cfg.data, cfg.alphabet, label_rules(cfg, init), cfg.recursive)
    if init is None:
        warn_mixed_case(cfg, data.labels, log)
    return data


def build_network(model_args: dict[str, Any], init: dict[str, Any] | None, device: torch.device) -> torch.nn.Module:
    """The model, with the checkpoint's weights when starting from one."""
    model = build_model(ModelConfig(**model_args))
    if init is not None:
        try:
            model.load_state_dict(init["model"])
        except RuntimeError as e:
            raise CheckpointError(f"the checkpoint's weights do not fit its model config: "
                                  f"{str(e).splitlines()[0]}") from None
    return model.to(device, memory_format=torch.channels_last)


def make_loader(cfg: TrainConfig, train_set: torch.utils.data.Dataset, d: Dist,
                device: torch.device) -> tuple[DataLoader, DistributedSampler]:
    """Shuffled batches; on the CPU from memory, on CUDA (or for synthetic data) through workers."""
    sampler = make_sampler(train_set, d, cfg.seed)
    workers = cfg.workers if cfg.workers is not None else (
        min(4, os.cpu_count() or 1) if device.type == "cuda" or cfg.synthetic else 0)
    loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler, num_workers=workers,
                        pin_memory=device.type == "cuda", drop_last=len(train_set) > cfg.batch_size * d.world,
                        persistent_workers=workers > 0 and not any(  # workers would keep epoch 1's draws
                            hasattr(p, "set_epoch") for p in getattr(train_set, "datasets", [train_set])))
    return loader, sampler


def setup(cfg: TrainConfig, resume: dict[str, Any] | None, d: Dist, device: torch.device,
          log: Callable[..., None], extra: LabelledImages | None = None, can_retry: bool = True) -> Run:
    """Read the data, resolve the defaults, build the model, loader and optimizer (and restore a resumed run)."""
    given = cfg
    init = resume or (load_checkpoint(cfg.init_from) if cfg.init_from else None)
    if init is not None and resume is None:
        for note in kept_from_checkpoint(cfg, ModelSpec.from_checkpoint(init)):
            log(note)
    if init is not None and init["model_args"]["arch"] != cfg.arch:
        if cfg.arch == "auto":
            log(f"arch auto: {init['model_args']['arch']}, as the --init-from checkpoint is one")
        cfg = replace(cfg, arch=init["model_args"]["arch"])
    data = read_data(cfg, init, log)
    if cfg.arch == "auto":
        arch, why = choose_arch(data, cfg)
        log(f"arch auto: {arch}, as {why} (--arch cnn or crnn to choose)")
        cfg = replace(cfg, arch=arch)
        check_config(cfg)
    conv, pre = make_task(cfg, data, init)
    train_set, val = build_datasets(cfg, data, conv, pre, log, extra)
    real = getattr(train_set, "datasets", [train_set])[0]
    spread = column_spread(real.arrays) if isinstance(real, ArrayDataset) else None  # (W,)
    span = text_span(spread) if spread is not None else None  # where splice cuts
    cfg = resolve_defaults(cfg, init, resume, len(train_set), getattr(real, "labels", []), spread, span, d.world)
    spec = ModelSpec(cfg.arch, conv.alphabet, conv.length, pre, label_rules(cfg, init), fixed_length=conv.fixed)
    model_args = dict(init["model_args"]) if init is not None else asdict(ModelConfig(
        arch=cfg.arch, n_classes=len(conv.alphabet), n_positions=conv.length or 0, in_channels=pre.in_channels,
        img_h=pre.height, img_w=pre.width))
    raw_model = build_network(model_args, init, device)
    model = torch.nn.parallel.DistributedDataParallel(raw_model) if d.enabled else raw_model
    loader, sampler = make_loader(cfg, train_set, d, device)
    opt = torch.optim.AdamW(raw_model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = schedule.one_cycle(opt, cfg.lr, cfg.epochs * len(loader))
    amp_ctx, scaler = autocast_for(device, cfg.amp)
    ema = EMA(raw_model, cfg.ema) if cfg.ema > 0 else None
    run = Run(cfg, d, device, log, spec, model_args, train_set, val, span, raw_model, model, loader, sampler,
              opt, sched, ema, amp_ctx, scaler, given=given, can_retry=can_retry, plan_epochs=cfg.epochs,
              segments=[[1, cfg.epochs, cfg.lr]])
    run.budget = 60 * cfg.time_budget if cfg.time_budget else schedule.default_budget(len(train_set))
    run.n_images = len(data.labels) if data is not None else 0
    if resume is not None:
        restore(run, resume)
    return run


def restore(run: Run, resume: dict[str, Any]) -> None:
    """Continue a run from its resumable checkpoint: optimizer, schedule, epoch, scores, weight average.
    A run resumed with more epochs, or with more batches an epoch, keeps its step on the longer cycle."""
    if resume.get("n_images") not in (None, run.n_images):
        raise DataError(f"the data has {run.n_images} labelled images, the resumed run had {resume['n_images']}: "
                        "its validation split would change; start a new run (another --out) instead")
    epochs = resume["config"]["epochs"]
    plan = resume.get("schedule") or {"plan_epochs": epochs, "segments": [[1, epochs, run.cfg.lr]]}
    run.plan_epochs, run.segments = plan["plan_epochs"], [list(x) for x in plan["segments"]]
    first, n, peak = run.segments[-1]
    run.sched = schedule.one_cycle(run.opt, peak, n * len(run.loader))
    run.opt.load_state_dict(resume["optimizer"])  # after the schedule, whose creation resets the rates
    run.sched.load_state_dict(resume["scheduler"])
    if run.cfg.epochs != first + n - 1:
        run.log(f"extending the schedule from {first + n - 1} to {run.cfg.epochs} epochs")
        run.segments[-1][1] = run.cfg.epochs - first + 1
        if len(run.segments) == 1:
            run.plan_epochs = run.cfg.epochs
    if run.sched.total_steps != run.segments[-1][1] * len(run.loader):
        run.sched = schedule.replan(run.sched, peak, run.segments[-1][1] * len(run.loader))
    run.start, run.best, run.history = resume["epoch"] + 1, resume["best"], resume["history"]
    if run.ema is not None and resume.get("ema") is not None:
        run.ema.model.load_state_dict(resume["ema"]["model"])
        run.ema.steps = resume["ema"]["steps"]
    if Path(run.cfg.out).is_file():
        run.best_state = load_checkpoint(run.cfg.out)["model"]
    run.saved, run.saved_at, run.saved_epoch = True, time.time(), resume["epoch"]
    run.log(f"resuming at epoch {run.start} of {run.cfg.epochs} from {run.cfg.resume}")


# ----------------------------------------------------------------- how long training runs

class StuckAtChance(Exception):
    """Raised by ``check_chance``: the run starts again with ``cfg``, for the reason in ``message``."""

    def __init__(self, cfg: TrainConfig, message: str):
        super().__init__(message)
        self.cfg, self.message = cfg, message


def agreed(run: Run, value: Any) -> Any:
    """Rank 0's ``value`` on every rank: decisions from clock readings must not differ between ranks."""
    return run.d.gather(value)[0]


def fit_budget(run: Run, epoch: int) -> None:
    """After the first epoch, and each ``schedule.REFIT_SHARE`` of the plan after it: shorten the current
    cycle if the rest of it, at the pace of the latest epochs, would overrun the budget (epochs can slow
    down as a run goes on)."""
    every = max(1, math.ceil(schedule.REFIT_SHARE * run.plan_epochs))
    if epoch >= run.cfg.epochs or (epoch != run.start and epoch % every):
        return
    pace = schedule.recent_pace(run.epoch_times)
    n = agreed(run, schedule.epochs_in_budget(run.cfg.epochs, epoch, pace, run.seconds_left))
    if n >= run.cfg.epochs:
        return
    run.log(f"the time budget ({run.budget / 60:.3g} min) holds {n} of the {run.cfg.epochs} planned epochs "
            f"at {pace:.2g} s an epoch: the schedule is shortened to fit (--time-budget MINUTES for more)")
    resize_cycle(run, n)


def epochs_chosen(run: Run) -> bool:
    """Whether the run keeps a given number of epochs: --epochs, or a resumed run's plan."""
    return run.given is None or run.given.epochs is not None


def stretch(run: Run, epoch: int) -> None:
    """At the planned cycle's midpoint: a run that reads fewer than ``schedule.STRETCH_BELOW`` of its
    validation images with its trained weights and with their average alike needs more steps than
    planned, so the cycle grows (once) to what the budget holds, at most ``schedule.STRETCH_MAX`` times the plan."""
    if epochs_chosen(run) or not run.cfg.stretch or run.grown_from or len(run.segments) > 1 \
            or len(run.val.labels) < schedule.STRETCH_MIN_VAL or epoch != max(2, run.plan_epochs // 2):
        return
    acc = run.history[-1].get("sequence_accuracy", 1.0)
    if run.ema is not None:  # the average lags behind the trained weights early on, and smooths their noise later
        acc = max(acc, validate(run.raw_model, run.val, run.converter, run.device, run.d)[0]["sequence_accuracy"])
    n = agreed(run, schedule.grown_epochs(run.cfg.epochs, epoch, acc, run.epoch_times, run.seconds_left))
    if n <= run.cfg.epochs:
        return
    held = f"{schedule.STRETCH_MAX} times the plan" if n >= schedule.STRETCH_MAX * run.cfg.epochs else \
        f"what the time budget ({run.budget / 60:.3g} min) holds"
    run.log(f"validation reads {100 * acc:.1f}% halfway through the plan: the schedule grows from "
            f"{run.cfg.epochs} to {n} epochs, {held}")
    run.grown_from = run.plan_epochs
    resize_cycle(run, n)


def resize_cycle(run: Run, n: int) -> None:
    """Make the current cycle end after epoch ``n``, at the step it has reached."""
    first, _, peak = run.segments[-1]
    run.segments[-1][1] = n - first + 1
    run.sched = schedule.replan(run.sched, peak, run.segments[-1][1] * len(run.loader))
    run.plan_epochs = n if len(run.segments) == 1 else run.plan_epochs
    run.cfg = replace(run.cfg, epochs=n)


def check_chance(run: Run, epoch: int) -> None:
    """A third of the way into the plan (at least 5 epochs), a run still reading no better than guessing, or a
    CRNN still far from reading (``schedule.slow_start``), starts again once: the CNN as a CRNN, a CRNN from
    another initialisation (seed + 1, the same validation split), at a third of the learning rate if at chance."""
    run.chance_due = due = run.chance_due or max(5, math.ceil(schedule.CHANCE_AT * run.plan_epochs))  # a later
    # refit of the plan to the budget does not move it
    short = run.plan_epochs * len(run.loader) < schedule.CHANCE_MIN_STEPS  # too short to judge
    if not run.can_retry or short or not run.val.labels or epoch != due or due > run.plan_epochs:
        return
    chance = schedule.at_chance(run.history, len(run.converter.alphabet), run.converter.ctc)
    fresh = run.cfg.arch == "crnn" and not run.cfg.init_from  # its weights are its own initialisation
    if not chance and not (fresh and schedule.slow_start(run.history, len(run.val.labels))):
        return
    if run.cfg.arch == "cnn" and not run.cfg.init_from:
        new, change = replace(run.given, arch="crnn"), "starting again as a CRNN, which reads text at any place"
    elif not fresh:
        new, change = replace(run.given, lr=run.cfg.lr / 3), f"starting again at learning rate {run.cfg.lr / 3:.2g}"
    else:
        lr = run.cfg.lr / 3 if chance else run.cfg.lr
        new = replace(run.given, seed=run.cfg.seed + 1, split_seed=run.cfg.val_seed, lr=lr)
        change = f"starting again from another initialisation (seed {new.seed})" + \
            (f" at learning rate {lr:.2g}" if chance else "")
    read = "the validation images no better than guessing" if chance else \
        f"only {100 * run.history[-1]['character_accuracy']:.0f}% of the validation characters"
    raise StuckAtChance(new, f"after {plural(epoch, 'epoch')} the {run.cfg.arch} still reads {read}: {change}")


def extend(run: Run, epoch: int) -> None:
    """At the end of a cycle: another, shorter one while validation still improves and the budget allows."""
    scores = [h["sequence_accuracy"] for h in run.history if "sequence_accuracy" in h]
    window = run.segments[-1][1] if len(run.segments) > 1 else max(1, run.plan_epochs // 4)
    if not run.val.labels or not schedule.still_improving(scores, window, 1 / len(run.val.labels)):
        return
    n, left = max(1, math.ceil(schedule.EXTEND_SHARE * run.plan_epochs)), run.seconds_left
    if agreed(run, n * run.epoch_times[-1] > left):
        run.log(f"validation is still improving, but the time budget ({run.budget / 60:.3g} min) is spent: "
                "--time-budget MINUTES lets it train longer")
        return
    peak = run.segments[-1][2] * schedule.EXTEND_LR
    run.log(f"validation is still improving: {plural(n, 'more epoch')} at peak learning rate {peak:.2g} "
            f"({left / 60:.1f} min of the budget left)")
    run.segments.append([epoch + 1, n, peak])
    run.sched = schedule.one_cycle(run.opt, peak, n * len(run.loader))
    run.cfg = replace(run.cfg, epochs=run.cfg.epochs + n)


def run_schedule(run: Run) -> None:
    """The epochs: the planned cycle, fitted to the budget, grown when far from done halfway, checked for chance,
    then extended while it pays."""
    run.started = time.time()
    epoch = run.start
    while epoch <= run.cfg.epochs:
        run.sampler.set_epoch(epoch)
        for part in getattr(run.train_set, "datasets", [run.train_set]):
            if hasattr(part, "set_epoch"):
                part.set_epoch(epoch)
        t = time.time()
        run_epoch(run, epoch, run.started)
        run.epoch_times.append(time.time() - t)
        fit_budget(run, epoch)
        stretch(run, epoch)
        check_chance(run, epoch)
        if epoch == run.cfg.epochs:
            extend(run, epoch)
        epoch += 1
    save_state(run, epoch - 1, False, final=True)


def describe(run: Run) -> str:
    """The run's one-line summary printed before the first epoch."""
    cfg, conv, pre = run.cfg, run.converter, run.spec.preprocess
    return (f"{cfg.arch}: {len(run.train_set)} training / {len(run.val.labels)} validation images, alphabet "
            f"{conv.alphabet!r}, length {conv.fixed_length or 'any'}, input "
            f"{pre.width}x{pre.height}x{pre.channels}{ink_text(pre)}, {plural(cfg.epochs, 'epoch')}"
            + (f", splice {cfg.splice}" if cfg.splice and cfg.augment else "") + f", device {run.device}"
            + (f", {run.d.world} processes" if run.d.enabled else "")
            + f"; time budget {run.budget / 60:.3g} min; writing {cfg.out}")


def ink_text(pre: Preprocess) -> str:
    """`` + 2 ink masks (140,140,140 112,112,112)`` for the summary line; empty without ink."""
    if not pre.ink:
        return ""
    return f" + {plural(len(pre.ink), 'ink mask')} ({' '.join(','.join(map(str, c)) for c in pre.ink)})"


def prepare(cfg: TrainConfig) -> tuple[TrainConfig, dict[str, Any] | None]:
    """Check the settings and resolve the inputs and outputs, before any data is read."""
    check_config(cfg)
    cfg, resume = with_resumed(cfg)
    cfg = input_defaults(cfg)
    check_config(cfg)  # a resumed run's own settings too
    check_writable("out", cfg.out)
    if cfg.plot not in ("auto", "none"):
        check_writable("plot", cfg.plot)
    return cfg, resume


def train(cfg: TrainConfig, extra: LabelledImages | None = None, advise: bool = True) -> TrainResult:
    """Train per ``cfg`` (which is not changed); writes checkpoints on rank 0. ``extra`` labelled
    images join the training set but never the validation split; with ``cfg.unlabelled`` the run
    is semi-supervised (``selftrain.self_train``). ``advise``: print the result's ``advice``, if any
    (self-training's rounds leave it to the round kept).

    Raises ``ConfigError`` for settings that cannot work (before anything is read), ``DataError``
    for unusable data, ``CheckpointError`` for a bad checkpoint and ``OutputBusy`` when another
    run is writing the same ``out``.
    """
    if cfg.unlabelled:
        from selftrain import self_train
        return self_train(cfg)
    cfg, resume = prepare(cfg)
    d = Dist()
    lock = output_lock(cfg.out) if d.main else contextlib.nullcontext()
    finished = False
    try:
        with lock:
            result = train_locked(cfg, resume, d, extra, advise)
        finished = True
        return result
    finally:
        d.close(finished)


def train_locked(cfg: TrainConfig, resume: dict[str, Any] | None, d: Dist,
                 extra: LabelledImages | None = None, advise: bool = True) -> TrainResult:
    """``train`` once this process may write ``cfg.out``."""
    device = d.setup(pick_device(cfg.device))
    log = (lambda *a, **k: print(*a, **k)) if d.main and not cfg.quiet else (lambda *a, **k: None)
    if d.main:
        for f in remove_stale_temporaries(cfg.out) + remove_stale_temporaries(last_path(cfg.out)):
            log(f"note: removed {f.name}, left by an interrupted save")
    torch.manual_seed(cfg.seed)
    if device.type == "cpu" and not d.enabled:
        torch.set_num_threads(cfg.threads or default_threads())
    runs: list[Run] = []  # the current attempt's, for the message on Ctrl-C
    try:
        run = attempt(cfg, resume, d, device, log, extra, runs)
    except KeyboardInterrupt:
        log("\ninterrupted: " + (f"saved up to epoch {runs[-1].saved_epoch}, the best of them in {cfg.out}; "
                                  "continue with --resume" if runs and runs[-1].saved
                                  else "no epoch had finished, nothing was saved"))
        raise
    seconds = time.time() - run.started
    result = (f"best epoch {run.best.get('epoch')}: sequence accuracy {100 * run.best['sequence_accuracy']:.2f}%"
              if run.val.labels else "no validation images, saved the last epoch")
    log(f"trained {plural(run.cfg.epochs - run.start + 1, 'epoch')} in {seconds:.1f}s; {result} -> {run.cfg.out}")
    advice = guessing_advice(run)
    if advice and advise:
        log(advice)
    if d.main:
        finish(run)
    return TrainResult(Path(run.cfg.out), run.best, run.cfg, seconds, run.history, validation=run.val, advice=advice)


def guessing_advice(run: Run) -> str:
    """For a run on labelled files whose best model still reads its validation split no better than
    guessing: a warning saying what the user can do; else ""."""
    n_classes = len(run.converter.alphabet)
    if not run.n_images or run.cfg.val_split <= 0 or not schedule.guessing(run.best, n_classes):
        return ""
    longer = "more --epochs" if epochs_chosen(run) else "a longer --time-budget"
    return (f"warning: the best model reads {100 * run.best['character_accuracy']:.0f}% of the validation "
            f"characters, no better than guessing among {n_classes}: check that the file names are the texts in "
            f"their images; if they are, these captchas need more than {plural(run.n_images, 'labelled image')} "
            f"or {longer}")


def attempt(cfg: TrainConfig, resume: dict[str, Any] | None, d: Dist, device: torch.device,
            log: Callable[..., None], extra: LabelledImages | None, runs: list[Run]) -> Run:
    """Set up and run the schedule; a run stuck at chance (or a CRNN slow to start) starts once more, changed."""
    runs.append(setup(cfg, resume, d, device, log, extra, can_retry=resume is None))
    log(describe(runs[-1]))
    try:
        run_schedule(runs[-1])
    except StuckAtChance as e:
        log(e.message)
        torch.manual_seed(e.cfg.seed)
        spent = (time.time() - runs[-1].started) / 60
        left = (cfg.time_budget or runs[-1].budget / 60) - spent  # the retry gets what is left of the budget
        runs.append(setup(replace(e.cfg, time_budget=max(1.0, left)), None, d, device, log, extra,
                          can_retry=False))
        log(describe(runs[-1]))
        run_schedule(runs[-1])
    return runs[-1]


def finish(run: Run) -> None:
    """Calibrate the best checkpoint, show its validation mistakes, plot the curves, drop the resume file."""
    cfg = run.cfg
    if run.best_state is not None:
        run.raw_model.load_state_dict(run.best_state)
    temperature = calibrate_run(cfg.out, run.val.arrays, run.val.labels, cfg.target_precision, run.log)
    if run.val.labels:
        preds, confs = evaluate(run.raw_model, run.converter, run.val.arrays, run.device, temperature=temperature)
        wrong = sum(p != t for p, t in zip(preds, run.val.labels))
        if not wrong or cfg.show_errors == 0:
            run.log(f"validation mistakes of the best model: {wrong}"
                    + (" (--show-errors N lists them)" if wrong else ""))
        else:
            shown_rows = min(wrong, cfg.show_errors)
            run.log(f"validation mistakes of the best model: {wrong}"
                    + (f", the first {shown_rows}:" if shown_rows < wrong else ":"))
            run.log(mistakes_table(run.val.names, run.val.labels, preds, confs, cfg.show_errors))
    plot = f"{os.path.splitext(cfg.out)[0]}.png" if cfg.plot == "auto" else cfg.plot
    if plot != "none" and run.history:
        save_plot(run.history, plot)
    Path(last_path(cfg.out)).unlink(missing_ok=True)


def save_plot(history: list[dict[str, Any]], path: str) -> None:
    """Training loss and validation accuracy (overall and per position) per epoch, as PNG."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib is not installed; no plot written", file=sys.stderr)
        return
    epochs = [h["epoch"] for h in history]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    a1.plot(epochs, [h["loss"] for h in history], label="train loss")
    a1.set_xlabel("epoch"), a1.set_ylabel("loss"), a1.set_yscale("log"), a1.legend()
    if "sequence_accuracy" in history[-1]:
        a2.plot(epochs, [h["sequence_accuracy"] for h in history], label="sequence", lw=2)
        a2.plot(epochs, [h["character_accuracy"] for h in history], label="character")
        for i in range(len(history[-1]["position_accuracy"])):
            a2.plot(epochs, [h["position_accuracy"][i] for h in history], label=f"position {i + 1}",
                    lw=0.8, alpha=0.7)
        a2.set_xlabel("epoch"), a2.set_ylabel("validation accuracy"), a2.legend(fontsize=7)
    fig.tight_layout()
    tmp = f"{path}.tmp.png"
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)
