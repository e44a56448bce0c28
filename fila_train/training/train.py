"""The training entry point shared by stage 1 and stage 2 (``fila-train train``)."""
from __future__ import annotations

import dataclasses
import gc
import logging
import os
import sys
import time
from pathlib import Path

import torch
import transformers

from ..data.packing import build_collator
from ..model.builder import build_model, load_tokenizer, starts_a_fresh_connector
from ..model.liger import apply_liger_kernels
from ..model.vision.flops import VisionFlops, vision_flops
from ..processing.processor import FilaProcessor
from ..utils.argument_parser import StrictArgumentParser
from ..utils.distributed import all_ranks, is_main_process, rank, world_size
from ..utils.files import give_files_open_mode, write_json_atomic
from ..utils.logs import console_logging
from ..utils.quiet import known_noise_silenced
from ..utils.run_summary import TRAIN_SUMMARY, run_summary
from ..utils.errors import ConfigError, FilaError, Interrupted
from .arguments import DataArguments, ModelArguments, TrainingArguments
from .before_weights import check_before_weights
from .build_locks import reporting_build_locks
from .checkpoints import refuse_start_over, resolve_resume, resume_value, where_to_resume
from .resume_checks import BatchLayout, check_resume_data, check_resume_layout, check_resume_settings, run_settings
from .datasets import build_train_dataset, data_order, total_skip_counts, write_data_plan
from .deepspeed_config import partitions_optimizer_state
from .llava_flags import given_flags, translate_llava_flags
from .connector_artifact import load_connector_artifact, save_connector_artifact
from .parts import apply_tune_parts, format_parameter_table, format_table
from .rank_agreement import check_same_batch_layout
from .reporting import configure_wandb, format_summary
from .trainer import FilaTrainer

logger = logging.getLogger("fila_train")

RUN_ARGS_FILE = "run_args.json"  # how the run was started; fila-train export reads it for the model card


def write_run_args(model_args: ModelArguments, data_args: DataArguments, args: TrainingArguments) -> None:
    """The model and data arguments as given (relative paths resolve against ``cwd``), and the tuned parts:
    what the run started from (``--pretrained_connector``) and which stage it was."""
    record = {"model": dataclasses.asdict(model_args), "data": dataclasses.asdict(data_args),
              "tune_parts": args.parts(), "cwd": os.getcwd()}
    write_json_atomic(Path(args.output_dir) / RUN_ARGS_FILE, record)


def parse_args(argv: list[str]) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    """Our flags and LLaVA's aliases of them (llava_flags.py), spelled in full."""
    argv, _ = translate_llava_flags(argv)
    parser = StrictArgumentParser((ModelArguments, DataArguments, TrainingArguments), prog="fila-train train")
    try:
        return parser.parse(argv)
    except FilaError:
        raise
    except ValueError as error:  # flags the parser left over, and transformers' own TrainingArguments checks
        raise ConfigError(str(error)) from error


def process_log_level(args: TrainingArguments) -> int:
    # Rank 0 logs at --log_level (info by default), other ranks at --log_level_replica (warning).
    level = args.get_process_log_level()
    if args.should_log and args.log_level == "passive":
        level = logging.INFO
    return level


HYBRID_FLOP_ROWS = (("total", "hybrid encoder (ViT + ConvNeXt + CVFM)"), ("vit", "ViT alone"),
                    ("convnext", "  ConvNeXt"), ("cvfm", "  CVFM"))


def count_vision_flops(config) -> VisionFlops | None:
    try:
        return vision_flops(config)
    except Exception as error:  # the count is informational: it must never stop a training run
        logger.warning("vision FLOPs not counted (%s: %s)", type(error).__name__, error)
        return None


def format_vision_flops(flops: VisionFlops) -> str:
    parts = flops.parts
    if "total" in parts:
        rows = [[label, f"{parts[key]:.4g}"] for key, label in HYBRID_FLOP_ROWS]
        rows.append(["overhead over ViT alone", f"+{100 * (parts['total'] / parts['vit'] - 1):.1f}%"])
    else:
        rows = [["ViT", f"{parts['vit']:.4g}"]]
    width, height = flops.canvas
    return format_table([f"vision forward per image ({width}x{height}, {flops.views} view(s))", "TFLOPs"], rows)


def train(model_args: ModelArguments, data_args: DataArguments, args: TrainingArguments,
          notes: tuple[str, ...] = (), given: frozenset[str] = frozenset()) -> dict:
    """One run; ``notes`` are logged at its start (which LLaVA flags became which of ours); ``given``: the flags
    the command line named (a saved model's parts are checked against them)."""
    check_same_batch_layout(args.per_device_train_batch_size, args.gradient_accumulation_steps)
    check_before_weights(model_args, args, given, data_args)
    log_format = f"%(asctime)s [rank {rank()}] %(levelname)s %(name)s: %(message)s"  # multi-node logs stay readable
    with console_logging(process_log_level(args), log_format), known_noise_silenced():
        for note in notes:
            logger.info(note)
        # Before DeepSpeed starts: a refused run must not be killed inside its op build (a killed build leaves
        # a lock file behind that every later run waits on).
        if resume_value(args.resume_from_checkpoint) is None:
            refuse_start_over(args.output_dir)
        args.resume_from_checkpoint = resolve_resume(args.resume_from_checkpoint, args.output_dir)
        if args.resume_from_checkpoint is not None:
            check_resume_layout(
                Path(args.resume_from_checkpoint),
                BatchLayout(args.world_size, args.train_batch_size, args.gradient_accumulation_steps),
                partitioned_optimizer=bool(args.deepspeed) and partitions_optimizer_state(
                    args.hf_deepspeed_config.config),
                check_batch=not args.ignore_data_skip, batch_from_checkpoint=args.auto_find_batch_size)
            check_resume_settings(Path(args.resume_from_checkpoint), run_settings(args, model_args.lora_settings()))
        if args.deepspeed:
            import deepspeed

            # ZeRO-3 partitions parameters while from_pretrained builds them (zero.Init), which reads
            # the world size from DeepSpeed's communicator: it must be up before the model is built.
            with reporting_build_locks():  # on the CPU it loads a JIT op, which can wait on a stale lock
                deepspeed.init_distributed()
        return run_training(model_args, data_args, args)


def adopt_run_template(config, model_args: ModelArguments) -> None:
    """The run's --conversation_template becomes the model's; a saved fila model's own one is replaced with a
    warning (the scripts always pass one, so a default can replace it)."""
    run, saved = model_args.conversation_template, config.conversation_template
    if saved != run and is_main_process():
        logger.warning("--conversation_template %s replaces %s's %s: the run trains and saves the model with %s "
                       "(pass --conversation_template %s to keep it)", run, model_args.model_name_or_path, saved,
                       run, saved)
    config.conversation_template = run


def run_training(model_args: ModelArguments, data_args: DataArguments, args: TrainingArguments) -> dict:
    configure_wandb(args.report_to, args.output_dir, args.resume_from_checkpoint)
    dtype = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32
    # Seeded before the build: a new connector / CVFM / fuser gets the same initial weights on every
    # rank and in every run with the same --seed (the Trainer seeds only after the model exists).
    transformers.set_seed(args.seed)
    model = build_model(
        model_args.model_name_or_path, model_args.vision_tower, vision_encoder=model_args.vision_encoder,
        vision_options=model_args.vision_options(), vision_feature_layer=model_args.vision_feature_layer,
        connector_type=model_args.connector_type, connector_options=model_args.connector_options(),
        conversation_template=model_args.conversation_template, dtype=dtype,
        attn_implementation=model_args.attn_implementation, lora=model_args.lora_settings())
    adopt_run_template(model.config, model_args)
    # Counted from the config on a meta-device copy: cheap, and blind to ZeRO-3 partitioning.
    flops = count_vision_flops(model.config) if is_main_process() else None
    # No KV cache in training, on the LLM's own config too (the composite's flag does not reach it);
    # generate() still caches, from its generation config.
    model.config.use_cache = False
    model.language_model.config.use_cache = False
    model.checkpointing_parts = args.checkpointing_parts()
    if args.use_liger:
        apply_liger_kernels(model.language_model)
    tokenizer = load_tokenizer(model_args.model_name_or_path, model, args.model_max_length)
    if model_args.pretrained_connector:
        load_connector_artifact(model, model_args.pretrained_connector)
    elif "llm" in args.parts() and starts_a_fresh_connector(model_args.model_name_or_path) and is_main_process():
        logger.warning("no --pretrained_connector: the connector starts from random weights and trains with the "
                       "LLM (stage 2 normally starts from stage 1's connector.safetensors, as LLaVA's "
                       "--pretrain_mm_mlp_adapter)")
    apply_tune_parts(model, args.parts())
    if args.gradient_checkpointing:
        # Frozen embeddings + checkpointing: inputs must require grad for gradients to flow.
        model.language_model.enable_input_require_grads()

    # Saved with every checkpoint and the final model: tokenizer, chat template, image preprocessing.
    processor = FilaProcessor.for_model(tokenizer, model.config)
    dataset = build_train_dataset(data_args, args, processor)
    if args.resume_from_checkpoint is not None and not args.ignore_data_skip:
        check_resume_data(Path(args.resume_from_checkpoint), all_ranks(data_order(dataset, args)))
    # Only now: a refused resume into the run's folder must leave the run's own records as they were.
    if is_main_process():
        write_run_args(model_args, data_args, args)
        write_data_plan(dataset, args.output_dir)
    logger.info("trainable parameters by part (tune_parts=%s):\n%s", args.tune_parts,
                format_parameter_table(model))
    if flops is not None:
        logger.info("vision encoder %s:\n%s", model.config.vision_encoder, format_vision_flops(flops))
    backend = torch.distributed.get_backend() if torch.distributed.is_initialized() else "none"
    logger.info("data: %d samples from %s; template %s; %d process(es), backend %s", len(dataset),
                data_args.data_path, model_args.conversation_template, world_size(), backend)

    trainer = FilaTrainer(model=model, args=args, train_dataset=dataset,
                          data_collator=build_collator(args.packing, model_args.attn_implementation,
                                                       tokenizer.pad_token_id,
                                                       processor.image_processor.encoder_processor),
                          processing_class=processor, run_settings=run_settings(args, model_args.lora_settings()))
    start = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    except KeyboardInterrupt:
        state = trainer.state
        when = (f"at step {state.global_step} of {state.max_steps}" if trainer.training_started
                else "before training started")  # in DeepSpeed's set-up or a resume's loading
        raise Interrupted(f"interrupted {when}; {where_to_resume(args.output_dir)}") from None
    seconds = time.perf_counter() - start
    skipped = total_skip_counts(trainer.skipped)
    if skipped:
        logger.warning("skipped records over the run (all ranks, by kind): %s", skipped)

    trainer.save_model(args.output_dir)
    save_connector_artifact(trainer.model, args.output_dir)
    trainer.write_curves()
    if is_main_process():
        give_files_open_mode(Path(args.output_dir))  # save_pretrained's safetensors shards come out 0600
    tokens_per_second = trainer.tokens_seen * world_size() / max(seconds, 1e-9)
    summary = run_summary(trainer.state.log_history, trainer.state.global_step, seconds, tokens_per_second)
    summary.update(output_dir=str(Path(args.output_dir).resolve()),
                   vision_encoder=model.config.vision_encoder, connector_type=model.config.connector_type,
                   tune_parts=args.parts(), skipped=skipped)
    if flops is not None:
        summary["vision_tflops_per_image"] = {"canvas": list(flops.canvas), "views": flops.views, **flops.parts}
    if is_main_process():
        write_json_atomic(Path(args.output_dir) / TRAIN_SUMMARY, summary)
        logger.info("wrote %s", Path(args.output_dir) / TRAIN_SUMMARY)
        logger.info("\n%s\n%s", format_parameter_table(model), format_summary(summary))
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    return summary


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    translated, notes = translate_llava_flags(argv)
    train(*parse_args(argv), notes=tuple(notes), given=frozenset(given_flags(translated)))
    if torch.distributed.is_initialized():
        # The DeepSpeed engine sits in reference cycles: collected only at interpreter exit, its pending gloo
        # work would be destroyed after the process group, which aborted a finished rank once (SIGABRT,
        # "terminate called without an active exception"). Collect it while everything is still alive.
        gc.collect()
        torch.distributed.destroy_process_group()
    return 0
