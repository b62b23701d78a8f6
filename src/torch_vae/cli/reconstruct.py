"""``torch-vae reconstruct``: dataset images beside their reconstructions, as PNG files."""

from __future__ import annotations

import logging

import torch

from ..analysis.pictures import write_reconstructions
from .common import (
    check_flags,
    check_outdir,
    first_images,
    model_and_dataset,
    say_left_out,
    split_files,
    split_images,
    split_labels,
)
from .options import ReconstructOptions, Runtime

log = logging.getLogger(__name__)


def run(o: ReconstructOptions, runtime: Runtime) -> None:
    check_outdir(o.outdir, images="rec")
    model, dataset = model_and_dataset(o.model, o.dataset, runtime, convert=True, writes=o.outdir)
    check_flags(model.config, latent_dims=o.latent_dims, max_filters=o.max_filters)
    split = "test" if o.rec_testdata else "train"
    images = split_images(model, dataset, split, o.data_dir, runtime)
    labels = split_labels(model, dataset, split, o.data_dir, len(images))
    images = first_images(images, o.nimages, split, "reconstructed")
    say_left_out(o.model, model, dataset, split, "reconstructed")
    if labels is not None:  # a conditional model encodes and decodes each image with its class
        labels = labels[: len(images)]
    files = split_files(dataset, split)  # an image folder's, listed beside the pictures
    out = write_reconstructions(model, torch.from_numpy(images), o.outdir, o.batchsize,
                                not runtime.quiet, o.precision, labels,
                                files[: len(images)] if files is not None else None)  # fmt: skip
    given = " (each given its class)" if labels is not None else ""
    log.info("wrote %d reconstruction%s%s of the %s split of %s to %s (overview: %s)",
             len(images), "s" * (len(images) != 1), given, split, dataset, o.outdir,
             out)  # fmt: skip
