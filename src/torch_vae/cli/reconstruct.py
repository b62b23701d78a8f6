"""``torch-vae reconstruct``: dataset images beside their reconstructions, as PNG files."""

from __future__ import annotations

import logging

import torch

from ..analysis.pictures import write_reconstructions
from .common import check_flags, check_outdir, model_and_dataset, split_images
from .options import ReconstructOptions, Runtime

log = logging.getLogger(__name__)


def run(o: ReconstructOptions, runtime: Runtime) -> None:
    check_outdir(o.outdir)
    model, dataset = model_and_dataset(o.model, o.dataset, runtime)
    check_flags(model.config, latent_dims=o.latent_dims, max_filters=o.max_filters)
    split = "test" if o.rec_testdata else "train"
    images = split_images(model, dataset, split, o.data_dir, runtime)[: o.nimages or None]
    out = write_reconstructions(model, torch.from_numpy(images), o.outdir, o.batchsize,
                                not runtime.quiet, o.precision)  # fmt: skip
    log.info("wrote %d reconstructions of the %s split of %s to %s (overview: %s)",
             len(images), split, dataset, o.outdir, out)  # fmt: skip
