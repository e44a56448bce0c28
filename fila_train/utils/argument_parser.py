"""The flag parser of every ``fila-train`` command: argparse (or HF's dataclass parser), strict and one-line.

argparse accepts any unambiguous prefix of a flag (``--learning_rat`` is ``--learning_rate``), prints its usage
before an error and exits with 2, and HF's parser reports leftovers as a traceback; here a flag is spelled in
full, and an unknown one is a one-line error (a ConfigError) that names the closest valid flags.
"""
from __future__ import annotations

import argparse
import difflib
from typing import Any

from transformers import HfArgumentParser

from .errors import ConfigError


class StoreAddingUp(argparse._StoreAction):
    """argparse's store, except that a flag of several values (nargs + or *) given several times adds them up:
    `--bench a --bench b`, or an extra flag after a script's own. argparse keeps the last occurrence's values
    only, dropping the earlier ones without a word. A default is replaced by the first occurrence, not extended."""

    def __call__(self, parser, namespace, values, option_string=None):
        current = getattr(namespace, self.dest, None)
        if self.nargs in ("+", "*") and option_string and current is not None and current is not self.default:
            values = [*current, *values]
        setattr(namespace, self.dest, values)


class StrictParser(argparse.ArgumentParser):
    """argparse without prefixes or leftovers, whose flags of several values add up when repeated; its sub-command
    parsers (add_subparsers) are the same."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def register(self, registry_name, value, object):
        # argparse's own __init__ registers its store action, which every flag without an action then uses (HF's
        # dataclass parser adds its flags from within that __init__, so a later register would come too late).
        if registry_name == "action" and value in (None, "store"):
            object = StoreAddingUp
        super().register(registry_name, value, object)

    def error(self, message: str):
        # argparse prints the usage of every flag (about 200 for training) before its one useful line.
        raise ConfigError(message)

    def flag_names(self) -> list[str]:
        return sorted(option for option in self._option_string_actions if option.startswith("--"))

    def unknown_flags_error(self, remaining: list[str]) -> ConfigError:
        flags = [item.partition("=")[0] for item in remaining if item.startswith("-")]
        if not flags:
            return ConfigError(f"unexpected value(s) {remaining}: every value follows its --flag")
        valid = [name[2:] for name in self.flag_names() if "-" not in name[2:]]  # one spelling each (not --output-dir)
        described = []
        for flag in flags:
            word = flag.replace("-", "_").lstrip("_")
            # A prefix is often too short to be "close" (--dt, --dtype): the flags it begins come first.
            closest = [name for name in valid if name.startswith(word)] + \
                difflib.get_close_matches(word, valid, n=3, cutoff=0.6)
            closest = list(dict.fromkeys(closest))[:3]
            hint = f" (closest: {', '.join('--' + name for name in closest)})" if closest else ""
            described.append(f"{flag}{hint}")
        return ConfigError(f"unknown flag{'s' * (len(flags) > 1)} {'; '.join(described)}; "
                           f"see {self.prog} --help for the valid ones")

    def parse_known_args(self, args=None, namespace=None):
        # Here, not in parse_args: a sub-command's parser is called this way, and names its own flags.
        namespace, remaining = super().parse_known_args(args, namespace)
        if remaining:
            raise self.unknown_flags_error(remaining)
        return namespace, remaining


class StrictArgumentParser(StrictParser, HfArgumentParser):
    def parse(self, argv: list[str]) -> tuple:
        """``argv`` -> one instance per dataclass; unknown flags and leftover values are a ConfigError."""
        return tuple(self.parse_args_into_dataclasses(args=argv, look_for_args_file=False))
