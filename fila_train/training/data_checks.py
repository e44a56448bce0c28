"""What the lengths measured before the first step already say about a run's data, acted on then rather than when
the records are drawn: a source that would train none of its share, and samples over model_max_length."""
from __future__ import annotations

import logging

import numpy as np

from ..data.dataset import SampleError
from ..data.lengths import measure_record
from ..data.mixed_dataset import MixtureDataset
from ..utils.distributed import is_main_process
from ..utils.errors import DataError

logger = logging.getLogger(__name__)


def check_whole_sources_usable(dataset: MixtureDataset, lengths: np.ndarray) -> None:
    """Under --on_bad_sample skip, a source whose every record is unusable (length 0: a wrong image_root, another
    format) would be replaced by the other sources at every draw and trained 0%, exit 0: a mistake in the spec,
    not the few bad records skipping is for (as resolve_plan refuses a source that adds nothing)."""
    plan = dataset.plan
    for index, source in enumerate(plan.sources):
        mine = np.flatnonzero(plan.source_of == index)
        if len(mine) and not lengths[mine].any():
            try:  # the first record's own error says what is wrong with them
                measure_record(dataset.sources[index], int(plan.record_of[mine[0]]))
                continue  # usable now: mended since it was measured
            except SampleError as error:
                first = str(error)
            raise DataError(f"{dataset.describe()}: source {source.name!r}: all {len(mine)} of its samples are "
                            f"unusable records, so --on_bad_sample skip would replace every one and the run would "
                            f"train none of it; the first: {first}")


def check_over_long(dataset: MixtureDataset, lengths: np.ndarray) -> None:
    """What the measured lengths already say of over-long samples, before the first step rather than when drawn:
    under --on_overlong error the first one stops the run; under drop a source that would lose every sample stops
    it (its share of the plan would silently go to the others), and the others' losses are counted by source."""
    limit = dataset.options.max_length
    over = np.abs(lengths) > limit
    if not over.any():
        return
    plan = dataset.plan
    if dataset.options.on_overlong == "error":
        first = int(np.flatnonzero(over)[0])
        source = dataset.sources[int(plan.source_of[first])]
        _, where, _ = source.checked_record(int(plan.record_of[first]))
        raise DataError(f"{where}: {abs(int(lengths[first]))} tokens after image expansion exceed model_max_length "
                        f"{limit} ({int(over.sum())} of the run's {len(dataset)} samples do); raise "
                        f"--model_max_length, or --on_overlong drop to replace them by other samples")
    lost = []
    for index, source in enumerate(plan.sources):
        mine = plan.source_of == index
        count = int(over[mine].sum())
        usable = int((lengths[mine] != 0).sum())  # unusable records (0, under skip) are replaced anyway
        if count and count == usable:
            which = "samples" if usable == int(mine.sum()) else "usable samples"
            raise DataError(f"{dataset.describe()}: source {source.name!r}: all {count} of its {which} exceed "
                            f"model_max_length {limit} after image expansion (the shortest "
                            f"{int(np.abs(lengths[mine & over]).min())} tokens), so --on_overlong drop would replace every "
                            f"one and the run would train none of it; raise --model_max_length, lower the source's "
                            f"max_tiles, or remove it")
        if count:
            lost.append(f"{source.name}: {count} of {int(mine.sum())} ({100 * count / int(mine.sum()):.0f}%)")
    if is_main_process():
        logger.warning("samples over model_max_length %d, each replaced by another sample when drawn "
                       "(--on_overlong drop), by source: %s", limit, "; ".join(lost))
