"""What a run trains: the model (wrapped for DDP), its optimizer and learning-rate cycle, the moving
average of its weights, mixed precision, and the batches it reads (``ModelState``)."""
from __future__ import annotations

import contextlib
import copy
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler

from captcha_recognize.errors import CheckpointError
from captcha_recognize.model import ModelConfig, build_model
from captcha_recognize.training.config import TrainConfig
from captcha_recognize.training.distributed import ProcessGroup, make_sampler
from captcha_recognize.training.recipe import process_batch

PCT_START = 0.15  # share of a cycle spent warming up


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


def autocast_for(device: torch.device, amp: str):
    """Mixed-precision context for CUDA and its gradient scaler (fp16 only); a no-op elsewhere."""
    if device.type != "cuda" or amp == "off":
        return contextlib.nullcontext(), None
    dtype = torch.float16 if amp == "fp16" or (amp == "auto" and not torch.cuda.is_bf16_supported()) \
        else torch.bfloat16
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return torch.autocast("cuda", dtype=dtype), scaler


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


def make_loader(cfg: TrainConfig, train_set: torch.utils.data.Dataset, group: ProcessGroup,
                device: torch.device) -> tuple[DataLoader, DistributedSampler]:
    """Shuffled batches; on the CPU from memory, on CUDA (or for synthetic data) through workers."""
    sampler = make_sampler(train_set, group, cfg.seed)
    workers = cfg.workers if cfg.workers is not None else (
        min(4, os.cpu_count() or 1) if device.type == "cuda" or cfg.synthetic else 0)
    per_process = process_batch(cfg.batch_size, group.world)
    loader = DataLoader(train_set, batch_size=per_process, sampler=sampler, num_workers=workers,
                        pin_memory=device.type == "cuda", drop_last=len(train_set) > per_process * group.world,
                        persistent_workers=workers > 0 and not any(  # workers would keep epoch 1's draws
                            hasattr(p, "set_epoch") for p in getattr(train_set, "datasets", [train_set])))
    return loader, sampler


@dataclass
class ModelState:
    """The model a run trains and everything that steps with it."""
    raw_model: torch.nn.Module  # the unwrapped model: its state_dict is what is saved
    model: torch.nn.Module  # what trains: raw_model, or DistributedDataParallel around it
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.OneCycleLR
    ema: EMA | None  # the moving average of the weights that is validated and saved, if any
    loader: DataLoader
    sampler: DistributedSampler
    device: torch.device
    amp_ctx: Any = contextlib.nullcontext()
    scaler: Any = None

    @property
    def saved_model(self) -> torch.nn.Module:
        """The weights that are validated and saved: their average, or the trained ones."""
        return self.ema.model if self.ema is not None else self.raw_model

    def new_cycle(self, peak: float, epochs: int) -> None:
        """Start a one-cycle schedule of ``epochs`` epochs peaking at ``peak``."""
        self.sched = one_cycle(self.opt, peak, epochs * len(self.loader))

    def resize_cycle(self, peak: float, epochs: int) -> None:
        """Make the current cycle ``epochs`` epochs long in all, at the step it has reached."""
        self.sched = replan(self.sched, peak, epochs * len(self.loader))

    def set_epoch(self, epoch: int) -> None:
        """Shuffle (and for generated captchas, draw) the data of ``epoch``."""
        self.sampler.set_epoch(epoch)
        dataset = self.loader.dataset
        for part in getattr(dataset, "datasets", [dataset]):
            if hasattr(part, "set_epoch"):
                part.set_epoch(epoch)

    def resume_state(self) -> dict[str, Any]:
        """What a resumable checkpoint stores besides the weights."""
        ema = {"model": self.ema.model.state_dict(), "steps": self.ema.steps} if self.ema is not None else None
        return {"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(), "ema": ema}

    def restore(self, resume: dict[str, Any], peak: float, epochs: int, planned_epochs: int) -> None:
        """Continue from a resumable checkpoint whose current cycle was ``planned_epochs`` long and is now
        ``epochs`` long (a resumed run with more epochs, or more batches an epoch, keeps its step)."""
        self.new_cycle(peak, planned_epochs)
        self.opt.load_state_dict(resume["optimizer"])  # after the schedule, whose creation resets the rates
        self.sched.load_state_dict(resume["scheduler"])
        if self.sched.total_steps != epochs * len(self.loader):
            self.resize_cycle(peak, epochs)
        if self.ema is not None and resume.get("ema") is not None:
            self.ema.model.load_state_dict(resume["ema"]["model"])
            self.ema.steps = resume["ema"]["steps"]


def build_state(cfg: TrainConfig, train_set: torch.utils.data.Dataset, model_args: dict[str, Any],
                init: dict[str, Any] | None, group: ProcessGroup, device: torch.device) -> ModelState:
    """The model (with ``init``'s weights when starting from a checkpoint), its loader, optimizer,
    first cycle of ``cfg.epochs`` epochs, mixed precision and weight average."""
    raw_model = build_network(model_args, init, device)
    model = torch.nn.parallel.DistributedDataParallel(raw_model) if group.enabled else raw_model
    loader, sampler = make_loader(cfg, train_set, group, device)
    opt = torch.optim.AdamW(raw_model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = one_cycle(opt, cfg.lr, cfg.epochs * len(loader))
    amp_ctx, scaler = autocast_for(device, cfg.amp)
    ema = EMA(raw_model, cfg.ema) if cfg.ema > 0 else None
    return ModelState(raw_model, model, opt, sched, ema, loader, sampler, device, amp_ctx, scaler)
