"""Training beyond one process: under ``torchrun`` each process joins the group (NCCL on CUDA, Gloo
on CPU), trains on its own shard, and only rank 0 prints and writes; a single process is rank 0 of 1."""
from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler


class ProcessGroup:
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
        """Join the process group (NCCL on CUDA, Gloo on CPU); this rank's device (``self.device``, returned)."""
        self.device = device
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


def make_sampler(dataset, group: ProcessGroup, seed: int) -> DistributedSampler:
    """Per-epoch shuffled shards (call ``set_epoch``); under DDP, ranks get disjoint shards."""
    return DistributedSampler(dataset, num_replicas=group.world, rank=group.rank, shuffle=True, seed=seed,
                              drop_last=group.enabled)
