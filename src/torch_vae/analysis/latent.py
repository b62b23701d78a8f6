"""What a model learned, as tensors: posterior means, interpolations, latent traversals, the
latent manifold, a 2-D map of the data, and the KL of each latent dimension.

Every function runs under ``torch.no_grad`` with the model in eval mode (its mode is restored
afterwards), on the model's device, in batches of ``BATCH`` images, and returns float32 tensors
on the CPU; none draws random numbers, so the results are deterministic. Images are float
(B, C, H, W) in [0, 1] or uint8 (B, H, W, C) as ``torch_vae.data.load_split`` returns them
(tensors or numpy arrays). ``class_names`` and ``load_labels`` (from ``data.labels``) name and
label a dataset's images, e.g. to colour the map.

A conditional model encodes each image with its class and decodes each code with one:
``condition`` is the images' classes (one class for all, one per image, or an int64 tensor of
labels) where a function encodes, and the class of the decoded images where it decodes
(``labels``: the classes of ``images``, where a function does both).

A model with a discrete latent (``latent_kind == "discrete"``, a VQ-VAE's grid of h x w code
indices into a codebook of vectors of D numbers) has codes of two forms: index grids (N, h, w)
int64 and code vectors (N, D, h, w) float, which ``decode`` both takes. ``encode_codes`` gives
its encoder outputs ``z_e``, their code vectors ``z_q`` and the index grids; ``encode_mean``
the code vectors (its posterior is a point mass there); ``interpolate`` walks the straight
line between code vectors; ``embed`` maps the encoder outputs. What only a Gaussian latent has
(the KL of each dimension, traversals, the manifold, slerp) is refused in one line
(``require_gaussian``).

    model = torch_vae.load_model("models/fashion-mnist/dcgan-d8")
    images = load_split("fashion-mnist", "test", 64)[:1000]
    xy = embed(model, images)                       # (1000, 2)
    center, directions, scales = pca_basis(encode_mean(model, images))
    z = from_map(center, directions, xy[0])         # back to a latent code
    strip = interpolate(model, images[0], images[1], steps=8, method="slerp")
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..data.labels import class_names, load_labels
from ..errors import TorchVaeError
from ..models import VAE, Posterior

__all__ = [
    "CodeGrids",
    "active_dims",
    "class_names",
    "decode",
    "embed",
    "encode_codes",
    "encode_mean",
    "from_map",
    "interpolate",
    "kl_per_dim",
    "load_labels",
    "manifold",
    "manifold_codes",
    "pca_basis",
    "require_gaussian",
    "traverse",
]

BATCH = 500  # images or codes per forward pass
METHODS = ("linear", "slerp")
EMBEDDINGS = ("auto", "pca", "umap")


class CodeGrids(NamedTuple):
    """A discrete model's codes of images (``encode_codes``), on the CPU: the encoder's
    outputs ``z_e`` and their nearest code vectors ``z_q``, float32 (B, D, h, w), and the code
    grids ``indices``, int64 (B, h, w)."""

    z_e: Tensor
    z_q: Tensor
    indices: Tensor


def require_gaussian(
    model: VAE, what: str, instead: str = "use interpolate or the explorer"
) -> None:
    """A one-line error unless ``model``'s latent is Gaussian: ``what`` says what needs one
    (e.g. "traverse walks a Gaussian latent's dimensions"), ``instead`` what to do."""
    if model.latent_kind == "gaussian":
        return
    kind = "a grid of discrete codes" if model.latent_kind == "discrete" else model.latent_kind
    raise TorchVaeError(f"{what}; this {model.config.arch} model's latent is {kind}: {instead}")


def _discrete(model: VAE) -> bool:
    return model.latent_kind == "discrete"


@contextlib.contextmanager
def _evaluating(model: VAE) -> Iterator[torch.device]:
    """Eval mode and no gradients inside; the model's mode is restored afterwards. Yields the
    model's device."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield next(model.parameters()).device
    finally:
        model.train(was_training)


def _tensor(x) -> Tensor:
    """A tensor of ``x``; numpy arrays (read-only memory maps too) are copied."""
    return x if isinstance(x, Tensor) else torch.from_numpy(np.array(x))


def _image_batches(model: VAE, images) -> Iterator[Tensor]:
    """``images`` as float (b, C, H, W) batches in [0, 1] on the CPU, converted a batch at a
    time, after checking them against the model's channels and size: from float
    (B, C, H, W) or uint8 (B, H, W, C), tensors or numpy arrays (e.g. a memory-mapped split)."""
    cfg = model.config
    c, s = cfg.in_channels, cfg.image_size
    shape, dtype = tuple(images.shape), images.dtype
    uint8 = dtype in (np.uint8, torch.uint8)
    floating = dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64) or (
        isinstance(dtype, np.dtype) and np.issubdtype(dtype, np.floating)
    )
    if shape[1:] != ((s, s, c) if uint8 else (c, s, s)) or not (uint8 or floating):
        raise TorchVaeError(
            f"images must be float (B, {c}, {s}, {s}) in [0, 1] or uint8 (B, {s}, {s}, {c}) "
            f"for this model, got {dtype} {shape}"
        )
    for i in _starts(shape[0]):
        x = _tensor(images[i : i + BATCH])
        yield x.permute(0, 3, 1, 2).float() / 255 if uint8 else x.float().cpu()


def decode(model: VAE, z, condition=None) -> Tensor:
    """Decode codes (N, d) in batches (a conditional model's as the classes ``condition``):
    float32 images (N, C, H, W) in [0, 1] on the CPU. A discrete model's codes are index grids
    (N, h, w) or code vectors (N, D, h, w)."""
    if _discrete(model):
        z = _grid_codes(model, z)
    else:
        z = torch.as_tensor(z, dtype=torch.float32)
        if z.ndim != 2 or z.shape[1] != model.config.latent_dims:
            raise TorchVaeError(
                f"codes must be (N, {model.config.latent_dims}) for this model, got "
                f"{tuple(z.shape)}"
            )
    y = _labels(model, condition, len(z))
    with _evaluating(model) as device:
        out = [model.decode(z[i : i + BATCH].to(device), _part(y, i, device)).float().cpu()
               for i in _starts(len(z))]  # fmt: skip
    return torch.cat(out) if out else torch.empty(0, model.config.in_channels, *_size(model))


def _grid_codes(model: VAE, z) -> Tensor:
    """A discrete model's codes checked: index grids (N, h, w) as int64, or code vectors
    (N, D, h, w) as float32 (the indices' range is checked where they are decoded)."""
    z = _tensor(z)
    h, w = model.latent_shape
    d = model.config.latent_dims
    if not z.is_floating_point() and z.ndim == 3 and tuple(z.shape[1:]) == (h, w):
        return z.long()
    if z.is_floating_point() and tuple(z.shape[1:]) == (d, h, w) and z.ndim == 4:
        return z.float()
    raise TorchVaeError(
        f"codes must be index grids (N, {h}, {w}) or code vectors (N, {d}, {h}, {w}) for this "
        f"model, got {z.dtype} {tuple(z.shape)}"
    )


def _starts(n: int) -> range:
    return range(0, n, BATCH)


def _labels(model: VAE, condition, n: int) -> Tensor | None:
    """The classes (n,) that ``condition`` gives ``n`` images or codes, on the CPU; None where
    it is None (a conditional model then asks for one, in one line)."""
    return None if condition is None else model.labels(condition, n).cpu()


def _part(labels: Tensor | None, start: int, device) -> Tensor | None:
    """The classes of the batch that starts at ``start``."""
    return None if labels is None else labels[start : start + BATCH].to(device)


def _size(model: VAE) -> tuple[int, int]:
    return model.config.image_size, model.config.image_size


def _posteriors(model: VAE, images, condition=None) -> Iterator[Posterior]:
    """The posterior of each batch of ``images`` (of the classes ``condition``), float32 on
    the CPU."""
    y = _labels(model, condition, len(images))
    with _evaluating(model) as device:
        for i, x in zip(_starts(len(images)), _image_batches(model, images), strict=True):
            post = model.encode(x.to(device), _part(y, i, device))
            yield Posterior(post.mu.float().cpu(), post.logvar.float().cpu())


def encode_mean(model: VAE, images, condition=None) -> Tensor:
    """The posterior means of ``images`` (of the classes ``condition``): (B, d). A discrete
    model's posterior is a point mass on the code grid: its code vectors ``z_q``
    (B, D, h, w)."""
    if _discrete(model):
        return encode_codes(model, images, condition).z_q
    means = [post.mode() for post in _posteriors(model, images, condition)]
    return torch.cat(means) if means else torch.empty(0, model.config.latent_dims)


def encode_codes(model: VAE, images, condition=None) -> CodeGrids:
    """A discrete model's codes of ``images`` (of the classes ``condition``): the encoder's
    outputs, their code vectors and the code grids (``CodeGrids``)."""
    if not _discrete(model):
        raise TorchVaeError(
            f"encode_codes gives a discrete latent's code grids; this {model.config.arch} "
            "model's latent is Gaussian: use encode_mean"
        )
    y = _labels(model, condition, len(images))
    parts = []
    with _evaluating(model) as device:
        for i, x in zip(_starts(len(images)), _image_batches(model, images), strict=True):
            codes = model.encode(x.to(device), _part(y, i, device))
            parts.append((codes.z_e.float().cpu(), codes.z_q.float().cpu(), codes.indices.cpu()))
    if not parts:
        vectors = torch.empty(0, model.config.latent_dims, *model.latent_shape)
        return CodeGrids(vectors, vectors.clone(), torch.empty(0, *model.latent_shape).long())
    return CodeGrids(*(torch.cat(part) for part in zip(*parts, strict=True)))


def _code(model: VAE, a, condition=None) -> Tensor:
    """A latent code (d,) as it is, or an image (C, H, W) float / (H, W, C) uint8 (of the
    class ``condition``) encoded to its posterior mean. A discrete model's code vectors
    (D, h, w): of an index grid (h, w), as they are, or of an image."""
    a = _tensor(a)
    if _discrete(model):
        return _vectors(model, a, condition)
    if a.ndim == 1:
        if len(a) != model.config.latent_dims:
            raise TorchVaeError(
                f"a latent code must have {model.config.latent_dims} values, got {len(a)}"
            )
        return a.float().cpu()
    return encode_mean(model, a[None], condition)[0]


def _vectors(model: VAE, a: Tensor, condition=None) -> Tensor:
    """A discrete model's code vectors (D, h, w) of an index grid (h, w), code vectors as
    they are, or an image's."""
    d, shape = model.config.latent_dims, tuple(model.latent_shape)
    if a.ndim == 2 and not a.is_floating_point():
        with _evaluating(model) as device:
            return model.code_vectors(a[None].long().to(device))[0].float().cpu()
    if a.ndim == 3 and a.is_floating_point() and tuple(a.shape) == (d, *shape):
        return a.float().cpu()
    return encode_mean(model, a[None], condition)[0]


def interpolate(model: VAE, a, b, steps: int = 8, method: str = "linear", condition=None) -> Tensor:
    """Decoded codes from ``a`` to ``b`` (both included): (steps, C, H, W). ``a`` and ``b`` are
    latent codes (d,) or images, encoded to their posterior means; ``method`` "linear" walks
    the straight line, "slerp" the great circle (the norm changes linearly along it), which
    keeps a path between prior samples where the prior has its mass. A conditional model's
    path is decoded as the class ``condition`` (images are encoded as it too; encode images of
    other classes with ``encode_mean`` first). A discrete model's path runs between code
    vectors (``a`` and ``b``: index grids (h, w), code vectors (D, h, w) or images), linearly
    only."""
    if method not in METHODS:
        raise TorchVaeError(f"unknown interpolation method {method!r}; choose one of {METHODS}")
    if not isinstance(steps, int) or steps < 2:
        raise TorchVaeError(f"steps must be an integer >= 2, got {steps!r}")
    if method == "slerp":
        require_gaussian(model, "slerp follows the sphere where a Gaussian prior has its mass",
                         "interpolate linearly")  # fmt: skip
    za, zb = _code(model, a, condition), _code(model, b, condition)
    t = torch.linspace(0, 1, steps).view(-1, *[1] * za.ndim)
    codes = slerp(za, zb, t) if method == "slerp" else (1 - t) * za + t * zb
    return decode(model, codes, condition)


def slerp(a: Tensor, b: Tensor, t: Tensor) -> Tensor:
    """Spherical interpolation between codes ``a`` and ``b`` (d,) at ``t`` (T, 1): the angle
    moves linearly from a's direction to b's, the norm linearly from |a| to |b|. Falls back
    to linear interpolation when the two directions (nearly) coincide or oppose."""
    na, nb = a.norm(), b.norm()
    if na < 1e-8 or nb < 1e-8:
        return (1 - t) * a + t * b
    ua, ub = a / na, b / nb
    omega = torch.arccos((ua @ ub).clamp(-1, 1))
    if omega < 1e-4 or torch.pi - omega < 1e-4:
        return (1 - t) * a + t * b
    direction = (torch.sin((1 - t) * omega) * ua + torch.sin(t * omega) * ub) / torch.sin(omega)
    return direction * ((1 - t) * na + t * nb)


def kl_per_dim(model: VAE, images, condition=None) -> Tensor:
    """The KL divergence of each latent dimension from the prior, averaged over ``images`` (of
    the classes ``condition``): (d,), in nats. Its sum is the average KL term of the
    objective."""
    require_gaussian(model, "the KL of each dimension is a Gaussian latent's")
    total, n = torch.zeros(model.config.latent_dims, dtype=torch.float64), 0
    for post in _posteriors(model, images, condition):
        kl = Posterior(post.mu.double(), post.logvar.double()).kl(reduce=False)
        total, n = total + kl.sum(0), n + len(kl)
    if n == 0:
        raise TorchVaeError("kl_per_dim needs at least one image")
    return (total / n).float()


def active_dims(kl: Tensor, threshold: float = 0.01) -> Tensor:
    """Which dimensions carry information: average KL above ``threshold`` nats (bool (d,)).
    An inactive dimension's posterior is the prior whatever the image, so the decoder
    ignores it."""
    return torch.as_tensor(kl) > threshold


def traverse(
    model: VAE, z, dims: Sequence[int], steps: int = 7, span: float = 3.0, condition=None
) -> Tensor:
    """Vary one latent dimension at a time around the code ``z`` (d,), setting it to ``steps``
    values evenly spaced over [-span, span] (absolute values, the prior's scale), the others
    kept: (len(dims), steps, C, H, W); a conditional model's decoded as the class
    ``condition`` (an image ``z`` encoded as it too)."""
    require_gaussian(model, "traverse walks a Gaussian latent's dimensions")
    z = _code(model, z, condition)
    d = model.config.latent_dims
    dims = [int(i) for i in dims]
    if any(not 0 <= i < d for i in dims):
        raise TorchVaeError(f"dimensions must be in 0..{d - 1}, got {dims}")
    if not isinstance(steps, int) or steps < 1:
        raise TorchVaeError(f"steps must be a positive integer, got {steps!r}")
    values = torch.linspace(-span, span, steps)
    codes = z.repeat(len(dims), steps, 1)  # (len(dims), steps, d)
    for row, i in enumerate(dims):
        codes[row, :, i] = values
    images = decode(model, codes.reshape(-1, d), condition)
    return images.reshape(len(dims), steps, *images.shape[1:])


def pca_basis(means: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The centre (d,), the two leading principal directions (2, d; orthonormal rows, each
    signed so that its largest component is positive) and the standard deviations along them
    (2,) of codes ``means`` (B, d), B >= 2, d >= 2. ``from_map`` maps a point back."""
    m = torch.as_tensor(means).double().cpu()
    if m.ndim != 2 or m.shape[0] < 2 or m.shape[1] < 2:
        raise TorchVaeError(
            f"a principal-component map needs codes (B, d) with B >= 2 and d >= 2, "
            f"got {tuple(m.shape)}"
        )
    center = m.mean(0)
    _, s, vh = torch.linalg.svd(m - center, full_matrices=False)
    directions = vh[:2]
    signs = torch.sign(directions.gather(1, directions.abs().argmax(1, keepdim=True)))
    directions = directions * torch.where(signs == 0, 1.0, signs)
    scales = s[:2] / (len(m) - 1) ** 0.5
    return center.float(), directions.float(), scales.float()


def from_map(center: Tensor, directions: Tensor, xy) -> Tensor:
    """The latent code(s) of point(s) ``xy`` (..., 2) of a map made with ``pca_basis``:
    ``center + x * directions[0] + y * directions[1]``, (..., d)."""
    xy = torch.as_tensor(xy, dtype=torch.float32)
    return center + xy @ directions


def manifold_codes(model: VAE, n: int = 15, images=None, labels=None) -> Tensor:
    """The codes (n, n, d) that ``manifold`` decodes. Row 0 is the top: the second coordinate
    decreases down the rows and the first increases along them, as in a plot. For d = 2, the
    prior's quantiles at probabilities (i + 0.5) / n; otherwise ``images``' posterior means
    (of the classes ``labels``) mapped by ``pca_basis``, over +-2 standard deviations along
    each direction."""
    require_gaussian(model, "manifold decodes a grid over a Gaussian latent")
    if not isinstance(n, int) or n < 2:
        raise TorchVaeError(f"the manifold needs n >= 2 points per side, got {n!r}")
    d = model.config.latent_dims
    if d == 2:
        p = (torch.arange(n, dtype=torch.float64) + 0.5) / n
        u = torch.distributions.Normal(0.0, 1.0).icdf(p).float()
        return torch.stack(torch.meshgrid(u, u.flip(0), indexing="xy"), -1)
    if images is None:
        raise TorchVaeError(f"a latent-{d} model's manifold needs images to place its plane")
    center, directions, scales = pca_basis(encode_mean(model, images, labels))
    u = torch.linspace(-2, 2, n)
    xy = torch.stack(torch.meshgrid(u * scales[0], u.flip(0) * scales[1], indexing="xy"), -1)
    return from_map(center, directions, xy)


def manifold(model: VAE, n: int = 15, images=None, condition=None, labels=None) -> Tensor:
    """Decoded codes on an n x n grid over the latent space: (n, n, C, H, W), rows top to
    bottom, columns left to right (``manifold_codes``). A latent-2 model's grid covers its
    prior; a larger one's, the plane of ``images``' two leading principal directions. A
    conditional model decodes the grid as the class ``condition``, and encodes ``images`` as
    their classes ``labels`` (default: ``condition``)."""
    codes = manifold_codes(model, n, images, labels if labels is not None else condition)
    return decode(model, codes.reshape(n * n, -1), condition).reshape(n, n, -1, *_size(model))


def embed(model: VAE, images, method: str = "auto", seed: int = 0, condition=None) -> Tensor:
    """A 2-D map of ``images`` (of the classes ``condition``): (B, 2). "auto": a latent-2
    model's posterior means themselves, a larger one's projected on their two leading
    principal directions ("pca", see ``pca_basis``, invertible with ``from_map``); "umap":
    UMAP of the means, if the optional umap-learn package is installed (not invertible;
    ``seed`` seeds it). A discrete model's map is of its encoder outputs ``z_e``, flattened
    (B, D h w): "auto" is "pca"."""
    if method not in EMBEDDINGS:
        raise TorchVaeError(f"unknown embedding method {method!r}; choose one of {EMBEDDINGS}")
    if _discrete(model):
        means = encode_codes(model, images, condition).z_e.flatten(1)
    else:
        means = encode_mean(model, images, condition)
        if method == "auto" and means.shape[1] == 2:
            return means
    if method == "umap":
        return _umap(means, seed)
    center, directions, _ = pca_basis(means)
    return (means - center) @ directions.T


def _umap(means: Tensor, seed: int) -> Tensor:
    try:  # optional: not a dependency of torch-vae
        umap = importlib.import_module("umap")
    except ImportError:
        raise TorchVaeError("method 'umap' needs umap-learn: pip install umap-learn") from None
    xy = umap.UMAP(n_components=2, random_state=seed).fit_transform(means.numpy())
    return torch.as_tensor(np.asarray(xy), dtype=torch.float32)
