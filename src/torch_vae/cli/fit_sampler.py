"""``torch-vae fit-sampler``: a prior fitted to the posterior means of the images the model was
trained on, saved beside the model (priors/), and scored on its validation split."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ..errors import TorchVaeError
from ..evaluation.sample_quality import encoder_space, make_reference, measure, sample_images
from ..priors import fit_sampler
from .common import check_flags, held_out_rows, is_shipped, model_and_dataset, split_images
from .options import FitSamplerOptions, Runtime

log = logging.getLogger(__name__)
SCORE_SEED = 0


def run(o: FitSamplerOptions, runtime: Runtime) -> Path:
    if is_shipped(o.model):
        raise TorchVaeError(
            f"{o.model} is a shipped model, whose folder holds the samplers fitted to it; fit "
            f"a copy instead: cp -r {o.model} my-model, then --model my-model"
        )
    model, dataset = model_and_dataset(o.model, o.dataset, runtime)
    check_flags(model.config, latent_dims=o.latent_dims)
    images = split_images(model, dataset, "train", o.data_dir, runtime)
    fit_rows, held_out, where = held_out_rows(o.model, len(images), o.data_dir)
    if fit_rows is not None:
        train = images[fit_rows[: o.nimages or None].numpy()]
    else:
        train = images[: o.nimages or None]
    info = {"dataset": dataset, "split": "train" if fit_rows is None else "train - validation"}
    score = None
    if o.nscore:
        rows = held_out[: o.nscore].numpy() if held_out is not None else slice(-o.nscore, None)
        score = scorer(model, images[rows], where, o.batchsize)
    options = {"components": o.components, "steps": o.steps, "seed": o.seed}
    prior, path = fit_sampler(model, o.model, train, o.sampler, options, o.batchsize, info,
                              not runtime.quiet, score)  # fmt: skip
    if score is not None:
        v = prior.info["validation"]
        log.info("scored on %d %s in the model's encoder features: FD %.4f, precision %.3f, "
                 "recall %.3f", v["n_images"], v["images"], v["fd"], v["precision"],
                 v["recall"])  # fmt: skip
    return path


def scorer(model, images: np.ndarray, where: str, batch: int):
    """``score(prior)``: as many samples as ``images`` against them in the model's encoder
    features (the same for every sampler of this model: what ``--sampler auto`` compares)."""
    space = encoder_space(model, batch)
    ref = make_reference(space, torch.from_numpy(np.asarray(images)), k=3)

    def score(prior) -> dict:
        fake = sample_images(model, prior, len(images), SCORE_SEED, batch)
        m = measure(space, fake, ref)
        return {"features": "encoder", "images": where, "n_images": len(images),
                "seed": SCORE_SEED, "fd": m["fd"], "precision": m["precision"],
                "recall": m["recall"]}  # fmt: skip

    return score
