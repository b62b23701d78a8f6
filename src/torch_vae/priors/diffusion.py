"""A diffusion model over the latent space (``diffusion``): DDPM (Ho et al., 2020) with a
cosine noise schedule (Nichol & Dhariwal, 2021) and an MLP that predicts the noise, fitted to
the standardised posterior means; samples by ancestral sampling through every step, each
step's noise from the caller's generator."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import register_prior
from .neural import NeuralPrior

EMBED = 64  # sinusoidal embedding of the time step
CLIP = 6.0  # the bound of a clean (standardised) latent while sampling


def cosine_alpha_bar(steps: int) -> Tensor:
    """The fraction of signal left at each step, bar(alpha)_t for t = 1..T (T,), float64."""
    t = torch.arange(steps + 1, dtype=torch.float64) / steps
    f = torch.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    return torch.cumprod(1 - betas, 0)


class Denoiser(nn.Module):
    """eps(x_t, t): residual SiLU blocks over [x_t, embedding(t)]."""

    def __init__(self, dims: int, hidden: int, layers: int, steps: int):
        super().__init__()
        self.steps = steps
        self.inp = nn.Linear(dims + EMBED, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.SiLU(),
                          nn.Linear(hidden, hidden)) for _ in range(layers)
        )  # fmt: skip
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, dims))
        half = EMBED // 2
        self.register_buffer("freqs", torch.exp(-math.log(1000.0) * torch.arange(half) / half),
                             persistent=False)  # fmt: skip

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        angle = (t.float() / self.steps * 1000)[:, None] * self.freqs[None]
        h = self.inp(torch.cat([x, angle.sin(), angle.cos()], 1))
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)


@register_prior(("diffusion",), rank=1)
class DiffusionPrior(NeuralPrior):
    kind = "diffusion"
    NAME = "a latent diffusion model (DDPM)"
    DEFAULTS = {"hidden": 256, "layers": 3, "timesteps": 1000, "sample_steps": 100, "steps": 8000}

    @staticmethod
    def build(dims: int, hp: dict) -> nn.Module:
        return Denoiser(dims, hp["hidden"], hp["layers"], hp["timesteps"])

    @classmethod
    def loss(cls, net: Denoiser, x: Tensor, gen) -> Tensor:
        """The noise-prediction error at a random step for each latent."""
        abar = cosine_alpha_bar(net.steps).float()
        t = torch.randint(net.steps, (len(x),), generator=gen)
        eps = torch.randn(x.shape, generator=gen)
        a = abar[t][:, None]
        return (net(a.sqrt() * x + (1 - a).sqrt() * eps, t) - eps).pow(2).mean()

    @classmethod
    def draw(cls, net: Denoiser, n: int, gen, sample_steps: int = 0) -> Tensor:
        """Ancestral sampling from x_T ~ N(0, I) over ``sample_steps`` evenly spaced steps of
        the T trained (respaced, Nichol & Dhariwal, 2021: the same posterior with beta from
        bar(alpha) of the steps kept): at each step the clean latent the network implies,
        clipped to +-CLIP standard deviations (the steps near T divide by almost 0 otherwise),
        then q(x_s | x_t, x_0) with its variance."""
        keep = torch.linspace(0, net.steps - 1, min(sample_steps or net.steps, net.steps))
        keep = keep.round().long().unique()
        abar_all = cosine_alpha_bar(net.steps)
        abar = abar_all[keep]
        prev = torch.cat([torch.ones(1, dtype=abar.dtype), abar[:-1]])
        beta = 1 - abar / prev
        dims = net.out[1].out_features
        x = torch.randn(n, dims, generator=gen).double()
        for i in reversed(range(len(keep))):
            eps = net(x.float(), torch.full((n,), int(keep[i]))).double()
            x0 = ((x - (1 - abar[i]).sqrt() * eps) / abar[i].sqrt()).clamp(-CLIP, CLIP)
            x = (prev[i].sqrt() * beta[i] * x0 + (1 - beta[i]).sqrt() * (1 - prev[i]) * x) / (
                1 - abar[i]
            )
            if i > 0:
                var = (1 - prev[i]) / (1 - abar[i]) * beta[i]
                x = x + var.sqrt() * torch.randn(n, dims, generator=gen).double()
        return x.float()

    @torch.no_grad()
    def sample(
        self, n: int, generator: torch.Generator | None = None, labels: Tensor | None = None
    ) -> Tensor:
        steps = self.info["hparams"].get("sample_steps", 0)
        z = self.draw(self.net, n, generator, steps)
        return z * self.scale + self.shift
