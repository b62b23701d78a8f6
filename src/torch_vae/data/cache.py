"""A uint8 on-disk cache of each dataset split at each image size.

``<data_dir>/cache/<key>.npy`` holds images (N, H, W, C); ``<key>.json`` beside it holds their
shape, SHA-256 and, for a folder of images, the fingerprint of the files they were decoded
from. A cache whose file does not match its record, or whose record does not match the
dataset's files, is rebuilt; so is one that is damaged in any way, whatever its header says.
Temporaries of builds killed outright are removed at the start of the next build.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import weakref
from pathlib import Path

import numpy as np

from ..errors import TorchVaeError
from ..io.files import no_empty_folders_on_failure
from .datasets import SPLITS, get_dataset
from .download import locked_atomic_file, remove_stale_temporaries

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: the record holds the file's size and mtime (1's are checked and upgraded)
VERIFY_ENV = "TORCH_VAE_VERIFY_CACHE"  # 1: check every cache's SHA-256 when it is opened
DATA_DIR_ENV = "TORCH_VAE_DATA"
MAX_RECORD = 1 << 20  # bytes: a record (.json) is a few hundred; a larger one is damaged


def default_data_dir() -> Path:
    return Path(os.environ.get(DATA_DIR_ENV, "data"))


def run_data_dir(recorded: object, unless_default: bool = True) -> Path | None:
    """The data folder a run recorded (its config.json's ``data_dir``), for a command given no
    --data_dir to read again, with a log line saying so; None where $TORCH_VAE_DATA says
    another, or the record names no folder there, or (``unless_default``) the default is that
    folder anyway."""
    if DATA_DIR_ENV in os.environ or not isinstance(recorded, str) or not recorded:
        return None
    folder = Path(recorded)
    if not folder.is_dir():
        return None
    if unless_default and folder.resolve() == default_data_dir().resolve():
        return None
    log.info("data folder (downloads and caches): %s, the one the run used (--data_dir for "
             "another)", folder)  # fmt: skip
    return folder


def _digest(arr: np.ndarray, chunk: int = 1 << 26) -> str:
    """SHA-256 of the array's bytes, a chunk at a time; for a memory map of a cache file the
    file is read instead (through the page cache: no pages are mapped into this process)."""
    h = hashlib.sha256()
    if isinstance(arr, np.memmap) and arr.filename:
        with open(arr.filename, "rb") as f:
            f.seek(arr.offset)
            left = arr.nbytes
            while left:
                block = f.read(min(chunk, left))
                if not block:
                    raise EOFError(f"{arr.filename} is shorter than its header says")
                h.update(block)
                left -= len(block)
        return h.hexdigest()
    flat = arr.reshape(-1)
    for start in range(0, flat.size, chunk):
        h.update(memoryview(np.ascontiguousarray(flat[start : start + chunk])).cast("B"))
    return h.hexdigest()


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
    if not isinstance(meta, dict) or meta.get("version") not in (1, CACHE_VERSION):
        raise _Stale("its record is of another version")
    return meta


def _open_array(npy: Path, meta: dict, shape: tuple[int, int, int] | None) -> np.ndarray:
    """A memory map of ``npy`` (copy-on-write: shared with every process that maps the file,
    private where written), once its header is checked against the record, the expected shape
    and the file size: a damaged header (a huge shape, another dtype) never reaches numpy."""
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
        offset, size = f.tell(), os.fstat(f.fileno()).st_size
        if size != offset + math.prod(dims):
            raise _Stale(f"it has {size} bytes where its header needs {offset + math.prod(dims)}")
    if math.prod(dims) == 0:
        return np.zeros(dims, np.uint8)
    return np.memmap(npy, dtype=np.uint8, mode="c", offset=offset, shape=tuple(dims))


def _stamp(npy: Path) -> dict:
    """What tells cheaply that the file is the one the record was written for."""
    st = npy.stat()
    return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def _read_cache(
    npy: Path,
    meta_path: Path,
    shape: tuple[int, int, int] | None = None,
    fingerprint: str | None = None,
    verify: bool = False,
) -> np.ndarray:
    """The cached images, memory-mapped, if the cache is complete and matches its record
    (``shape``, the expected (H, W, C), and ``fingerprint``, the dataset's files); else raises
    _Stale. The pixels' SHA-256 is checked when the file's size or mtime differs from the
    record's (then the record is brought up to date) or when ``verify`` asks for it: a cache
    is hashed once when written, not at every start."""
    try:
        meta = _read_record(meta_path)
        if meta.get("source") != fingerprint:
            raise _Changed("the images it was built from have changed")
        arr = _open_array(npy, meta, shape)
        stamp = _stamp(npy)
        unchanged = all(meta.get(k) == v for k, v in stamp.items())
        if verify or not unchanged:
            if _digest(arr) != meta["sha256"]:
                raise _Stale("its pixels do not match their checksum")
            if not unchanged or meta.get("version") != CACHE_VERSION:
                _write_record(meta_path, {**meta, **stamp, "version": CACHE_VERSION})
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


def _write_record(meta_path: Path, meta: dict) -> None:
    with locked_atomic_file(meta_path) as f:
        f.write(json.dumps(meta, indent=1).encode())


UNWRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)  # a cache folder refusing its files


class _NoRoom(Exception):
    """The cache file could not be made (a full disk...): the split is built in memory."""


class FileArray:
    """The part of a uint8 array that decoding needs (``shape``, ``len``, ``out[i] = ...``,
    ``out[a:b] = ...``, ``out[...] = ...``), written straight into a .npy file with pwrite:
    the pixels go to the page cache, not into this process's memory."""

    def __init__(self, f, offset: int, shape: tuple[int, ...]):
        self.fd, self.offset, self.shape = f.fileno(), offset, tuple(shape)
        self.row = math.prod(self.shape[1:])
        self.dtype = np.dtype(np.uint8)

    def __len__(self) -> int:
        return self.shape[0]

    def __setitem__(self, key, value) -> None:
        if key is Ellipsis:
            key = slice(0, len(self))
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                raise ValueError("FileArray takes contiguous slices only")
            shape = (stop - start, *self.shape[1:])
        else:
            start, shape = int(key), self.shape[1:]
        data = np.ascontiguousarray(np.broadcast_to(np.asarray(value, np.uint8), shape))
        view, at = memoryview(data).cast("B"), self.offset + start * self.row
        while view:
            written = os.pwrite(self.fd, view, at)
            view, at = view[written:], at + written


def _map_file(f, shape: tuple[int, ...]) -> FileArray | np.ndarray:
    """A write-only array over ``f`` laid out as a .npy file of uint8 ``shape``. Its space is
    reserved first, so that a full disk is an error here, not halfway through."""
    np.lib.format.write_array_header_1_0(
        f, {"descr": "|u1", "fortran_order": False, "shape": tuple(shape)}
    )
    offset = f.tell()
    f.flush()
    if math.prod(shape) == 0:
        return np.empty(shape, np.uint8)
    try:
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(f.fileno(), 0, offset + math.prod(shape))
        else:
            f.truncate(offset + math.prod(shape))
    except OSError as exc:
        raise _NoRoom(str(exc)) from None
    return FileArray(f, offset, shape)


def load_split(
    dataset: str,
    split: str,
    image_size: int,
    data_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Images of one split as uint8 (N, image_size, image_size, C): a copy-on-write memory map
    of the cache file, which every process that opens it shares (the page cache), so a split
    need not fit in memory and several processes hold one copy. Downloads, decodes and resizes
    into the cache file on first use; set TORCH_VAE_VERIFY_CACHE=1 to check the pixels'
    SHA-256 at every open (otherwise only when the file's size or mtime changed).
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
    fingerprint = ds.fingerprint(split, data_dir)
    if npy.exists() and meta_path.exists():
        try:
            shape, verify = (image_size, image_size, ds.channels), os.environ.get(VERIFY_ENV) == "1"
            return _read_cache(npy, meta_path, shape, fingerprint, verify)
        except _Stale as why:
            level = logging.INFO if isinstance(why, _Changed) else logging.WARNING
            log.log(level, "cache %s cannot be used: %s; rebuilding it", npy, why)
    try:
        with no_empty_folders_on_failure(npy.parent):
            arr = _build(ds, split, image_size, data_dir, progress, npy)
    except (_NoRoom, OSError) as why:
        if isinstance(why, OSError) and why.errno not in UNWRITABLE:
            raise
        problem, reason = ("no room for", why) if isinstance(why, _NoRoom) else (
            "cannot write", why.strerror)  # fmt: skip
        log.warning("%s the dataset cache %s (%s); building it in memory (a writable "
                    "--data_dir or %s keeps it)", problem, npy, reason, DATA_DIR_ENV)  # fmt: skip
        arr = ds.prepare(split, image_size, data_dir, progress)
        if len(arr) == 0:
            raise TorchVaeError(f"dataset {dataset!r} has no images in its {split} split") from None
        return arr
    if len(arr) == 0:
        npy.unlink(missing_ok=True)
        raise TorchVaeError(f"dataset {dataset!r} has no images in its {split} split")
    mapped = _open_array(npy, {"shape": list(arr.shape)}, None)
    meta = {"version": CACHE_VERSION, "dataset": ds.name, "split": split,
            "shape": list(arr.shape), "sha256": _digest(mapped), "source": fingerprint,
            **_stamp(npy)}  # fmt: skip
    try:
        _write_record(meta_path, meta)
    except OSError as exc:
        log.warning("could not write the dataset cache %s (%s); continuing without it", npy, exc)
    return mapped


def cache_digest(
    dataset: str, split: str, image_size: int, data_dir: str | os.PathLike | None = None
) -> str | None:
    """The SHA-256 recorded for the cache of ``split`` at ``image_size`` (after ``load_split``
    built it), or None where there is no cache file (it was built in memory): what caches
    derived from the images (their features) are keyed by."""
    ds = get_dataset(dataset)
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    record = data_dir / "cache" / f"{ds.cache_key(split, image_size)}.json"
    try:
        digest = _read_record(record).get("sha256")
    except (OSError, ValueError, _Stale):
        return None
    return digest if isinstance(digest, str) else None


def _build(ds, split: str, image_size: int, data_dir: Path, progress: bool, npy: Path):
    """Decode the split straight into the cache file's temporary (``FileArray``), which is
    renamed into place once complete: the split never has to fit in memory."""
    with locked_atomic_file(npy) as f:
        arr = ds.prepare(split, image_size, data_dir, progress, lambda s: _map_file(f, s))
        if isinstance(arr, np.ndarray) and len(arr):  # a dataset that made its own array
            f.seek(0)
            f.truncate()
            np.save(f, arr, allow_pickle=False)
    return arr


# The read-only maps handed out by ``read_only``, by the address of their first byte, so that
# ``gather_for`` finds them from a tensor made with torch.from_numpy.
_READ_ONLY: weakref.WeakValueDictionary[int, np.memmap] = weakref.WeakValueDictionary()


def read_only(arr: np.ndarray) -> np.ndarray:
    """``arr`` itself, or for a cache's copy-on-write map a read-only map of the same file,
    whose batches ``gather_for`` reads from the file (the training loop reads, never writes,
    them)."""
    if not isinstance(arr, np.memmap) or not arr.filename or arr.size == 0:
        return arr
    ro = np.memmap(arr.filename, dtype=np.uint8, mode="r", offset=arr.offset, shape=arr.shape)
    _READ_ONLY[ro.ctypes.data] = ro
    return ro


class FileGather:
    """Batches of a ``read_only`` cache map, read from its file with one pread per image into
    a new tensor: only the batch's bytes are copied from the page cache, and no page is mapped
    into this process (with large page-cache folios, touching one image through the map maps
    up to 2 MB around it, which costs more than the copy)."""

    def __init__(self, ro: np.memmap):
        self.path = ro.filename
        self.fd = os.open(self.path, os.O_RDONLY)
        weakref.finalize(self, os.close, self.fd)
        self.offset, self.shape = ro.offset, tuple(ro.shape)
        self.row = math.prod(self.shape[1:])

    def __call__(self, idx):
        """The images at ``idx`` (a CPU int64 tensor), as a new uint8 tensor (B, H, W, C)."""
        import torch

        out = torch.empty((len(idx), *self.shape[1:]), dtype=torch.uint8)
        flat, row = memoryview(out.numpy()).cast("B"), self.row
        for j, i in enumerate(idx.tolist()):
            if os.preadv(self.fd, [flat[j * row : (j + 1) * row]], self.offset + i * row) != row:
                raise TorchVaeError(f"the dataset cache {self.path} ended early; delete it")
        return out


class CacheRows:
    """The images ``rows`` (a CPU int64 tensor) of a ``read_only`` cache map, read from its file
    (``FileGather``) only when indexed: nothing held in memory, no page mapped. ``len``; an index
    tensor or a plain slice gives a new uint8 tensor (B, H, W, C); a slice with a step (a
    torchrun process's share, ``Distributed.shard``) gives those rows, still unread."""

    def __init__(self, gather: FileGather, rows):
        self.gather, self.rows = gather, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key):
        if isinstance(key, slice) and key.step not in (None, 1):
            return CacheRows(self.gather, self.rows[key])
        return self.gather(self.rows[key])


def gather_for(images) -> FileGather | None:
    """A ``FileGather`` for a tensor or array made from a ``read_only`` map, else None."""
    ptr = images.data_ptr() if hasattr(images, "data_ptr") else images.ctypes.data
    ro = _READ_ONLY.get(ptr)
    return FileGather(ro) if ro is not None and hasattr(os, "preadv") else None
