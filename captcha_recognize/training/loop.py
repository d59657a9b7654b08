"""One epoch of training: the loss, an optimizer step, a pass over the batches with augmentation,
and validation, each rank reading its shard of the validation split."""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm

from captcha_recognize.data.arrays import normalize
from captcha_recognize.data.augment import STROKES, augment, splice
from captcha_recognize.data.codec import LabelConverter
from captcha_recognize.reading.torch_model import evaluate
from captcha_recognize.reading.scores import score
from captcha_recognize.training.config import TrainConfig
from captcha_recognize.training.distributed import ProcessGroup
from captcha_recognize.training.state import ModelState
from captcha_recognize.training.task import Split


def compute_loss(logits: torch.Tensor, labels: Sequence[str], converter: LabelConverter,
                 label_smoothing: float) -> tuple[torch.Tensor, list[float]]:
    """Mean loss and per-head losses (CNN) for a batch of logits."""
    targets, lengths = (torch.from_numpy(a) for a in converter.encode(labels))  # CNN (B, P); CTC (sum L,), (B,)
    targets, logits = targets.to(logits.device), logits.float()
    if converter.ctc:
        log_probs = logits.log_softmax(-1).transpose(0, 1)  # (T, B, K + 1)
        t, b = log_probs.shape[:2]
        in_len = torch.full((b,), t, dtype=torch.long)
        loss = F.ctc_loss(log_probs, targets, in_len, lengths, blank=converter.blank, zero_infinity=True)
        return loss, []
    per_head = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), label_smoothing=label_smoothing,
                               reduction="none").view_as(targets).mean(0)  # (P,)
    return per_head.mean(), per_head.tolist()


def train_epoch(state: ModelState, cfg: TrainConfig, converter: LabelConverter, span: tuple[float, float] | None,
                epoch: int, group: ProcessGroup) -> tuple[float, list[float], int]:
    """One pass over the loader; returns summed loss, summed per-head losses, batches."""
    model = state.model
    model.train()
    aug = replace(STROKES[cfg.strokes], warp=cfg.warp) if cfg.augment else None
    gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch * 1009 + group.rank)
    total, heads, batches = 0.0, [], 0
    bar = tqdm(state.loader, desc=f"epoch {epoch}/{cfg.epochs}", leave=False, dynamic_ncols=True,
               disable=None if group.main and not cfg.quiet else True)
    for arrays, labels in bar:
        x = normalize(arrays)  # (B, C, H, W)
        if aug is not None:
            x, labels = splice(x, labels, cfg.splice, span, gen)  # no-op at splice 0
            x = augment(x, aug, gen)
        x = x.to(state.device, non_blocking=True)
        with state.amp_ctx:
            logits = model(x)
        loss, per_head = compute_loss(logits, labels, converter, cfg.label_smoothing)
        step(state, loss, cfg.clip_grad)
        total += loss.item()
        heads = [a + b for a, b in zip(heads, per_head)] if heads else per_head
        batches += 1
        bar.set_postfix(loss=f"{total / batches:.4f}")
    return total, heads, batches


def step(state: ModelState, loss: torch.Tensor, clip_grad: float) -> None:
    """Backward pass, clipping, optimizer and scheduler step, weight average."""
    state.opt.zero_grad(set_to_none=True)
    if state.scaler is not None:
        state.scaler.scale(loss).backward()
        state.scaler.unscale_(state.opt)
    else:
        loss.backward()
    if clip_grad > 0:
        torch.nn.utils.clip_grad_norm_(state.model.parameters(), clip_grad)
    if state.scaler is not None:
        state.scaler.step(state.opt)
        state.scaler.update()
    else:
        state.opt.step()
    state.sched.step()
    if state.ema is not None:
        state.ema.update(state.raw_model)


def validate(model: torch.nn.Module, val: Split, converter: LabelConverter, device: torch.device,
             group: ProcessGroup) -> tuple[dict[str, Any], list[str], list[float]]:
    """Score the validation split, each rank reading its shard; all ranks get the same numbers."""
    shard = list(range(group.rank, len(val.labels), group.world))
    preds, confs = evaluate(model, converter, val.arrays[shard], device) if shard else ([], [])
    out_p, out_c = [""] * len(val.labels), [0.0] * len(val.labels)
    for idx, p, c in group.gather((shard, preds, confs)):
        for i, pi, ci in zip(idx, p, c):
            out_p[i], out_c[i] = pi, ci
    return score(out_p, val.labels), out_p, out_c
