"""Where measurement reports go and how they are written: JSON next to the model
(``eval-<dataset>-<split>.json``, ``sample-quality-<sampler>.json``), strict JSON only."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..errors import TorchVaeError
from ..io.files import write_text_atomic
from ..io.weights import WEIGHTS_NAME, resolve_weights


def report_path(model: Path, name: str) -> Path:
    """``name.json`` inside a model folder, or ``<weights>.name.json`` beside a weights file."""
    weights = resolve_weights(model)
    if weights.name == WEIGHTS_NAME:
        return weights.with_name(f"{name}.json")
    return weights.with_name(f"{weights.stem}.{name}.json")


def dataset_tag(dataset: str) -> str:
    """A dataset name as part of a file name (``folder:/a/b`` -> ``folder__a_b``)."""
    return dataset.replace("/", "_").replace(":", "_")


def write_report(path: Path, report: dict[str, Any]) -> Path:
    """Write ``report`` as indented JSON, atomically; a non-finite number is refused (JSON has
    none), with a one-line error naming it."""
    bad = _non_finite(report)
    if bad is not None:
        raise TorchVaeError(f"the report's {bad} is not a finite number; nothing was written")
    write_text_atomic(path, json.dumps(report, indent=2) + "\n")
    return path


def _non_finite(value: Any, where: str = "") -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return where or "value"
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(
        value, list | tuple) else ()  # fmt: skip
    for key, item in items:
        found = _non_finite(item, f"{where}.{key}" if where else str(key))
        if found is not None:
            return found
    return None
