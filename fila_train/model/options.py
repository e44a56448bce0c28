"""``KEY=VALUE`` options of a part, typed and checked by the part's options dataclass.

``--vision_option cvfm.gate=channel anyres.canvases=672x672,336x672 convnext.trainable=true`` sets fields of
the encoder's options dataclass (nested dataclasses by dotted keys); the value is parsed by the field's type.
Only what is given is set: the dataclass supplies every default, once. An unknown key is one line listing
the valid ones; the dataclass's own checks run when the part is built (before any weights load).
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from ..utils.errors import ConfigError

TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def option_fields(cls: type) -> dict[str, Any]:
    """Field name -> type of an options dataclass (annotations resolved)."""
    hints = typing.get_type_hints(cls)
    return {field.name: hints[field.name] for field in dataclasses.fields(cls)}


def option_keys(cls: type) -> list[str]:
    """Every settable dotted key of ``cls``."""
    keys = []
    for name, annotation in option_fields(cls).items():
        if dataclasses.is_dataclass(annotation):
            keys += [f"{name}.{key}" for key in option_keys(annotation)]
        else:
            keys.append(name)
    return keys


def _optional(annotation: Any) -> tuple[bool, Any]:
    """(whether None is allowed, the type without None)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(args) < len(typing.get_args(annotation)):
            return True, args[0] if len(args) == 1 else typing.Union[tuple(args)]
    return False, annotation


def parse_value(text: str, annotation: Any) -> Any:
    """``text`` as a value of type ``annotation``, in JSON types (tuples become lists, as in to_dict)."""
    optional, annotation = _optional(annotation)
    if optional and text.strip().lower() in ("none", "null", ""):
        return None
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (tuple, list):
        variable = not args or len(args) == 2 and args[1] is Ellipsis  # tuple[int, ...], list[int]
        items = (args[0] if args else str,) if variable else args
        parts = [part.strip() for part in text.split(",") if part.strip()]
        if variable and not parts:
            raise ValueError(f"expected at least one value, got {text!r}")
        if typing.get_origin(items[0]) in (tuple, list):  # sizes: "672x336,336x672"
            sizes = []
            for part in parts:
                try:
                    sizes.append(parse_value(part.lower().replace("x", ","), items[0]))
                except ValueError:
                    raise ValueError(f"{part!r} is not WxH (e.g. 672x336)") from None
            return sizes
        if not variable and len(parts) != len(items):
            raise ValueError(f"expected {len(items)} comma-separated values, got {len(parts)} in {text!r}")
        return [parse_value(part, item) for part, item in zip(parts, items * len(parts) if variable else items)]
    if annotation is bool:
        if text.strip().lower() not in TRUE + FALSE:
            raise ValueError(f"expected true or false, got {text!r}")
        return text.strip().lower() in TRUE
    if annotation in (int, float):
        return annotation(text.strip())
    return text


def set_option(options: dict, cls: type, assignment: str, flag: str) -> None:
    """Apply one ``KEY=VALUE`` to the (nested, partial) ``options`` dict of dataclass ``cls``."""
    key, sep, text = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(f"{flag} {assignment!r}: expected KEY=VALUE, one of {', '.join(option_keys(cls))}")
    target, current = options, cls
    *sections, name = key.strip().split(".")
    for section in sections:
        annotation = option_fields(current).get(section)
        if not dataclasses.is_dataclass(annotation):
            raise unknown_key(flag, key, cls)
        target, current = target.setdefault(section, {}), annotation
    annotation = option_fields(current).get(name)
    if annotation is None or dataclasses.is_dataclass(annotation):
        raise unknown_key(flag, key, cls)
    try:
        value = parse_value(text, annotation)
    except ValueError as error:
        raise ConfigError(f"{flag} {assignment!r}: {error}") from None
    if name in target and target[name] != value:  # else the later one would silently win
        raise ConfigError(f"{flag} {assignment!r}: {key.strip()} is given twice, as {target[name]!r} and {value!r}: "
                          "give it once")
    target[name] = value


def unknown_key(flag: str, key: str, cls: type) -> ConfigError:
    return ConfigError(f"{flag}: unknown key {key!r} of {cls.__name__}; valid keys: {', '.join(option_keys(cls))}")


def stored_options(cls: type, data: dict[str, Any]) -> Any:
    """``cls(**data)`` for options read back from a config (config.json's vision / connector options, lora): a key
    ``cls`` does not have (a config from another fila_train version, an edit) is one ConfigError listing the valid
    ones, not a TypeError traceback."""
    check_stored_keys(cls, data)
    return cls(**data)


def check_stored_keys(cls: type, data: dict[str, Any]) -> None:
    """Every key of ``data`` is a field of ``cls`` (for from_dict methods that build nested options themselves)."""
    unknown = sorted(set(data) - {field.name for field in dataclasses.fields(cls)})
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in the {cls.__name__} options; valid keys: "
                          f"{', '.join(field.name for field in dataclasses.fields(cls))}")
