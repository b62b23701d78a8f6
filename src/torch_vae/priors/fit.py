"""Fitting a prior to a model: the posterior means of its training images, then the kind's own
fit, saved beside the model's weights."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ..io.files import file_sha256
from ..io.weights import resolve_weights
from ..models import VAE
from ..runtime.device import to_float
from .base import Prior, sampler_path, save_sampler
from .mixture import fit_gaussian, fit_gmm

log = logging.getLogger(__name__)
KINDS = ("gaussian", "gmm")


@torch.no_grad()
def posterior_means(model: VAE, images, batch: int = 500) -> torch.Tensor:
    """The encoder's posterior modes (N, d) of uint8 images (N, H, W, C), float32 on the CPU."""
    fast = model.inference_copy()
    device = fast.device
    out = [fast.encode(to_float(torch.as_tensor(np.asarray(images[i : i + batch])), device))
           .mode().float().cpu() for i in range(0, len(images), batch)]  # fmt: skip
    return torch.cat(out) if out else torch.empty(0, model.config.latent_dims)


def fit_sampler(
    model: VAE,
    model_path: Path,
    images,
    kind: str = "gmm",
    components: int = 50,
    seed: int = 0,
    batch: int = 500,
    info: dict | None = None,
) -> tuple[Prior, Path]:
    """Fit a prior of ``kind`` to the posterior means of ``images`` (uint8, the training
    split) and save it beside the model's weights at ``model_path``; the prior and its file."""
    z = posterior_means(model, images, batch)
    info = {**(info or {}), "n_images": len(z),
            "model_sha256": file_sha256(resolve_weights(model_path))}  # fmt: skip
    if kind == "gaussian":
        prior = fit_gaussian(z.numpy(), info)
    else:
        prior = fit_gmm(z.numpy(), components, seed, info)
    path = save_sampler(prior, sampler_path(model_path, kind))
    log.info("fitted %s to %d posterior means: %s", prior.describe(), len(z), path)
    return prior, path
