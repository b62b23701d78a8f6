"""What every config and option dataclass is made of: ``option()``, a dataclass field that is
also a command-line flag, and the validators their ``__post_init__`` methods call (one set for
the whole package, so every flag says the same thing about the same mistake)."""

from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Any, ClassVar

from .errors import TorchVaeError


def option(default: Any, help: str, **cli: Any) -> Any:
    """A dataclass field that is also a command-line option: ``help`` is its help text; ``cli``
    may hold ``flag=False`` (not an option), ``name`` (the flag's name, if not the field's),
    ``required``, ``positional``, ``nargs``,
    ``metavar``, ``type`` (the parser's type) or ``cli_default`` (the default on the command
    line when it differs from the field's). The parser is built from these (cli/flags.py)."""
    return dataclasses.field(default=default, metadata={"help": help, **cli})


def is_int(value: Any) -> bool:
    """An int that is not a bool (JSON's true would otherwise count as 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def positive(flag: str, value: Any, maximum: int | None = None, example: str = "") -> None:
    """A whole number > 0 (and at most ``maximum``)."""
    hint = f"; pass e.g. {example}" if example else ""
    if not is_int(value) or value <= 0:
        raise TorchVaeError(f"{flag} must be a positive integer, got {value!r}{hint}")
    if maximum is not None and value > maximum:
        raise TorchVaeError(f"{flag} {value} is too large (at most {maximum}){hint}")


def non_negative(flag: str, value: Any, maximum: int | None = None) -> None:
    """A whole number >= 0 (and at most ``maximum``)."""
    if not is_int(value) or value < 0:
        raise TorchVaeError(f"{flag} must be an integer >= 0, got {value!r}")
    if maximum is not None and value > maximum:
        raise TorchVaeError(f"{flag} {value} is too large (at most {maximum})")


def integer_from(flag: str, value: Any, low: int, high: int, note: str = "") -> None:
    """A whole number from ``low`` to ``high``; ``note``, if given, says what they mean."""
    if not is_int(value) or not low <= value <= high:
        note = f" ({note})" if note else ""
        raise TorchVaeError(f"{flag} must be an integer from {low} to {high}{note}, got {value!r}")


def check_number(name: str, value: Any, minimum: float, strict: bool, example: str) -> None:
    """A finite real number above (``strict``) or at least ``minimum``."""
    ok = is_int(value) or (isinstance(value, float) and math.isfinite(value))
    if not ok or value < minimum or (strict and value == minimum):
        bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
        raise TorchVaeError(f"{name} must be a number {bound}, got {value!r}; pass e.g. {example}")


def check_fraction(name: str, value: Any, top: float, example: str = "") -> None:
    """A number from 0 to ``top`` (a bool is not one; NaN fails both comparisons)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not 0 <= value <= top:
        hint = f"; pass e.g. {example}" if example else ""
        raise TorchVaeError(f"{name} must be a number from 0 to {top:g}, got {value!r}{hint}")


def check_seed(flag: str, value: Any) -> None:
    """A seed PyTorch's generators take: an integer in [-2**63, 2**64)."""
    if not is_int(value) or not -(2**63) <= value < 2**64:
        raise TorchVaeError(f"{flag} must be an integer from -2**63 to 2**64 - 1, got {value!r}")


def check_choice(flag: str, value: Any, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise TorchVaeError(f"unknown {flag} {value!r}; choose one of {choices}")


def from_dict(cls, data: Any, what: str):
    """Build a config dataclass from a JSON object, with one-line errors for anything odd."""
    if not isinstance(data, dict):
        raise TorchVaeError(f"{what} config must be a JSON object, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise TorchVaeError(f"{what} config has unknown fields {sorted(map(str, unknown))}"
                            f"{_unknown_hint(unknown, names)}")  # fmt: skip
    try:
        return cls(**data)
    except TypeError as exc:
        raise TorchVaeError(f"invalid {what} config: {exc}") from None


def _unknown_hint(unknown: set, names: set[str]) -> str:
    """What an unknown field most likely is: a misspelt name, a whole config.json, or a field
    of a newer version."""
    if unknown & {"model", "train"}:
        return ('; a run\'s config.json holds the model config under "model" and the training '
                'config under "train": pass one of them')  # fmt: skip
    close = {k: difflib.get_close_matches(str(k), names, n=1) for k in unknown}
    guesses = [f"{k!r} -> {m[0]!r}" for k, m in sorted(close.items(), key=str) if m]
    newer = "a file written by a newer torch-vae needs pip install -U torch-vae"
    return f" (misspelt? {', '.join(guesses)}); {newer}" if guesses else f"; {newer}"


class JsonConfig:
    """``to_dict`` / ``from_dict`` of a config dataclass, in the form a run's config.json holds
    it; ``upgrade`` fills in what files written by older versions lack."""

    SECTION: ClassVar[str]  # the config's name in errors: "model", "training"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any):
        return from_dict(cls, cls.upgrade(data) if isinstance(data, dict) else data, cls.SECTION)

    @staticmethod
    def upgrade(data: dict[str, Any]) -> dict[str, Any]:
        return data
