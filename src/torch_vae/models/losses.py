"""The VAE objective: reconstruction error summed over pixels plus beta * KL, averaged per image
(the plain-function form of ``VAE.objective``)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..errors import TorchVaeError
from .posterior import Posterior

RECON_LOSSES = ("mse", "bce", "gaussian")
# The smallest decoder standard deviation of ``gaussian`` (log sigma >= -6, as Rybkin et al.
# bound it): an image reconstructed exactly would otherwise have an unbounded likelihood
MIN_LOG_SIGMA = -6.0


class VAEOutput(NamedTuple):
    """What a Gaussian-latent model's ``forward`` returns."""

    recon: torch.Tensor  # (B, C, H, W) in [0, 1]
    mu: torch.Tensor  # (B, d)
    logvar: torch.Tensor  # (B, d)


def reconstruction_error(recon: torch.Tensor, x: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Per image (B,), in float32: ``mse``, the original's sum of squared errors over all pixels;
    ``bce``, the Bernoulli negative log-likelihood (binary cross-entropy summed over pixels);
    ``gaussian``, the Gaussian negative log-likelihood with each image's optimal decoder
    variance (sigma^2 = that image's mean squared error, Rybkin et al., 2021, "Simple and
    Effective VAE Training with Calibrated Decoders"): D/2 (log(2 pi sigma^2) + 1) for D values.
    Its gradient is that of the squared error divided by 2 sigma^2, so the KL weighs less as
    reconstructions get sharper, as a learned decoder variance would make it."""
    recon = recon.float()
    if kind == "gaussian":
        d = recon[0].numel()
        mse = (recon - x).pow(2).flatten(1).mean(1)
        log_var = mse.clamp_min(math.exp(2 * MIN_LOG_SIGMA)).log()
        return d / 2 * (log_var + math.log(2 * math.pi) + 1)
    if kind == "mse":
        err = (recon - x).pow(2)
    elif kind == "bce":
        err = F.binary_cross_entropy(recon.clamp(1e-6, 1 - 1e-6), x, reduction="none")
    else:
        raise TorchVaeError(f"unknown recon_loss {kind!r}; choose one of {RECON_LOSSES}")
    return err.flatten(1).sum(1)


def per_image_terms(out: VAEOutput, x: torch.Tensor, recon_loss: str = "mse") -> dict:
    """Reconstruction error and KL for each image, shape (B,) each."""
    kl = Posterior(out.mu.float(), out.logvar.float()).kl()
    return {"recon": reconstruction_error(out.recon, x, recon_loss), "kl": kl}


def vae_loss(
    out: VAEOutput, x: torch.Tensor, beta: float = 1.0, recon_loss: str = "mse"
) -> dict[str, torch.Tensor]:
    """Return ``{"loss", "recon", "kl"}``, each the mean over the batch of a per-image sum;
    ``loss = recon + beta * kl``."""
    per_image = per_image_terms(out, x, recon_loss)
    recon, kl = per_image["recon"].mean(), per_image["kl"].mean()
    return {"loss": recon + beta * kl, "recon": recon, "kl": kl}
