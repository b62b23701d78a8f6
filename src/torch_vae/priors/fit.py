"""Fitting a prior to a model: the posterior means of its training images, then the kind's own
fit, saved beside the model's weights."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..errors import TorchVaeError
from ..io.files import file_sha256
from ..io.weights import resolve_weights
from ..models import VAE
from ..runtime.device import to_float
from .base import PRIORS, Prior, preference, sampler_path, save_sampler

log = logging.getLogger(__name__)


def kinds() -> tuple[str, ...]:
    """Every kind ``fit-sampler`` fits, best first (as ``--sampler auto`` prefers them)."""
    return tuple(preference())


@torch.no_grad()
def posterior_means(model: VAE, images, batch: int = 500) -> torch.Tensor:
    """The encoder's posterior modes (N, d) of uint8 images (N, H, W, C), float32 on the CPU."""
    fast = model.inference_copy()
    device = fast.device
    out = [fast.encode(to_float(torch.as_tensor(np.asarray(images[i : i + batch])), device))
           .mode().float().cpu() for i in range(0, len(images), batch)]  # fmt: skip
    return torch.cat(out) if out else torch.empty(0, model.config.latent_dims)


def fit_prior(z: np.ndarray, kind: str, options: dict, info: dict, progress: bool = True) -> Prior:
    """A prior of ``kind`` fitted to latents ``z`` (N, d). ``options``: ``seed`` and the
    kind's own (``components`` for gmm; ``steps`` and the network's size for the neural
    kinds; 0 or absent: the kind's default)."""
    cls = PRIORS.get(kind)
    if cls is None:
        raise TorchVaeError(f"unknown sampler kind {kind!r}; choose one of {', '.join(kinds())}")
    return cls.fit(np.asarray(z), {**options, "kind": kind}, info, progress)


def fit_sampler(
    model: VAE,
    model_path: Path,
    images,
    kind: str = "gmm",
    options: dict | None = None,
    batch: int = 500,
    info: dict | None = None,
    progress: bool = True,
    score: Callable[[Prior], dict] | None = None,
) -> tuple[Prior, Path]:
    """Fit a prior of ``kind`` to the posterior means of ``images`` (uint8, the training
    images) and save it beside the model's weights at ``model_path``; ``score(prior)``, when
    given, is recorded in its ``info["validation"]`` (what ``--sampler auto`` compares).
    Returns the prior and its file."""
    z = posterior_means(model, images, batch)
    info = {**(info or {}), "n_images": len(z),
            "model_sha256": file_sha256(resolve_weights(model_path))}  # fmt: skip
    start = time.perf_counter()
    prior = fit_prior(z.numpy(), kind, options or {}, info, progress)
    prior.info["fit_seconds"] = round(time.perf_counter() - start, 2)
    if score is not None:
        prior.info["validation"] = score(prior)
    path = save_sampler(prior, sampler_path(model_path, kind))
    log.info("fitted %s to %d posterior means in %.1f s: %s", prior.describe(), len(z),
             prior.info["fit_seconds"], path)  # fmt: skip
    return prior, path
