"""Command-line options from dataclass fields: each field of an options dataclass (config.py,
options.py) is one flag, with its type, default, choices and help in the field (``option``).
The parser holds no defaults, so that what it returns is exactly what was given; the defaults,
then a ``--config`` file, then the flags given make the values."""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any

from .errors import TorchVaeError


def _kind(hint: Any) -> tuple[Any, tuple[str, ...] | None]:
    """The parser type of a field's annotation, and its choices for a Literal."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is typing.Literal:
        return str, typing.get_args(hint)
    return hint, None


def add_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """One argument per field of ``cls``, none of them with a default: the namespace holds
    only what was given, and the defaults come from the dataclasses (``defaults``)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if not meta.get("flag", True):
            continue
        kind, choices = _kind(hints[f.name])
        default = meta.get("cli_default", f.default)
        help = meta["help"]
        shown = not (default is None or default is False or default == ())
        if shown and "default" not in help:
            help += f" (default: {default})"
        kw: dict[str, Any] = {"help": help, "default": argparse.SUPPRESS}
        if kind is bool:
            kw["action"] = "store_true"
        else:
            kw["type"] = meta.get("type", kind)
            for key in ("nargs", "metavar"):
                if key in meta:
                    kw[key] = meta[key]
            if choices:
                kw["choices"] = choices
        if meta.get("positional"):
            parser.add_argument(f.name, **kw)
        else:
            parser.add_argument(f"--{f.name}", required=meta.get("required", False), **kw)


def defaults(classes: tuple[type, ...]) -> dict[str, Any]:
    return {
        f.name: f.metadata.get("cli_default", f.default)
        for cls in classes
        for f in dataclasses.fields(cls)
        if f.metadata.get("flag", True)
    }


def read_config_file(path: Path, classes: tuple[type, ...]) -> dict[str, Any]:
    """The flag values of a --config JSON file, with a one-line error for anything odd."""
    try:
        values = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # includes bad UTF-8 and bad JSON
        raise TorchVaeError(f"cannot read --config {path}: {exc}") from None
    if not isinstance(values, dict):
        raise TorchVaeError(
            f"--config {path} must hold a JSON object of flag values, e.g. "
            f'{{"epochs": 10}}, not a {type(values).__name__}'
        )
    kinds = {
        f.name: _kind(typing.get_type_hints(cls)[f.name])[0]
        for cls in classes
        for f in dataclasses.fields(cls)
        if f.metadata.get("flag", True) and f.name not in ("config", "resume")
    }
    unknown = sorted(set(values) - set(kinds))
    if unknown:
        raise TorchVaeError(f"--config {path}: unknown keys {unknown}")
    return {k: Path(v) if kinds[k] is Path and isinstance(v, str) else v for k, v in values.items()}


def pick(cls: type, values: dict[str, Any]):
    """An instance of the options dataclass ``cls`` from the parsed values."""
    names = {f.name for f in dataclasses.fields(cls) if f.metadata.get("flag", True)}
    return cls(**{k: v for k, v in values.items() if k in names})
