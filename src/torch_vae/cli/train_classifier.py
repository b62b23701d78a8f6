"""``torch-vae train-classifier``: the small classifier whose features measure sample quality
(evaluation.classifier)."""

from __future__ import annotations

from ..evaluation.classifier import ClassifierTraining, train_classifier
from .options import Runtime


def run(o: ClassifierTraining, runtime: Runtime) -> None:
    train_classifier(o, not runtime.quiet)
