"""Rank queries and ZeRO-3 parameter gathering that also work without torch.distributed."""
from __future__ import annotations

import contextlib

import torch.distributed as dist


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def gathered(parameters: list, modifier_rank: int | None = None):
    """Full values of ZeRO-3 partitioned parameters inside the block (a no-op otherwise)."""
    partitioned = [p for p in parameters if hasattr(p, "ds_id")]
    if not partitioned:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(partitioned, modifier_rank=modifier_rank)
