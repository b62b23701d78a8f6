"""The diagonal Gaussian posterior q(z|x) and the standard normal prior p(z): the one place
their maths lives (sampling, the mode, KL, log-densities, entropy)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ..runtime.device import randn

# Keeps exp(logvar) and the KL finite in float32 for any input, yet wide enough that imported
# original models (whose log-variance exceeds 20 on unusual inputs) compute exactly as before.
LOGVAR_MIN, LOGVAR_MAX = -30.0, 50.0
_LOG_2PI = math.log(2 * math.pi)


class Posterior(NamedTuple):
    """Diagonal Gaussian q(z|x): mean and log-variance, each (B, d). A NamedTuple, so that
    ``mu, logvar = posterior`` works and torch.compile and DDP pass it through."""

    mu: torch.Tensor
    logvar: torch.Tensor

    @classmethod
    def clamped(cls, mu: torch.Tensor, logvar: torch.Tensor) -> Posterior:
        """A posterior whose log-variance is clamped to [LOGVAR_MIN, LOGVAR_MAX]."""
        return cls(mu, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX))

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    @property
    def noise_shape(self) -> torch.Size:
        """The shape of one image's noise ``reparameterize`` takes: (d,)."""
        return self.mu.shape[1:]

    def sample(self, generator: torch.Generator | None = None, n: int | None = None):
        """Reparameterised sample z = mu + sigma * eps: (B, d), or (n, B, d) for ``n`` samples
        per image. ``generator`` may live on another device than ``mu`` (a CPU generator: the
        same eps on every device)."""
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator (torch.Generator()."
                            f"manual_seed(seed)), not {generator!r}")  # fmt: skip
        shape = self.mu.shape if n is None else (n, *self.mu.shape)
        return self.reparameterize(randn(shape, generator, self.mu.device, self.mu.dtype))

    def reparameterize(self, eps: torch.Tensor) -> torch.Tensor:
        """The code mu + sigma * eps for standard normal noise ``eps`` (..., B, d)."""
        return self.mu + self.std * eps.to(self.mu.dtype)

    def mode(self) -> torch.Tensor:
        """The most likely code: the mean (B, d)."""
        return self.mu

    def kl(self, reduce: bool = True) -> torch.Tensor:
        """KL(q(z|x) || N(0, I)) per image (B,), or per image and dimension (B, d)."""
        kl = -0.5 * (1 + self.logvar - self.mu.pow(2) - self.logvar.exp())
        return kl.sum(-1) if reduce else kl

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log q(z|x) of codes z (..., B, d): (..., B)."""
        return -0.5 * (((z - self.mu) ** 2) / self.logvar.exp() + self.logvar + _LOG_2PI).sum(-1)

    def entropy(self) -> torch.Tensor:
        """The differential entropy of q(z|x) per image (B,)."""
        return 0.5 * (self.logvar + 1 + _LOG_2PI).sum(-1)

    def float(self) -> Posterior:
        return Posterior(self.mu.float(), self.logvar.float())


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) of codes z (..., d): (...)."""
    return -0.5 * (z**2 + _LOG_2PI).sum(-1)
