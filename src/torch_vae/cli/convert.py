"""``torch-vae import-torch-vae``: an original torch-vae checkpoint converted into a
torch-vae weights file (models.original), never written over a file."""

from __future__ import annotations

import logging
from pathlib import Path

from ..data import check_channels
from ..errors import TorchVaeError
from ..evaluation.reports import dataset_tag
from ..models import save_model
from ..models.original import import_original
from .common import check_writable
from .options import ImportOptions

log = logging.getLogger(__name__)


def run(o: ImportOptions) -> Path:
    out = o.out or Path("imported") / dataset_tag(o.dataset) / f"{o.checkpoint.stem}.safetensors"
    if out.suffix != ".safetensors":
        raise TorchVaeError(f"--out {out}: the weights are written as safetensors; give a file "
                            "name ending in .safetensors")  # fmt: skip
    if out.exists():
        raise TorchVaeError(f"{out} already exists; pass another --out (nothing was overwritten)")
    check_writable(out, "--out")
    model = import_original(o.checkpoint)
    check_channels(
        o.dataset, model.config.in_channels, f"{o.checkpoint} has",
        "pass the dataset it was trained on",
    )  # fmt: skip
    save_model(model, out, dataset=o.dataset)
    c = model.config
    log.info("imported %s (C=%d, F=%d, d=%d, %dx%d) -> %s", o.checkpoint, c.in_channels,
             c.max_filters, c.latent_dims, c.image_size, c.image_size, out)  # fmt: skip
    return out
