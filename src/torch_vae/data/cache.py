"""A uint8 on-disk cache of each dataset split at each image size.

``<data_dir>/cache/<key>.npy`` holds images (N, H, W, C); ``<key>.json`` beside it holds their
shape and SHA-256. A cache whose file does not match its record is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from ..errors import TorchVaeError
from ..fileio import atomic_path, write_text_atomic
from .datasets import SPLITS, get_dataset

log = logging.getLogger(__name__)

CACHE_VERSION = 1
DATA_DIR_ENV = "TORCH_VAE_DATA"


def default_data_dir() -> Path:
    return Path(os.environ.get(DATA_DIR_ENV, "data"))


def _digest(arr: np.ndarray) -> str:
    return hashlib.sha256(memoryview(np.ascontiguousarray(arr)).cast("B")).hexdigest()


def _read_cache(
    npy: Path, meta_path: Path, shape: tuple[int, int, int] | None = None
) -> np.ndarray | None:
    """The cached images if the cache is complete and matches its record (and ``shape``, the
    expected (H, W, C)), else None."""
    try:
        meta = json.loads(meta_path.read_bytes())
        if not isinstance(meta, dict) or meta.get("version") != CACHE_VERSION:
            return None
        arr = np.load(npy, allow_pickle=False)
        if not isinstance(arr, np.ndarray) or arr.dtype != np.uint8 or arr.ndim != 4:
            return None
        if list(arr.shape) != meta["shape"] or (shape is not None and arr.shape[1:] != shape):
            return None
        if _digest(arr) != meta["sha256"]:
            return None
        return arr
    except (OSError, ValueError, KeyError, TypeError, AttributeError, EOFError, RecursionError):
        return None  # unreadable, truncated or damaged (a torn write, a bit flip...): rebuild


def load_split(
    dataset: str,
    split: str,
    image_size: int,
    data_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Images of one split as uint8 (N, image_size, image_size, C), from the cache if valid.

    Downloads, decodes and resizes on first use.
    """
    if split not in SPLITS:
        raise TorchVaeError(f"unknown split {split!r}; choose one of {SPLITS}")
    ds = get_dataset(dataset)
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    key = ds.cache_key(split, image_size)
    npy = data_dir / "cache" / f"{key}.npy"
    meta_path = npy.with_suffix(".json")
    if npy.exists() and meta_path.exists():
        arr = _read_cache(npy, meta_path, (image_size, image_size, ds.channels))
        if arr is not None:
            return arr
        log.warning("cache %s is corrupt or stale; rebuilding it", npy)
    arr = ds.prepare(split, image_size, data_dir, progress)
    if len(arr) == 0:
        raise TorchVaeError(f"dataset {dataset!r} has no images in its {split} split")
    try:
        with atomic_path(npy) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, arr, allow_pickle=False)
        meta = {
            "version": CACHE_VERSION,
            "dataset": ds.name,
            "split": split,
            "shape": list(arr.shape),
            "sha256": _digest(arr),
        }
        write_text_atomic(meta_path, json.dumps(meta, indent=1))
    except OSError as exc:
        log.warning("could not write the dataset cache %s (%s); continuing without it", npy, exc)
    return arr
