"""Class names and labels of the datasets' images, read from the real label files.

Training never needs labels, so the image files alone make a dataset (``datasets.py``); the
label files are registered here and fetched (found, checked or downloaded) only when labels
are asked for. The labels of a split are in the order of its images (``load_split``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ..errors import TorchVaeError
from .datasets import CifarDataset, FolderDataset, IdxDataset, RemoteFile, get_dataset
from .formats import read_cifar_labels, read_cifar_names, read_idx

FASHION_MNIST = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
CIFAR_10 = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip
CIFAR_100 = """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge
bus butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch
crab crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo
keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain mouse
mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy
porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail
snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger
tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm""".split()
NAMES = {
    "mnist": [str(i) for i in range(10)],
    "fashion-mnist": FASHION_MNIST,
    "cifar-10": CIFAR_10,
    "cifar-100": CIFAR_100,
}
# The label files of the IDX datasets and their official MD5s (those of Debian's repacked
# copies differ and are not checked, as for the images).
_MNIST_BASE = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION_BASE = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
LABEL_FILES = {
    "mnist": (
        RemoteFile("train-labels-idx1-ubyte.gz", _MNIST_BASE + "train-labels-idx1-ubyte.gz",
                   "d53e105ee54ea40749a09fcbcd1e9432"),
        RemoteFile("t10k-labels-idx1-ubyte.gz", _MNIST_BASE + "t10k-labels-idx1-ubyte.gz",
                   "ec29112dd5afa0611ce80d1b7f02629c"),
    ),
    "fashion-mnist": (
        RemoteFile("train-labels-idx1-ubyte.gz", _FASHION_BASE + "train-labels-idx1-ubyte.gz",
                   "25c81989df183df01b3e8a0aad5dffbe"),
        RemoteFile("t10k-labels-idx1-ubyte.gz", _FASHION_BASE + "t10k-labels-idx1-ubyte.gz",
                   "bb300cfdad3c16e7a12a480ee83cd310"),
    ),
}  # fmt: skip
SPLIT_PREFIX = {"train": "train", "test": "t10k"}


def class_names(dataset: str, data_dir: Path | None = None) -> list[str] | None:
    """The names of ``dataset``'s classes, indexed by label; None when it has no classes
    (CelebA, a folder without subfolders). CIFAR-100's come from the archive's ``meta`` file
    when it is at hand (else the built-in list, the same names); a folder's are the names of
    its subfolders (under ``train/`` and ``test/`` when it has those), sorted."""
    ds = get_dataset(dataset)
    if isinstance(ds, FolderDataset):
        return _folder_classes(ds)
    if dataset == "cifar-100" and data_dir is not None:
        archive = ds.locate(Path(data_dir), ds.files[0].name)
        if archive is not None:
            names = read_cifar_names(archive, "meta", b"fine_label_names")
            if len(names) == len(CIFAR_100):
                return names
    return list(NAMES[ds.name]) if ds.name in NAMES else None


def load_labels(dataset: str, split: str, data_dir: Path | None = None) -> np.ndarray | None:
    """The class of each image of ``split`` (int64 (N,), in the order of ``load_split``'s
    images), or None for a dataset without classes. MNIST and Fashion-MNIST: their IDX label
    files (found beside the images, or downloaded and checked); CIFAR: the archive's labels
    (CIFAR-100: the fine ones); a folder: the index in ``class_names`` of each image's
    subfolder (-1 for an image directly in the split's root)."""
    from .cache import default_data_dir

    if split not in SPLIT_PREFIX:
        raise TorchVaeError(f"unknown split {split!r}; choose train or test")
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    ds = get_dataset(dataset)
    if isinstance(ds, FolderDataset):
        return _folder_labels(ds, split)
    if isinstance(ds, CifarDataset):
        archive = ds.fetch(data_dir, progress=False)[ds.files[0].name]
        return _checked(read_cifar_labels(archive, ds.members[split], ds.label_key), ds.name,
                        archive)  # fmt: skip
    if isinstance(ds, IdxDataset) and ds.name in LABEL_FILES:
        return _idx_labels(ds, split, data_dir)
    return None


def _idx_labels(ds: IdxDataset, split: str, data_dir: Path) -> np.ndarray:
    files = dataclasses.replace(ds, files=LABEL_FILES[ds.name]).fetch(data_dir, progress=False)
    path = files[f"{SPLIT_PREFIX[split]}-labels-idx1-ubyte.gz"]
    labels = read_idx(path)
    if labels.ndim != 1:
        raise TorchVaeError(f"{path} holds no labels (N,) but an array {labels.shape}")
    return _checked(labels, ds.name, path)


def _checked(labels: np.ndarray, dataset: str, source: Path) -> np.ndarray:
    """``labels`` as int64, if every one is a class of the registered ``dataset`` (``NAMES``);
    else a one-line error naming the file they came from (a copy that is not the official
    one)."""
    labels, classes = np.asarray(labels, dtype=np.int64), len(NAMES[dataset])
    bad = np.flatnonzero((labels < 0) | (labels >= classes))
    if len(bad):
        raise TorchVaeError(
            f"{source} gives image {bad[0]} the label {labels[bad[0]]}, but the dataset's labels "
            f"are 0 to {classes - 1} ({len(bad)} labels out of range): it is not the official "
            "file; delete it so that torch-vae downloads it, or put the official file there"
        )
    return labels


def _folder_parts(ds: FolderDataset, split: str) -> list[tuple[str, ...]]:
    """Each image's path under the split's root, as a tuple of names."""
    split_root = ds.split_folders()
    return [rel[1:] if split_root else rel for rel, _, _ in ds.listing(split)]


def _folder_classes(ds: FolderDataset) -> list[str] | None:
    names = {p[0] for split in ds.splits() for p in _folder_parts(ds, split) if len(p) > 1}
    return sorted(names) or None


def _folder_labels(ds: FolderDataset, split: str) -> np.ndarray | None:
    names = _folder_classes(ds)
    if names is None:
        return None
    index = {n: i for i, n in enumerate(names)}
    parts = _folder_parts(ds, split)
    return np.array([index[p[0]] if len(p) > 1 else -1 for p in parts], dtype=np.int64)


def check_every_image_labelled(labels, n: int, dataset: str, split: str, needs: str) -> None:
    """A one-line error unless ``labels`` (or None) gives each of the ``n`` images of ``split``
    a class; ``needs`` says what wants them. A folder's images outside every class subfolder
    are named."""
    if labels is not None and len(labels) != n:
        raise TorchVaeError(
            f"{dataset}'s {split} split has {len(labels)} labels for {n} images: its label and "
            f"image files do not belong together; {needs}"
        )
    if labels is None or labels.min(initial=0) < 0:
        raise TorchVaeError(
            f"{dataset}'s {split} split has images without a class (a folder's images must "
            f"all be in class subfolders{_classless(dataset, split)}); {needs}"
        )


def _classless(dataset: str, split: str) -> str:
    """For a folder, the images of ``split`` outside every class subfolder, named for an
    error ("; not in a class subfolder: a.png, b.png and 3 more"); "" otherwise."""
    ds = get_dataset(dataset)
    if not isinstance(ds, FolderDataset) or not _folder_classes(ds):
        return ""
    files = ds.listing(split)  # in the order of _folder_parts
    loose = ["/".join(rel) for (rel, _, _), parts in zip(files, _folder_parts(ds, split),
             strict=True) if len(parts) < 2]  # fmt: skip
    more = f" and {len(loose) - 3} more" if len(loose) > 3 else ""
    return f"; not in a class subfolder: {', '.join(loose[:3])}{more}" if loose else ""


def rows_without(
    dataset: str, split: str, n: int, classes, data_dir: Path | None = None, what: str = ""
) -> np.ndarray:
    """The rows (int64, sorted) of ``split``'s ``n`` images whose class is none of ``classes``
    (indices); ``what`` names the flag that needs the labels in the error for a dataset that
    has no class for every image."""
    labels = load_labels(dataset, split, data_dir)
    if labels is None or len(labels) != n:  # a folder's loose images (-1) are of no class
        check_every_image_labelled(labels, n, dataset, split, f"{what or 'this'} needs one")
    return np.flatnonzero(~np.isin(labels, np.asarray(classes, dtype=np.int64)))


def labels_as(
    classes, dataset: str, split: str, n: int, data_dir: Path | None = None
) -> np.ndarray:
    """The class of each of the ``n`` images of ``split`` as an index into ``classes`` (a
    conditional model's class names), int64 (n,): the dataset's labels matched to the
    classes by name, so a folder with some of a model's class subfolders works too. A
    one-line error for a dataset without classes, an image without one, or a class that is
    none of ``classes``."""
    names = class_names(dataset, data_dir)
    labels = load_labels(dataset, split, data_dir) if names else None
    if labels is None:
        raise TorchVaeError(
            f"{dataset} has no classes, and a conditional model encodes each image with its "
            "class; pass the dataset the model was trained on (--dataset)"
        )
    check_every_image_labelled(labels, n, dataset, split,
                               "a conditional model needs each image's class")  # fmt: skip
    index = {name: i for i, name in enumerate(classes)}
    unknown = [name for name in names if name not in index]
    if unknown and np.isin(labels, [names.index(u) for u in unknown]).any():
        shown = ", ".join(repr(c) for c in list(classes)[:10])
        more = f" ... ({len(classes)} classes)" if len(classes) > 10 else ""
        raise TorchVaeError(
            f"{dataset} has the class {unknown[0]!r}, which the model does not know (its "
            f"classes: {shown}{more}); pass the dataset the model was trained on (--dataset)"
        )
    table = np.array([index.get(name, -1) for name in names], dtype=np.int64)
    return table[labels]
