"""Command-line options generated from the stage configs (configs.py): one flag per field, nested
configs (calibration, training) flattened, and a compression stage's method options (the union
over its registry's methods) as flags of their own. A new field or method option appears in the
CLI without a change here or in cli.py."""

from __future__ import annotations

import argparse
import types
import typing
from typing import Any, Literal

from pydantic import BaseModel

from .configs import Config
from .guards import finite_float


OVERWRITE_HELP = "replace --out if it is a slimtune artifact or an empty directory (never other files)"


def add_overwrite(parser: argparse.ArgumentParser, extra: str = "") -> None:
    """--overwrite, worded once for every stage that writes an artifact."""
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP + extra)


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _ints(value: str) -> list[int]:
    try:
        return [int(v) for v in _csv(value)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 32,24,16, got {value!r}") from None


def _unwrap(annotation) -> list:
    """The non-None members of a union (or the annotation alone)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(annotation) if a is not type(None)]
    return [annotation]


def _nested(annotation) -> type[BaseModel] | None:
    for a in _unwrap(annotation):
        if isinstance(a, type) and issubclass(a, BaseModel):
            return a
    return None


def _kind(annotation) -> dict[str, Any]:
    """argparse keywords (type, choices) for a field's annotation."""
    first = _unwrap(annotation)[0]
    origin = typing.get_origin(first)
    if origin is Literal:
        return {"choices": typing.get_args(first)}
    if origin is list:
        item = typing.get_args(first)[0]
        return {"type": _ints if item is int else _csv}
    return {"type": {int: int, float: finite_float}.get(first, str)}


def _help(description: str | None, default: Any) -> str:
    text = (description or "").replace("%", "%%")
    if default is not None and not isinstance(default, (BaseModel, list, dict)) and default != "":
        text += f" (default {default})"
    return text


def _add_flag(parser, dest: str, flags: tuple[str, ...], annotation, description: str, default, off: str | None):
    if _unwrap(annotation)[0] is bool:
        if off:
            parser.add_argument(*flags, dest=dest, action="store_true", default=argparse.SUPPRESS,
                                help=_help(description, default))
            parser.add_argument(off, dest=dest, action="store_false", default=argparse.SUPPRESS, help="see " + flags[0])
        elif default is False:
            parser.add_argument(*flags, dest=dest, action="store_true", default=argparse.SUPPRESS,
                                help=_help(description, None))
        else:
            parser.add_argument(*flags, dest=dest, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=_help(description, default))
        return
    kind = _kind(annotation)
    if kind.get("type") in (_csv, _ints):
        description = f"{description}; comma-separated"
    parser.add_argument(*flags, dest=dest, default=argparse.SUPPRESS, help=_help(description, default),
                        metavar=None if typing.get_origin(_unwrap(annotation)[0]) is Literal
                        else dest.rsplit(".", 1)[-1].upper(), **kind)


def add_config_arguments(parser: argparse.ArgumentParser, config: type[Config], prefix: str = "") -> None:
    """One flag per field of `config` (dest: the field's dotted path; absent unless given)."""
    own = [n for n in config.model_fields if n in config.__annotations__]  # the class's own fields first
    for name in own + [n for n in config.model_fields if n not in own]:
        field = config.model_fields[name]
        extra = field.json_schema_extra or {}
        if extra.get("cli") is False:
            continue
        dest = f"{prefix}{name}"
        nested = _nested(field.annotation)
        if nested is not None:
            add_config_arguments(parser, nested, prefix=f"{dest}.")
            continue
        if name == "options" and getattr(config, "registry", None) is not None:
            _add_method_options(parser, config.registry, dest)
            continue
        flags = tuple(extra.get("flag", (f"--{name.replace('_', '-')}",)))
        registry = getattr(config, "registry", None)
        annotation = Literal[tuple(registry)] if name == "method" and registry is not None else field.annotation
        _add_flag(parser, dest, flags, annotation, field.description, field.default, extra.get("off"))


def _add_method_options(parser, registry, dest: str) -> None:
    """Each option name of the registry's methods once; its help says which methods take it."""
    seen: dict[str, list] = {}
    for method in registry.values():
        for option, (default, check) in method.options.items():
            seen.setdefault(option, []).append((method.name, default, check))
    for option, uses in seen.items():
        _, default, check = uses[0]
        choices = tuple(dict.fromkeys(c for _, _, k in uses for c in (getattr(k, "choices", None) or ()))) or None
        annotation = (bool if isinstance(default, bool) else Literal[choices] if choices else type(default))
        defaults = ", ".join(f"{m} {d}" for m, d, _ in uses)
        text = f"{', '.join(m for m, _, _ in uses)}: {getattr(check, 'help', '')} (default: {defaults})"
        _add_flag(parser, f"{dest}.{option}", (f"--{option.replace('_', '-')}",), annotation, text,
                  None if isinstance(default, bool) else "", None)


def config_from_args(config: type[Config], args: argparse.Namespace) -> dict:
    """The config's fields given on the command line, as a (nested) dict for Config.build."""
    data: dict = {}
    for key, value in vars(args).items():
        head = key.split(".", 1)[0]
        if head not in config.model_fields:
            continue
        node = data
        *path, last = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return data
