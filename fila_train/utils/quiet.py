"""Third-party messages that tell a fila-train user nothing, silenced by exact message, each with why.

Only these are dropped; every other warning still shows (once, as Python prints them).
"""
from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

# (category, message regex)
KNOWN_WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    # DeepSpeed's ZeRO collectives call torch's old names once per bucket, every step: hundreds of lines a run,
    # about DeepSpeed's code, not the user's.
    (FutureWarning, r"`torch\.distributed\.(reduce_scatter_tensor|all_gather_into_tensor)` is deprecated"),
)
# (the logger that emits it, exactly; message regex)
KNOWN_LOG_RECORDS: tuple[tuple[str, str], ...] = (
    # peft imports bitsandbytes whenever it is installed (the qlora extra); on CPUs with AVX512-BF16 it then
    # reports an optional kernel package it could not find, on every command, QLoRA or not. Its fallback is
    # the plain CPU kernel.
    ("bitsandbytes.backends.cpu.ops", r"Failed to load CPU gemm_4bit_forward from kernels-community"),
    # transformers' save/load helpers import DeepSpeed on every command (export, demo prepare, eval); without a
    # GPU it then announces the CPU, once per process. The training launcher says which device it runs on.
    ("DeepSpeed", r"Setting accelerator to CPU"),
    # DeepSpeed builds its CPU shared-memory op at start-up and torch looks for CUDA while doing so.
    ("torch.utils.cpp_extension", r"No CUDA runtime is found"),
)


class DropMessages(logging.Filter):
    def __init__(self, pattern: str):
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


@contextmanager
def known_noise_silenced() -> Iterator[None]:
    """The KNOWN_WARNINGS and KNOWN_LOG_RECORDS dropped for the block; everything is put back on exit."""
    filters = [(logging.getLogger(name), DropMessages(pattern)) for name, pattern in KNOWN_LOG_RECORDS]
    with warnings.catch_warnings():
        for category, pattern in KNOWN_WARNINGS:
            warnings.filterwarnings("ignore", message=f".*{pattern}", category=category)
        for logger, drop in filters:
            logger.addFilter(drop)
        try:
            yield
        finally:
            for logger, drop in filters:
                logger.removeFilter(drop)
