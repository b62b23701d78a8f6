"""Model evaluation: the original's objective, reconstruction quality, active units and an
importance-weighted estimate of the negative log-likelihood of the 8-bit images.

Likelihood used for the NLL: each 8-bit pixel value v is a bin [v - 0.5, v + 0.5] / 255 of a
discretized Gaussian with the decoder output as mean and one standard deviation sigma per model
(the two end bins reach to -inf and +inf). Its probability is exact, so no dequantisation noise
is involved and the NLL is that of the discrete 8-bit images at the model's resolution; bits per
dimension = NLL / (C * H * W * ln 2). A decoder trained with squared error fixes no sigma, so
sigma is calibrated by maximum likelihood on the training split: the root mean squared error of
reconstructions from posterior samples.

Semi-amortized inference (``refine_steps`` > 0): the encoder's posterior for each image is only
a starting point; Adam then takes that many steps on the image's own posterior mean and
log-variance to lower its objective (SSE + KL, one posterior sample per step), with the model's
weights fixed, and every number is computed from the refined posterior. This measures how much
of the objective the encoder loses by predicting the posterior in one pass (the amortization
gap of Cremer et al., 2018); it is off by default, so the objective is the original's.

A model with a discrete latent (a VQ-VAE's code grid, ``latent_kind == "discrete"``) has a point
mass for its posterior: its KL to the uniform prior is h w log K, every importance sample is the
code itself, so its NLL bound is the negative ELBO (``-log p(x|c) + h w log K``), and its report
has the codebook's usage and perplexity where a Gaussian latent has active units.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch

from ..errors import TorchVaeError
from ..models import VAE, Posterior
from ..models.losses import reconstruction_error
from ..runtime.device import to_float

HALF_BIN = 0.5 / 255
_SQRT1_2 = 1 / math.sqrt(2)
_LN2 = math.log(2)
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def erfc(t: torch.Tensor) -> torch.Tensor:
    """``torch.special.erfc``, computed on the CPU (and moved back) for a device that has no
    kernel for it: MPS before PyTorch 2.8."""
    if _has_erfc(t.device.type):
        return torch.special.erfc(t)
    return torch.special.erfc(t.cpu()).to(t.device)


@functools.cache
def _has_erfc(device_type: str) -> bool:
    if device_type in ("cpu", "cuda"):
        return True
    try:
        torch.special.erfc(torch.zeros(1, device=device_type))
    except (NotImplementedError, RuntimeError):
        return False
    return True


def _log_tail(t: torch.Tensor) -> torch.Tensor:
    """Asymptotic log Phi(-t) for large t (Mills ratio), used where erfc underflows."""
    t = t.clamp_min(1.0)
    return -0.5 * t * t - torch.log(t) - _LOG_SQRT_2PI + torch.log1p(-1 / (t * t))


def discretized_gaussian_log_prob(
    x: torch.Tensor, mean: torch.Tensor, sigma: float
) -> torch.Tensor:
    """Log-probability of 8-bit images x (values k/255) under N(mean, sigma^2) binned to the 256
    levels, summed over pixels: shape (B,)."""
    w = HALF_BIN / sigma
    signed = (x - mean) / sigma
    c = signed.abs()
    # An interior bin [c - w, c + w] has, by symmetry, P = Phi(-(c - w)) - Phi(-(c + w)): a
    # difference of two upper tails, accurate in relative terms as long as erfc does not underflow.
    t_near, t_far = c - w, c + w
    p_in = erfc(t_near * _SQRT1_2) - erfc(t_far * _SQRT1_2)
    # End bins: P(X < 0.5/255) = Phi(-t) with t = -(signed + w); P(X > 1 - 0.5/255) likewise.
    is_lo, is_hi = x <= HALF_BIN, x >= 1 - HALF_BIN
    t_edge = torch.where(is_lo, -(signed + w), signed - w)
    p_edge = erfc(t_edge * _SQRT1_2)
    edge = is_lo | is_hi
    p = torch.where(edge, p_edge, p_in)  # = 2 P
    tail_in = _log_tail(t_near) + torch.log1p(-torch.exp(_log_tail(t_far) - _log_tail(t_near)))
    tail = torch.where(edge, _log_tail(t_edge), tail_in)
    logp = torch.where(p > 1e-30, torch.log(p.clamp_min(1e-30)) - _LN2, tail)
    return logp.flatten(1).sum(1)


class ImageNoise:
    """Standard normal noise that depends on the seed, the stream and the image's index only:
    each image draws its numbers from a CPU generator seeded for it, so any batch size, any
    number of threads and any device give every image the same noise, and the streams (the
    objective's sample, the importance samples, the refinement, the decoder sigma) do not
    depend on one another: ``--iw_samples`` changes no other number."""

    OBJECTIVE, IMPORTANCE, REFINE, SIGMA = range(1, 5)

    def __init__(self, seed: int, stream: int):
        self.base = (int(seed) + 0x9E3779B97F4A7C15 * stream) % 2**64
        self.gen = torch.Generator()

    def __call__(self, indices: range, shape: tuple[int, ...], device=None) -> torch.Tensor:
        """(len(indices), *shape) float32 noise, image ``indices[j]``'s in row j."""
        rows = []
        for i in indices:
            self.gen.manual_seed((self.base + 0xBF58476D1CE4E5B9 * (i + 1)) % 2**64)
            rows.append(torch.randn(shape, generator=self.gen))
        out = torch.stack(rows) if rows else torch.empty(0, *shape)
        return out.to(device) if device is not None else out


@torch.no_grad()
def test_metrics(
    model: VAE,
    images: torch.Tensor,
    device: torch.device,
    batch_size: int = 256,
    recon_loss: str = "mse",
    beta: float = 1.0,
    seed: int = 0,
    stop: Callable[[], bool] | None = None,
    labels: torch.Tensor | None = None,
) -> dict[str, float] | None:
    """The metrics a training run records after every epoch, per image of uint8 images
    (N, H, W, C): the training objective with z sampled (seeded, each image's noise its own:
    ``ImageNoise``), its parts (the model's ``objective_terms``), and the per-pixel MSE of the
    posterior-mean reconstruction. Returns None as soon as ``stop()`` is true. ``labels``: the
    images' classes (N,), for a conditional model."""
    model.eval()
    noise = ImageNoise(seed, ImageNoise.OBJECTIVE)
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in (*model.objective_terms, "mse")}
    for start in range(0, len(images), batch_size):
        if stop is not None and stop():
            return None
        x = to_float(images[start : start + batch_size], device)
        y = batch_labels(labels, start, len(x), x.device)
        post = model.encode(x, y)
        eps = noise(range(start, start + len(x)), post.noise_shape, x.device)
        out = model.output(post, post.reparameterize(eps), y)
        for k, v in model.per_image_terms(out, x, recon_loss).items():
            parts[k].append(v)
        parts["mse"].append((model.decode(post.mode(), y).float() - x).pow(2).mean((1, 2, 3)))
    m = {k: _mean(v) for k, v in parts.items()}
    m["loss"] = model.loss_of(m, beta)
    return m


def codebook_usage(indices: torch.Tensor, codebook: int) -> dict:
    """How a discrete model's codes ``indices`` (any shape) use its ``codebook`` codes:
    ``codes_used`` (those that occur), ``codebook_size`` and ``perplexity``, exp of the
    entropy of the codes' frequencies (``codebook`` if every code occurs equally often, 1 if
    one code is all)."""
    counts = torch.bincount(indices.flatten().long(), minlength=codebook).double()
    p = counts / counts.sum().clamp_min(1)
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return {"codes_used": int((counts > 0).sum()), "codebook_size": codebook,
            "perplexity": float(entropy.exp())}  # fmt: skip


def batch_labels(
    labels: torch.Tensor | None, start: int, n: int, device: torch.device
) -> torch.Tensor | None:
    """The classes of the images ``start`` to ``start + n`` (None without labels)."""
    return None if labels is None else labels[start : start + n].to(device)


def _mean(parts: list[torch.Tensor]) -> float:
    """The mean of per-image values, summed in float64 in image order: the same for any
    batch size and any number of threads."""
    return torch.cat([p.detach().double().cpu() for p in parts]).mean().item()


@torch.no_grad()
def calibrate_sigma(
    model: VAE, images: torch.Tensor, device, batch_size=500, seed=0, labels=None
) -> float:
    """Maximum-likelihood decoder sigma: RMS error of reconstructions from posterior samples."""
    model.eval()
    noise = ImageNoise(seed, ImageNoise.SIGMA)
    errors = []
    for start in range(0, len(images), batch_size):
        x = to_float(images[start : start + batch_size], device)
        y = batch_labels(labels, start, len(x), x.device)
        post = model.encode(x, y)
        eps = noise(range(start, start + len(x)), post.noise_shape, x.device)
        recon = model.decode(post.reparameterize(eps), y).float()
        errors.append((recon - x).pow(2).flatten(1).sum(1))
    count = images.shape[0] * images.shape[1] * images.shape[2] * images.shape[3]
    return max(math.sqrt(torch.cat(errors).double().sum().item() / count), 1e-3)


def refine_posterior(
    model: VAE,
    x: torch.Tensor,
    post: Posterior,
    steps: int,
    lr: float,
    noise: torch.Tensor,
    y: torch.Tensor | None = None,
) -> Posterior:
    """Improve ``post`` = q(z|x) by ``steps`` Adam steps on each image's objective (SSE + KL),
    step t using the noise ``noise[:, t]`` ((B, steps, d)).

    Only the posterior's mean and log-variance change. The model should be in eval mode (batch
    norm with fixed statistics), so that each image's refinement depends only on that image and
    its own noise, not on the other images in the batch.
    """
    if steps == 0:
        return post
    mu = post.mu.detach().float().clone().requires_grad_(True)
    logvar = post.logvar.detach().float().clone().requires_grad_(True)
    opt = torch.optim.Adam([mu, logvar], lr=lr)
    with torch.enable_grad():
        for t in range(steps):
            q = Posterior.clamped(mu, logvar)
            recon = model.decode(q.reparameterize(noise[:, t]), y)
            recon = reconstruction_error(recon, x, "mse")
            # Each image's parameters get the gradient of that image's objective only.
            objective = (recon + q.kl()).sum()
            mu.grad, logvar.grad = torch.autograd.grad(objective, (mu, logvar))
            opt.step()
    return Posterior.clamped(mu.detach(), logvar.detach())


@torch.no_grad()
def iwae_log_likelihood(
    model: VAE,
    x: torch.Tensor,
    sigma: float,
    eps: torch.Tensor,
    chunk: int = 512,
    post: Posterior | None = None,
    y: torch.Tensor | None = None,
) -> torch.Tensor:
    """Importance-weighted estimate of log p(x) (log p(x|y) given the classes ``y``) from
    ``post`` (default: the encoder's q(z|x)) with the noise ``eps`` (B, k, d): k importance
    samples per image; (B,)."""
    if post is None:
        post = model.encode(x, y)
    b, k = eps.shape[:2]
    per_chunk = max(1, chunk // b)
    logws = []
    for start in range(0, k, per_chunk):
        z = post.reparameterize(eps[:, start : start + per_chunk].transpose(0, 1))  # (n, B, d)
        n = len(z)
        recon = model.decode(z.reshape(n * b, -1), None if y is None else y.repeat(n)).float()
        log_px = discretized_gaussian_log_prob(x.repeat(n, 1, 1, 1), recon, sigma).view(n, b)
        logws.append(log_px + model.prior_log_prob(z) - post.log_prob(z))
    return torch.logsumexp(torch.cat(logws), 0) - math.log(k)


@torch.no_grad()
def evaluate_model(
    model: VAE,
    images: torch.Tensor,
    device: torch.device,
    sigma: float,
    iw_samples: int = 128,
    batch_size: int = 100,
    seed: int = 0,
    progress: bool = True,
    refine_steps: int = 0,
    refine_lr: float = 0.01,
    labels: torch.Tensor | None = None,
    desc: str = "evaluating",
    values: dict[str, list[torch.Tensor]] | None = None,
) -> dict:
    """Per-image averages over uint8 images (N, H, W, C); see the module docstring. Every image
    has its own noise (``ImageNoise``) and every sum runs over per-image values in float64, so
    the numbers do not depend on ``batch_size``, the number of threads or ``iw_samples``.
    ``values``, if given, is filled with the per-image values behind the averages (one tensor
    per batch each): ``sse`` and ``kl`` (the objective, z sampled), ``log_px`` (log p(x|z) of
    the 8-bit image under the discretized Gaussian with ``sigma`` at that same z: ``kl -
    log_px`` is the negative ELBO), ``mse`` (posterior-mean reconstruction, per pixel),
    ``nll`` (with ``iw_samples``), ``mu`` and, with ``refine_steps``, ``encoder_objective``."""
    from tqdm import tqdm

    model.eval()
    discrete = model.latent_kind == "discrete"
    if discrete and refine_steps:
        raise TorchVaeError(
            "--refine_steps refines a Gaussian posterior; this model's latent is discrete "
            "(its code is the nearest codebook vector already): pass --refine_steps 0"
        )
    streams = {k: ImageNoise(seed, k) for k in (ImageNoise.OBJECTIVE, ImageNoise.IMPORTANCE,
                                                 ImageNoise.REFINE)}  # fmt: skip
    names = ("sse", "kl", "log_px", "mse", "nll", "mu", "encoder_objective")
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in names}
    n = len(images)
    for start in tqdm(range(0, n, batch_size), desc=desc, unit="batch", disable=not progress):
        x = to_float(images[start : start + batch_size], device)
        y = batch_labels(labels, start, len(x), x.device)
        _evaluate_batch(model, x, y, range(start, start + len(x)), sigma, streams, parts,
                        iw_samples, refine_steps, refine_lr)  # fmt: skip
    if values is not None:
        values.update(parts)
    codebook = model.codebook_size if discrete else 0
    return _report(parts, images, sigma, iw_samples, refine_steps, refine_lr, codebook)


def _evaluate_batch(
    model: VAE,
    x: torch.Tensor,
    y: torch.Tensor | None,
    idx: range,
    sigma: float,
    streams: dict[int, ImageNoise],
    parts: dict[str, list[torch.Tensor]],
    iw_samples: int,
    refine_steps: int,
    refine_lr: float,
) -> None:
    """Append the per-image values of ``evaluate_model`` for the images ``x`` (their indices
    ``idx``, their classes ``y``) to ``parts``."""
    discrete, d = model.latent_kind == "discrete", model.config.latent_dims
    post = model.encode(x, y)
    objective_eps = streams[ImageNoise.OBJECTIVE](idx, post.noise_shape, x.device)
    if refine_steps:  # the encoder's own objective too, with the same noise
        sampled = model.decode(post.reparameterize(objective_eps), y).float()
        sse = (sampled - x).pow(2).flatten(1).sum(1)
        parts["encoder_objective"].append(sse + post.float().kl())
        eps = streams[ImageNoise.REFINE](idx, (refine_steps, d), x.device)
        post = refine_posterior(model, x, post, refine_steps, refine_lr, eps, y)
    sampled = model.decode(post.reparameterize(objective_eps), y).float()
    parts["sse"].append((sampled - x).pow(2).flatten(1).sum(1))
    parts["log_px"].append(discretized_gaussian_log_prob(x, sampled, sigma))
    parts["kl"].append(post.float().kl())
    parts["mse"].append((model.decode(post.mode(), y).float() - x).pow(2).flatten(1).mean(1))
    if iw_samples and discrete:  # every importance sample is the code: the ELBO
        parts["nll"].append(parts["kl"][-1] - parts["log_px"][-1])
    elif iw_samples:
        eps = streams[ImageNoise.IMPORTANCE](idx, (iw_samples, d), x.device)
        parts["nll"].append(-iwae_log_likelihood(model, x, sigma, eps, post=post, y=y))
    parts["mu"].append(post.mode().cpu() if discrete else post.mu.float().cpu())


def _report(parts, images, sigma, iw_samples, refine_steps, refine_lr, codebook=0) -> dict:
    n = len(images)
    mse = torch.cat(parts["mse"]).double().cpu()
    report = {k: _mean(parts[k]) for k in ("sse", "kl")}
    report["mse"] = mse.mean().item()
    report["psnr"] = (-10 * torch.log10(mse.clamp_min(1e-10))).mean().item()
    mu = torch.cat(parts["mu"])
    dims = images.shape[1] * images.shape[2] * images.shape[3]
    report["objective"] = report["sse"] + report["kl"]
    report["objective_stderr"] = _stderr(torch.cat(parts["sse"]) + torch.cat(parts["kl"]))
    if codebook:  # the code indices (N, h, w): how many codes they use, and how evenly
        report.update(codebook_usage(mu, codebook))
    else:
        # None for one image: a variance over images needs two
        report["active_units"] = int((mu.var(0) > 0.01).sum()) if n > 1 else None
    report["n_images"] = n
    report["decoder_sigma"] = sigma
    report["iw_samples"] = iw_samples
    report["refine_steps"] = refine_steps
    if refine_steps:
        report["refine_lr"] = refine_lr
        report["encoder_objective"] = _mean(parts["encoder_objective"])
    if iw_samples:
        nll = torch.cat(parts["nll"]).double().cpu()
        report["nll"] = nll.mean().item()
        report["nll_stderr"] = _stderr(nll)
        report["bits_per_dim"] = report["nll"] / (dims * math.log(2))
    return report


def _stderr(values: torch.Tensor) -> float | None:
    """The standard error of the mean of per-image ``values`` (their sample standard deviation,
    n - 1, over sqrt(n)): how far the mean over these images may lie from the mean over all
    images of their kind. None for fewer than two values, whose spread is unknown."""
    v = values.detach().double().cpu()
    return (v.std() / math.sqrt(len(v))).item() if len(v) > 1 else None
