"""Fitting a prior to a model: the posterior means of its training images, then the kind's own
fit, saved beside the model's weights."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

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


def posterior_means(
    model: VAE, images, batch: int = 500, labels=None, progress: bool = False
) -> torch.Tensor:
    """The encoder's posterior modes (N, d) of uint8 images (N, H, W, C), float32 on the CPU
    (a discrete model's: its code grids (N, h, w), int64); ``labels``: the images' classes
    (N,), for a conditional model; ``progress``: a bar over the images."""
    out = _encoded(model, images, batch, labels, lambda post: post.mode(), progress)
    return out if len(out) else torch.empty(0, *model.latent_shape)


def encoder_features(model: VAE, images, batch: int = 500, labels=None) -> torch.Tensor:
    """What the encoder makes of each image as a vector of numbers, float32 (N, F) on the CPU:
    the posterior means (F = d), or a discrete model's encoder output before quantisation
    (its code vectors' space, F = D h w)."""
    if model.latent_kind != "discrete":
        return posterior_means(model, images, batch, labels)
    return _encoded(model, images, batch, labels, lambda codes: codes.z_e.flatten(1))


@torch.no_grad()
def _encoded(
    model: VAE, images, batch: int, labels, take: Callable, progress: bool = False
) -> torch.Tensor:
    """``take(posterior)`` of the images in batches, on the CPU (floats as float32)."""
    fast = model.inference_copy()
    device = fast.device
    out = []
    with tqdm(total=len(images), desc="encoding", unit="img", disable=not progress) as bar:
        for i in range(0, len(images), batch):
            x = to_float(torch.as_tensor(np.asarray(images[i : i + batch])), device)
            y = None if labels is None else labels[i : i + batch].to(device)
            z = take(fast.encode(x, y)).cpu()
            out.append(z.float() if z.is_floating_point() else z)
            bar.update(len(x))
    return torch.cat(out) if out else torch.empty(0)


def kinds_for(latent_kind: str) -> tuple[str, ...]:
    """The kinds fitted to a model whose latent is ``latent_kind``, best first."""
    return tuple(k for k in kinds() if getattr(PRIORS[k], "latent_kind", "gaussian") == latent_kind)


def check_kind(model: VAE, kind: str) -> None:
    """A one-line error for a prior of ``kind`` that cannot be fitted to ``model``'s latent."""
    if kind in PRIORS and kind not in kinds_for(model.latent_kind):
        raise TorchVaeError(
            f"a {kind} sampler cannot be fitted to a model with a {model.latent_kind} latent "
            f"(--arch {model.config.arch}); choose one of {', '.join(kinds_for(model.latent_kind))}"
        )


def fit_prior(
    z: np.ndarray,
    kind: str,
    options: dict,
    info: dict,
    progress: bool = True,
    labels: torch.Tensor | None = None,
) -> Prior:
    """A prior of ``kind`` fitted to latents ``z`` (N, d) (of the classes ``labels``, which a
    kind that draws codes class by class learns from and the others ignore). ``options``:
    ``seed`` and the kind's own (``components`` for gmm; ``steps`` and the network's size for
    the neural kinds; 0 or absent: the kind's default)."""
    cls = PRIORS.get(kind)
    if cls is None:
        raise TorchVaeError(f"unknown sampler kind {kind!r}; choose one of {', '.join(kinds())}")
    return cls.fit(np.asarray(z), {**options, "kind": kind}, info, progress, labels=labels)


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
    labels: torch.Tensor | None = None,
) -> tuple[Prior, Path]:
    """Fit a prior of ``kind`` to the posterior means of ``images`` (uint8, the training
    images; of the classes ``labels``, for a conditional model) and save it beside the
    model's weights at ``model_path``; ``score(prior)``, when given, is recorded in its
    ``info["validation"]`` (what ``--sampler auto`` compares). Returns the prior and its file."""
    check_kind(model, kind)
    z = posterior_means(model, images, batch, labels, progress)
    info = {**(info or {}), "n_images": len(z), "latent_dims": model.config.latent_dims,
            "model_sha256": file_sha256(resolve_weights(model_path))}  # fmt: skip
    if model.latent_kind == "discrete":
        info["codebook_size"] = model.codebook_size
    if model.conditional:
        info["classes"] = model.config.num_classes
    what = "code grids" if model.latent_kind == "discrete" else "posterior means"
    log.info("fitting a %s sampler to %d %s", kind, len(z), what)
    start = time.perf_counter()
    prior = fit_prior(z.numpy(), kind, options or {}, info, progress, labels)
    prior.info["fit_seconds"] = round(time.perf_counter() - start, 2)
    if score is not None:
        log.info("fitted in %.1f s; scoring it on held-out images", prior.info["fit_seconds"])
        prior.info["validation"] = score(prior)
    path = save_sampler(prior, sampler_path(model_path, kind))
    log.info("fitted %s to %d %s in %.1f s: %s", prior.describe(), len(z), what,
             prior.info["fit_seconds"], path)  # fmt: skip
    return prior, path
