"""The native-size projection: images that the data pipeline upsampled bilinearly from a smaller
size (28x28 Fashion-MNIST to 64x64, say) lie in a subspace, and ``--native_size`` projects the
decoder's output onto it (model.VAE.decode)."""

from __future__ import annotations

import torch

from ..errors import TorchVaeError
from ..runtime.device import to_float

# Largest mean squared distance per pixel from the images to what upsampling from
# --native_size can produce that is still 8-bit rounding (which gives about 1e-6).
NATIVE_TOLERANCE = 1e-5


def bilinear_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """The (n_out, n_in) matrix of Pillow's bilinear resize along one axis (float64).

    Pillow resizes an image by one such matrix along each axis; this reproduces its
    coefficients (a triangle filter, widened by the scale when shrinking, each row normalised
    to sum 1), so ``A @ X @ A.T`` equals ``Image.resize((n_out, n_out), BILINEAR)`` of a float
    image ``X`` up to rounding.
    """
    scale = n_in / n_out
    support = max(scale, 1.0)
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        center = (i + 0.5) * scale
        lo, hi = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), n_in)
        j = torch.arange(lo, hi, dtype=torch.float64)
        w = (1 - ((j - center + 0.5) / support).abs()).clamp(min=0)
        m[i, lo:hi] = w / w.sum()
    return m


def upsampling_projector(native_size: int, image_size: int) -> torch.Tensor:
    """The orthogonal projection (image_size, image_size) onto the column space of
    ``bilinear_matrix(native_size, image_size)``: ``P @ X @ P`` is the image that bilinear
    upsampling from ``native_size`` can produce nearest to ``X`` (least squares)."""
    q, _ = torch.linalg.qr(bilinear_matrix(native_size, image_size))
    return (q @ q.T).float()


def native_maps(
    native_size: int, image_size: int, network_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(up, down)``, float32, for networks that work at ``network_size`` on native_size
    images centred in it (zero-padded): ``down`` (network_size, image_size) takes an
    image_size image to its least-squares native_size preimage under the pipeline's bilinear
    upsampling, padded; ``up`` (image_size, network_size) upsamples the centre of a network's
    image and ignores its border. ``down @ (A @ X @ A.T) @ down.T`` is ``X`` padded for a
    native_size image ``X`` (A = ``bilinear_matrix``), and ``up @ down`` is
    ``upsampling_projector``."""
    a = bilinear_matrix(native_size, image_size)
    start = (network_size - native_size) // 2
    up = torch.zeros(image_size, network_size, dtype=torch.float64)
    up[:, start : start + native_size] = a
    return up.float(), torch.linalg.pinv(up).float()


def native_residual(images: torch.Tensor, native_size: int) -> float:
    """Mean squared distance per pixel (images in [0, 1], shape (N, C, H, W)) between the
    images and their projection onto what upsampling from ``native_size`` can produce: about
    1e-6 for images the pipeline upsampled from that size (8-bit rounding), far more otherwise."""
    p = upsampling_projector(native_size, images.shape[-1])
    x = images.float()
    return (p @ x @ p - x).pow(2).mean().item()


def check_native_size(images: torch.Tensor, native_size: int) -> None:
    """A one-line error unless the first images (uint8, (N, H, W, C)) are bilinear upsamplings
    of native_size x native_size images, as --native_size says."""
    residual = native_residual(to_float(images[:256], torch.device("cpu")), native_size)
    if residual > NATIVE_TOLERANCE:
        raise TorchVaeError(
            f"--native_size {native_size}: these images are not bilinear upsamplings of "
            f"{native_size}x{native_size} images (mean squared distance per pixel {residual:.1e}, "
            f"rounding gives < {NATIVE_TOLERANCE:g}); give the size the dataset's images had "
            "before resizing (28 for MNIST and Fashion-MNIST, 32 for CIFAR), or 0"
        )
