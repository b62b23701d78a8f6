"""A uint8 on-disk cache of each dataset split at each image size.

``<data_dir>/cache/<key>.npy`` holds images (N, H, W, C); ``<key>.json`` beside it holds their
shape, SHA-256 and, for a folder of images, the fingerprint of the files they were decoded
from. A cache whose file does not match its record, or whose record does not match the
dataset's files, is rebuilt; so is one that is damaged in any way, whatever its header says.
Temporaries of builds killed outright are removed at the start of the next build.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from pathlib import Path

import numpy as np

from ..errors import TorchVaeError
from .datasets import SPLITS, get_dataset
from .download import locked_atomic_file, remove_stale_temporaries

log = logging.getLogger(__name__)

CACHE_VERSION = 1
DATA_DIR_ENV = "TORCH_VAE_DATA"
MAX_RECORD = 1 << 20  # bytes: a record (.json) is a few hundred; a larger one is damaged


def default_data_dir() -> Path:
    return Path(os.environ.get(DATA_DIR_ENV, "data"))


def _digest(arr: np.ndarray) -> str:
    return hashlib.sha256(memoryview(np.ascontiguousarray(arr)).cast("B")).hexdigest()


class _Stale(Exception):
    """The cache cannot be used; the message says why, for the log line."""


class _Changed(_Stale):
    """The cache is sound, but the files it was built from have changed since."""


def _read_record(meta_path: Path) -> dict:
    with open(meta_path, "rb") as f:
        raw = f.read(MAX_RECORD + 1)
    if len(raw) > MAX_RECORD:
        raise _Stale("its record is too large to be one")
    meta = json.loads(raw)
    if not isinstance(meta, dict) or meta.get("version") != CACHE_VERSION:
        raise _Stale("its record is of another version")
    return meta


def _read_array(npy: Path, meta: dict, shape: tuple[int, int, int] | None) -> np.ndarray:
    """The array of ``npy``, once its header is checked against the record, the expected shape
    and the file size: a damaged header (a huge shape, another dtype) never reaches numpy's
    allocation."""
    fmt = np.lib.format
    with open(npy, "rb") as f:
        version = fmt.read_magic(f)
        if version == (1, 0):
            dims, fortran, dtype = fmt.read_array_header_1_0(f)
        elif version == (2, 0):
            dims, fortran, dtype = fmt.read_array_header_2_0(f)
        else:
            raise _Stale(f"its .npy format version {version} is not one numpy.save writes")
        if dtype != np.uint8 or fortran or len(dims) != 4:
            raise _Stale(f"its header declares {dims} {dtype}, not 4-d uint8 images")
        if list(dims) != meta["shape"] or (shape is not None and dims[1:] != shape):
            raise _Stale(f"its header's shape {dims} is not the recorded {meta['shape']}")
        count = math.prod(dims)
        size = os.fstat(f.fileno()).st_size
        if size != f.tell() + count:
            raise _Stale(f"it has {size} bytes where its header needs {f.tell() + count}")
        arr = np.fromfile(f, dtype=np.uint8, count=count)
    if arr.size != count:
        raise _Stale("it is shorter than its header says")
    return arr.reshape(dims)


def _read_cache(
    npy: Path,
    meta_path: Path,
    shape: tuple[int, int, int] | None = None,
    fingerprint: str | None = None,
) -> np.ndarray:
    """The cached images if the cache is complete and matches its record (``shape``, the
    expected (H, W, C), and ``fingerprint``, the dataset's files); else raises _Stale."""
    try:
        meta = _read_record(meta_path)
        if meta.get("source") != fingerprint:
            raise _Changed("the images it was built from have changed")
        arr = _read_array(npy, meta, shape)
        if _digest(arr) != meta["sha256"]:
            raise _Stale("its pixels do not match their checksum")
        return arr
    except (
        OSError,
        ValueError,
        KeyError,
        TypeError,
        AttributeError,
        EOFError,
        RecursionError,
        MemoryError,
    ) as exc:  # unreadable, truncated or damaged (a torn write, a bit flip...): rebuild
        raise _Stale(f"it is unreadable or damaged ({type(exc).__name__})") from None


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
    remove_stale_temporaries(npy.parent)
    # Taken before decoding: files changed meanwhile make the record stale, not the cache wrong.
    fingerprint = ds.fingerprint(split)
    if npy.exists() and meta_path.exists():
        try:
            return _read_cache(npy, meta_path, (image_size, image_size, ds.channels), fingerprint)
        except _Stale as why:
            level = logging.INFO if isinstance(why, _Changed) else logging.WARNING
            log.log(level, "cache %s cannot be used: %s; rebuilding it", npy, why)
    arr = ds.prepare(split, image_size, data_dir, progress)
    if len(arr) == 0:
        raise TorchVaeError(f"dataset {dataset!r} has no images in its {split} split")
    try:
        with locked_atomic_file(npy) as f:
            np.save(f, arr, allow_pickle=False)
        meta = {
            "version": CACHE_VERSION,
            "dataset": ds.name,
            "split": split,
            "shape": list(arr.shape),
            "sha256": _digest(arr),
            "source": fingerprint,
        }
        with locked_atomic_file(meta_path) as f:
            f.write(json.dumps(meta, indent=1).encode())
    except OSError as exc:
        log.warning("could not write the dataset cache %s (%s); continuing without it", npy, exc)
    return arr
