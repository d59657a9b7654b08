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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, DataLoader, DistributedSampler
from tqdm import tqdm

from augment import STROKES, augment, column_spread, evenly_spaced, splice, text_span
from calibration import TARGET_PRECISION, calibrate_run
from checkpoint import ModelSpec, atomic_save, checkpoint_dict, load_checkpoint
from dataset import (CHANNELS, MAX_HEIGHT, ArrayDataset, DataError, LabelConverter, LabelledImages, Preprocess,
                     auto_size, infer_alphabet, normalize, read_labelled, split_indices, to_arrays)
from metrics import format_scores, mistakes_table, score
from model import ModelConfig, build_model
from recognizer import evaluate, pick_device
from synthetic import SyntheticCaptchas

DEFAULT_STEPS = 1600  # optimizer steps of a default run
SMALL_SET, SMALL_SET_STEPS = 150, 2400  # sets under SMALL_SET training images get more steps
MIN_EPOCHS = 32  # large sets still get this many passes
SPLICE = 0.5  # --splice default where it applies (default_splice)
FEW_IMAGES = 100  # below this many training images, training warns


@dataclass
class TrainConfig:
    """Everything a training run is a function of; the command-line flags map onto these fields.
    ``None`` means "pick the default from the data" (see ``resolve_defaults``)."""
    data: list[str] | None = None  # folders/files of labelled images; None: train_images (unless synthetic only)
    arch: str = "cnn"  # "cnn" or "crnn"
    epochs: int | None = None
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1  # CNN cross-entropy
    clip_grad: float = 5.0  # 0: off
    ema: float = 0.0  # decay of the weight average that is validated and saved; 0: off
    val_split: float = 0.1
    seed: int = 0
    device: str = "auto"
    out: str = "captcha_recognize.pth"
    resume: str | None = None  # checkpoint to continue from; "": <out>_last.pth
    init_from: str | None = None  # weights to start from (fine-tuning)
    alphabet: str | None = None
    length: int | None = None  # CNN label length
    img_size: tuple[int, int] | None = None  # (width, height) of the model input
    channels: int | None = None  # 3 colour, 1 grey
    splice: float | None = None
    strokes: str = "arcs"  # key of augment.STROKES
    augment: bool = True
    synthetic: int = 0  # freshly generated captchas added per epoch
    workers: int | None = None  # DataLoader worker processes
    amp: str = "auto"  # CUDA mixed precision: auto, bf16, fp16, off
    show_errors: int = 10  # validation mistakes printed at the end
    plot: str = "auto"  # training-curve PNG; auto: <out>.png, none: skip
    target_precision: float = TARGET_PRECISION  # accept threshold: validation answers at least this right
    quiet: bool = False  # no progress bars or per-epoch lines


@dataclass
class TrainResult:
    """What ``train`` returns: the best epoch's validation scores and where it was saved."""
    out: Path
    best: dict[str, Any]
    config: TrainConfig  # with every default resolved
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)


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

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
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


def input_defaults(cfg: TrainConfig) -> TrainConfig:
    """The data folder and resume file when not given."""
    data = cfg.data
    if data is None:
        data = [] if cfg.synthetic and cfg.alphabet and cfg.length else ["train_images"]
    return replace(cfg, data=list(data), resume=last_path(cfg.out) if cfg.resume == "" else cfg.resume)


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
    one), splice probability and number of epochs."""
    arch = init["model_args"]["arch"] if init is not None else cfg.arch
    splice_p = cfg.splice if cfg.splice is not None else default_splice(arch, spread, span, labels)
    epochs = cfg.epochs
    if epochs is None:
        epochs = resume["config"]["epochs"] if resume else default_epochs(n_train, cfg.batch_size, world)
    return replace(cfg, arch=arch, splice=splice_p, epochs=epochs)


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
        w, h = auto_size([im.size for im in data.images], MAX_HEIGHT[cfg.arch])
    else:
        w, h = 50, 22
    channels = cfg.channels or CHANNELS[cfg.arch]
    return LabelConverter(alphabet, length, ctc=cfg.arch == "crnn"), Preprocess(w, h, channels)


# -------------------------------------------------------------------------- datasets

@dataclass
class Split:
    """Validation images as one uint8 tensor ``(N, C, H, W)``, their labels and names."""
    arrays: torch.Tensor | None = None
    labels: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)


def build_datasets(cfg: TrainConfig, data: LabelledImages | None, conv: LabelConverter, spec: Preprocess,
                   log: Callable[..., None]) -> tuple[torch.utils.data.Dataset, Split]:
    """The training set and the validation split; validation comes from the real folder when there is one."""
    parts: list[torch.utils.data.Dataset] = []
    val = Split()
    if data is not None:
        keep = [i for i, s in enumerate(data.labels) if conv.accepts(s)]
        if len(keep) < len(data.labels):
            log(f"warning: skipped {len(data.labels) - len(keep)} images whose label does not fit "
                f"alphabet {conv.alphabet!r}" + ("" if conv.ctc else f" and length {conv.length}"))
        if not keep:
            raise DataError("no image has a label that fits the alphabet and length")
        arrays = to_arrays([data.images[i] for i in keep], spec)  # (N, C, H, W) uint8
        labels = [data.labels[i] for i in keep]
        names = [data.paths[i].name for i in keep]
        tr, va = split_indices(len(labels), [cfg.val_split], cfg.seed) if cfg.val_split > 0 else (
            list(range(len(labels))), [])
        parts.append(ArrayDataset(arrays[tr], [labels[i] for i in tr]))
        if len(tr) < FEW_IMAGES and not cfg.synthetic:
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

    @property
    def converter(self) -> LabelConverter:
        return self.spec.converter


def train_epoch(run: Run, epoch: int) -> tuple[float, list[float], int]:
    """One pass over the loader; returns summed loss, summed per-head losses, batches."""
    cfg, model, conv = run.cfg, run.model, run.converter
    model.train()
    aug = STROKES[cfg.strokes] if cfg.augment else None
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


def save_state(run: Run, epoch: int, improved: bool) -> None:
    """Rank 0: the best checkpoint when ``improved``, and the resumable latest state."""
    if not run.d.main:
        return
    config = asdict(run.cfg)
    extra = {"config": config, "epoch": epoch, "best": run.best, "history": run.history}
    if improved:
        weights = (run.ema.model if run.ema is not None else run.raw_model).state_dict()
        atomic_save(checkpoint_dict(weights, run.model_args, run.spec, **extra, optimizer=None, scheduler=None,
                                    ema=None), run.cfg.out)
    ema = {"model": run.ema.model.state_dict(), "steps": run.ema.steps} if run.ema is not None else None
    atomic_save(checkpoint_dict(run.raw_model.state_dict(), run.model_args, run.spec, **extra,
                                optimizer=run.opt.state_dict(), scheduler=run.sched.state_dict(), ema=ema),
                last_path(run.cfg.out))


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
        improved = is_best(s, run.best, epoch, cfg.epochs)
    else:
        s, improved = {"sequence_accuracy": 0.0}, True
    run.history.append(record)
    if improved:
        run.best = {"epoch": epoch, **s}
        run.best_state = copy.deepcopy(eval_model.state_dict())
        line += "  [best]"
    run.log(line)
    save_state(run, epoch, improved)


def setup(cfg: TrainConfig, d: Dist, device: torch.device, log: Callable[..., None]) -> Run:
    """Read the data, resolve the defaults, build the model, loader and optimizer (and restore a resumed run)."""
    resume = load_checkpoint(cfg.resume) if cfg.resume else None
    init = resume or (load_checkpoint(cfg.init_from) if cfg.init_from else None)
    if init is not None and init["model_args"]["arch"] != cfg.arch:
        log(f"note: using the checkpoint's architecture {init['model_args']['arch']!r}")
        cfg = replace(cfg, arch=init["model_args"]["arch"])
    data = read_labelled(cfg.data, cfg.alphabet) if cfg.data else None
    conv, pre = make_task(cfg, data, init)
    train_set, val = build_datasets(cfg, data, conv, pre, log)
    real = getattr(train_set, "datasets", [train_set])[0]
    spread = column_spread(real.arrays) if isinstance(real, ArrayDataset) else None  # (W,)
    span = text_span(spread) if spread is not None else None  # where splice cuts
    cfg = resolve_defaults(cfg, init, resume, len(train_set), getattr(real, "labels", []), spread, span, d.world)
    spec = ModelSpec(cfg.arch, conv.alphabet, conv.length, pre)
    model_args = dict(init["model_args"]) if init is not None else asdict(ModelConfig(
        arch=cfg.arch, n_classes=len(conv.alphabet), n_positions=conv.length or 0, in_channels=pre.channels,
        img_h=pre.height, img_w=pre.width))
    raw_model = build_model(ModelConfig(**model_args))
    if init is not None:
        raw_model.load_state_dict(init["model"])
    raw_model.to(device, memory_format=torch.channels_last)
    model = torch.nn.parallel.DistributedDataParallel(raw_model) if d.enabled else raw_model
    sampler = make_sampler(train_set, d, cfg.seed)
    workers = cfg.workers if cfg.workers is not None else (
        min(4, os.cpu_count() or 1) if device.type == "cuda" or cfg.synthetic else 0)
    loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler, num_workers=workers,
                        pin_memory=device.type == "cuda", drop_last=len(train_set) > cfg.batch_size * d.world,
                        persistent_workers=workers > 0)
    opt = torch.optim.AdamW(raw_model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * len(loader),
                                                pct_start=0.15)
    amp_ctx, scaler = autocast_for(device, cfg.amp)
    ema = EMA(raw_model, cfg.ema) if cfg.ema > 0 else None
    run = Run(cfg, d, device, log, spec, model_args, train_set, val, span, raw_model, model, loader, sampler,
              opt, sched, ema, amp_ctx, scaler)
    if resume is not None:
        restore(run, resume)
    return run


def restore(run: Run, resume: dict[str, Any]) -> None:
    """Continue a run from its resumable checkpoint: optimizer, schedule, epoch, scores, weight average."""
    run.opt.load_state_dict(resume["optimizer"])
    run.sched.load_state_dict(resume["scheduler"])
    run.start, run.best, run.history = resume["epoch"] + 1, resume["best"], resume["history"]
    if run.ema is not None and resume.get("ema") is not None:
        run.ema.model.load_state_dict(resume["ema"]["model"])
        run.ema.steps = resume["ema"]["steps"]
    if Path(run.cfg.out).is_file():
        run.best_state = load_checkpoint(run.cfg.out)["model"]
    run.log(f"resuming at epoch {run.start} of {run.cfg.epochs} from {run.cfg.resume}")


def describe(run: Run) -> str:
    """The run's one-line summary printed before the first epoch."""
    cfg, conv, pre = run.cfg, run.converter, run.spec.preprocess
    return (f"{cfg.arch}: {len(run.train_set)} training / {len(run.val.labels)} validation images, alphabet "
            f"{conv.alphabet!r}, length {conv.length if not conv.ctc else 'any'}, input "
            f"{pre.width}x{pre.height}x{pre.channels}, {cfg.epochs} epochs"
            + (f", splice {cfg.splice}" if cfg.splice and cfg.augment else "") + f", device {run.device}"
            + (f", {run.d.world} processes" if run.d.enabled else ""))


def train(cfg: TrainConfig) -> TrainResult:
    """Train per ``cfg`` (which is not changed); writes checkpoints on rank 0."""
    cfg = input_defaults(cfg)
    d = Dist()
    device = d.setup(pick_device(cfg.device))
    show = d.main and not cfg.quiet
    log = (lambda *a, **k: print(*a, **k)) if show else (lambda *a, **k: None)
    torch.manual_seed(cfg.seed)
    if device.type == "cpu" and not d.enabled and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(os.cpu_count() or 1)
    try:
        run = setup(cfg, d, device, log)
    except BaseException:
        d.close()
        raise
    log(describe(run))
    t0 = time.time()
    try:
        for epoch in range(run.start, run.cfg.epochs + 1):
            run.sampler.set_epoch(epoch)
            for part in getattr(run.train_set, "datasets", [run.train_set]):
                if hasattr(part, "set_epoch"):
                    part.set_epoch(epoch)
            run_epoch(run, epoch, t0)
    except KeyboardInterrupt:
        log(f"\ninterrupted: best checkpoint so far is {run.cfg.out}; continue with --resume")
        d.close()
        raise
    seconds = time.time() - t0
    result = (f"best epoch {run.best.get('epoch')}: sequence accuracy {100 * run.best['sequence_accuracy']:.2f}%"
              if run.val.labels else "no validation images, saved the last epoch")
    log(f"trained {run.cfg.epochs - run.start + 1} epochs in {seconds:.1f}s; {result} -> {run.cfg.out}")
    if d.main:
        finish(run)
    d.close()
    return TrainResult(Path(run.cfg.out), run.best, run.cfg, seconds, run.history)


def finish(run: Run) -> None:
    """Calibrate the best checkpoint, show its validation mistakes, plot the curves, drop the resume file."""
    cfg = run.cfg
    if run.best_state is not None:
        run.raw_model.load_state_dict(run.best_state)
    temperature = calibrate_run(cfg.out, run.val.arrays, run.val.labels, cfg.target_precision, run.log)
    if run.val.labels:
        preds, confs = evaluate(run.raw_model, run.converter, run.val.arrays, run.device, temperature=temperature)
        run.log("validation mistakes of the best model:")
        run.log(mistakes_table([f"val #{i}" for i in range(len(run.val.labels))], run.val.labels, preds, confs,
                               cfg.show_errors))
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
