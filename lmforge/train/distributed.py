"""Process-group setup for torchrun (DDP or FSDP2) and the few collectives the loops need.

Run under `torchrun --nproc-per-node N` (add --nnodes/--node-rank/--rdzv-endpoint for several
machines): RANK, WORLD_SIZE and LOCAL_RANK come from the environment. Without them everything here
degrades to a single process with no process group, so the same loop serves both.
Every decision that changes control flow (stop, save, non-finite loss) goes through `agree_any`,
so all ranks take the same branch and no rank waits forever in a collective.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from lmforge.core.device import parse_device


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the torchrun process group if there is one; pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    chosen = parse_device(device)
    if chosen.type == "cuda":
        chosen = torch.device("cuda", local_rank)
        torch.cuda.set_device(chosen)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if chosen.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    return DistInfo(rank, world, local_rank, chosen)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: nn.Module, strategy: str, info: DistInfo) -> nn.Module:
    """DDP (replicated weights) or FSDP2 (`fully_shard` per block, then the root); identity alone."""
    if not info.enabled:
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in model.layers:
            fully_shard(block)
        fully_shard(model)
        return model
    raise ValueError(f"unknown distributed strategy {strategy!r} (ddp or fsdp)")


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    """Sum a few numbers over all ranks (float64 on the process group's device)."""
    if not info.enabled:
        return list(values)
    device = info.device if info.device.type == "cuda" else torch.device("cpu")
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def all_reduce_max(value: int, info: DistInfo) -> int:
    if not info.enabled:
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=info.device if info.device.type == "cuda" else "cpu")
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def agree_any(flag: bool, info: DistInfo) -> bool:
    """True on every rank if it is true on any rank."""
    if not info.enabled:
        return flag
    return all_reduce_sum([1.0 if flag else 0.0], info)[0] > 0


def broadcast_float(value: float, info: DistInfo) -> float:
    """Rank 0's value on every rank (e.g. elapsed time, so time budgets end on the same step)."""
    if not info.enabled:
        return value
    device = info.device if info.device.type == "cuda" else torch.device("cpu")
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(tensor, src=0)
    return float(tensor.item())


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


@contextlib.contextmanager
def single_process(device: str, what: str) -> Iterator[DistInfo]:
    """The DistInfo of a run that works in one process: refused under torchrun (naming `what`),
    and the process group (if any) shut down however the run ends."""
    info = init_distributed(device)
    try:
        if info.enabled:
            raise ValueError(f"{what} runs in a single process; start it without torchrun")
        yield info
    finally:
        shutdown_distributed()
