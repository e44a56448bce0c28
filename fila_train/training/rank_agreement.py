"""Every rank trains the same batch layout: checked where the ranks first meet, before anything loads.

Each node's launcher works out --gradient_accumulation_steps from its own process count (scripts/lib/launch.sh
under torchrun, on every node). Nodes with different GPU counts would then step after different numbers of
micro-batches while their gradient reductions still pair up: training goes on, silently wrong, until the ranks
disagree on the number of steps and hang.
"""
from __future__ import annotations

from ..utils.distributed import all_ranks
from ..utils.errors import ConfigError


def check_same_batch_layout(per_device_batch: int, accumulation: int) -> None:
    layouts = all_ranks((per_device_batch, accumulation))
    if len(set(layouts)) == 1:
        return
    ranks: dict[tuple[int, int], list[int]] = {}
    for rank, layout in enumerate(layouts):
        ranks.setdefault(layout, []).append(rank)
    described = "; ".join(f"rank{'s' * (len(members) > 1)} {','.join(map(str, members))}: per-device batch "
                          f"{batch} x accumulation {steps}" for (batch, steps), members in ranks.items())
    raise ConfigError(f"the {len(layouts)} processes were started with different batch layouts ({described}): "
                      "each node's launcher must see the same processes per node and be given the same flags "
                      "(the scripts: the same GPUS_PER_NODE on every node)")
