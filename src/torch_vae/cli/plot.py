"""``torch-vae plot``: the training curves of runs, overlaid, from their metrics.jsonl."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..analysis import figures
from ..errors import TorchVaeError
from ..io.weights import CONFIG_NAME
from ..training.rundir import METRICS_NAME, read_metrics
from .common import check_output_file, check_outside_dataset
from .options import PlotOptions

log = logging.getLogger(__name__)


def run(o: PlotOptions) -> None:
    runs = [Path(r) for r in o.runs]
    for run in runs:
        if not run.exists():
            raise TorchVaeError(f"{run} does not exist: pass run folders of torch-vae train")
        if not (run / METRICS_NAME).is_file() and (run / CONFIG_NAME).is_file():
            raise TorchVaeError(
                f"{run} has no metrics.jsonl yet: its run is in its first epoch (or was stopped "
                "in it); its curves begin when an epoch ends"
            )
        if not (run / METRICS_NAME).is_file():
            raise TorchVaeError(f"{run} has no metrics.jsonl: pass run folders of torch-vae train")
    if o.out.suffix.lower() != ".png":
        raise TorchVaeError(f"--out {o.out}: plot writes a PNG; give a file name ending in .png")
    check_output_file(o.out, "--out")
    check_outside_dataset(o.out, *map(_trained_on, runs), flag="--out")
    records = [read_metrics(r) for r in runs]
    for run, rows in zip(runs, records, strict=True):
        if not any("train_loss" in r for r in figures.by_epoch(rows)):
            raise TorchVaeError(f"{run / METRICS_NAME} holds no epoch's losses yet: plot a run "
                                "after its first epoch")  # fmt: skip
    out = figures.plot_curves(records, figures.run_labels(runs), o.out)
    log.info("wrote %s: training curves of %s", out, ", ".join(figures.run_labels(runs)))


def _trained_on(run: Path) -> str | None:
    """The dataset a run's config.json says it trains on (None: no readable record)."""
    try:
        train = json.loads((run / CONFIG_NAME).read_text()).get("train")
    except (OSError, ValueError, AttributeError):  # none, unreadable, not an object
        return None
    dataset = train.get("dataset") if isinstance(train, dict) else None
    return dataset if isinstance(dataset, str) else None
