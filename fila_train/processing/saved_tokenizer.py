"""Tokenizer settings that transformers' save leaves out, written back, so that a saved tokenizer tokenizes as
the one that trained.

transformers 5 saves a Llama tokenizer loaded with ``legacy=True`` (Mistral-7B's, older Llama conversions)
without that flag, and reads it back with ``legacy=False``: "</s>USER" is then one token fewer, and every
checkpoint and export would prompt the model with other ids than training did.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import transformers
from transformers import PreTrainedTokenizerBase

from ..model.builder import pretrained_tokenizer
from ..utils.errors import ConfigError
from ..utils.files import write_json_atomic
from .tokenization import ConversationTokenizer

TOKENIZER_CONFIG = "tokenizer_config.json"
SETTINGS_SAVE_DROPS = ("legacy",)


def keep_tokenizer_settings(tokenizer: PreTrainedTokenizerBase, folder: str | Path) -> None:
    """Add to ``folder``'s tokenizer_config.json the settings of ``tokenizer`` that its save left out."""
    path = Path(folder) / TOKENIZER_CONFIG
    config = json.loads(path.read_text(encoding="utf-8"))
    dropped = {name: getattr(tokenizer, name) for name in SETTINGS_SAVE_DROPS
               if name not in config and isinstance(getattr(tokenizer, name, None), bool)}
    if dropped:
        write_json_atomic(path, {**config, **dropped})


# Multi-turn, non-ASCII, digits, an end of turn followed by a role name ("</s>USER"), an answer with a newline.
PROBE = [{"from": "human", "value": "<image>\nWhat does the total say? café 日本 1,000 (a) don't"},
         {"from": "gpt", "value": "It says 42."}, {"from": "human", "value": "USER: and the date?"},
         {"from": "gpt", "value": "2024-05-01\nyes"}]


def check_saved_alike(conversations: ConversationTokenizer) -> None:
    """The run's tokenizer saved as every checkpoint and export saves it, and read back as generate, eval and
    export read it, must tokenize a probe conversation alike; otherwise the run stops before its weights load,
    not after training, with a model that is served other ids than it learnt."""
    tokenizer = conversations.tokenizer
    text = conversations.render(PROBE)[0].text
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        keep_tokenizer_settings(tokenizer, folder)
        reloaded = pretrained_tokenizer(folder)
    trained = tokenizer(text, add_special_tokens=False)["input_ids"]
    served = reloaded(text, add_special_tokens=False)["input_ids"]
    if served != trained:
        at = next((i for i, (a, b) in enumerate(zip(trained, served)) if a != b), min(len(trained), len(served)))
        raise ConfigError(
            f"tokenizer {tokenizer.name_or_path!r} ({type(tokenizer).__name__}) is read back from its own "
            f"save_pretrained with other ids in transformers {transformers.__version__}: a probe prompt gives "
            f"{len(trained)} ids, {len(served)} once saved, first differing at token {at} "
            f"({tokenizer.convert_ids_to_tokens(trained[at:at + 2])} vs "
            f"{reloaded.convert_ids_to_tokens(served[at:at + 2])}); every checkpoint would be served other prompts "
            f"than it trained on. Save the tokenizer with this transformers version and train from that folder")
