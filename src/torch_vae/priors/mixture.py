"""Gaussian mixtures over the latent space, fitted to the posterior means of the training
images: ``gaussian`` (one full-covariance component, the mean and covariance of the means) and
``gmm`` (K components, fitted by EM with scikit-learn)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ..errors import TorchVaeError
from .base import register_prior

MAX_COMPONENTS = 1000
DEFAULT_COMPONENTS = 50  # at 4 or more training images each; fewer images, fewer components

log = logging.getLogger(__name__)


@register_prior(("gmm", "gaussian"), rank=10)
class MixtureSampler:
    """A Gaussian mixture over the latent space: ``weights`` (K,), ``means`` (K, d) and
    ``scale_tril`` (K, d, d), the lower Cholesky factors of the covariances; ``info`` says what
    it was fitted to. ``sample(n, generator)`` -> (n, d) latents, the same for the same seed."""

    def __init__(self, weights, means, scale_tril, info: dict):
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.means = torch.as_tensor(means, dtype=torch.float32)
        self.scale_tril = torch.as_tensor(scale_tril, dtype=torch.float32)
        self.info = info
        if self.means.dim() != 2:
            raise TorchVaeError(f"sampler means must be (K, d), got {tuple(self.means.shape)}")
        k, d = self.means.shape
        if self.weights.shape != (k,) or self.scale_tril.shape != (k, d, d):
            raise TorchVaeError(
                f"sampler shapes do not fit: weights {tuple(self.weights.shape)}, means "
                f"{(k, d)}, scale_tril {tuple(self.scale_tril.shape)}"
            )

    @property
    def dims(self) -> int:
        return self.means.shape[1]

    @property
    def kind(self) -> str:
        return self.info.get("kind", "gmm")

    def describe(self) -> str:
        k = len(self.weights)
        return "a full-covariance Gaussian" if k == 1 else f"a {k}-component Gaussian mixture"

    def sample(
        self, n: int, generator: torch.Generator | None = None, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``n`` latents (n, d), float32 on the CPU: a component for each, then its Gaussian."""
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dims, 1, generator=generator)
        return self.means[comp] + (self.scale_tril[comp] @ eps).squeeze(-1)

    @classmethod
    def fit(cls, z: np.ndarray, options: dict, info: dict, progress: bool = True, labels=None):
        """``gaussian`` or ``gmm`` (``options["components"]``, default 50) fitted to ``z``."""
        if options.get("kind") == "gaussian":
            return fit_gaussian(z, info)
        components = options.get("components")
        if not components:  # the default: 50, or fewer for fewer images (each needs a few)
            components = max(1, min(DEFAULT_COMPONENTS, len(z) // 4))
            if components < DEFAULT_COMPONENTS:
                log.info("%d training images: a mixture of %d components (--components to "
                         "choose)", len(z), components)  # fmt: skip
        return fit_gmm(z, int(components), int(options.get("seed", 0)), info)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"weights": self.weights, "means": self.means, "scale_tril": self.scale_tril}

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor], info: dict, path: Path) -> MixtureSampler:
        """A mixture read back, checked: its tensors, finite numbers, weights that sum to 1."""
        if set(t) != {"weights", "means", "scale_tril"}:
            raise TorchVaeError(f"{path} is not a Gaussian mixture sampler; fit it again")
        w = t["weights"]
        finite = all(v.is_floating_point() and v.isfinite().all() for v in t.values())
        if not finite or (w < 0).any() or abs(w.sum().item() - 1) > 1e-4:
            raise TorchVaeError(f"{path} holds invalid numbers; fit it again")
        return cls(w, t["means"], t["scale_tril"], info)


def _cholesky(cov: np.ndarray) -> np.ndarray:
    """Lower Cholesky factors of covariances (..., d, d), with a little jitter if needed."""
    cov = (cov + np.swapaxes(cov, -1, -2)) / 2
    eye = np.eye(cov.shape[-1])
    for jitter in (0.0, 1e-8, 1e-6, 1e-4):
        try:
            return np.linalg.cholesky(cov + jitter * eye)
        except np.linalg.LinAlgError:
            continue
    raise TorchVaeError("the posterior means are degenerate: their covariance is singular")


def fit_gaussian(z: np.ndarray, info: dict | None = None) -> MixtureSampler:
    """The full-covariance Gaussian of the latents ``z`` (N, d) (maximum likelihood)."""
    z = np.asarray(z, dtype=np.float64)
    if len(z) <= z.shape[1]:
        log.warning("a Gaussian of %d latent dimensions fitted to %d image(s): its samples vary "
                    "in at most %d direction(s); fit it to more images", z.shape[1], len(z),
                    len(z) - 1)  # fmt: skip
    mean, cov = z.mean(0), np.cov(z, rowvar=False, bias=True).reshape(z.shape[1], z.shape[1])
    info = {"kind": "gaussian", "components": 1, **(info or {})}
    return MixtureSampler(np.ones(1), mean[None], _cholesky(cov)[None], info)


def check_components(components: int, n: int) -> None:
    """A one-line error for a mixture of more components than the ``n`` latents it is fitted
    to (or than MAX_COMPONENTS), or of none."""
    if not 1 <= components <= min(MAX_COMPONENTS, n):
        bound = "the number of training images" if n < MAX_COMPONENTS else "the most it fits"
        raise TorchVaeError(
            f"--components must be between 1 and {min(MAX_COMPONENTS, n)} ({bound}), got "
            f"{components}"
        )


def fit_gmm(z: np.ndarray, components: int, seed: int = 0, info: dict | None = None):
    """A ``components``-component full-covariance Gaussian mixture of the latents ``z`` (N, d),
    fitted by EM (scikit-learn, k-means initialisation, seeded: the same fit for the same
    data and seed)."""
    from sklearn.mixture import GaussianMixture

    check_components(components, len(z))
    z = np.asarray(z, dtype=np.float64)
    gm = GaussianMixture(components, covariance_type="full", reg_covar=1e-6, max_iter=200,
                         random_state=seed).fit(z)  # fmt: skip
    info = {"kind": "gmm", "components": components, "seed": seed, "converged": gm.converged_,
            "em_iterations": gm.n_iter_, **(info or {})}  # fmt: skip
    return MixtureSampler(gm.weights_, gm.means_, _cholesky(gm.covariances_), info)
