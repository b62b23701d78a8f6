"""``torch-vae train-classifier``: the small classifier whose features measure sample quality
(evaluation.classifier)."""

from __future__ import annotations

from ..errors import TorchVaeError
from ..evaluation.classifier import CLASSIFIER_WEIGHTS, ClassifierTraining, train_classifier
from .common import check_outdir, is_model_folder, is_shipped
from .options import Runtime


def run(o: ClassifierTraining, runtime: Runtime) -> None:
    # checked before the training: --out is a new or empty folder, or a classifier's own
    out = o.out
    if out.exists() and not out.is_dir():
        raise TorchVaeError(f"--out {out} is a file; give a folder for the classifier")
    check_outdir(out, "--out")
    if out.is_dir() and any(out.iterdir()) and not (out / CLASSIFIER_WEIGHTS).is_file():
        raise TorchVaeError(
            f"--out {out} holds files other than a classifier's; choose a new folder "
            "(nothing was written)"
        )
    if is_model_folder(out) or is_shipped(out):
        raise TorchVaeError(f"--out {out} is a model's folder; choose a new folder")
    if (out / CLASSIFIER_WEIGHTS).is_file() and not o.overwrite:
        raise TorchVaeError(f"--out {out} holds a classifier already; pass --overwrite to "
                            "replace it, or choose a new folder (nothing was written)")  # fmt: skip
    train_classifier(o, not runtime.quiet)
