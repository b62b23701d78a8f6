"""Command-line options from dataclass fields: each field of an options dataclass (the model
families' configs, training.config, cli/options.py) is one flag, with its type, default,
choices and help in the field (``fields.option``). The parser holds no defaults, so that what
it returns is exactly what was given; the defaults, then a ``--config`` file, then the flags
given make the values.

The train command's model options are those of every registered model family
(``model_options``): a family's own field is a flag that only that family takes."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import types
import typing
from pathlib import Path
from typing import Any

from ..errors import TorchVaeError
from ..io.files import file_sha256, not_a_file
from ..io.weights import resolve_weights
from ..models import ModelConfig
from ..models.registry import architectures, config_class

log = logging.getLogger(__name__)


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
            if kw["type"] is Path:  # an empty path would mean the working folder
                kw["type"] = _path
            for key in ("nargs", "metavar", "action"):  # action: "append" (repeatable)
                if key in meta:
                    kw[key] = meta[key]
            choices = meta.get("choices", choices)
            if choices:
                kw["choices"] = choices
        if meta.get("positional"):
            parser.add_argument(f.name, **kw)
        else:
            flag = meta.get("name", f.name)  # a flag that is a Python keyword: --class
            parser.add_argument(f"--{flag}", dest=f.name, required=meta.get("required", False),
                                **kw)  # fmt: skip


def _path(text: str) -> Path:
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path; give a file or folder name")
    return Path(text)


def defaults(classes: tuple[type, ...]) -> dict[str, Any]:
    return {
        f.name: f.metadata.get("cli_default", f.default)
        for cls in classes
        for f in dataclasses.fields(cls)
        if f.metadata.get("flag", True)
    }


def read_config_file(
    path: Path, classes: tuple[type, ...], given: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The flag values of a --config JSON file, with a one-line error for anything odd: each
    value of its flag's type (a number where a number goes, true or false for a switch, a
    string for a name or a path; null only where the flag may be left out)."""
    if path.is_dir() and (path / "config.json").is_file():
        raise TorchVaeError(f"--config {path} is a folder; a run's flags are in its config.json: "
                            f"--config {path / 'config.json'}")  # fmt: skip
    if not path.is_file():  # a folder, a FIFO (which would block) or nothing at all
        raise TorchVaeError(f"cannot read --config {path}: {not_a_file(path)}")
    try:
        values = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise TorchVaeError(f"--config {path} is not a JSON text file (a binary file?); pass a "
                            'JSON object of flag values, e.g. {"epochs": 10}, or a run\'s '
                            "config.json") from None  # fmt: skip
    except (OSError, ValueError, RecursionError) as exc:  # includes bad JSON
        raise TorchVaeError(f"cannot read --config {path}: {exc}") from None
    if not isinstance(values, dict):
        raise TorchVaeError(
            f"--config {path} must hold a JSON object of flag values, e.g. "
            f'{{"epochs": 10}}, not a {type(values).__name__}'
        )
    fields = {
        f.name: (f, typing.get_type_hints(cls)[f.name])
        for cls in classes
        for f in dataclasses.fields(cls)
        if f.metadata.get("flag", True) and f.name not in ("config", "resume")
    }
    if _is_run_config(values):
        values = _run_flags(path, values, fields, given or {})
    unknown = sorted(set(values) - set(fields))
    for name in ("config", "resume"):
        if name in unknown:
            raise TorchVaeError(f"--config {path}: {name} cannot be given in a config file; pass "
                                f"--{name} on the command line")  # fmt: skip
    if unknown:
        are = "is not a flag" if len(unknown) == 1 else "are not flags"
        raise TorchVaeError(f"--config {path}: {', '.join(unknown)} {are} of this command (its "
                            "keys are flag names without the dashes)")  # fmt: skip
    for name, value in values.items():
        _check_json_type(path, name, value, *fields[name])
    return {k: Path(v) if _kind(fields[k][1])[0] is Path and isinstance(v, str) else v
            for k, v in values.items()}  # fmt: skip


def _is_run_config(values: dict) -> bool:
    """Whether a --config file is a run's config.json (its "model" and "train" sections)."""
    return isinstance(values.get("model"), dict) and isinstance(values.get("train"), dict)


def _run_flags(path: Path, values: dict, fields: dict, given: dict[str, Any]) -> dict[str, Any]:
    """The flag values of a run's config.json, so that ``--config RUN/config.json`` trains
    another run of the same recipe: its model's and training's values that are flags (not the
    image channels or classes, which the dataset and --conditional give, nor the digest of an
    initial model, which is checked again); an empty initial model is none; the data folder
    the run read, where neither --data_dir nor $TORCH_VAE_DATA says another. Its depth, which
    follows from its image size unless it was chosen, is left to follow another
    ``--image_size`` given on the command line."""
    flags = {k: v for part in ("model", "train") for k, v in values[part].items() if k in fields}
    if flags.get("init_from") == "" or "init_from" in given:  # none, or the command line's
        del flags["init_from"]
    elif isinstance(flags.get("init_from"), str):
        _warn_changed_start(path, flags["init_from"], values["train"].get("init_sha256"))
    if "data_dir" in fields and "data_dir" not in given:  # the run's, as a resume reads it
        from ..data.cache import run_data_dir  # numpy, PyTorch: not for every command line

        found = run_data_dir(values.get("data_dir"), unless_default=False)  # as its other flags
        if found is not None:
            flags["data_dir"] = str(found)
    size = given.get("image_size")
    if size is not None and size != flags.get("image_size") and "depth" not in given:
        depth = flags.pop("depth", None)
        log.info("--image_size %s: the depth follows from it, not the run's %s at %s (--depth "
                 "to choose one)", size, depth, flags.get("image_size"))  # fmt: skip
    return flags


def _warn_changed_start(path: Path, init_from: str, recorded: Any) -> None:
    """A warning where the run's initial weights are not the file they were when it began
    (another run resumed into them, say): the same recipe would start elsewhere; an error
    where they are gone."""
    try:
        now = file_sha256(resolve_weights(init_from))
    except (TorchVaeError, OSError):
        raise TorchVaeError(f"--config {path}: the run began from the weights {init_from}, which "
                            "cannot be read any more; pass --init_from with the weights to start "
                            "from") from None  # fmt: skip
    if recorded and now != recorded:
        log.warning("the run's initial weights %s changed since it began (SHA-256 "
                    "%s... then, %s... now): this run starts from the weights there now",
                    init_from, str(recorded)[:12], now[:12])  # fmt: skip


def _check_json_type(path: Path, name: str, value: Any, f: dataclasses.Field, hint) -> None:
    kind, choices = _kind(hint)
    optional = f.default is None or type(None) in typing.get_args(hint)
    if value is None:
        ok = optional
    elif kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif kind in (str, Path):
        ok = isinstance(value, str) and (value != "" or kind is str)
    else:
        ok = True  # a list (nargs): its dataclass checks it
    if not ok:
        want = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
                Path: "a path (a non-empty string)"}.get(kind, "a value")  # fmt: skip
        if optional:
            want += " or null"
        raise TorchVaeError(f"--config {path}: {name} must be {want}, got {json.dumps(value)}")


def pick(cls: type, values: dict[str, Any]):
    """An instance of the options dataclass ``cls`` from the parsed values."""
    names = {f.name for f in dataclasses.fields(cls) if f.metadata.get("flag", True)}
    return cls(**{k: v for k, v in values.items() if k in names})


def _flag_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.metadata.get("flag", True)]


def model_options() -> type:
    """The dataclass of ``_model_options`` for the families registered now."""
    return _model_options(architectures())


@functools.cache
def _model_options(archs: tuple[str, ...]) -> type:
    """A dataclass whose fields are the model options of every registered family: ``--arch``
    (choices: the registry) and the union of the families' fields, each None by default
    (meaning the chosen family's default), its help naming the families that take it."""
    entries: dict[str, dict[str, Any]] = {}
    for arch in archs:
        cls = config_class(arch)
        hints = typing.get_type_hints(cls)
        for f in _flag_fields(cls):
            if f.name == "arch":
                continue
            e = entries.setdefault(f.name, {"hint": hints[f.name], "helps": {},
                                            "defaults": [], "families": []})  # fmt: skip
            help = f.metadata.get("help") or f"the model's {f.name}"  # a plain field's
            e["helps"].setdefault(help, []).append(arch)
            e["defaults"].append(f.default)
            e["families"].append(arch)
    fields = [("arch", str, dataclasses.field(default="original", metadata={
        "help": "the model family: " + ", ".join(archs) + " (see docs/model.md)",
        "choices": archs}))]  # fmt: skip
    for name, e in entries.items():
        if len(e["helps"]) > 1:  # the families describe it differently: each says its own
            help = "; ".join(f"--arch {', '.join(f)}: {h}" for h, f in e["helps"].items())
        else:
            help = next(iter(e["helps"]))
            if len(e["families"]) < len(archs):
                help += " (--arch " + ", ".join(e["families"]) + ")"
        defaults: dict[str, list[str]] = {}
        for arch, default in zip(e["families"], e["defaults"], strict=True):
            defaults.setdefault(repr(default), []).append(arch)
        if len(defaults) == 1 and e["defaults"][0] is not None:
            help += f" (default: {e['defaults'][0]})"
        elif len(defaults) > 1:  # each family's own
            help += (
                " (default: " + "; ".join(f"{', '.join(a)}: {d}" for d, a in defaults.items()) + ")"
            )
        meta = {"help": help, "families": tuple(e["families"])}
        fields.append((name, e["hint"] | None, dataclasses.field(default=None, metadata=meta)))
    return dataclasses.make_dataclass("ModelOptions", fields, frozen=True)


def model_config(values: dict[str, Any], in_channels: int) -> ModelConfig:
    """The config of ``values["arch"]``'s family from the model options among ``values``
    (None: the family's default), with ``in_channels``; a one-line error for an option that
    another family takes."""
    arch = values.get("arch", "original")
    cls = config_class(arch)
    own = {f.name for f in _flag_fields(cls)}
    for f in _flag_fields(model_options()):
        if f.name not in own and values.get(f.name) is not None:
            families = ", ".join(f.metadata["families"])
            raise TorchVaeError(
                f"--{f.name} is an option of --arch {families}, not of --arch {arch}; drop it"
            )
    given = {name: values[name] for name in own if values.get(name) is not None}
    return cls(**{**given, "arch": arch, "in_channels": in_channels})
