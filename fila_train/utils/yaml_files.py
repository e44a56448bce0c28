"""YAML read as our config files need it: safe, and a mapping key given twice is an error. YAML itself keeps the
last of two equal keys, so a second ``sources:`` block (a mixture) or a second ``stage2:`` (an ablation config)
dropped the first without a word."""
from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import yaml

from .errors import ConfigError


class DuplicateKeyError(ConfigError, yaml.YAMLError):
    """A mapping key given twice; the message names its line and key (the caller adds the file). A YAMLError too,
    so a caller's handler of unreadable YAML names the file for it."""


class _UniqueKeyLoader(yaml.SafeLoader):
    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                continue  # SafeLoader's own error names it
            if key in seen:
                raise DuplicateKeyError(f"line {key_node.start_mark.line + 1}: field {key!r} appears twice")
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_UniqueKeyLoader)
