"""The training dataset of a run: a mixture spec (or one annotation file), its plan and lengths."""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np

from ..data.dataset import DatasetOptions, SampleError
from ..data.lengths import measure_record
from ..data.mixed_dataset import MixtureDataset
from ..data.mixture import load_mixture, single_source
from ..utils.distributed import all_ranks, is_main_process
from ..utils.errors import DataError, DataRecordError, message_of
from ..utils.files import write_json_atomic
from ..processing.processor import FilaProcessor
from .arguments import DataArguments, TrainingArguments
from .resume_checks import DataOrder

logger = logging.getLogger(__name__)

PLAN_FILE = "data_plan.json"


def build_train_dataset(data_args: DataArguments, args: TrainingArguments, processor: FilaProcessor) -> MixtureDataset:
    spec = (load_mixture(data_args.data_path, data_args.data_root) if data_args.is_mixture()
            else single_source(data_args.data_path, data_args.image_folder))
    options = DatasetOptions(args.model_max_length, data_args.on_overlong, data_args.on_bad_sample,
                             data_args.max_image_pixels)
    dataset = MixtureDataset(spec, processor.conversations, processor.image_processor.encoder_processor, options)
    logger.info("data plan (seed %d, on_bad_sample=%s):\n%s", spec.seed, options.on_bad_sample,
                dataset.plan.format_table())
    if args.group_by_modality_length or options.on_bad_sample == "error":
        # Every record measured before the first step, its image files found (their headers read where the token
        # count needs the size): a bad record stops the run now, not hours into the epoch as in LLaVA.
        lengths = measured_on_each_node(dataset, data_args.length_cache_dir, args.local_process_index == 0)
        check_whole_sources_usable(dataset, lengths)
        check_over_long(dataset, lengths)
        if args.group_by_modality_length:
            dataset.modality_lengths = lengths
            images = int((lengths > 0).sum())
            logger.info("modality-length grouping: %d samples with images, %d text-only", images,
                        len(dataset) - images)
    return dataset


def measured_on_each_node(dataset: MixtureDataset, cache_dir: str | None, local_main: bool) -> np.ndarray:
    """Every record's signed length: one process per node measures (and caches), then the node's others read the
    cache. A bad record it meets is the same DataError on every rank, printed once (rank 0): the others must not
    measure the whole data again to find it (every rank must call this)."""
    failure = None
    if local_main:
        try:
            lengths = dataset.lengths(cache_dir)
        except DataRecordError as error:  # measured in worker processes, its text is theirs: the record's line
            failure = message_of(error)
    failures = [message for message in all_ranks(failure) if message]  # also waits for every node's measuring
    if failures:
        raise DataError(failures[0])
    return lengths if local_main else dataset.lengths(cache_dir)


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
                continue  # usable now: the zeros were cached by a skipping run before the data was mended
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


def write_data_plan(dataset: MixtureDataset, output_dir: str | Path) -> None:
    """OUTPUT_DIR/data_plan.json: what the run trains on, for the model card."""
    write_json_atomic(Path(output_dir) / PLAN_FILE, dataset.plan.to_dict())


def data_order(dataset: MixtureDataset, args: TrainingArguments) -> DataOrder:
    """What decides the records of each step of this run."""
    return DataOrder.of(dataset.plan, args.sampler_seed(),
                        dataset.modality_lengths if args.group_by_modality_length else None,
                        dataset.records_fingerprint())


def total_skip_counts(local: set[tuple[str, str]]) -> dict[str, int]:
    """The records skipped over all ranks, by kind (every rank must call this): a record that two ranks, two
    dataloader workers or two epochs met is one."""
    records = set().union(*(map(tuple, skips) for skips in all_ranks(sorted(local))))
    return dict(sorted(Counter(kind for kind, _ in records).items()))
