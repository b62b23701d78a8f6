"""Latent priors fitted after training (``fit-sampler``, ``generate --sampler``): the file
format, the registry of kinds and the choice of ``--sampler auto`` (base.py), and one module
per kind (mixture.py: a Gaussian or a Gaussian mixture; flow.py, diffusion.py and
twostage.py: networks over the latents, sharing neural.py; transformer.py: an autoregressive
prior over a discrete model's code grids)."""

from . import diffusion, flow, mixture, transformer, twostage  # noqa: F401  (register kinds)
from .base import (
    PRIORS,
    Prior,
    choose_sampler,
    load_sampler,
    preference,
    read_sampler,
    sampler_path,
    save_sampler,
)
from .fit import check_kind, encoder_features, fit_prior, fit_sampler, kinds, posterior_means
from .mixture import MixtureSampler, fit_gaussian, fit_gmm

__all__ = [
    "PRIORS",
    "MixtureSampler",
    "Prior",
    "check_kind",
    "choose_sampler",
    "encoder_features",
    "fit_gaussian",
    "fit_gmm",
    "fit_prior",
    "fit_sampler",
    "kinds",
    "load_sampler",
    "posterior_means",
    "preference",
    "read_sampler",
    "sampler_path",
    "save_sampler",
]
