"""The VAE objective: reconstruction error summed over pixels plus beta * KL, averaged per image."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .model import Posterior, VAEOutput


def vae_loss(
    out: VAEOutput, x: torch.Tensor, beta: float = 1.0, recon_loss: str = "mse"
) -> dict[str, torch.Tensor]:
    """Return ``{"loss", "recon", "kl"}``, each the mean over the batch of a per-image sum.

    ``mse`` is the original's sum of squared errors over all pixels; ``bce`` is the Bernoulli
    negative log-likelihood (binary cross-entropy summed over pixels). ``loss = recon + beta * kl``.
    """
    per_image = per_image_terms(out, x, recon_loss)
    recon, kl = per_image["recon"].mean(), per_image["kl"].mean()
    return {"loss": recon + beta * kl, "recon": recon, "kl": kl}


def per_image_terms(out: VAEOutput, x: torch.Tensor, recon_loss: str = "mse") -> dict:
    """Reconstruction error and KL for each image, shape (B,) each."""
    recon = out.recon.float()
    if recon_loss == "mse":
        err = (recon - x).pow(2)
    elif recon_loss == "bce":
        err = F.binary_cross_entropy(recon.clamp(1e-6, 1 - 1e-6), x, reduction="none")
    else:
        raise ValueError(f"unknown recon_loss {recon_loss!r}")
    kl = Posterior(out.mu.float(), out.logvar.float()).kl()
    return {"recon": err.flatten(1).sum(1), "kl": kl}
