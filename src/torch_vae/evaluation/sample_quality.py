"""Sample quality: generated images against the test split, in a feature space.

- **Fréchet distance (FD)** between Gaussians fitted to the two sets of features (the FID's
  formula, Heusel et al., 2017). Lower is better; it falls with the number of samples too, so
  compare numbers of the same N only.
- **Precision and recall** of the sample manifold (Kynkäänniemi et al., 2019): each point's
  ball reaches its k-th nearest neighbour in its own set. Precision: the fraction of samples in
  some test image's ball (are samples like real images?); recall: the fraction of test images
  in some sample's ball (is every kind of image generated?).
- **Kernel Inception distance (KID)** (Bińkowski et al., 2018): the unbiased squared MMD with
  the cubic polynomial kernel (x.y / F + 1)^3, averaged over random subsets of both sets; unlike
  the FD it has no bias that depends on N. Lower is better.
- **Class histogram** of the samples, as the classifier predicts their classes, and its KL
  divergence KL(samples || test) from the histogram of the test split's predicted classes.

The **floor** is the same numbers for N training images: what a perfect model's samples would
score, as they are images of the same distribution that are not the test images.

Feature spaces: ``inception``, the 2048 pool features of Inception-v3 (features.py): the FID
of the literature, at the dataset's own size; ``classifier``, the 128-d penultimate layer of a
classifier trained on the dataset (classifier.py), the same for every model of the dataset, so
its numbers compare models; ``encoder``, the model's own posterior means, for a dataset
without a classifier: its numbers compare the samplers of one model only, since each model has
its own encoder.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..analysis import pictures
from ..data import load_split
from ..data.labels import class_names
from ..errors import TorchVaeError
from ..io.png import to_uint8
from ..models import VAE
from ..priors import Prior, posterior_means
from ..runtime.device import to_float
from .classifier import CLASSIFIER_WEIGHTS, load_classifier

log = logging.getLogger(__name__)

CHUNK = 1024  # rows of a distance matrix computed at once
KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000  # as Bińkowski et al. and torch-fidelity


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """|mu1 - mu2|^2 + tr(cov1 + cov2 - 2 (cov1 cov2)^(1/2)), in float64. The trace of the
    square root is the sum of the square roots of the eigenvalues of cov1^(1/2) cov2
    cov1^(1/2), a symmetric matrix with the same eigenvalues as cov1 cov2: no non-symmetric
    matrix square root, no complex rounding residue."""
    mu1, cov1, mu2, cov2 = (np.asarray(a, dtype=np.float64) for a in (mu1, cov1, mu2, cov2))
    w, v = np.linalg.eigh((cov1 + cov1.T) / 2)
    root = (v * np.sqrt(w.clip(min=0))) @ v.T
    m = root @ cov2 @ root
    ev = np.linalg.eigvalsh((m + m.T) / 2).clip(min=0)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * np.sqrt(ev).sum())


def gaussian_stats(features: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean (F,) and covariance (F, F) of features (N, F), float64."""
    f = features.double().numpy()
    return f.mean(0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def _distances(a: Tensor, b: Tensor) -> Tensor:
    return torch.cdist(a.double(), b.double())


def kth_neighbour_radii(x: Tensor, k: int) -> Tensor:
    """Each point's distance to its k-th nearest other point of ``x`` (N, F): (N,)."""
    if len(x) <= k:
        raise TorchVaeError(f"{len(x)} points have no {k}th nearest neighbours")
    # the point itself is the nearest, at distance 0: the k-th other one is the (k+1)-th
    return torch.cat([_distances(x[i : i + CHUNK], x).kthvalue(k + 1, dim=1).values
                      for i in range(0, len(x), CHUNK)])  # fmt: skip


def fraction_in_balls(points: Tensor, centers: Tensor, radii: Tensor) -> float:
    """The fraction of ``points`` that lie in at least one ball (``centers``, ``radii``)."""
    inside = 0
    for i in range(0, len(points), CHUNK):
        d = _distances(points[i : i + CHUNK], centers)
        inside += int((d <= radii.double()[None]).any(1).sum())
    return inside / len(points)


def precision_recall(real: Tensor, fake: Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al., 2019) of ``fake`` against
    ``real`` features, with k-nearest-neighbour balls."""
    precision = fraction_in_balls(fake, real, kth_neighbour_radii(real, k))
    recall = fraction_in_balls(real, fake, kth_neighbour_radii(fake, k))
    return precision, recall


def kernel_distance(
    real: Tensor,
    fake: Tensor,
    subsets: int = KID_SUBSETS,
    size: int = KID_SUBSET_SIZE,
    seed: int = 0,
) -> tuple[float, float]:
    """KID: the mean and standard deviation over ``subsets`` random subsets (``size`` of each
    set, fewer if a set is smaller, drawn by a generator seeded with ``seed``) of the unbiased
    squared MMD with the kernel (x.y / F + 1)^3, in float64."""
    gen = torch.Generator().manual_seed(seed)
    m = min(size, len(real), len(fake))
    if m < 2:
        raise TorchVaeError(f"KID needs at least 2 images of each set, got {m}")
    real, fake = real.double(), fake.double()
    dims = real.shape[1]
    values = []
    for _ in range(subsets):
        x = real[torch.randperm(len(real), generator=gen)[:m]]
        y = fake[torch.randperm(len(fake), generator=gen)[:m]]
        kxx, kyy, kxy = ((a @ b.T / dims + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        off = m * (m - 1)
        within = (kxx.sum() - kxx.diagonal().sum() + kyy.sum() - kyy.diagonal().sum()) / off
        values.append(float(within - 2 * kxy.mean()))
    v = np.array(values)
    return float(v.mean()), float(v.std())


def class_histogram(classes: Tensor, n_classes: int) -> np.ndarray:
    """The fraction of each class (n_classes,)."""
    return np.bincount(classes.numpy(), minlength=n_classes)[:n_classes] / max(1, len(classes))


def kl_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p || q) in nats; classes absent from p add nothing, from q (but not p) infinity."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    keep = p > 0
    if (q[keep] <= 0).any():
        return float("inf")
    return float((p[keep] * np.log(p[keep] / q[keep])).sum())


@dataclass
class FeatureSpace:
    """``extract(uint8 images (N, H, W, C))`` -> features (N, F) and predicted classes (N,)
    (None without a classifier). ``size``: the image size the space measures at (None: the
    model's); ``split_features(dataset, split, size, data_dir, n, progress)``, where given,
    gives a split's features from a cache instead of ``extract``."""

    name: str
    extract: Callable[[Tensor], tuple[Tensor, Tensor | None]]
    n_classes: int = 0
    size: int | None = None
    split_features: Callable[..., Tensor] | None = None


def classifier_space(classifier, batch: int = 500) -> FeatureSpace:
    device = next(classifier.parameters()).device

    @torch.no_grad()
    def extract(images: Tensor) -> tuple[Tensor, Tensor]:
        feats = [classifier.features(to_float(images[i : i + batch], device)).float()
                 for i in range(0, len(images), batch)]  # fmt: skip
        f = torch.cat(feats)
        return f.cpu(), classifier.head(f).argmax(1).cpu()

    return FeatureSpace("classifier", extract, classifier.config.num_classes)


def encoder_space(model: VAE, batch: int = 500) -> FeatureSpace:
    return FeatureSpace("encoder", lambda images: (posterior_means(model, images, batch), None))


def inception_space(dataset: str, image_size: int, device, progress: bool = True,
                    extractor=None) -> FeatureSpace:  # fmt: skip
    """Inception features at the dataset's own size (``features.measured_size``), the splits'
    features cached in the data folder. ``extractor``: another feature network with the same
    interface (the tests' tiny stand-in)."""
    from . import features

    net = extractor or features.InceptionFeatures(device)

    def extract(images) -> tuple[Tensor, None]:
        return net(features.at_size(images, size), progress), None

    def split(dataset, split, size, data_dir, n, progress, rows=None):
        return features.split_features(net, dataset, split, size, data_dir, n, progress, rows)

    size = features.measured_size(dataset, image_size)
    return FeatureSpace(net.name, extract, 0, size, split)


@dataclass
class Reference:
    """The test split in a feature space, with what every comparison needs of it."""

    features: Tensor
    classes: Tensor | None
    mu: np.ndarray
    cov: np.ndarray
    radii: Tensor  # k-th nearest neighbour distances
    k: int
    histogram: np.ndarray | None


def make_reference(
    space: FeatureSpace, images: Tensor, k: int, features: Tensor | None = None
) -> Reference:
    """The reference set ``images`` in ``space`` (``features``: theirs, already computed)."""
    if features is None:
        f, c = space.extract(images)
    else:
        f, c = features, None
    hist = class_histogram(c, space.n_classes) if c is not None else None
    return Reference(f, c, *gaussian_stats(f), kth_neighbour_radii(f, k), k, hist)


def measure(
    space: FeatureSpace, images: Tensor | None, ref: Reference, features: Tensor | None = None
) -> dict:
    """FD, KID, precision, recall (and the class histogram with its KL) of ``images`` (or of
    their ``features``, already computed) against ``ref``."""
    f, c = space.extract(images) if features is None else (features, None)
    mu, cov = gaussian_stats(f)
    kid, kid_std = kernel_distance(ref.features, f)
    out = {
        "n_images": len(f),
        "fd": frechet_distance(mu, cov, ref.mu, ref.cov),
        "kid": kid,
        "kid_std": kid_std,
        "precision": fraction_in_balls(f, ref.features, ref.radii),
        "recall": fraction_in_balls(ref.features, f, kth_neighbour_radii(f, ref.k)),
    }
    if c is not None:
        hist = class_histogram(c, space.n_classes)
        out["class_histogram"] = hist.round(5).tolist()
        kl = kl_divergence(hist, ref.histogram)
        # infinite where the samples have a class the test split's predictions lack: JSON has
        # no infinity, so the report says null
        out["class_kl"] = kl if np.isfinite(kl) else None
    return out


@torch.no_grad()
def sample_images(
    model: VAE, sampler: Prior | None, n: int, seed: int = 0, batch: int = 500
) -> Tensor:
    """The ``n`` samples that ``generate --seed seed`` with this sampler writes, as uint8
    images (n, H, W, C) at the model's size."""
    draw = sampler.sample if sampler is not None else None
    batches = pictures.sample_images(model.inference_copy(), n, seed, batch, draw)
    return torch.cat([torch.from_numpy(images) for _, images in batches])


def shipped_classifier(dataset: str) -> Path | None:
    """``models/<dataset>/classifier`` of this source tree, where it exists."""
    folder = Path(__file__).resolve().parents[3] / "models" / dataset / "classifier"
    return folder if (folder / CLASSIFIER_WEIGHTS).is_file() else None


def pick_space(
    features: str, classifier: Path | None, model: VAE, dataset: str, device, batch: int = 500
) -> FeatureSpace:
    """The feature space ``--features`` asks for: ``inception``, ``encoder``, ``classifier``
    (``classifier``, else the shipped one for ``dataset``), or ``auto``: a classifier if one is
    found."""
    if features == "encoder":
        return encoder_space(model, batch)
    if features == "inception":
        return inception_space(dataset, model.config.image_size, device)
    path = classifier or shipped_classifier(dataset)
    if path is None and features == "classifier":
        raise TorchVaeError(
            f"no classifier for {dataset}: pass --classifier FOLDER (train one with torch-vae "
            "train-classifier), or --features encoder"
        )
    if path is None:
        log.info("no classifier for %s: features are the model's posterior means, comparable "
                 "between samplers of this model only", dataset)  # fmt: skip
        return encoder_space(model, batch)
    clf = load_classifier(path, device)
    c, m = clf.config, model.config
    if (c.image_size, c.in_channels) != (m.image_size, m.in_channels):
        raise TorchVaeError(
            f"classifier {path} takes {c.image_size}x{c.image_size} images with "
            f"{c.in_channels} channel(s), the model makes {m.image_size}x{m.image_size} with "
            f"{m.in_channels}; pass another --classifier or --features encoder"
        )
    if c.dataset != dataset:
        log.warning("classifier %s was trained on %s, not %s", path, c.dataset, dataset)
    return classifier_space(clf, batch)


def split_reference_features(
    space: FeatureSpace, dataset: str, split: str, size: int, data_dir, rows, n: int, progress
) -> tuple[np.ndarray, Tensor | None]:
    """The images of ``split`` (its ``rows`` where given, then the first ``n``; 0: all) at
    ``size``, and their features where ``space`` caches them (else None)."""
    images = load_split(dataset, split, size, data_dir, progress)
    if rows is not None:
        images = images[np.asarray(rows)[: n or None]]
    else:
        images = images[: n or None]
    if space.split_features is None:
        return np.asarray(images), None
    feats = space.split_features(dataset, split, size, data_dir, n, progress, rows)
    return np.asarray(images), feats


def quality_report(
    model: VAE,
    dataset: str,
    space: FeatureSpace,
    sampler: Prior | None = None,
    nsamples: int = 10000,
    seed: int = 0,
    k: int = 3,
    data_dir: Path | None = None,
    batch: int = 500,
    progress: bool = True,
    name: str = "",
    reference: str = "test",
    rows: tuple | None = None,
    what: str = "samples",
    floor: bool = True,
) -> dict:
    """Measure ``nsamples`` samples of ``model`` (from ``sampler``, else its prior) -- or with
    ``what="reconstructions"`` its reconstructions of the reference images -- and as many
    training images (the floor) against the ``reference`` split of ``dataset`` in ``space``.
    ``reference``: ``test``, or ``val``, the training images at ``rows[1]`` (the model's
    validation split; the floor then comes from ``rows[0]``, the images it was trained on)."""
    model_size = model.config.image_size
    size = space.size or model_size
    train_rows, val_rows = rows if rows is not None else (None, None)
    if reference == "val" and val_rows is None:
        raise TorchVaeError(
            f"{name or 'the model'} held out no validation split: pass --reference test"
        )
    ref_split = "train" if reference == "val" else "test"
    ref_rows = val_rows if reference == "val" else None
    ref_images, ref_feats = split_reference_features(
        space, dataset, ref_split, size, data_dir, ref_rows, 0, progress
    )
    ref = make_reference(space, torch.from_numpy(ref_images), k, ref_feats)
    if what == "reconstructions":
        fake = reconstruct_images(model, dataset, ref_split, data_dir, batch, progress, ref_rows)
        kind, description = "reconstructions", "the model's reconstructions of the reference"
    else:
        fake = sample_images(model, sampler, nsamples, seed, batch)
        kind = sampler.kind if sampler else "prior"
        description = sampler.describe() if sampler else "the prior N(0, I)"
    report = {
        "model": name, "dataset": dataset, "seed": seed, "k": k, "what": what,
        "sampler": kind, "sampler_description": description,
        "features": space.name, "feature_dims": int(ref.features.shape[1]),
        "measured_size": size, "model_size": model_size,
        "reference": reference, "n_reference": len(ref_images),
        "samples": measure(space, fake, ref),
    }  # fmt: skip
    if floor:
        n = len(fake)
        images, feats = split_reference_features(space, dataset, "train", size, data_dir,
                                                 train_rows, n, progress)  # fmt: skip
        report["train_floor"] = measure(space, torch.from_numpy(images), ref, feats)
    if ref.histogram is not None:
        report["test_class_histogram"] = ref.histogram.round(5).tolist()
        report["class_names"] = class_names(dataset, data_dir)
    return report


@torch.no_grad()
def reconstruct_images(model: VAE, dataset: str, split: str, data_dir, batch: int,
                       progress: bool, rows=None) -> Tensor:  # fmt: skip
    """The model's reconstructions (posterior mode, decoded) of a split's images (``rows`` of
    it where given), uint8 (N, H, W, C) at the model's size."""
    images = load_split(dataset, split, model.config.image_size, data_dir, progress)
    if rows is not None:
        images = images[np.asarray(rows)]
    fast = model.inference_copy()
    out = []
    for i in range(0, len(images), batch):
        x = to_float(torch.as_tensor(np.asarray(images[i : i + batch])), fast.device)
        out.append(torch.from_numpy(to_uint8(fast.reconstruct(x))))
    return torch.cat(out)
