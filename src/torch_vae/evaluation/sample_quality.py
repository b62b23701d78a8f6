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
from ..data.labels import class_names, labels_as
from ..errors import TorchVaeError
from ..io.png import to_uint8
from ..models import VAE
from ..priors import Prior, encoder_features
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
    """``extract(uint8 images (N, H, W, C), labels=None)`` -> features (N, F) and predicted
    classes (N,) (None without a classifier); ``labels``, the images' classes, matter to the
    encoder of a conditional model only. ``size``: the image size the space measures at (None:
    the model's); ``split_features(dataset, split, size, data_dir, n, progress)``, where given,
    gives a split's features from a cache instead of ``extract``. A classifier's space also
    has ``class_names``, the classes its predictions index, and ``source``, its folder."""

    name: str
    extract: Callable[..., tuple[Tensor, Tensor | None]]
    n_classes: int = 0
    size: int | None = None
    split_features: Callable[..., Tensor] | None = None
    class_names: list[str] | None = None
    source: str = ""


def classifier_space(classifier, batch: int = 500, source: str = "") -> FeatureSpace:
    """The penultimate layer of ``classifier`` and its predicted classes; images of another
    size are resized to the classifier's as the data pipeline resizes (Pillow's bilinear: a
    28x28 Fashion-MNIST sample becomes the kind of 64x64 image the classifier learned from)."""
    from .features import at_size

    device = next(classifier.parameters()).device
    size = classifier.config.image_size

    @torch.no_grad()
    def extract(images: Tensor, labels=None) -> tuple[Tensor, Tensor]:
        if images.shape[1] != size:
            images = torch.from_numpy(at_size(images.numpy(), size))
        feats = [classifier.features(to_float(images[i : i + batch], device)).float()
                 for i in range(0, len(images), batch)]  # fmt: skip
        f = torch.cat(feats)
        return f.cpu(), classifier.head(f).argmax(1).cpu()

    try:
        names = class_names(classifier.config.dataset)
    except TorchVaeError:  # a dataset this torch-vae does not know (any more)
        names = None
    return FeatureSpace("classifier", extract, classifier.config.num_classes,
                        class_names=names, source=source)  # fmt: skip


def encoder_space(model: VAE, batch: int = 500) -> FeatureSpace:
    """The model's posterior means (a conditional model's given each image's class; a
    discrete model's encoder output: ``priors.encoder_features``)."""

    def extract(images: Tensor, labels=None) -> tuple[Tensor, None]:
        return encoder_features(model, images, batch, labels), None

    return FeatureSpace("encoder", extract)


def inception_space(dataset: str, image_size: int, device, progress: bool = True,
                    extractor=None) -> FeatureSpace:  # fmt: skip
    """Inception features at the dataset's own size (``features.measured_size``), the splits'
    features cached in the data folder. ``extractor``: another feature network with the same
    interface (the tests' tiny stand-in)."""
    from . import features

    net = extractor or features.InceptionFeatures(device)

    def extract(images, labels=None) -> tuple[Tensor, None]:
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
    labels: Tensor | None = None  # a conditional model's classes of the images


def make_reference(
    space: FeatureSpace,
    images: Tensor | None,
    k: int,
    features: Tensor | None = None,
    labels: Tensor | None = None,
    predicted: Tensor | None = None,
) -> Reference:
    """The reference set ``images`` (of the classes ``labels``, for a conditional model) in
    ``space`` (``features``: theirs, already computed, with the classifier's ``predicted``
    classes where known)."""
    f, c = space.extract(images, labels) if features is None else (features, predicted)
    hist = class_histogram(c, space.n_classes) if c is not None else None
    return Reference(f, c, *gaussian_stats(f), kth_neighbour_radii(f, k), k, hist, labels)


def measure(
    space: FeatureSpace,
    images: Tensor | None,
    ref: Reference,
    features: Tensor | None = None,
    labels: Tensor | None = None,
    predicted: Tensor | None = None,
) -> dict:
    """FD, KID, precision, recall (and the class histogram with its KL) of ``images`` (of the
    classes ``labels``, for a conditional model; or of their ``features``, already computed,
    with the classifier's ``predicted`` classes where known) against ``ref``."""
    f, c = space.extract(images, labels) if features is None else (features, predicted)
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
        # infinite where the samples have a class the reference's predictions lack: JSON has
        # no infinity, so the report says null
        out["class_kl"] = kl if np.isfinite(kl) else None
    return out


def class_accuracy(
    predicted: Tensor, labels: Tensor, classes, judge_names: list[str] | None
) -> dict | None:
    """How many images a classifier classifies as the class they were made for: ``labels``,
    indices into a conditional model's ``classes``; ``predicted``, the classifier's classes,
    indices into ``judge_names`` (None: the model's own order). Overall and per class (those
    with images); None when the classifier does not know every class of the model."""
    names = list(judge_names) if judge_names is not None else list(classes)
    if set(classes) - set(names):
        return None
    index = {name: i for i, name in enumerate(classes)}
    to_model = torch.tensor([index.get(name, -1) for name in names], dtype=torch.int64)
    hit = (to_model[predicted.long()] == labels.long()).double()
    per_class, counts = {}, {}
    for c, name in enumerate(classes):
        mine = labels == c
        if mine.any():
            per_class[name], counts[name] = hit[mine].mean().item(), int(mine.sum())
    return {"overall": hit.mean().item(), "n_images": len(hit), "per_class": per_class,
            "n_per_class": counts}  # fmt: skip


@torch.no_grad()
def sample_images(
    model: VAE, sampler: Prior | None, n: int, seed: int = 0, batch: int = 500, classes=None
) -> Tensor:
    """The ``n`` samples that ``generate --seed seed`` with this sampler (and ``--class
    classes``, for a conditional model) writes, as uint8 images (n, H, W, C) at the model's
    size; their classes are ``sample_labels``."""
    draw = sampler.sample if sampler is not None else None
    batches = pictures.sample_images(model.inference_copy(), n, seed, batch, draw, classes)
    return torch.cat([torch.from_numpy(images) for _, images in batches])


def sample_labels(model: VAE, n: int, seed: int = 0, classes=None) -> Tensor | None:
    """The classes (n,) of ``sample_images``' samples (None for an unconditional model)."""
    labels = pictures.sample_classes(model, n, seed, classes)
    return None if labels is None else labels.cpu()


def shipped_classifier(dataset: str) -> Path | None:
    """``models/<dataset>/classifier`` of this source tree, where it exists."""
    folder = Path(__file__).resolve().parents[3] / "models" / dataset / "classifier"
    return folder if (folder / CLASSIFIER_WEIGHTS).is_file() else None


def pick_space(
    features: str,
    classifier: Path | None,
    model: VAE,
    dataset: str,
    device,
    batch: int = 500,
    progress: bool = True,
) -> FeatureSpace:
    """The feature space ``--features`` asks for: ``inception``, ``encoder``, ``classifier``
    (``classifier``, else the shipped one for ``dataset``), or ``auto``: a classifier if one is
    found. ``progress``: a progress bar while Inception features are computed."""
    if features == "encoder":
        return encoder_space(model, batch)
    if features == "inception":
        return inception_space(dataset, model.config.image_size, device, progress)
    if classifier is None and shipped_classifier(dataset) is None and features == "classifier":
        raise TorchVaeError(
            f"no classifier for {dataset}: pass --classifier FOLDER (train one with torch-vae "
            "train-classifier), or --features encoder"
        )
    space = find_classifier(classifier, model, dataset, device, batch)
    if space is None:
        log.info("no classifier for %s: features are the model's posterior means, comparable "
                 "between samplers of this model only", dataset)  # fmt: skip
        return encoder_space(model, batch)
    return space


def find_classifier(
    classifier: Path | None, model: VAE, dataset: str, device, batch: int = 500,
    strict: bool = True,
) -> FeatureSpace | None:  # fmt: skip
    """The space of ``classifier``, else of the shipped one for ``dataset``; None where there is
    none. A classifier that does not take the model's images (other channels) is an error
    (``strict``), or left out with a warning; images of another size are resized to its."""
    path = classifier or shipped_classifier(dataset)
    if path is None:
        return None
    clf = load_classifier(path, device)
    c, m = clf.config, model.config
    if c.in_channels != m.in_channels:
        why = (f"classifier {path} takes images with {c.in_channels} channel(s), the model "
               f"makes them with {m.in_channels}")  # fmt: skip
        if strict:
            raise TorchVaeError(f"{why}; pass another --classifier or --features encoder")
        log.warning("%s: no class accuracy", why)
        return None
    if c.dataset != dataset:
        log.warning("classifier %s was trained on %s, not %s", path, c.dataset, dataset)
    return classifier_space(clf, batch, str(path))


def accuracy_classifier(
    space: FeatureSpace, classifier: Path | None, model: VAE, dataset: str, device,
    batch: int = 500,
) -> FeatureSpace | None:  # fmt: skip
    """The classifier whose predictions give a conditional model's class accuracy: the
    feature space's own, else ``classifier`` or the shipped one for ``dataset`` where it takes
    the model's images; None for an unconditional model, or where there is none."""
    if not model.conditional:
        return None
    if space.n_classes:
        return space
    return find_classifier(classifier, model, dataset, device, batch, strict=classifier is not None)


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


def split_classes(model: VAE, dataset: str, split: str, data_dir, progress: bool = True):
    """A conditional model's class of every image of ``split`` (int64 (N,), indices into its
    classes), or None for an unconditional model."""
    if not model.conditional:
        return None
    n = len(load_split(dataset, split, model.config.image_size, data_dir, progress))
    return torch.from_numpy(labels_as(model.config.classes, dataset, split, n, data_dir))


def chosen_class(model: VAE, classes) -> int | str | None:
    """``classes`` (None, "all", or a class by index or name) checked against the model: None,
    "all" or the class's index. An unconditional model takes none."""
    if classes is None:
        return None
    if not model.conditional or classes != "all":
        return int(model.labels(classes, 1)[0])  # a one-line error for a bad one
    return "all"


def _rows(labels: Tensor | None, rows, n: int) -> Tensor | None:
    """The labels of a split's ``rows`` (None: all), the first ``n`` (0: all)."""
    if labels is None:
        return None
    picked = labels if rows is None else labels[torch.as_tensor(np.asarray(rows))]
    return picked[: n or None]


def _of_class(rows, labels: Tensor, c: int, n: int = 0) -> np.ndarray:
    """The rows among ``rows`` (None: all) of a split whose class is ``c``, the first ``n``
    (0: all)."""
    base = np.arange(len(labels)) if rows is None else np.asarray(rows)
    return base[labels.numpy()[base] == c][: n or None]


def _enough(n: int, k: int, what: str) -> None:
    if n <= k:
        raise TorchVaeError(
            f"{what} has {n} images; precision and recall need more than --k {k} (pass a "
            "smaller --k, or more images)"
        )


@dataclass
class _Set:
    """Images measured in a space: their features, the classifier's predicted classes (or
    None) and, for a conditional model, the classes they are."""

    features: Tensor
    predicted: Tensor | None
    labels: Tensor | None

    def part(self, c: int) -> _Set:
        mine = self.labels == c
        pred = self.predicted[mine] if self.predicted is not None else None
        return _Set(self.features[mine], pred, self.labels[mine])


def _featurize(space: FeatureSpace, images, labels, features=None) -> _Set:
    if features is not None:
        return _Set(features, None, labels)
    f, c = space.extract(torch.as_tensor(np.asarray(images)), labels)
    return _Set(f, c, labels)


def _as_reference(s: _Set, k: int, space: FeatureSpace) -> Reference:
    return make_reference(space, None, k, s.features, s.labels, s.predicted)


def _measure(space: FeatureSpace, s: _Set, ref: Reference) -> dict:
    return measure(space, None, ref, s.features, s.labels, s.predicted)


def quality_report(
    model: VAE, dataset: str, space: FeatureSpace, sampler: Prior | None = None,
    nsamples: int = 10000, seed: int = 0, k: int = 3, data_dir: Path | None = None,
    batch: int = 500, progress: bool = True, name: str = "", reference: str = "test",
    rows: tuple | None = None, what: str = "samples", floor: bool = True, classes=None,
    classifier: FeatureSpace | None = None,
) -> dict:  # fmt: skip
    """Measure ``nsamples`` samples of ``model`` (from ``sampler``, else its prior) -- or with
    ``what="reconstructions"`` its reconstructions of the reference images -- and as many
    training images (the floor) against the ``reference`` split of ``dataset`` in ``space``.
    ``reference``: ``test``, or ``val``, the training images at ``rows[1]`` (the model's
    validation split; the floor then comes from ``rows[0]``, the images it was trained on).

    A conditional model's samples are of the classes ``classes``: None, drawn uniformly and
    measured against the whole reference; one class (index or name), against the reference
    images of that class (the floor: training images of it); "all", ``nsamples`` of each class
    in turn, each class measured against its own reference images (``per_class``) and all of
    them together against the whole reference. Its ``accuracy`` is the fraction of the
    images that ``classifier`` (default: ``space``, where it is a classifier's) classifies as
    the class they were made for."""
    train_rows, val_rows = rows if rows is not None else (None, None)
    if reference == "val" and val_rows is None:
        raise TorchVaeError(
            f"{name or 'the model'} held out no validation split: pass --reference test"
        )
    wanted = chosen_class(model, classes)
    size = space.size or model.config.image_size
    ref_split = "train" if reference == "val" else "test"
    ref_rows, ref = _reference_set(space, model, dataset, ref_split, val_rows, reference, wanted,
                                   size, data_dir, progress, k)  # fmt: skip
    ref_measure = _as_reference(ref, k, space)
    images, labels, kind, description = _made(model, sampler, what, nsamples, seed, batch, wanted,
                                              (dataset, ref_split, data_dir, progress, ref_rows,
                                               ref.labels))  # fmt: skip
    fake = _featurize(space, images, labels)
    report = {
        "model": name, "dataset": dataset, "seed": seed, "k": k, "what": what,
        "sampler": kind, "sampler_description": description,
        "features": space.name, "feature_dims": int(ref.features.shape[1]),
        "measured_size": size, "model_size": model.config.image_size,
        "reference": reference, "n_reference": len(ref.features),
        "samples": _measure(space, fake, ref_measure),
        **({"classifier": space.source} if space.source else {}),  # the classifier's folder
    }  # fmt: skip
    if model.conditional:
        report["class"] = wanted if wanted in (None, "all") else model.config.classes[wanted]
    floor_set = None
    if floor:
        floor_set = _floor(space, model, dataset, train_rows, fake, wanted, size, data_dir,
                           progress)  # fmt: skip
        report["train_floor"] = _measure(space, floor_set, ref_measure)
    if ref_measure.histogram is not None:
        report["reference_class_histogram"] = ref_measure.histogram.round(5).tolist()
        report["class_names"] = class_names(dataset, data_dir)
    if wanted == "all":
        report["per_class"] = _per_class(space, model, ref, fake, floor_set, k)
    judge = classifier or (space if space.n_classes else None)
    if judge is not None and fake.labels is not None:
        report.update(_accuracy(model, judge, space, images, fake))
    return report


def _made(model: VAE, sampler, what: str, n: int, seed: int, batch: int, wanted, source):
    """What is measured -- the model's reconstructions of the reference images (``source``:
    the dataset, split, data folder, progress, rows and labels they are), or its samples --,
    their classes (None for an unconditional model) and the sampler's kind and description."""
    log.info("making the %s to measure", what)
    if what == "reconstructions":
        dataset, split, data_dir, progress, rows, labels = source
        images = reconstruct_images(model, dataset, split, data_dir, batch, progress, rows,
                                    labels)  # fmt: skip
        return images, labels, "reconstructions", "the model's reconstructions of the reference"
    images, labels = _samples(model, sampler, n, seed, batch, wanted)
    kind = sampler.kind if sampler else "prior"
    return images, labels, kind, sampler.describe() if sampler else "the prior N(0, I)"


def _reference_set(space, model, dataset, split, val_rows, reference, wanted, size, data_dir,
                   progress, k) -> tuple[np.ndarray | None, _Set]:  # fmt: skip
    """The rows of ``split`` (None: all) the reference holds, and the reference: the model's
    validation images for ``reference`` val, only those of the class ``wanted`` where it is
    one (more than ``k`` of them)."""
    said = "the validation images" if reference == "val" else f"the {split} split's images"
    log.info("%s features of %s (the reference)", space.name, said)
    rows = val_rows if reference == "val" else None
    labels = _rows(split_classes(model, dataset, split, data_dir, progress), rows, 0)
    images, feats = split_reference_features(space, dataset, split, size, data_dir, rows, 0,
                                             progress)  # fmt: skip
    if isinstance(wanted, int):
        keep = (labels == wanted).numpy()
        rows = (np.arange(len(keep)) if rows is None else np.asarray(rows))[keep]
        images, labels = images[keep], labels[torch.from_numpy(keep)]
        feats = feats[torch.from_numpy(keep)] if feats is not None else None
    if wanted is not None:
        names = model.config.classes
        for c in range(len(names)) if wanted == "all" else [wanted]:
            _enough(int((labels == c).sum()), k, f"the reference's class {names[c]!r}")
    return rows, _featurize(space, images, labels, feats)


def _samples(model: VAE, sampler, n: int, seed: int, batch: int, wanted):
    """The samples (uint8) and their classes (None for an unconditional model): ``n`` of the
    class ``wanted``, drawn at random (None), or ``n`` of each class ("all"), each class's
    the samples ``generate --class`` writes."""
    if wanted != "all":
        images = sample_images(model, sampler, n, seed, batch, wanted)
        return images, sample_labels(model, n, seed, wanted)
    k = model.config.num_classes
    images = torch.cat([sample_images(model, sampler, n, seed, batch, c) for c in range(k)])
    return images, torch.arange(k).repeat_interleave(n)


def _floor(space, model, dataset, train_rows, fake: _Set, wanted, size, data_dir,
           progress) -> _Set:  # fmt: skip
    """As many training images (of ``train_rows``; None: all) as ``fake`` holds, class for
    class where the samples' classes were chosen (``wanted``: a class or "all")."""
    log.info("%s features of as many training images (the floor)", space.name)
    labels = split_classes(model, dataset, "train", data_dir, progress)
    rows, first = train_rows, len(fake.features)
    if wanted == "all":
        counts = [int((fake.labels == c).sum()) for c in range(model.config.num_classes)]
        rows = np.concatenate([_of_class(train_rows, labels, c, n) for c, n in enumerate(counts)])
        first = 0
    elif wanted is not None:
        rows, first = _of_class(train_rows, labels, wanted, first), 0
    images, feats = split_reference_features(space, dataset, "train", size, data_dir, rows,
                                             first, progress)  # fmt: skip
    return _featurize(space, images, _rows(labels, rows, first), feats)


def _per_class(space, model: VAE, ref: _Set, fake: _Set, floor: _Set | None, k: int) -> dict:
    """Each class's samples (and floor: its training images, where there are more than k)
    against the reference images of that class."""
    out = {}
    for c, name in enumerate(model.config.classes):
        mine = ref.part(c)  # more than k images (_reference_set)
        sub = _as_reference(mine, k, space)
        entry = {"n_reference": len(mine.features), "samples": _measure(space, fake.part(c), sub)}
        if floor is not None and len(floor.part(c).features) > k:
            entry["train_floor"] = _measure(space, floor.part(c), sub)
        out[name] = entry
    return out


def _accuracy(model: VAE, judge: FeatureSpace, space: FeatureSpace, images, fake: _Set) -> dict:
    """``{"accuracy": ...}``: ``class_accuracy`` of the images under ``judge``, or {} (with a
    warning) where the judge does not know the model's classes."""
    predicted = fake.predicted if judge is space else judge.extract(images)[1]
    acc = class_accuracy(predicted, fake.labels, model.config.classes, judge.class_names)
    if acc is None:
        log.warning("classifier %s does not know every class of the model: no class accuracy",
                    judge.source or judge.name)  # fmt: skip
        return {}
    return {"accuracy": {"classifier": judge.source, **acc}}


@torch.no_grad()
def reconstruct_images(model: VAE, dataset: str, split: str, data_dir, batch: int,
                       progress: bool, rows=None, labels=None) -> Tensor:  # fmt: skip
    """The model's reconstructions (posterior mode, decoded) of a split's images (``rows`` of
    it where given; of the classes ``labels``, for a conditional model), uint8 (N, H, W, C)
    at the model's size."""
    images = load_split(dataset, split, model.config.image_size, data_dir, progress)
    if rows is not None:
        images = images[np.asarray(rows)]
    fast = model.inference_copy()
    out = []
    for i in range(0, len(images), batch):
        x = to_float(torch.as_tensor(np.asarray(images[i : i + batch])), fast.device)
        y = labels[i : i + batch].to(fast.device) if labels is not None else None
        out.append(torch.from_numpy(to_uint8(fast.reconstruct(x, y))))
    return torch.cat(out)
