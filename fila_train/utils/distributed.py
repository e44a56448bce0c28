"""Rank queries and ZeRO-3 parameter gathering that also work without torch.distributed."""
from __future__ import annotations

import contextlib

import torch
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


def any_rank(flag: torch.Tensor) -> bool:
    """Whether ``flag`` (a 0-dim bool tensor, on the device the backend communicates from) is true on any rank."""
    value = flag.to(torch.int32).reshape(1)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def all_ranks(value):
    """Every rank's ``value`` (picklable), in rank order."""
    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def built_partitioned(module: torch.nn.Module) -> bool:
    """Whether ZeRO-3's zero.Init built ``module`` (from_pretrained under ZeRO-3): each parameter is partitioned, an
    empty placeholder here, as soon as its own module is built, and the files then fill it."""
    return any(hasattr(parameter, "ds_id") for parameter in module.parameters())


def gathered(parameters: list, modifier_rank: int | None = None):
    """Full values of ZeRO-3 partitioned parameters inside the block (a no-op otherwise)."""
    partitioned = [p for p in parameters if hasattr(p, "ds_id")]
    if not partitioned:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(partitioned, modifier_rank=modifier_rank)
