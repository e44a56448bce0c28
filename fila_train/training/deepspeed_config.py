"""What a DeepSpeed config may not decide: the optimizer, its schedule and the clipping are the trainer's.

Configs copied from other codebases override them without a word (anchors.md, silent failure 6): an
"optimizer" section makes DeepSpeed build the optimizer (FilaTrainer's per-part groups are never made), a
"scheduler" section replaces --lr_scheduler_type, and a config with no "gradient_clipping" never clips. Values
that disagree with a flag transformers finds itself (HfTrainerDeepSpeedConfig.mismatches), but reports only
once the model is loaded; they are refused here too, as is an optimizer offload that DeepSpeed would refuse
the trainer's optimizer for, also only once the model is loaded. (DeepSpeed warns that a client optimizer is
slow there; torch's fused AdamW, the default --optim, steps 50M parameters on the CPU as fast as DeepSpeed's
CPU Adam: 35 ms against 43 ms on one thread here.) No torch: the preflight uses this.
"""
from __future__ import annotations

from ..utils.errors import ConfigError

# A section that would take the place of what the trainer builds from the flags -> what is lost.
TRAINER_OWNED_SECTIONS = {
    "optimizer": "DeepSpeed would build its own optimizer, dropping FilaTrainer's per-part learning rates "
                 "(--part_lr, --connector_lr, ...) and --optim",
    "scheduler": "DeepSpeed would run its own schedule instead of --lr_scheduler_type and --warmup_ratio",
}


def check_deepspeed_config(config: dict, source: str, max_grad_norm: float | None) -> None:
    """A ConfigError naming ``source`` (how --deepspeed was given) when the config would override a flag.

    ``max_grad_norm`` is None when the flag was not given: transformers' default clips.
    """
    for section, lost in TRAINER_OWNED_SECTIONS.items():
        if section in config:
            raise ConfigError(f'--deepspeed {source}: remove its "{section}" section ({lost}); '
                              f"the trainer's flags set it")
    offload = ((config.get("zero_optimization") or {}).get("offload_optimizer") or {}).get("device", "none")
    if offload != "none" and config.get("zero_force_ds_cpu_optimizer", True) is not False:
        raise ConfigError(f'--deepspeed {source}: offloads the optimizer to {offload} but does not set '
                          f'"zero_force_ds_cpu_optimizer": false, so DeepSpeed would refuse the trainer\'s optimizer '
                          f'once the weights are loaded; add it (zero_configs/zero3_offload.json has it)')
    if config.get("gradient_clipping") is None and (max_grad_norm is None or max_grad_norm > 0):
        given = "" if max_grad_norm is None else f" {max_grad_norm}"
        raise ConfigError(f'--deepspeed {source}: no "gradient_clipping", so DeepSpeed would not clip and '
                          f'--max_grad_norm{given} would be ignored; add "gradient_clipping": "auto" '
                          f'(or pass --max_grad_norm 0 to train unclipped)')


def check_flag_mismatches(mismatches: list[str], source: str) -> None:
    """transformers' list of config values that disagree with the flags ("- ds KEY=V vs hf FLAG=V"), as one line."""
    if mismatches:
        found = "; ".join(line.lstrip("- ").strip() for line in mismatches)
        raise ConfigError(f'--deepspeed {source}: values that disagree with the flags ({found}); set them to '
                          f'"auto" so the flags decide')


def partitions_optimizer_state(config: dict) -> bool:
    """Whether the optimizer state is saved per process (ZeRO stage >= 1), so that DeepSpeed can load a
    checkpoint only with the number of processes that wrote it (a universal checkpoint loads with any)."""
    stage = (config.get("zero_optimization") or {}).get("stage", 0)
    universal = (config.get("checkpoint") or {}).get("load_universal", False)
    return int(stage) >= 1 and not universal


def skips_steps_to_scale_the_loss(config: dict) -> bool:
    """Whether DeepSpeed skipping a step is routine: fp16 with dynamic loss scaling skips each step whose
    gradients overflow at the current scale, then lowers it. In bf16 or fp32 (or at a fixed fp16 scale) the
    gradients are not finite at any scale: the next steps would be skipped too."""
    fp16 = config.get("fp16") or {}
    return fp16.get("enabled") is True and fp16.get("loss_scale", 0) == 0
