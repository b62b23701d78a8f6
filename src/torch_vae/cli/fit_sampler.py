"""``torch-vae fit-sampler``: a prior fitted to the training split's posterior means, saved
beside the model (priors/)."""

from __future__ import annotations

import logging
from pathlib import Path

from ..errors import TorchVaeError
from ..priors import fit_sampler
from .common import check_flags, is_shipped, model_and_dataset, split_images
from .options import FitSamplerOptions, Runtime

log = logging.getLogger(__name__)


def run(o: FitSamplerOptions, runtime: Runtime) -> Path:
    if is_shipped(o.model):
        raise TorchVaeError(
            f"{o.model} is a shipped model, whose folder holds the samplers fitted to it; fit "
            f"a copy instead: cp -r {o.model} my-model, then --model my-model"
        )
    model, dataset = model_and_dataset(o.model, o.dataset, runtime)
    check_flags(model.config, latent_dims=o.latent_dims)
    images = split_images(model, dataset, "train", o.data_dir, runtime)[: o.nimages or None]
    info = {"dataset": dataset, "split": "train"}
    prior, path = fit_sampler(model, o.model, images, o.sampler, o.components, o.seed,
                              o.batchsize, info)  # fmt: skip
    log.info("fitted %s to %d posterior means of %s train: %s", prior.describe(),
             prior.info["n_images"], dataset, path)  # fmt: skip
    return path
