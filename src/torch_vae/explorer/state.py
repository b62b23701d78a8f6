"""What the live explorer (``torch-vae explore``, app.py) serves, without the web: a model
ready for fast decoding (eval mode, batch norm folded), the test split's codes on a 2-D map,
the latent dimensions ordered by their average KL, images in and out as PNG data URLs, and
uploads decoded safely.

The map of a latent-2 model is its code itself; a larger model's is the plane of the two
leading principal directions of the test codes (``explore.pca_basis``), where a point decodes
through ``explore.from_map`` and a code lands by projection (``Explorer.to_map``).

A conditional model's test images are encoded with their own classes; what the page decodes,
samples and encodes from an upload takes the class it asks for (``label``, an index into the
model's classes).

A model with a discrete latent (``latent_kind == "discrete"``, a VQ-VAE) is explored through its
code grids, (B, h, w) int64 indices into its codebook: what it decodes, encodes and samples
(from its fitted prior, ``fit-sampler --sampler transformer``, else uniformly). Its map is the
principal plane of the test images' encoder outputs ``z_e`` (flattened); a point of the plane
is mapped back to that space and quantized to the nearest codes, and a grid lands on the map by
projecting its code vectors ``z_q``. An interpolation walks the straight line between two
grids' code vectors. It has no per-dimension KL (``kl``, ``active`` and ``order`` are None and
empty).
"""

from __future__ import annotations

import base64
import io
import logging
import os
import re
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from ..analysis import latent as explore
from ..analysis.pictures import sample_classes
from ..data import load_split
from ..data.imaging import IMAGE_FORMATS, UnsupportedImage, to_array
from ..data.labels import labels_as
from ..errors import TorchVaeError
from ..io.png import encode_png, to_uint8
from ..models import VAE
from ..models.conditions import class_index
from ..priors import load_sampler
from ..priors.base import set_drawing
from ..runtime.device import to_float

log = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 10 * 2**20  # an uploaded file: 10 MiB
# Pixels of an uploaded image, checked from its header before any pixel is decoded: a small
# file that claims a huge image (a decompression bomb) is refused. Pillow's own limit
# (Image.MAX_IMAGE_PIXELS, 89 megapixels, an error only at twice that) is far higher and is
# global to the process, which also decodes datasets; this one is for uploads alone.
MAX_UPLOAD_PIXELS = 20_000_000
# Bytes of an upload's decoded pixels (its bands times their width: a float TIFF takes four per
# band), and how many uploads are decoded at once: together they bound the memory uploads take
# (a decode needs a few copies of its pixels), whatever a client sends.
MAX_UPLOAD_DECODED = 64 * 2**20
UPLOAD_DECODES = threading.BoundedSemaphore(2)
_BAND_BYTES = {"F": 4, "I": 4, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2, "1": 1}
# The formats an upload may be in; Pillow's others include some that run external programs
# (EPS runs Ghostscript) or that no one uploads as a picture.
UPLOAD_FORMATS = IMAGE_FORMATS
Z_BOUND = 1000.0  # latent values accepted from a client: far beyond the prior's +-4


class UploadError(TorchVaeError):
    """An upload that cannot be used; ``status`` is the HTTP status that says why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def data_url(image: np.ndarray) -> str:
    """A uint8 (H, W, C) image as a ``data:image/png;base64,...`` URL (images.encode_png)."""
    return "data:image/png;base64," + base64.b64encode(encode_png(image)).decode("ascii")


@dataclass
class Explorer:
    """A model and the test images it is explored with; built by ``build_explorer``."""

    model: VAE  # eval mode, batch norm folded (VAE.inference_copy)
    images: np.ndarray  # the test images, uint8 (N, H, W, C)
    labels: np.ndarray | None  # their classes (N,), -1 for none; None: no labels
    classes: list[str] | None  # class names, indexed by label
    # posterior means of the images (N, d); a discrete model's encoder outputs z_e, flattened
    # (N, D h w): the points the map projects
    means: Tensor
    xy: Tensor  # their places on the map (N, 2)
    center: Tensor | None  # the map's plane (d,) and (2, d); None: the map is the code (d = 2)
    directions: Tensor | None
    kl: Tensor | None  # average KL of each dimension over the images (d,), nats; None: discrete
    active: Tensor | None  # which dimensions carry information (d,) bool; None: discrete
    order: list[int]  # dimensions, the largest KL first (discrete: none)
    name: str = ""  # the model as given
    dataset: str = ""
    # the model's fitted prior (priors.load_sampler), or None: its own prior (N(0, I), or a
    # discrete model's uniform codes)
    sampler: Any = None
    grids: Tensor | None = None  # a discrete model's code grids of the images (N, h, w) int64

    @property
    def latent_dims(self) -> int:
        return self.model.config.latent_dims

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def conditional(self) -> bool:
        return self.model.conditional

    @property
    def discrete(self) -> bool:
        """Whether the latent is a grid of discrete codes (else Gaussian codes (d,))."""
        return self.model.latent_kind == "discrete"

    def code(self, values: list) -> Tensor:
        """A code of the API, a list (d numbers, or a discrete model's h w indices row by
        row), as a batch of one: (1, d) float32, or (1, h, w) int64."""
        if self.discrete:
            return torch.tensor([values], dtype=torch.int64).view(1, *self.model.latent_shape)
        return torch.tensor([values])

    @torch.inference_mode()
    def vectors(self, z: Tensor) -> Tensor:
        """A discrete model's code vectors (B, D, h, w) of grids (B, h, w); vectors as they
        are; float32 on the CPU."""
        if z.is_floating_point():
            return z.float().cpu()
        return self.model.code_vectors(z.to(self.device)).float().cpu()

    @torch.inference_mode()
    def quantize(self, vectors: Tensor) -> Tensor:
        """A discrete model's code grids (B, h, w) nearest to points (B, D, h, w)."""
        return self.model.quantize(vectors.float().to(self.device)).cpu()

    def usage(self, grids: Tensor) -> Tensor:
        """For each cell of code grids (B, h, w): the share of the test images whose grid has
        that code there, (B, h w) in [0, 1]."""
        same = self.grids.flatten(1)[None] == grids.flatten(1)[:, None]  # (B, N, h w)
        return same.float().mean(1)

    def class_index(self, value: Any) -> int:
        """A conditional model's class given by index or name, as its index."""
        return class_index(self.model.config.classes, value)

    def _labels(self, label: int | None, n: int) -> Tensor | None:
        """The classes of ``n`` images of one class ``label`` (None for an unconditional
        model; a conditional one refuses None in one line)."""
        if label is None:
            return None
        return torch.full((n,), int(label), dtype=torch.int64, device=self.device)

    def to_map(self, z: Tensor) -> Tensor:
        """The map's point (B, 2) of codes (B, d); a discrete model's of grids (B, h, w) or
        code vectors (B, D, h, w), by their code vectors."""
        if self.discrete:
            z = self.vectors(z).flatten(1)
        z = z.float().cpu()
        return z if self.center is None else (z - self.center) @ self.directions.T

    def from_map(self, xy: Tensor) -> Tensor:
        """The code (B, d) of map points (B, 2); a discrete model's grid (B, h, w): the
        point's encoder output, quantized."""
        xy = torch.as_tensor(xy, dtype=torch.float32)
        if self.discrete:
            z_e = explore.from_map(self.center, self.directions, xy)
            return self.quantize(z_e.view(len(xy), self.latent_dims, *self.model.latent_shape))
        return xy if self.center is None else explore.from_map(self.center, self.directions, xy)

    @torch.inference_mode()
    def decode(self, z: Tensor, label: int | None = None) -> list[str]:
        """Codes (B, d) (a discrete model's grids (B, h, w) or code vectors (B, D, h, w);
        of the class ``label``, for a conditional model) -> their decoded images as PNG data
        URLs."""
        if z.is_floating_point() or not self.discrete:  # a discrete model's grids stay int64
            z = z.float()
        images = self.model.decode(z.to(self.device), self._labels(label, len(z)))
        return [data_url(im) for im in to_uint8(images)]

    @torch.inference_mode()
    def encode(self, images: np.ndarray, label: int | None = None) -> Tensor:
        """Posterior means (B, d) of uint8 images (B, H, W, C) (of the class ``label``, for a
        conditional model); a discrete model's code grids (B, h, w)."""
        x = to_float(torch.tensor(images), self.device)  # a copy: uploads are read-only
        post = self.model.encode(x, self._labels(label, len(x)))
        return post.indices.cpu() if self.discrete else post.mu.float().cpu()

    def sample(self, seed: int, label: int | None = None) -> tuple[Tensor, int | None]:
        """One code (1, d) (a discrete model's grid (1, h, w)) from the model's ex-post sampler
        if it has one, else the prior, and a conditional model's class: ``label``, or drawn
        uniformly. With a fitted sampler the class comes first and the code is drawn given it,
        as ``generate`` draws them (a class-conditional prior draws the codes of a class);
        with the model's own prior the class is drawn after the code (as ``VAE.sample``)."""
        gen = torch.Generator().manual_seed(seed)
        if self.sampler is not None:
            labels = sample_classes(self.model, 1, seed, label)  # generate's; None: unconditional
            if labels is not None:
                labels, label = labels.cpu(), int(labels[0])
            z = torch.as_tensor(self.sampler.sample(1, gen, labels=labels)).cpu()
            if self.discrete:
                return z.long().reshape(1, *self.model.latent_shape), label
            return z.float().reshape(1, self.latent_dims), label
        if self.discrete:  # a code grid (1, h, w) of uniform codes
            z = self.model.prior_sample(1, gen).long().reshape(1, *self.model.latent_shape).cpu()
        else:
            z = self.model.prior_sample(1, gen, "cpu", torch.float32)
        if self.conditional and label is None:
            label = int(self.model.labels(None, 1, gen)[0])
        return z, label

    def interpolate(
        self, a: Tensor, b: Tensor, steps: int, method: str, label: int | None = None
    ) -> tuple[Tensor, list]:
        """The codes (steps, d) from ``a`` to ``b`` (explore.interpolate's path) and their
        decoded images (of the class ``label``, for a conditional model) as data URLs. A
        discrete model's path runs from grid ``a`` to grid ``b`` (h, w) on the straight line
        between their code vectors: (steps, D, h, w) (``quantize`` gives each frame's grid)."""
        if self.discrete:
            va, vb = self.vectors(torch.stack([a, b]))
            t = torch.linspace(0, 1, steps).view(-1, 1, 1, 1)
            codes = (1 - t) * va + t * vb
            return codes, self.decode(codes, label)
        frames = explore.interpolate(self.model, a, b, steps, method, label)
        t = torch.linspace(0, 1, steps)[:, None]
        codes = explore.slerp(a, b, t) if method == "slerp" else (1 - t) * a + t * b
        return codes, [data_url(im) for im in to_uint8(frames)]


def build_explorer(
    model: VAE,
    images: np.ndarray,
    labels: np.ndarray | None = None,
    classes: list[str] | None = None,
    **info: Any,
) -> Explorer:
    """An Explorer of ``model`` over uint8 ``images`` (N, H, W, C), N >= 2: their codes, map
    and the KL of each dimension (a discrete model's code grids and the map of its encoder
    outputs; ``info``: ``name``, ``dataset``, ``sampler``). A conditional model encodes each
    image with its class, ``labels`` (indices into its classes, which ``classes`` must be)."""
    if len(images) < 2:
        raise TorchVaeError(f"the explorer's map needs at least 2 test images, got {len(images)}")
    condition = None
    if model.conditional:
        condition = _conditions(model, images, labels, classes)
    fast = model.inference_copy()
    if labels is not None and len(labels) != len(images):
        log.warning("%d labels for %d images: the map is drawn without classes", len(labels),
                    len(images))  # fmt: skip
        labels = None
    if model.latent_kind == "discrete":
        return _discrete_explorer(fast, images, labels, classes, condition, info)
    means = explore.encode_mean(fast, images, condition)
    kl = explore.kl_per_dim(fast, images, condition)
    center = directions = None
    xy = means
    if means.shape[1] != 2:
        center, directions, _ = explore.pca_basis(means)
        xy = (means - center) @ directions.T
    order = sorted(range(len(kl)), key=lambda i: (-float(kl[i]), i))
    return Explorer(
        model=fast, images=images, labels=labels, classes=classes, means=means,
        xy=torch.nan_to_num(xy), center=center, directions=directions, kl=kl,
        active=explore.active_dims(kl), order=order, **info,
    )  # fmt: skip


def _discrete_explorer(fast: VAE, images, labels, classes, condition, info: dict) -> Explorer:
    """``build_explorer``'s Explorer of a discrete model (``fast``, its inference copy): the
    images' code grids, and the map of their encoder outputs."""
    codes = explore.encode_codes(fast, images, condition)
    z_e = codes.z_e.flatten(1)
    center, directions, _ = explore.pca_basis(z_e)
    return Explorer(
        model=fast, images=images, labels=labels, classes=classes, means=z_e,
        xy=torch.nan_to_num((z_e - center) @ directions.T), center=center,
        directions=directions, kl=None, active=None, order=[], grids=codes.indices, **info,
    )  # fmt: skip


def _conditions(model: VAE, images, labels, classes) -> Tensor:
    """A conditional model's classes of the explorer's images, checked."""
    if labels is None or len(labels) != len(images) or np.min(labels, initial=0) < 0:
        raise TorchVaeError(
            "a conditional model's explorer needs the class of every test image: pass the "
            "dataset the model was trained on"
        )
    if classes is not None and list(classes) != list(model.config.classes):
        raise TorchVaeError("the labels' classes are not the conditional model's")
    return torch.as_tensor(np.asarray(labels), dtype=torch.int64)


def find_sampler(
    model_path: str | os.PathLike, latent_dims: int | None = None, grid: tuple | None = None
) -> Any:
    """The model's fitted prior (``priors.load_sampler``), or None (N(0, I), or a discrete
    model's uniform codes) when it has none or it cannot be used, with a warning. ``grid``: a
    discrete model's code grid (h, w), which its prior must draw."""
    try:
        sampler = load_sampler(model_path)
    except TorchVaeError as exc:  # e.g. fitted to other weights: the page still works
        log.warning("random samples come from the prior: %s", exc)
        return None
    if sampler is None:
        return None
    kind = getattr(sampler, "latent_kind", "gaussian")
    if kind != ("gaussian" if grid is None else "discrete"):
        log.warning("random samples come from the prior: the fitted sampler draws %s codes, "
                    "the model's are not", kind)  # fmt: skip
        return None
    if latent_dims is not None and sampler.dims != latent_dims:
        log.warning("random samples come from the prior: the fitted sampler draws %d-d codes, "
                    "the model has %d latent dimensions", sampler.dims, latent_dims)  # fmt: skip
        return None
    if grid is not None and tuple(sampler.grid) != tuple(grid):
        log.warning("random samples come from the prior: the fitted sampler draws %s code "
                    "grids, the model's are %s", sampler.grid, tuple(grid))  # fmt: skip
        return None
    return sampler


def load_explorer(
    model: VAE,
    model_path: Path,
    dataset: str,
    data_dir: Path | None,
    nimages: int,
    progress: bool = True,
    drawing: dict | None = None,
) -> Explorer:
    """The Explorer of ``model`` (loaded from ``model_path``) over the first ``nimages``
    (0: all) test images of ``dataset``, with their labels where it has them. ``drawing``:
    ``set_drawing``'s temperature, guidance and round_trips, checked before any image is
    read."""
    sampler = find_sampler(model_path, model.config.latent_dims, _grid(model))
    # a transformer's round trips go through the model
    set_drawing(sampler, model_path, **(drawing or {}), model=model)
    size = model.config.image_size
    images = load_split(dataset, "test", size, data_dir, progress)
    labels = classes = None
    if model.conditional:  # each image's class, as an index into the model's classes
        labels = labels_as(model.config.classes, dataset, "test", len(images), data_dir)
        classes = list(model.config.classes)
    else:
        try:
            labels = explore.load_labels(dataset, "test", data_dir)
            classes = explore.class_names(dataset, data_dir)
        except (TorchVaeError, OSError) as exc:
            log.warning("no labels for the map (%s): its points are drawn in one colour", exc)
    images = images[: nimages or None]
    if labels is not None:
        labels = labels[: len(images)]
    log.info("mapping %d test images of %s", len(images), dataset)
    return build_explorer(model, images, labels, classes, name=str(model_path), dataset=dataset,
                          sampler=sampler)  # fmt: skip


def _grid(model: VAE) -> tuple[int, ...] | None:
    """A discrete model's code grid (h, w); None for a Gaussian latent."""
    return tuple(model.latent_shape) if model.latent_kind == "discrete" else None


def read_upload(data: bytes, channels: int, size: int) -> np.ndarray:
    """An uploaded image file as the model sees it, uint8 (size, size, channels): upright
    (EXIF), on the 8-bit scale, grey or RGB, the centred square resized. Raises UploadError
    (413: too large, 415: not an image, 422: damaged or unusable)."""
    if len(data) > MAX_UPLOAD_BYTES:
        raise UploadError(413, f"the file has {len(data)} bytes; at most {MAX_UPLOAD_BYTES}")
    if not data:
        raise UploadError(422, "the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS)
            w, h = img.size
            if w * h > MAX_UPLOAD_PIXELS:
                raise UploadError(
                    413, f"the image is {w}x{h} pixels; at most {MAX_UPLOAD_PIXELS:,} in all"
                )
            decoded = w * h * len(img.getbands()) * _BAND_BYTES.get(img.mode, 1)
            if decoded > MAX_UPLOAD_DECODED:
                raise UploadError(
                    413, f"the image's pixels take {decoded / 2**20:.0f} MiB ({img.mode}, "
                    f"{w}x{h}); at most {MAX_UPLOAD_DECODED // 2**20} MiB",
                )  # fmt: skip
            with UPLOAD_DECODES:
                return to_array(img, channels, size, crop=True)  # EXIF orientation applied
    except UploadError:
        raise
    except UnidentifiedImageError:
        raise UploadError(
            415, f"not an image in a format the explorer reads ({', '.join(UPLOAD_FORMATS)})"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow refuses to open it (more pixels than its own limit); its words say how many
        found = re.search(r"Image size \((\d+) pixels\)", str(exc))
        count = f"{int(found.group(1)):,}" if found else f"more than {Image.MAX_IMAGE_PIXELS:,}"
        raise UploadError(
            413, f"the image has {count} pixels; at most {MAX_UPLOAD_PIXELS:,} in all"
        ) from None
    except UnsupportedImage as exc:
        raise UploadError(422, f"cannot use this image: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a damaged file makes Pillow raise anything
        raise UploadError(422, f"cannot decode the image ({type(exc).__name__}: {exc})") from None
