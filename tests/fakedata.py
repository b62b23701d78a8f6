"""Small datasets written in the real on-disk formats of MNIST, CIFAR and CelebA."""

from __future__ import annotations

import gzip
import io
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image


def idx_bytes(arr: np.ndarray) -> bytes:
    """IDX encoding of a uint8 array: magic 0x0000 0x08 ndim, big-endian dims, data."""
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def blobs(n: int, size: int, channels: int, seed: int) -> np.ndarray:
    """Smooth random images (a bright disc on a dark background) so a VAE can learn them."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = np.zeros((n, size, size, channels), np.uint8)
    for i in range(n):
        cy, cx = rng.uniform(size * 0.3, size * 0.7, 2)
        r = rng.uniform(size * 0.15, size * 0.3)
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r).astype(np.float64)
        color = rng.uniform(120, 255, channels)
        out[i] = (disc[..., None] * color).astype(np.uint8)
    return out


def write_mnist(root: Path, n_train=40, n_test=20, gz=True, seed=0) -> dict[str, np.ndarray]:
    """MNIST/Fashion-MNIST image files into ``root`` (gzipped by default)."""
    root.mkdir(parents=True, exist_ok=True)
    data = {
        "train": blobs(n_train, 28, 1, seed)[..., 0],
        "t10k": blobs(n_test, 28, 1, seed + 1)[..., 0],
    }
    for prefix, arr in data.items():
        raw = idx_bytes(arr)
        name = f"{prefix}-images-idx3-ubyte"
        if gz:
            (root / f"{name}.gz").write_bytes(gzip.compress(raw, mtime=0))
        else:
            (root / name).write_bytes(raw)
    return data


def _cifar_batch(images: np.ndarray, labels_key: str) -> bytes:
    # As the official archives: a dict with bytes keys, data (N, 3072) uint8 rows in R, G, B
    # plane order, labels a list of ints.
    data = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    obj = {
        b"batch_label": b"fake",
        b"data": data,
        labels_key.encode(): [i % 10 for i in range(len(images))],
    }
    return pickle.dumps(obj, protocol=2)


def write_cifar(root: Path, hundred: bool = False, per_batch=8, seed=0) -> Path:
    """The official CIFAR-10/100 python tar.gz layout, small."""
    root.mkdir(parents=True, exist_ok=True)
    if hundred:
        folder, name, key = "cifar-100-python", "cifar-100-python.tar.gz", "fine_labels"
        members = {"train": per_batch * 2, "test": per_batch}
    else:
        folder, name, key = "cifar-10-batches-py", "cifar-10-python.tar.gz", "labels"
        members = {f"data_batch_{i}": per_batch for i in range(1, 6)}
        members["test_batch"] = per_batch
    path = root / name
    with tarfile.open(path, "w:gz") as tar:
        for i, (member, n) in enumerate(members.items()):
            raw = _cifar_batch(blobs(n, 32, 3, seed + i), key)
            info = tarfile.TarInfo(f"{folder}/{member}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


def write_celeba(root: Path, n=30, seed=0) -> Path:
    """img_align_celeba.zip (178x218 JPEGs under img_align_celeba/) + list_eval_partition.txt."""
    root.mkdir(parents=True, exist_ok=True)
    imgs = blobs(n, 218, 3, seed)[:, :, 20:198]  # (n, 218, 178, 3)
    lines = []
    with zipfile.ZipFile(root / "img_align_celeba.zip", "w") as zf:
        for i, img in enumerate(imgs, 1):
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="JPEG", quality=90)
            zf.writestr(f"img_align_celeba/{i:06d}.jpg", buf.getvalue())
            lines.append(f"{i:06d}.jpg {0 if i % 5 else 2}")
    (root / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return root


def write_folder(root: Path, n=20, gray=False, seed=0) -> Path:
    """A folder of PNG and JPEG images of different sizes."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = rng.integers(20, 90, 2)
        img = blobs(1, int(max(h, w)), 1 if gray else 3, seed + i)[0][:h, :w]
        pil = Image.fromarray(img[..., 0] if gray else img)
        pil.save(root / (f"img{i:03d}.png" if i % 2 else f"img{i:03d}.jpg"))
    return root


def write_mnist_labels(root: Path, n_train=40, n_test=20, gz=True) -> dict[str, np.ndarray]:
    """MNIST/Fashion-MNIST label files (IDX, 1-d) beside ``write_mnist``'s images: image i of
    each split has label i % 10."""
    root.mkdir(parents=True, exist_ok=True)
    data = {"train": np.arange(n_train) % 10, "t10k": np.arange(n_test) % 10}
    for prefix, arr in data.items():
        raw = idx_bytes(arr.astype(np.uint8))
        name = f"{prefix}-labels-idx1-ubyte"
        if gz:
            (root / f"{name}.gz").write_bytes(gzip.compress(raw, mtime=0))
        else:
            (root / name).write_bytes(raw)
    return data
