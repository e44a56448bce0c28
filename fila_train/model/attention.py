"""The attention implementation a run asks for, checked before anything is built (anchors.md, failure 9).

transformers refuses an unknown name, or flash_attention_2 without its package, only while it builds the LLM,
as an exception with a traceback; here either is one line at parse time. Its own registry names the valid
implementations, and its own probe says whether FlashAttention-2 can run (the package, a CUDA device).
"""
from __future__ import annotations

from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import is_flash_attn_2_available

from ..utils.errors import ConfigError


def check_attention(name: str) -> None:
    if "/" in name:
        return  # a kernel from the hub ("org/repo"): transformers fetches and checks it
    known = ("eager", *ALL_ATTENTION_FUNCTIONS.valid_keys())
    if name not in known:
        raise ConfigError(f"--attn_implementation {name!r} is not one of: {', '.join(sorted(known))}")
    if name == "flash_attention_2" and not is_flash_attn_2_available():
        raise ConfigError("--attn_implementation flash_attention_2 needs the flash-attn package and a CUDA device, "
                          "and this machine lacks one of them (pip install flash-attn --no-build-isolation); "
                          "sdpa, the default, runs anywhere")
