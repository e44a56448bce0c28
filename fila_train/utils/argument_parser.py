"""The flag parser of every ``fila-train`` command: HF's dataclass parser, strict and one-line.

argparse accepts any unambiguous prefix of a flag (``--learning_rat`` is ``--learning_rate``) and HF's parser
reports leftovers as a traceback; here a flag is spelled in full, and an unknown one is a one-line error that
names the closest valid flags.
"""
from __future__ import annotations

import difflib
from typing import Any

from transformers import HfArgumentParser

from .errors import ConfigError


class StrictArgumentParser(HfArgumentParser):
    def __init__(self, dataclass_types, **kwargs: Any):
        super().__init__(dataclass_types, allow_abbrev=False, **kwargs)

    def error(self, message: str):
        # argparse prints the usage of every flag (about 200 for training) before its one useful line.
        raise ConfigError(message)

    def flag_names(self) -> list[str]:
        return sorted(option for option in self._option_string_actions if option.startswith("--"))

    def unknown_flags_error(self, remaining: list[str]) -> ConfigError:
        flags = [item.partition("=")[0] for item in remaining if item.startswith("-")]
        if not flags:
            return ConfigError(f"unexpected value(s) {remaining}: every value follows its --flag")
        valid = [name for name in self.flag_names() if "-" not in name[2:]]  # one spelling each (not --output-dir)
        described = []
        for flag in flags:
            closest = difflib.get_close_matches(flag.replace("-", "_").lstrip("_"),
                                                [name[2:] for name in valid], n=3, cutoff=0.6)
            hint = f" (closest: {', '.join('--' + name for name in closest)})" if closest else ""
            described.append(f"{flag}{hint}")
        return ConfigError(f"unknown flag{'s' * (len(flags) > 1)} {'; '.join(described)}; "
                           f"see --help for the valid ones")

    def parse(self, argv: list[str]) -> tuple:
        """``argv`` -> one instance per dataclass; unknown flags and leftover values are a ConfigError."""
        *outputs, remaining = self.parse_args_into_dataclasses(args=argv, return_remaining_strings=True,
                                                               look_for_args_file=False)
        if remaining:
            raise self.unknown_flags_error(remaining)
        return tuple(outputs)
