"""Weight dtypes by name, shared by every command that takes ``--dtype``: the short (bf16) and torch
(bfloat16) spellings are the same choice, so a flag copied from one command works in the others."""
from __future__ import annotations

import torch

DTYPES = {
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16,
    "fp32": torch.float32, "float32": torch.float32,
}
