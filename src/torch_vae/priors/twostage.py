"""The two-stage VAE of Dai & Wipf (ICLR 2019, "Diagnosing and Enhancing VAE Models")
(``twostage``): a second VAE fitted to the (standardised) posterior means of the first, whose
latent u has the same dimension as the codes and whose decoder has a learned variance gamma,
which the paper shows the second stage needs to match the aggregate posterior. Samples: u ~
N(0, I), then the second decoder's mean."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import register_prior
from .neural import NeuralPrior, mlp

INIT_LOG_GAMMA = -2.0
MIN_LOG_GAMMA = -12.0  # gamma -> 0 as the fit gets exact; bounded so that the loss stays finite


class SecondStage(nn.Module):
    def __init__(self, dims: int, hidden: int, layers: int):
        super().__init__()
        self.encoder = mlp(dims, hidden, layers, 2 * dims)
        self.decoder = mlp(dims, hidden, layers, dims)
        # gamma starts well below the standardised latents' variance 1: at gamma = 1 a decoder
        # that outputs their mean is a stable optimum, and the second stage ignores its codes
        self.log_gamma = nn.Parameter(torch.tensor(INIT_LOG_GAMMA))


@register_prior(("twostage",), rank=3)
class TwoStagePrior(NeuralPrior):
    kind = "twostage"
    NAME = "a two-stage VAE"
    DEFAULTS = {"hidden": 512, "layers": 3, "steps": 6000}

    @staticmethod
    def build(dims: int, hp: dict) -> nn.Module:
        return SecondStage(dims, hp["hidden"], hp["layers"])

    @classmethod
    def loss(cls, net: SecondStage, x: Tensor, gen) -> Tensor:
        """The second VAE's negative ELBO per dimension, with the decoder N(mean, gamma I)."""
        mu, logvar = net.encoder(x).chunk(2, 1)
        u = mu + (0.5 * logvar).exp() * torch.randn(mu.shape, generator=gen)
        log_gamma = net.log_gamma.clamp(min=MIN_LOG_GAMMA)
        err = (net.decoder(u) - x).pow(2).sum(1)
        recon = err / (2 * log_gamma.exp()) + x.shape[1] / 2 * (log_gamma + math.log(2 * math.pi))
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)
        return (recon + kl).mean() / x.shape[1]

    @classmethod
    def draw(cls, net: SecondStage, n: int, gen) -> Tensor:
        dims = net.decoder[0].in_features
        return net.decoder(torch.randn(n, dims, generator=gen))

    def describe(self) -> str:
        gamma = float(self.net.log_gamma.detach().clamp(min=MIN_LOG_GAMMA).exp())
        return f"{super().describe()}, decoder variance gamma {gamma:.3g}"
