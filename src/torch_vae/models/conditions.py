"""The classes of a conditional model: a class given by index or by name as its dataset names it
(``7``, ``sneaker``, ``Ankle boot``, ``ankle-boot``), turned into label tensors, with one-line
errors that list the valid names."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import TorchVaeError


def _key(name: str) -> str:
    return re.sub(r"[\s_-]+", " ", name.strip().lower())


def class_index(names: Sequence[str], value: Any) -> int:
    """The index of the class ``value``: an index, or a name (case, spaces, hyphens and
    underscores aside; a part of a name such as ``T-shirt/top`` before or after its slash)."""
    if isinstance(value, bool):
        raise TorchVaeError(f"a class is an index or a name, got {value!r}")
    if isinstance(value, str):
        key = _key(value)
        for i, name in enumerate(names):
            if key == _key(name) or key in (_key(part) for part in name.split("/")):
                return i
        if not value.strip().lstrip("-").isdigit():
            raise TorchVaeError(f"unknown class {value!r}; choose one of {_listing(names)}")
        value = int(value)  # an index, in range or not: said below as one
    if isinstance(value, int) and 0 <= value < len(names):
        return value
    raise TorchVaeError(
        f"class {value!r} is not an index 0 to {len(names) - 1} nor a name; choose one of "
        f"{_listing(names)}"
    )


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(f"{i} {n!r}" for i, n in enumerate(names[:20]))
    return shown + (f" ... ({len(names)} classes)" if len(names) > 20 else "")


def class_labels(
    names: Sequence[str],
    condition: Any,
    n: int,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Labels (n,) int64 on ``device`` for ``condition``: a tensor of indices (used as it
    is), one class for all ``n`` images, a sequence of ``n`` classes, or None (drawn
    uniformly by ``generator``, on its own device, so a seeded CPU generator draws the same
    classes for a model anywhere)."""
    if isinstance(condition, torch.Tensor):
        if condition.dtype != torch.int64 or condition.shape != (n,):
            raise TorchVaeError(
                f"class labels must be an int64 tensor of shape ({n},), got "
                f"{condition.dtype} {tuple(condition.shape)}"
            )
        return condition.to(device)
    if condition is None:
        gen_device = generator.device if generator is not None else "cpu"
        drawn = torch.randint(len(names), (n,), generator=generator, device=gen_device)
        return drawn.to(device)
    if isinstance(condition, (str, int)):
        return torch.full((n,), class_index(names, condition), dtype=torch.int64, device=device)
    values = list(condition)
    if len(values) != n:
        raise TorchVaeError(f"{len(values)} classes given for {n} images")
    return torch.tensor([class_index(names, v) for v in values], device=device)
