"""The VAE objective: reconstruction error summed over pixels plus beta * KL, averaged per image
(the plain-function form of ``VAE.objective``)."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..errors import TorchVaeError
from .posterior import Posterior

RECON_LOSSES = ("mse", "bce")


class VAEOutput(NamedTuple):
    """What a Gaussian-latent model's ``forward`` returns."""

    recon: torch.Tensor  # (B, C, H, W) in [0, 1]
    mu: torch.Tensor  # (B, d)
    logvar: torch.Tensor  # (B, d)


def reconstruction_error(recon: torch.Tensor, x: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Per image (B,), in float32: ``mse``, the original's sum of squared errors over all pixels;
    ``bce``, the Bernoulli negative log-likelihood (binary cross-entropy summed over pixels)."""
    recon = recon.float()
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
