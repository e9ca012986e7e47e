"""torchrun support: one process per device, gloo on CPU and nccl on CUDA."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..core.errors import UsageError
from ..core.log import logger


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def choose_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            raise UsageError("--device cuda, but torch sees no CUDA device", fix="use --device cpu, or install a CUDA build of torch")
        if local_rank >= count:
            raise UsageError(
                f"process {local_rank} has no GPU: this machine has {count} CUDA device(s)",
                fix=f"use torchrun --nproc_per_node={count}, or --device cpu for CPU processes",
            )
        return torch.device("cuda", local_rank)
    return torch.device(name)


def setup(device_name: str = "auto") -> DistContext:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(device=choose_device(device_name))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = choose_device(device_name, local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if rank != 0:  # one rank speaks: the others log warnings only and draw no progress bars
        logger.setLevel(logging.WARNING)
    return DistContext(rank, world, device)


def teardown(context: DistContext) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_gather_arrays(context: DistContext, array):
    """Concatenate a numpy array from every rank (rank order)."""
    if not context.enabled:
        return array
    import numpy as np

    parts: list = [None] * context.world_size
    dist.all_gather_object(parts, array)
    return np.concatenate(parts)
