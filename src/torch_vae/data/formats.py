"""Readers for the datasets' real on-disk formats. Each returns uint8 arrays; none runs code
from a file (CIFAR's pickles go through an unpickler that only builds plain data and arrays)."""

from __future__ import annotations

import gzip
import io
import math
import pickle
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import TorchVaeError

IDX_DTYPES = {0x08: np.uint8}
# What reading a damaged zip file, or a member of one, can raise.
ZIP_ERRORS = (
    OSError,
    EOFError,
    ValueError,
    zipfile.BadZipFile,
    zlib.error,
    NotImplementedError,  # an unsupported compression method
    RuntimeError,  # an encrypted member
)


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (gzipped or not) of unsigned bytes: images (N, H, W) or labels (N,)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise TorchVaeError(f"{path} is corrupt ({exc}); delete it to download it again") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise TorchVaeError(f"{path} is not an IDX file (bad magic number); delete it")
    dtype_code, ndim = data[2], data[3]
    if dtype_code not in IDX_DTYPES or not 1 <= ndim <= 3:
        raise TorchVaeError(
            f"{path}: unsupported IDX type 0x{dtype_code:02x} with {ndim} dimensions; "
            "expected unsigned bytes with 1 to 3 dimensions"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise TorchVaeError(f"{path} is truncated (incomplete header); delete it")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + math.prod(shape)  # Python integers: no overflow for huge dimensions
    if len(data) != expected:
        raise TorchVaeError(
            f"{path} has {len(data)} bytes but its header {shape} needs {expected}; "
            "the file is truncated or corrupt, delete it"
        )
    if 0 in shape[1:]:
        raise TorchVaeError(f"{path} holds empty images {shape}; the file is corrupt, delete it")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


class _ArrayUnpickler(pickle.Unpickler):
    """Builds only what CIFAR's archives hold: dicts, lists, bytes, numbers and numpy arrays."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _load_cifar_batch(raw: bytes, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    obj = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
    if not isinstance(obj, dict) or b"data" not in obj or label_key not in obj:
        raise ValueError(f"batch lacks b'data' or {label_key!r}")
    data = np.asarray(obj[b"data"], dtype=np.uint8)
    labels = np.asarray(obj[label_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise ValueError(f"unexpected data shape {data.shape}")
    # rows are 1024 red, 1024 green, 1024 blue values -> (N, 32, 32, 3)
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def read_cifar(archive: Path, members: list[str], label_key: bytes) -> np.ndarray:
    """Read CIFAR images (N, 32, 32, 3) from the official python tar.gz or its extracted folder."""
    return np.concatenate([images for images, _ in _cifar_batches(archive, members, label_key)])


def read_cifar_labels(archive: Path, members: list[str], label_key: bytes) -> np.ndarray:
    """The labels (N,) int64 of the images ``read_cifar`` reads, in the same order."""
    return np.concatenate([labels for _, labels in _cifar_batches(archive, members, label_key)])


def read_cifar_names(archive: Path, member: str, key: bytes) -> list[str]:
    """The class names a CIFAR archive's meta file holds (e.g. ``meta``'s
    ``b"fine_label_names"``), or [] when it lacks them."""
    try:
        raw = next(_cifar_members(archive, [member]))
        obj = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
        names = obj[key]
        return [n.decode("ascii") if isinstance(n, bytes) else str(n) for n in names]
    except (*CIFAR_ERRORS, TorchVaeError):
        return []


# What reading a damaged CIFAR archive can raise.
CIFAR_ERRORS = (
    OSError,
    EOFError,
    ValueError,
    KeyError,
    TypeError,
    AttributeError,
    IndexError,
    ArithmeticError,  # e.g. OverflowError: a value out of range for uint8
    RecursionError,
    MemoryError,
    pickle.UnpicklingError,
    tarfile.TarError,
    zlib.error,
)


def _cifar_members(archive: Path, members: list[str]) -> Iterator[bytes]:
    """The raw bytes of ``members`` of a CIFAR tar.gz or its extracted folder, one at a time."""
    if archive.is_dir():
        yield from ((archive / name).read_bytes() for name in members)
        return
    with tarfile.open(archive, "r:gz") as tar:
        names = {m.name.split("/", 1)[-1]: m for m in tar.getmembers() if m.isfile()}
        for name in members:
            if name not in names:
                raise ValueError(f"member {name} missing")
            member = tar.extractfile(names[name])
            if member is None:
                raise ValueError(f"member {name} is not a file")
            yield member.read()


def _cifar_batches(
    archive: Path, members: list[str], label_key: bytes
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(images, labels) of each member, with a one-line error for a damaged archive (or a
    damaged file of its extracted folder) that names the member."""
    out: list[tuple[np.ndarray, np.ndarray]] = []
    try:
        for raw in _cifar_members(archive, members):
            out.append(_load_cifar_batch(raw, label_key))
        return out
    except CIFAR_ERRORS as exc:
        name = members[len(out)] if len(out) < len(members) else None  # the one that failed
        if archive.is_dir() and name is not None:
            raise TorchVaeError(
                f"{archive / name} is not a valid CIFAR batch ({exc}); replace it with the "
                f"official file, or delete {archive} to download the dataset again"
            ) from None
        archive_error = isinstance(exc, (tarfile.TarError, zlib.error, EOFError, OSError))
        member = f" (its member {name})" if name is not None and not archive_error else ""
        raise TorchVaeError(f"{archive} is not a valid CIFAR python archive{member}: {exc}; "
                            "delete it to download again") from None  # fmt: skip


def read_celeba_partition(path: Path) -> dict[str, int]:
    """Parse list_eval_partition.txt: '000001.jpg 0' lines -> {filename: partition}."""
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise TorchVaeError(f"{path} is unreadable ({exc}); delete it and download again") from None
    parts: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise TorchVaeError(
                f"{path}:{lineno}: expected '<image>.jpg <0|1|2>', got {line[:60]!r}; "
                "the file is corrupt, delete it and download it again"
            )
        parts[fields[0]] = int(fields[1])
    if not parts:
        raise TorchVaeError(f"{path} is empty; delete it and download it again")
    return parts


def open_celeba_zip(path: Path) -> tuple[zipfile.ZipFile, dict[str, str]]:
    """Open img_align_celeba.zip without unzipping; map image file name -> member name."""
    try:
        zf = zipfile.ZipFile(path)
        members = {n.rsplit("/", 1)[-1]: n for n in zf.namelist() if n.lower().endswith(".jpg")}
    except ZIP_ERRORS as exc:
        raise TorchVaeError(
            f"{path} is not a readable zip file ({exc}); delete it and download it again"
        ) from None
    if not members:
        zf.close()
        raise TorchVaeError(f"{path} holds no .jpg images; is it img_align_celeba.zip?")
    return zf, members
