"""The training dataset of a run: a mixture spec (or one annotation file), its plan and lengths."""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np

from ..data.dataset import DatasetOptions
from ..data.mixed_dataset import MixtureDataset
from ..data.mixture import load_mixture, single_source
from ..utils.distributed import all_ranks
from ..utils.errors import DataError, DataRecordError, message_of
from ..utils.files import write_json_atomic
from ..processing.processor import FilaProcessor
from .arguments import DataArguments, TrainingArguments
from .data_checks import check_over_long, check_whole_sources_usable
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


def write_data_plan(dataset: MixtureDataset, output_dir: str | Path) -> None:
    """OUTPUT_DIR/data_plan.json: what the run trains on, for the model card."""
    write_json_atomic(Path(output_dir) / PLAN_FILE, dataset.plan.to_dict())


def data_order(dataset: MixtureDataset, args: TrainingArguments) -> DataOrder:
    """What decides the records of each step of this run."""
    return DataOrder.of(dataset.plan, args.sampler_seed(),
                        dataset.modality_lengths if args.group_by_modality_length else None,
                        dataset.records_fingerprint(),
                        "grouped" if args.group_by_modality_length else str(args.train_sampling_strategy),
                        bool(args.dataloader_drop_last))


def total_skip_counts(local: set[tuple[str, str]]) -> dict[str, int]:
    """The records skipped over all ranks, by kind (every rank must call this): a record that two ranks, two
    dataloader workers or two epochs met is one."""
    records = set().union(*(map(tuple, skips) for skips in all_ranks(sorted(local))))
    return dict(sorted(Counter(kind for kind, _ in records).items()))
