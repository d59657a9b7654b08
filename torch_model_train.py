"""Train a captcha model on a folder of images whose file names are their labels.

Usage:
    python torch_model_train.py                                  # CNN on train_images/
    python torch_model_train.py --data ../my_captchas --arch crnn
    python torch_model_train.py --resume                         # continue an interrupted run
    python torch_model_train.py --synthetic 20000 --alphabet 0123456789 --length 4
    torchrun --nproc_per_node=4 torch_model_train.py --data big_folder/   # DDP

Writes the best checkpoint (by validation sequence accuracy) to ``--out`` and, while
training, the latest state to ``<out>_last.pth`` for ``--resume``; both atomically.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import math
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, DataLoader, DistributedSampler
from tqdm import tqdm

from dataset import (CHANNELS, MAX_HEIGHT, STROKES, ArrayDataset, DataError, HelpFormatter, LabelConverter,
                     Preprocess, SyntheticCaptchas, augment, auto_size, infer_alphabet, normalize, read_labelled,
                     column_spread, evenly_spaced, splice, split_indices, text_span, to_arrays)
from model import ModelConfig, build_model
from torch_model_predict import (CHECKPOINT_FORMAT, CheckpointError, evaluate, format_scores,
                                 load_checkpoint, mistakes_table, pick_device, score)

DEFAULT_STEPS = 1600  # both families kept improving up to here on captcha-images-v2
# sets under SMALL_SET training images get SMALL_SET_STEPS: with 100 labelled images (90 to
# train) 2400 steps took the mistakes on 3 seeds' test splits from 24 to 14 (captcha-images-v2
# CRNN), 18 to 16 (percent4-digits CRNN) and 12 to 7 (percent4-digits CNN; README: Accuracy)
SMALL_SET, SMALL_SET_STEPS = 150, 2400
MIN_EPOCHS = 32  # large sets: the narrow CNN read train_images' validation 93.0% after 16, 96.25% after 32
# --splice: the CNN's position heads memorise small sets without it; the CRNN reads
# proportionally spaced text worse with it, fixed-pitch text better (default_splice)
SPLICE = 0.5
FEW_IMAGES = 100  # below this, training warns (README's few-labels table starts at 100)


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


# -------------------------------------------------------------------------- arguments

def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train a captcha recognizer on file-name-labelled images.",
                                formatter_class=HelpFormatter)
    p.add_argument("--data", nargs="*", default=None,
                   help="folders/files of labelled images (default: train_images, unless --synthetic alone)")
    p.add_argument("--arch", choices=["cnn", "crnn"], default="cnn", help="model family")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"passes over the data (default: enough for about {DEFAULT_STEPS} optimizer steps, "
                        f"{SMALL_SET_STEPS} under {SMALL_SET} training images; at least {MIN_EPOCHS} epochs)")
    p.add_argument("--batch-size", type=int, default=32, help="images per step (per process under torchrun)")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate of the one-cycle schedule")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay")
    p.add_argument("--label-smoothing", type=float, default=0.1, help="CNN cross-entropy label smoothing")
    p.add_argument("--clip-grad", type=float, default=5.0, help="gradient-norm clipping (0: off)")
    p.add_argument("--ema", type=float, default=0.0,
                   help="decay of the exponential moving average of the weights that is validated and "
                        "saved (0: off, save the raw weights)")
    p.add_argument("--val-split", type=float, default=0.1, help="fraction held out for validation")
    p.add_argument("--seed", type=int, default=0, help="seed for the split, initialisation and augmentation")
    p.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, mps")
    p.add_argument("--out", default="captcha_recognize.pth", help="best checkpoint path")
    p.add_argument("--resume", nargs="?", const="", default=None, metavar="CKPT",
                   help="continue from CKPT (default: <out>_last.pth)")
    p.add_argument("--init-from", metavar="CKPT", help="start from these weights (fine-tuning)")
    p.add_argument("--alphabet", help="characters to recognise (default: those in the labels)")
    p.add_argument("--length", type=int, help="label length for the CNN (default: from the labels)")
    p.add_argument("--img-size", metavar="WxH",
                   help="model input size (default: most common image size, scaled to at most 24 high for the "
                        "cnn, 32 for the crnn)")
    p.add_argument("--channels", type=int, choices=[1, 3], help="3 = colour, 1 = grey (default: cnn 3, crnn 1)")
    p.add_argument("--splice", type=float, default=None, metavar="P",
                   help="probability per image of swapping its text after a character boundary, with "
                        "the label, for another image's (default: 0.5 for the cnn; for the crnn 0.5 on "
                        "fixed-pitch text, else 0)")
    p.add_argument("--strokes", choices=list(STROKES), default="arcs",
                   help="noise strokes drawn across training images: 'arcs' = two, lines or circle arcs "
                        "1-2 pixels wide; 'line' = one straight line")
    p.add_argument("--no-augment", action="store_true", help="train without augmentation")
    p.add_argument("--synthetic", type=int, default=0, metavar="N",
                   help="add N freshly generated captchas per epoch (needs --alphabet and --length "
                        "when there is no --data)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="DataLoader worker processes (default: up to 4, one per core, on CUDA or with "
                        "--synthetic; else 0)")
    p.add_argument("--amp", choices=["auto", "bf16", "fp16", "off"], default="auto",
                   help="mixed precision on CUDA (auto: bf16 if supported, else fp16); CPU runs fp32")
    p.add_argument("--show-errors", type=int, default=10, metavar="N", help="validation mistakes shown at the end")
    p.add_argument("--plot", default="auto", metavar="PNG", help="training-curve PNG (auto: <out>.png; 'none' to skip)")
    args = p.parse_args(argv)
    if args.data is None:
        args.data = [] if args.synthetic and args.alphabet and args.length else ["train_images"]
    if args.resume == "":
        args.resume = last_path(args.out)
    return args


def last_path(out: str) -> str:
    """Path of the resumable latest-state checkpoint that goes with ``out``."""
    root, ext = os.path.splitext(out)
    return f"{root}_last{ext or '.pth'}"


# ------------------------------------------------------------------------------ setup

def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
        return w, h
    except ValueError:
        raise DataError(f"--img-size must look like 50x22 (width x height), not {text!r}") from None


def make_task(args: argparse.Namespace, data, init: dict[str, Any] | None) -> tuple[LabelConverter, Preprocess]:
    """Alphabet, label length and input size: from a checkpoint when resuming/fine-tuning,
    else from the flags, else inferred from the data."""
    if init is not None:
        conv = LabelConverter(init["alphabet"], init["label_length"], ctc=init["model_args"]["arch"] == "crnn")
        return conv, Preprocess(**init["preprocess"])
    labels = data.labels if data is not None else []
    alphabet = args.alphabet or infer_alphabet(labels)
    lengths = sorted({len(s) for s in labels}) or [args.length]
    length = args.length or lengths[-1]
    if args.arch == "cnn" and (args.length is None and len(lengths) > 1):
        raise DataError(f"labels have different lengths {lengths}: the CNN needs one length "
                        f"(give --length, or use --arch crnn)")
    if data is not None:
        sizes = [im.size for im in data.images]
        w, h = parse_size(args.img_size) if args.img_size else auto_size(sizes, MAX_HEIGHT[args.arch])
    else:
        w, h = parse_size(args.img_size) if args.img_size else (50, 22)
    channels = args.channels or CHANNELS[args.arch]
    return LabelConverter(alphabet, length, ctc=args.arch == "crnn"), Preprocess(w, h, channels)


def build_datasets(args, data, conv: LabelConverter, spec: Preprocess, log):
    """Train and validation datasets; validation comes from the real folder when there is one."""
    train_parts: list[torch.utils.data.Dataset] = []
    val = None
    if data is not None:
        keep = [i for i, s in enumerate(data.labels) if conv.accepts(s)]
        if len(keep) < len(data.labels):
            log(f"warning: skipped {len(data.labels) - len(keep)} images whose label does not fit "
                f"alphabet {conv.alphabet!r}" + ("" if conv.ctc else f" and length {conv.length}"))
        if not keep:
            raise DataError("no image has a label that fits the alphabet and length")
        arrays = to_arrays([data.images[i] for i in keep], spec)  # (N, C, H, W) uint8
        labels = [data.labels[i] for i in keep]
        tr, va = split_indices(len(labels), [args.val_split], args.seed) if args.val_split > 0 else (
            list(range(len(labels))), [])
        train_parts.append(ArrayDataset(arrays[tr], [labels[i] for i in tr]))
        if len(tr) < FEW_IMAGES and not args.synthetic:
            log(f"warning: only {len(tr)} training images; real captchas need {FEW_IMAGES} or more "
                "labelled images to read well (README: few labels)")
        if va:
            val = ArrayDataset(arrays[va], [labels[i] for i in va])
    if args.synthetic:
        train_parts.append(SyntheticCaptchas(args.synthetic, conv.alphabet, conv.length, spec, seed=args.seed))
        if val is None:
            val = SyntheticCaptchas(max(200, args.synthetic // 20), conv.alphabet, conv.length, spec,
                                    seed=args.seed + 7919)
    if not train_parts or not len(train_parts[0]):
        raise DataError("nothing to train on")
    return (train_parts[0] if len(train_parts) == 1 else ConcatDataset(train_parts)), val


def make_sampler(dataset, d: Dist, seed: int) -> DistributedSampler:
    """Per-epoch shuffled shards (call ``set_epoch``); under DDP, ranks get disjoint shards."""
    return DistributedSampler(dataset, num_replicas=d.world, rank=d.rank, shuffle=True, seed=seed,
                              drop_last=d.enabled)


def materialize(ds) -> tuple[torch.Tensor, list[str]]:
    """All images and labels of a (small) dataset as one uint8 tensor and a list."""
    if isinstance(ds, ArrayDataset):
        return ds.arrays, ds.labels
    items = [ds[i] for i in range(len(ds))]
    return torch.stack([a for a, _ in items]), [s for _, s in items]


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


# --------------------------------------------------------------------------- training

def atomic_save(obj: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``obj`` to a temporary file next to ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


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


def default_splice(arch: str, spread: torch.Tensor | None, span: tuple[float, float] | None,
                   labels: Sequence[str]) -> float:
    """``--splice`` default: ``SPLICE`` for the CNN; for the CRNN only on fixed-pitch text
    (``evenly_spaced``), where the cuts fall between characters. On percent4-digits it took
    the CRNN (then with a 128-unit GRU) from 85.23% to 95.08% with 100 training images; on
    proportionally spaced captcha-images-v2, where cuts go through characters, it read worse
    (README: Accuracy)."""
    if arch == "cnn":
        return SPLICE
    lengths = {len(s) for s in labels}
    if spread is None or span is None or len(lengths) != 1:
        return 0.0
    return SPLICE if evenly_spaced(spread, span, lengths.pop()) else 0.0


def default_epochs(n_train: int, batch: int, world: int, target_steps: int | None = None) -> int:
    """Enough epochs for about ``target_steps`` optimizer steps (default: ``DEFAULT_STEPS``,
    ``SMALL_SET_STEPS`` under ``SMALL_SET`` training images), and at least ``MIN_EPOCHS``.

    Small training sets get more epochs, so they get at least as many steps as large ones (a
    cap at 400 epochs, which cut 100 images short, read 71.30% of captcha-images-v2 with the
    CRNN against 84.31% uncapped, 3 seeds).
    """
    if target_steps is None:
        target_steps = SMALL_SET_STEPS if n_train < SMALL_SET else DEFAULT_STEPS
    steps = max(1, math.ceil(n_train / (batch * world)))  # optimizer steps per epoch
    return max(MIN_EPOCHS, math.ceil(target_steps / steps))


def is_best(s: dict[str, Any], best: dict[str, Any], epoch: int, epochs: int) -> bool:
    """Whether validation scores ``s`` of ``epoch`` make it the best epoch so far.

    Ties go to the later epoch: small validation splits tie often, and later weights have
    had more steps at a lower learning rate. For the same reason the second half of the
    schedule starts afresh: a lucky early epoch on a small validation split must not win
    over the annealed weights (the percent4-digits CRNN kept epoch 32 of 95, 60 of 60
    validation images right, and read 88.59% of its test split).
    """
    if epoch == epochs // 2 + 1:
        return True
    return s["sequence_accuracy"] > best["sequence_accuracy"] or (
        s["sequence_accuracy"] == best["sequence_accuracy"]
        and s["character_accuracy"] >= best.get("character_accuracy", -1))


def autocast_for(device: torch.device, amp: str):
    """Mixed-precision context for CUDA; a no-op elsewhere."""
    if device.type != "cuda" or amp == "off":
        return contextlib.nullcontext(), None
    dtype = torch.float16 if amp == "fp16" or (amp == "auto" and not torch.cuda.is_bf16_supported()) \
        else torch.bfloat16
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return torch.autocast("cuda", dtype=dtype), scaler


def train_epoch(model, loader, opt, sched, conv: LabelConverter, args, device, epoch: int,
                show: bool, amp_ctx, scaler, ema: EMA | None = None,
                span: tuple[float, float] | None = None) -> tuple[float, list[float], int]:
    """One pass over the loader; returns summed loss, summed per-head losses, batches."""
    model.train()
    aug = None if args.no_augment else STROKES[args.strokes]
    gen = torch.Generator().manual_seed(args.seed * 100_003 + epoch * 1009 + int(os.environ.get("RANK", 0)))
    total, heads, batches = 0.0, [], 0
    bar = tqdm(loader, desc=f"epoch {epoch}/{args.epochs}", leave=False, disable=None if show else True,
               dynamic_ncols=True)
    for arrays, labels in bar:
        x = normalize(arrays)  # (B, C, H, W)
        if aug is not None:
            x, labels = splice(x, labels, args.splice, span, gen)  # no-op at --splice 0
            x = augment(x, aug, gen)
        x = x.to(device, non_blocking=True)
        with amp_ctx:
            logits = model(x)
        loss, per_head = compute_loss(logits, labels, conv, args.label_smoothing)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
        else:
            loss.backward()
        if args.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        sched.step()
        if ema is not None:
            ema.update(model.module if hasattr(model, "module") else model)
        total += loss.item()
        heads = [a + b for a, b in zip(heads, per_head)] if heads else per_head
        batches += 1
        bar.set_postfix(loss=f"{total / batches:.4f}")
    return total, heads, batches


def validate(model, val_arrays, val_labels, conv, device, d: Dist) -> tuple[dict[str, Any], list[str], list[float]]:
    """Score the validation set, each rank reading its shard; all ranks get the same numbers."""
    shard = list(range(d.rank, len(val_labels), d.world))
    preds, confs = evaluate(model, conv, val_arrays[shard], device) if shard else ([], [])
    parts = d.gather((shard, preds, confs))
    out_p, out_c = [""] * len(val_labels), [0.0] * len(val_labels)
    for idx, p, c in parts:
        for i, pi, ci in zip(idx, p, c):
            out_p[i], out_c[i] = pi, ci
    return score(out_p, val_labels), out_p, out_c


def checkpoint_dict(raw_model, conv, spec, model_args, args, epoch, best, history,
                    opt=None, sched=None, ema: EMA | None = None) -> dict[str, Any]:
    """The one checkpoint dict; optimizer, scheduler and EMA state only in the resumable one."""
    return {
        "format": CHECKPOINT_FORMAT,
        "model": raw_model.state_dict(),
        "model_args": model_args,
        "alphabet": conv.alphabet,
        "label_length": conv.length,
        "preprocess": asdict(spec),
        "config": {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool, list, type(None)))},
        "epoch": epoch,
        "best": best,
        "history": history,
        "optimizer": opt.state_dict() if opt is not None else None,
        "scheduler": sched.state_dict() if sched is not None else None,
        "ema": {"model": ema.model.state_dict(), "steps": ema.steps} if ema is not None else None,
    }


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Train per ``args``; returns the best validation scores. Writes checkpoints on rank 0."""
    d = Dist()
    device = d.setup(pick_device(args.device))
    log = (lambda *a, **k: print(*a, **k)) if d.main else (lambda *a, **k: None)
    torch.manual_seed(args.seed)
    if device.type == "cpu" and not d.enabled and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(os.cpu_count() or 1)

    resume = load_checkpoint(args.resume) if args.resume else None
    init = resume or (load_checkpoint(args.init_from) if args.init_from else None)
    if init is not None and init["model_args"]["arch"] != args.arch:
        args.arch = init["model_args"]["arch"]
        log(f"note: using the checkpoint's architecture {args.arch!r}")
    data = read_labelled(args.data, args.alphabet) if args.data else None
    conv, spec = make_task(args, data, init)
    train_set, val_set = build_datasets(args, data, conv, spec, log)
    val_arrays, val_labels = materialize(val_set) if val_set is not None else (None, [])
    real = getattr(train_set, "datasets", [train_set])[0]
    spread = column_spread(real.arrays) if isinstance(real, ArrayDataset) else None  # (W,)
    span = text_span(spread) if spread is not None else None  # where splice cuts
    if args.splice is None:
        args.splice = default_splice(args.arch, spread, span, getattr(real, "labels", []))
    if args.epochs is None:
        args.epochs = resume["config"]["epochs"] if resume else default_epochs(
            len(train_set), args.batch_size, d.world)

    model_args = asdict(ModelConfig(arch=args.arch, n_classes=len(conv.alphabet),
                                    n_positions=conv.length or 0, in_channels=spec.channels,
                                    img_h=spec.height, img_w=spec.width))
    if init is not None:
        model_args = dict(init["model_args"])
    raw_model = build_model(ModelConfig(**model_args))
    if init is not None:
        raw_model.load_state_dict(init["model"])
    raw_model.to(device, memory_format=torch.channels_last)
    model = torch.nn.parallel.DistributedDataParallel(raw_model) if d.enabled else raw_model

    sampler = make_sampler(train_set, d, args.seed)
    workers = args.workers if args.workers is not None else (
        min(4, os.cpu_count() or 1) if device.type == "cuda" or args.synthetic else 0)
    loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler, num_workers=workers,
                        pin_memory=device.type == "cuda", drop_last=len(train_set) > args.batch_size * d.world,
                        persistent_workers=workers > 0)
    opt = torch.optim.AdamW(raw_model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.epochs * len(loader),
                                                pct_start=0.15)
    amp_ctx, scaler = autocast_for(device, args.amp)
    start, best, history = 1, {"sequence_accuracy": -1.0}, []
    best_state = None
    ema = EMA(raw_model, args.ema) if args.ema > 0 else None
    if resume is not None:
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        start, best, history = resume["epoch"] + 1, resume["best"], resume["history"]
        if ema is not None and resume.get("ema") is not None:
            ema.model.load_state_dict(resume["ema"]["model"])
            ema.steps = resume["ema"]["steps"]
        if Path(args.out).is_file():
            best_state = load_checkpoint(args.out)["model"]
        log(f"resuming at epoch {start} of {args.epochs} from {args.resume}")

    log(f"{args.arch}: {len(train_set)} training / {len(val_labels)} validation images, alphabet "
        f"{conv.alphabet!r}, length {conv.length if not conv.ctc else 'any'}, input "
        f"{spec.width}x{spec.height}x{spec.channels}, {args.epochs} epochs"
        + (f", splice {args.splice}" if args.splice and not args.no_augment else "") + f", device {device}"
        + (f", {d.world} processes" if d.enabled else ""))
    t0 = time.time()
    try:
        for epoch in range(start, args.epochs + 1):
            sampler.set_epoch(epoch)
            for part in getattr(train_set, "datasets", [train_set]):
                if hasattr(part, "set_epoch"):
                    part.set_epoch(epoch)
            total, heads, batches = train_epoch(model, loader, opt, sched, conv, args, device, epoch,
                                                d.main, amp_ctx, scaler, ema, span)
            eval_model = ema.model if ema is not None else raw_model  # the weights that get saved
            sums = d.sum([total, batches] + heads)
            loss, per_head = sums[0] / sums[1], [h / sums[1] for h in sums[2:]]
            record = {"epoch": epoch, "loss": loss, "head_loss": per_head, "time": time.time() - t0}
            line = f"epoch {epoch}/{args.epochs} loss {loss:.4f}"
            if per_head:
                line += " (" + ", ".join(f"head {i} {h:.4f}" for i, h in enumerate(per_head, 1)) + ")"
            if val_labels:
                s, _, _ = validate(eval_model, val_arrays, val_labels, conv, device, d)
                record.update({k: s[k] for k in ("sequence_accuracy", "character_accuracy", "position_accuracy")})
                line += "\n  " + format_scores(s)
                improved = is_best(s, best, epoch, args.epochs)
            else:
                s, improved = {"sequence_accuracy": 0.0}, True
            history.append(record)
            if improved:
                best = {"epoch": epoch, **{k: v for k, v in s.items()}}
                best_state = copy.deepcopy(eval_model.state_dict())
                line += "  [best]"
            log(line)
            if d.main:
                if improved:
                    atomic_save(checkpoint_dict(eval_model, conv, spec, model_args, args, epoch, best, history),
                                args.out)
                atomic_save(checkpoint_dict(raw_model, conv, spec, model_args, args, epoch, best, history,
                                            opt, sched, ema), last_path(args.out))
    except KeyboardInterrupt:
        log(f"\ninterrupted: best checkpoint so far is {args.out}; continue with --resume")
        d.close()
        raise
    result = (f"best epoch {best.get('epoch')}: sequence accuracy {100 * best['sequence_accuracy']:.2f}%"
              if val_labels else "no validation images, saved the last epoch")
    log(f"trained {args.epochs - start + 1} epochs in {time.time() - t0:.1f}s; {result} -> {args.out}")
    if d.main:
        finish(raw_model, best_state, val_arrays, val_labels, conv, device, args, history)
    d.close()
    return best


def finish(raw_model, best_state, val_arrays, val_labels, conv, device, args, history) -> None:
    """Show the best model's validation mistakes, plot the curves, drop the resume file."""
    if best_state is not None:
        raw_model.load_state_dict(best_state)
    if val_labels:
        preds, confs = evaluate(raw_model, conv, val_arrays, device)
        print("validation mistakes of the best model:")
        print(mistakes_table([f"val #{i}" for i in range(len(val_labels))], val_labels, preds, confs,
                             args.show_errors))
    plot = f"{os.path.splitext(args.out)[0]}.png" if args.plot == "auto" else args.plot
    if plot != "none" and history:
        save_plot(history, plot)
    Path(last_path(args.out)).unlink(missing_ok=True)


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


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        train(args)
    except (DataError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, CheckpointError) else 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
