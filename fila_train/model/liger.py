"""Optional Liger kernels on the LLM (``--use_liger``): fused linear cross-entropy, RMSNorm, SwiGLU.

HF's own ``--use_liger_kernel`` patches the top-level model by its ``model_type``, which Liger
does not know for the composite ("fila"): it would silently patch nothing. Here the LLM inside
is patched by its own model type. Liger is Triton, so it needs a CUDA GPU and the
``liger-kernel`` package; without either this fails at start with a clear error.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from ..utils.errors import ConfigError

logger = logging.getLogger(__name__)

LIGER_KERNELS = {"fused_linear_cross_entropy": True, "rms_norm": True, "swiglu": True, "rope": True}


def liger_patchers() -> dict:
    """Liger's patch functions by LLM type; a ConfigError, before any model is built, where it cannot run."""
    try:
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    except ImportError as error:
        raise ConfigError(f"--use_liger needs the liger-kernel package (pip install liger-kernel), which "
                          f"is not installed here ({error}); run without --use_liger") from None
    if not torch.cuda.is_available():
        raise ConfigError("--use_liger: Liger's kernels are Triton kernels and need a CUDA GPU; "
                          "run without --use_liger on CPU")
    return MODEL_TYPE_TO_APPLY_LIGER_FN


def apply_liger_kernels(language_model: nn.Module) -> None:
    """Patch ``language_model`` in place with Liger's kernels, or raise saying why it cannot be."""
    patchers = liger_patchers()
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    model_type = language_model.config.model_type
    if model_type not in patchers:
        raise ConfigError(f"--use_liger: liger-kernel has no kernels for LLM type {model_type!r}; "
                          f"it supports: {', '.join(sorted(patchers))}")
    _apply_liger_kernel_to_instance(model=language_model, **LIGER_KERNELS)
    logger.info("Liger kernels applied to the %s LLM: %s", model_type,
                ", ".join(name for name, on in LIGER_KERNELS.items() if on))
