"""Ex-post latent samplers (Ghosh et al., 2020): a density fitted after training to the
posterior means of the training images, from which ``generate`` draws its latents instead of
the prior N(0, I). The aggregate posterior of a VAE is not N(0, I) (parts of the prior are
never visited by any image), so samples from a density fitted to where the images really land
decode to more convincing images.

Two kinds, both Gaussian mixtures with full covariances: ``gaussian`` (one component, the mean
and covariance of the posterior means) and ``gmm`` (K components, fitted by EM with
scikit-learn). A fitted sampler lives beside the model's weights as
``sampler-<kind>.safetensors`` (mixture weights, means and Cholesky factors; the description in
its metadata) plus a readable ``sampler-<kind>.json``; no pickle. It records the SHA-256 of the
weights it was fitted to, and is refused for any other weights.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .checkpoint import WEIGHTS_NAME, check_flags, resolve_weights
from .data import check_channels, load_split
from .device import pick_device, to_float
from .errors import TorchVaeError
from .fileio import atomic_path, file_sha256, write_text_atomic
from .model import VAE, load_model
from .speed import inference_model

log = logging.getLogger(__name__)

SAMPLER_FORMAT = "torch-vae-sampler"
KINDS = ("gaussian", "gmm")
PREFERENCE = ("gmm", "gaussian")  # what load_sampler picks when no kind is named
MAX_COMPONENTS = 1000


class MixtureSampler:
    """A Gaussian mixture over the latent space: ``weights`` (K,), ``means`` (K, d) and
    ``scale_tril`` (K, d, d), the lower Cholesky factors of the covariances; ``info`` says what
    it was fitted to. ``sample(n, generator)`` -> (n, d) latents, the same for the same seed."""

    def __init__(self, weights, means, scale_tril, info: dict):
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.means = torch.as_tensor(means, dtype=torch.float32)
        self.scale_tril = torch.as_tensor(scale_tril, dtype=torch.float32)
        self.info = info
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

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` latents (n, d), float32 on the CPU: a component for each, then its Gaussian."""
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dims, 1, generator=generator)
        return self.means[comp] + (self.scale_tril[comp] @ eps).squeeze(-1)


def prior_sample(dims: int):
    """The prior N(0, I) as a draw function ``(n, generator) -> (n, dims)``."""
    return lambda n, generator=None: torch.randn(n, dims, generator=generator)


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
    mean, cov = z.mean(0), np.cov(z, rowvar=False, bias=True).reshape(z.shape[1], z.shape[1])
    info = {"kind": "gaussian", "components": 1, **(info or {})}
    return MixtureSampler(np.ones(1), mean[None], _cholesky(cov)[None], info)


def fit_gmm(z: np.ndarray, components: int, seed: int = 0, info: dict | None = None):
    """A ``components``-component full-covariance Gaussian mixture of the latents ``z`` (N, d),
    fitted by EM (scikit-learn, k-means initialisation, seeded: the same fit for the same
    data and seed)."""
    from sklearn.mixture import GaussianMixture

    if not 1 <= components <= min(MAX_COMPONENTS, len(z)):
        raise TorchVaeError(
            f"--components must be between 1 and {min(MAX_COMPONENTS, len(z))} (the number "
            f"of training images), got {components}"
        )
    z = np.asarray(z, dtype=np.float64)
    gm = GaussianMixture(components, covariance_type="full", reg_covar=1e-6, max_iter=200,
                         random_state=seed).fit(z)  # fmt: skip
    info = {"kind": "gmm", "components": components, "seed": seed, "converged": gm.converged_,
            "em_iterations": gm.n_iter_, **(info or {})}  # fmt: skip
    return MixtureSampler(gm.weights_, gm.means_, _cholesky(gm.covariances_), info)


@torch.no_grad()
def posterior_means(model: VAE, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """The encoder's posterior means (N, d) of uint8 images (N, H, W, C)."""
    device = next(model.parameters()).device
    fast = inference_model(model)
    out = [fast.encode(to_float(images[i : i + batch], device)).mu.float().cpu()
           for i in range(0, len(images), batch)]  # fmt: skip
    return torch.cat(out)


def sampler_path(model_path: str | os.PathLike, kind: str) -> Path:
    """Where a model's fitted sampler of ``kind`` lives: ``sampler-<kind>.safetensors`` in a
    model folder, ``<name>.sampler-<kind>.safetensors`` beside a weights file."""
    weights = resolve_weights(model_path)
    if weights.name == WEIGHTS_NAME:
        return weights.with_name(f"sampler-{kind}.safetensors")
    return weights.with_name(f"{weights.stem}.sampler-{kind}.safetensors")


def save_sampler(sampler: MixtureSampler, path: Path) -> Path:
    """Write ``path`` (.safetensors, description in its metadata) and the same description as
    readable JSON beside it (``.json``)."""
    tensors = {"weights": sampler.weights.contiguous(), "means": sampler.means.contiguous(),
               "scale_tril": sampler.scale_tril.contiguous()}  # fmt: skip
    meta = {"format": SAMPLER_FORMAT, "info": json.dumps(sampler.info)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    write_text_atomic(path.with_suffix(".json"), json.dumps(sampler.info, indent=2) + "\n")
    return path


def read_sampler(path: Path) -> MixtureSampler:
    """A sampler written by ``save_sampler``, checked: shapes, finite numbers, weights that
    sum to 1."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            t = {k: f.get_tensor(k) for k in ("weights", "means", "scale_tril")}
        info = json.loads(meta["info"])
    except (SafetensorError, OSError, ValueError, KeyError) as exc:
        raise TorchVaeError(f"cannot read sampler {path} ({exc}); fit it again") from None
    if meta.get("format") != SAMPLER_FORMAT or not isinstance(info, dict):
        raise TorchVaeError(f"{path} is not a torch-vae sampler; fit it again")
    w = t["weights"]
    finite = all(v.isfinite().all() for v in t.values())
    if not finite or (w < 0).any() or abs(w.sum().item() - 1) > 1e-4:
        raise TorchVaeError(f"{path} holds invalid numbers; fit it again")
    return MixtureSampler(w, t["means"], t["scale_tril"], info)


def load_sampler(model_path: str | os.PathLike, kind: str | None = None) -> MixtureSampler | None:
    """The sampler fitted to the model at ``model_path`` (a model folder or weights file): of
    ``kind``, or the preferred one there is (``gmm``, then ``gaussian``); None when there is
    none, so that the caller draws from the prior. A sampler file that is damaged or was fitted
    to other weights raises TorchVaeError."""
    for k in (kind,) if kind else PREFERENCE:
        path = sampler_path(model_path, k)
        if not path.is_file():
            continue
        sampler = read_sampler(path)
        weights = resolve_weights(model_path)
        if sampler.info.get("model_sha256") != file_sha256(weights):
            raise TorchVaeError(
                f"{path} was fitted to other weights than {weights}; fit it again with "
                f"torch-vae fit-sampler --model {model_path} --sampler {k}"
            )
        return sampler
    return None


def choose_sampler(model_path: Path, name: str) -> MixtureSampler | None:
    """The sampler that ``--sampler name`` means (None: the prior). ``auto``: the fitted one
    that load_sampler prefers, else the prior, with a log line either way; ``gaussian`` or
    ``gmm``: that one, or a one-line error saying how to fit it."""
    if name == "prior":
        return None
    sampler = load_sampler(model_path, None if name == "auto" else name)
    if sampler is None and name != "auto":
        raise TorchVaeError(
            f"{model_path} has no fitted {name} sampler ({sampler_path(model_path, name).name}); "
            f"fit one with 'torch-vae fit-sampler --model {model_path} --sampler {name}', or "
            "pass --sampler prior"
        )
    if sampler is None:
        log.info("no fitted sampler for %s: latents from the prior N(0, I) (fit one with "
                 "torch-vae fit-sampler --model %s)", model_path, model_path)  # fmt: skip
    else:
        log.info("latents from %s fitted to the posterior means (%s)", sampler.describe(),
                 sampler_path(model_path, sampler.kind).name)  # fmt: skip
    return sampler


def fit_sampler_command(o, runtime) -> Path:
    """fit-sampler: fit a sampler of ``o.sampler`` to the posterior means of the training
    split (the first ``o.nimages``, 0: all) and save it beside the model."""
    model = load_model(o.model, pick_device(runtime.device, runtime.cpu))
    dataset = o.dataset or model.dataset
    if dataset is None:
        raise TorchVaeError(f"{o.model} does not say which dataset it was trained on; --dataset")
    check_channels(dataset, model.config.in_channels, "the model expects", "pass its dataset")
    check_flags(model.config, latent_dims=o.latent_dims)
    images = load_split(dataset, "train", model.config.image_size, o.data_dir, not runtime.quiet)
    z = posterior_means(model, torch.from_numpy(images[: o.nimages or None]), o.batchsize)
    info = {"dataset": dataset, "split": "train", "n_images": len(z),
            "model_sha256": file_sha256(resolve_weights(o.model))}  # fmt: skip
    if o.sampler == "gaussian":
        sampler = fit_gaussian(z.numpy(), info)
    else:
        sampler = fit_gmm(z.numpy(), o.components, o.seed, info)
    path = save_sampler(sampler, sampler_path(o.model, o.sampler))
    log.info("fitted %s to %d posterior means of %s train: %s", sampler.describe(), len(z),
             dataset, path)  # fmt: skip
    return path
