"""Distributed data parallel set-up under ``torchrun`` and the few collectives the engine needs.

``torchrun --nproc-per-node N [--nnodes M ...] $(which mfnet) train ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; :func:`init_distributed` reads them and starts a process group (NCCL on GPU, gloo on CPU).
Without them everything runs in one process and the collectives are no-ops.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: its rank among ``world_size`` processes and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        """Whether more than one process takes part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (the one that logs and writes checkpoints)."""
        return self.rank == 0


def is_main_process() -> bool:
    """Whether this process is rank 0 of a ``torchrun`` job, or runs alone (``RANK`` unset)."""
    return int(os.environ.get("RANK", "0")) == 0


def pick_device(name: str | None = None) -> torch.device:
    """``name`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``) or the best available: CUDA if present, else CPU."""
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def init_distributed(device: str | None = None) -> DistContext:
    """Joins the process group described by the ``torchrun`` environment, if any.

    Args:
        device: ``"cpu"`` or ``"cuda"`` (default: CUDA when available). Under ``torchrun`` each process uses
            ``cuda:LOCAL_RANK``.
    """
    base = pick_device(device)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext(device=base)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if base.type == "cuda":
        torch.cuda.set_device(local_rank)
        base = torch.device("cuda", local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if base.type == "cuda" else "gloo")
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=base)


def cleanup(ctx: DistContext) -> None:
    """Leaves the process group (if this process joined one)."""
    if ctx.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    """Waits for every process."""
    if ctx.distributed:
        dist.barrier()


def all_reduce_sum(ctx: DistContext, values: torch.Tensor) -> torch.Tensor:
    """Element-wise sum of ``values`` over all processes (a copy; the input is left as it is)."""
    out = values.detach().clone()
    if ctx.distributed:
        device = ctx.device if dist.get_backend() == "nccl" else torch.device("cpu")
        moved = out.to(device)
        dist.all_reduce(moved, op=dist.ReduceOp.SUM)
        out = moved.to(values.device)
    return out


def all_gather_objects(ctx: DistContext, obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every process (``[obj]`` without distribution)."""
    if not ctx.distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(ctx: DistContext, obj: Any) -> Any:
    """Rank 0's ``obj`` on every process."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
