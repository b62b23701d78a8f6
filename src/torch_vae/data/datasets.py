"""The dataset registry: where each dataset's files live, how to get them, how to read them.

Each dataset turns (split, size) into uint8 images (N, size, size, C); ``cache.py`` stores the
result on disk so decoding and resizing happen once.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import stat
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import TorchVaeError
from ..io.files import write_text_atomic
from .download import (
    DownloadError,
    download,
    md5sum,
    or_mirror,
    unreachable_fix,
)
from .formats import (
    ZIP_ERRORS,
    open_celeba_zip,
    read_celeba_partition,
    read_cifar,
    read_idx,
)
from .imaging import UnsupportedImage, open_image, resize_arrays, to_array
from .parallel import decode_all, unreadable

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
# Debian's dataset-fashion-mnist package installs the real files here: used without a download.
SYSTEM_DIRS = {"fashion-mnist": [Path("/usr/share/datasets/fashion-mnist")]}


@dataclass(frozen=True)
class RemoteFile:
    name: str
    url: str
    md5: str


@dataclass(frozen=True)
class Dataset:
    """Base: a named dataset with a fixed number of channels."""

    name: str
    channels: int
    files: tuple[RemoteFile, ...] = ()
    # Folders (relative to the data dir) where an existing copy may already be, e.g. the one
    # torchvision (and so the original torch-vae) downloaded.
    aliases: tuple[str, ...] = ()
    crop: bool = False

    def cache_key(self, split: str, size: int) -> str:
        return f"{self.name}-{split}-{size}"

    def locate(self, data_dir: Path, name: str) -> Path | None:
        """An existing copy of file ``name`` (or of its uncompressed form), if any."""
        dirs = [data_dir / self.name, *(data_dir / a for a in self.aliases)]
        dirs += SYSTEM_DIRS.get(self.name, [])
        for d in dirs:
            for candidate in (d / name, d / name.removesuffix(".gz")):
                if candidate.exists():
                    return candidate
        return None

    def fetch(self, data_dir: Path, progress: bool = True, only=None) -> dict[str, Path]:
        """Return local paths of all files (or of those named in ``only``), downloading those
        that are missing."""
        paths = {}
        missing = []
        for f in self.files:
            if only is not None and f.name not in only:
                continue
            found = self.locate(data_dir, f.name)
            if found is None:
                missing.append(f)
                continue
            if found.is_file() and found.name == f.name and not _is_system(found):
                # Verify a compressed/archived copy against the official checksum, whatever
                # its size (Debian's repacked copies differ: read_* checks them structurally).
                self._verify_copy(found, f)
            paths[f.name] = found
        home = data_dir / self.name
        if missing and home.exists() and not home.is_dir():
            raise TorchVaeError(
                f"{home} is a file, not a folder: the {self.name} files go there; move the file "
                "away or choose another --data_dir"
            )
        for i, f in enumerate(missing):  # a failed download removes the empty folders it made
            try:
                paths[f.name] = download(f.url, f.md5, data_dir / self.name / f.name, progress)
            except DownloadError as exc:  # name all the files still lacking, not just this one
                names = ", ".join(m.name for m in missing[i:])
                fix = unreachable_fix("them by name", exc.kind)
                raise TorchVaeError(
                    f"dataset {self.name} lacks {names} and could not download {exc.url} "
                    f"({exc.kind}); {fix}, or put the file(s) into "
                    f"{data_dir / self.name}{or_mirror('them')}"
                ) from None
        return paths

    def _verify_copy(self, path: Path, f: RemoteFile) -> None:
        """``_verify`` a copy of ``f``; a copy of the system's repacked file (Debian's), the
        same bytes, is taken as that file."""
        try:
            _verify(path, f.md5)
        except TorchVaeError as exc:
            system = [d / f.name for d in SYSTEM_DIRS.get(self.name, []) if (d / f.name).is_file()]
            if any(_same_file(path, s) for s in system):
                return
            if system:
                raise TorchVaeError(
                    f"{exc}; the system's copies ({system[0].parent}) differ from the official "
                    "files and are read where they are, without copying"
                ) from None
            raise

    def prepare(
        self, split: str, size: int, data_dir: Path, progress: bool = True, allocate=None
    ) -> np.ndarray:
        """The split's images as uint8 (N, size, size, C), written into ``allocate((N, size,
        size, C))`` (parallel.Allocate; default: a new array in memory)."""
        raise NotImplementedError

    def source_id(self, data_dir: Path) -> str:
        return self.name

    def split_sources(self, split: str) -> tuple[str, ...]:
        """The names of the files the images of ``split`` are read from."""
        return tuple(f.name for f in self.files)

    def fingerprint(self, split: str, data_dir: Path | None = None) -> str | None:
        """What the cache of ``split`` must have been built from: None where its files are the
        official ones (their MD5 is checked when they are found or downloaded); else a digest
        of the paths, sizes and modification times of the copies no checksum covers (an
        uncompressed IDX file, an extracted CIFAR folder, the system's repacked copy), so that
        the cache is rebuilt when one of them changes."""
        if data_dir is None:
            return None
        lines = []
        for name in self.split_sources(split):
            found = self.locate(Path(data_dir), name)
            if found is None or (found.is_file() and found.name == name and not _is_system(found)):
                continue  # to be downloaded, or checked against its official MD5
            inside = sorted(p for p in found.rglob("*") if p.is_file()) if found.is_dir() else []
            for path in inside or [found]:
                st = path.stat()
                lines.append(f"{path}\0{st.st_size}\0{st.st_mtime_ns}")
        if not lines:
            return None
        return hashlib.sha256("\n".join(lines).encode("utf-8", "surrogateescape")).hexdigest()


def _verify(path: Path, md5: str) -> None:
    """Check ``path`` against its official MD5, once: a stamp beside it (``.NAME.md5``, with the
    file's size and mtime) says it was checked, so a large archive (CelebA: 1.4 GB) is not
    hashed at every start. A file that changed since is hashed again."""
    st = path.stat()
    stamp = path.with_name(f".{path.name}.md5")
    mark = f"{md5} {st.st_size} {st.st_mtime_ns}\n"
    try:
        if stamp.read_text() == mark:
            return
    except (OSError, UnicodeError):
        pass
    if md5sum(path) != md5:
        raise TorchVaeError(
            f"{path} does not match the official checksum (MD5 {md5}): it is corrupt, "
            "incomplete or not the official file; delete it and run again to download it, or "
            "put the official file there (to train on images of your own: --dataset folder:PATH)"
        )
    try:
        write_text_atomic(stamp, mark)
    except OSError:  # a read-only folder: hashed again next time
        pass


def _same_file(a: Path, b: Path) -> bool:
    """Whether files ``a`` and ``b`` hold the same bytes."""
    return a.stat().st_size == b.stat().st_size and md5sum(a) == md5sum(b)


def _is_system(path: Path) -> bool:
    return any(path.is_relative_to(d) for dirs in SYSTEM_DIRS.values() for d in dirs)


@dataclass(frozen=True)
class IdxDataset(Dataset):
    """MNIST-style IDX files (gzipped or not)."""

    split_files: dict = field(default_factory=dict)  # split -> images file name

    def split_sources(self, split):
        return (self.split_files[split],)

    def prepare(self, split, size, data_dir, progress=True, allocate=None):
        paths = self.fetch(data_dir, progress, only={self.split_files[split]})  # that split's
        images = read_idx(paths[self.split_files[split]])
        if images.ndim != 3:
            raise TorchVaeError(f"{paths[self.split_files[split]]} holds no (N, H, W) images")
        return resize_arrays(images, size, f"{self.name} {split}: resizing", progress, allocate)


@dataclass(frozen=True)
class CifarDataset(Dataset):
    """CIFAR-10/100 from the official python archive (or its extracted folder)."""

    folder: str = ""  # the folder inside the archive
    members: dict = field(default_factory=dict)  # split -> member names
    label_key: bytes = b"labels"

    def locate(self, data_dir, name):
        found = super().locate(data_dir, name)
        if found is None:
            for d in (data_dir, data_dir / self.name):
                if (d / self.folder).is_dir():  # torchvision's extracted copy
                    return d / self.folder
                if (d / name).is_file():
                    return d / name
        return found

    def prepare(self, split, size, data_dir, progress=True, allocate=None):
        archive = self.fetch(data_dir, progress)[self.files[0].name]
        images = read_cifar(archive, self.members[split], self.label_key)
        return resize_arrays(images, size, f"{self.name} {split}: resizing", progress, allocate)


@dataclass(frozen=True)
class CelebADataset(Dataset):
    """CelebA aligned faces, read straight from img_align_celeba.zip (no unzipping).

    Faces (178x218) are centre-cropped to 178x178 before resizing.
    """

    partitions: dict = field(default_factory=dict)  # split -> partition number

    def prepare(self, split, size, data_dir, progress=True, allocate=None):
        paths = self.fetch(data_dir, progress)
        return read_celeba(
            paths["img_align_celeba.zip"],
            paths["list_eval_partition.txt"],
            self.partitions[split],
            size,
            f"celeb-a {split}: decoding",
            progress,
            allocate,
        )


def read_celeba(
    zip_path: Path,
    partition_path: Path,
    partition: int,
    size: int,
    desc: str,
    progress=True,
    allocate=None,
) -> np.ndarray:
    """The faces of one partition, centre-cropped and resized, straight from the zip."""
    parts = read_celeba_partition(partition_path)
    zf, members = open_celeba_zip(zip_path)
    with zf:
        wanted = sorted(n for n, p in parts.items() if p == partition)
        missing = [n for n in wanted if n not in members]
        if missing:
            raise TorchVaeError(
                f"{zip_path} lacks {len(missing)} images listed in "
                f"{partition_path.name} (e.g. {missing[0]}); the zip is incomplete, delete it"
            )
    return decode_all(
        [members[name] for name in wanted],
        _decode_member,
        3,
        size,
        source=zip_path,
        desc=desc,
        progress=progress,
        allocate=allocate,
    )


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm",
                  ".pgm", ".pnm"}  # fmt: skip
GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F", "P;L"}


# What decoding a damaged or hostile image can raise: Pillow's decoders raise many kinds of
# errors, and reading a damaged zip member raises zip and zlib errors.
DECODE_ERRORS = (
    *ZIP_ERRORS,
    UnidentifiedImageError,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,  # turned into an error below
    SyntaxError,
    TypeError,
    KeyError,
    IndexError,
    ArithmeticError,
    MemoryError,
    struct.error,
)


def _decode(fileobj, label, channels, size, crop) -> np.ndarray:
    """Decode one image file object to uint8 (size, size, channels); closes ``fileobj``."""
    try:
        with warnings.catch_warnings():
            # Pillow only warns about images between its pixel limit and twice that; refuse
            # them too rather than decode a possible decompression bomb.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with fileobj as f, open_image(f) as img:
                if img.format == "JPEG" and size * 2 <= min(img.size):
                    # Let libjpeg decode at a reduced scale: much faster, same result after
                    # resizing.
                    img.draft(img.mode, (size, size))
                return to_array(img, channels, size, crop)
    except UnsupportedImage as exc:
        raise TorchVaeError(
            f"cannot use image {label}: {exc}; convert it to an 8-bit PNG, or remove it"
        ) from None
    except DECODE_ERRORS as exc:
        raise TorchVaeError(f"cannot read image {label} ({exc}); remove or replace it") from None


def _decode_member(zf, name, channels, size) -> np.ndarray:
    """One image of a zip archive (e.g. CelebA's), centre-cropped and resized."""
    label = f"{name.rsplit('/', 1)[-1]} in {zf.filename}"
    try:
        member = zf.open(name)
    except ZIP_ERRORS as exc:
        raise TorchVaeError(f"cannot read {label} ({exc}); the zip is corrupt, delete it") from None
    return _decode(member, label, channels, size, crop=True)


def _decode_path(_, path, channels, size) -> np.ndarray:
    """One image file, centre-cropped and resized."""
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise TorchVaeError(f"cannot read image {path} ({exc}); remove or replace it") from None
    return _decode(f, path, channels, size, crop=True)


@dataclass(frozen=True)
class FolderDataset(Dataset):
    """A user's folder of images, any size, RGB or grayscale, searched recursively.

    Uses ``train/`` and ``test/`` subfolders when both exist; otherwise every tenth image (in
    sorted order) is the test split. Images are centre-cropped to a square, then resized.
    """

    root: Path = Path(".")
    # each image's shorter side, in pixels, where folder_dataset read them (every split)
    shortest: tuple[int, ...] = field(default=(), compare=False, repr=False)

    def source_id(self, data_dir):
        digest = hashlib.sha1(str(self.root.resolve()).encode()).hexdigest()[:10]
        return f"folder-{self.root.name}-{digest}"

    def cache_key(self, split, size):
        return f"{self.source_id(Path())}-{split}-{size}"

    def fingerprint(self, split, data_dir=None):
        """A digest of the split's file names (relative to the folder), sizes and modification
        times (ns): it changes when an image is added, removed, renamed or rewritten, so that
        the cache is rebuilt. Hashing every file's content instead would read the whole
        dataset on every run. Measured at 200,000 tiny files, page cache warm, on a 2-core
        "Intel(R) Xeon(R) Processor" VM: listing + stat 0.96 s in one folder (0.77 s in 200
        subfolders), 1.12 s with the digest; pathlib's rglob + is_file took 2.4 s without
        keeping the stat. (folder_dataset's Image.open of every file costs ~10x more.) A file
        rewritten with the same size within the file system's mtime granularity goes unseen."""
        lines = [f"folder images, decoding {FOLDER_DECODING}"]
        for rel, _, st in self.listing(split):
            lines.append(f"{'/'.join(rel)}\0{st.st_size}\0{st.st_mtime_ns}")
        return hashlib.sha256("\n".join(lines).encode("utf-8", "surrogateescape")).hexdigest()

    def contents(self) -> str:
        """A digest of both splits' file names (relative to the folder) and sizes: the same
        for the folder moved or copied elsewhere (unlike ``fingerprint``, no modification
        times, which a copy changes), what lets a run continue on its moved folder."""
        lines = [f"{'/'.join(rel)}\0{st.st_size}" for split in SPLITS
                 for rel, _, st in self.listing(split)]  # fmt: skip
        return hashlib.sha256("\n".join(lines).encode("utf-8", "surrogateescape")).hexdigest()

    def names(self) -> str:
        """A digest of both splits' file names alone: what the splits are drawn from (every
        tenth sorted name a test image), unchanged by an image re-encoded or retagged."""
        lines = ["/".join(rel) for split in SPLITS for rel, _, _ in self.listing(split)]
        return hashlib.sha256("\n".join(lines).encode("utf-8", "surrogateescape")).hexdigest()

    def list_images(self, split: str) -> list[Path]:
        return [Path(path) for _, path, _ in self.listing(split)]

    def _say_left_out(self, split: str, skipped: list[str]) -> None:
        """A log line naming the kinds of the files ``skipped`` by ``split``'s listing, not
        read as images (a folder without split subfolders, whose both splits' listings scan
        it all: said for its training split)."""
        if skipped and (split == "train" or self.split_folders()):
            kinds = collections.Counter(Path(n).suffix.lower() or n for n in skipped)
            said = ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
            where = self.root / split if self.split_folders() else self.root
            log.info("%s: left out %d file%s of other kinds than images read (%s; read: %s)",
                     where, len(skipped), "s" * (len(skipped) != 1), said,
                     ", ".join(sorted(IMAGE_SUFFIXES)))  # fmt: skip

    def _say_upscaled(self, size: int) -> None:
        """A log line where images of the folder are smaller than ``size`` (their shorter
        side), so that the model learns them upscaled."""
        small = [n for n in self.shortest if n < size]
        if small:
            log.info("%d of the folder's %d images are smaller than %dx%d (shorter side; the "
                     "smallest %d pixels): they are upscaled, blurred; a model of a smaller "
                     "image size (train --image_size) keeps them sharp, as does one that "
                     "works on their originals (train --native_size, for images all of one "
                     "size; docs/model.md)",
                     len(small), len(self.shortest), size, size, min(small))  # fmt: skip

    def splits(self) -> tuple[str, ...]:
        """The splits that hold images: both, or the training split alone for a folder of
        fewer than 10 images without train/ and test/ subfolders (every tenth image is the
        test split). What reads a folder whole (``score --ood``) reads these."""
        if self.split_folders():
            return SPLITS
        return SPLITS if len(_scan_images(self.root)) >= 10 else ("train",)

    def split_folders(self) -> bool:
        """Whether the folder holds train/ and test/ subfolders, its splits."""
        return (self.root / "train").is_dir() and (self.root / "test").is_dir()

    def listing(
        self, split: str, skipped: list[str] | None = None
    ) -> list[tuple[tuple[str, ...], str, os.stat_result]]:
        """The split's image files, sorted: each as its path relative to the folder (a tuple of
        names), its path, and its stat; one directory scan (``skipped``, where given, gets the
        names of the other files it met: ``_scan_images``)."""
        if self.root.exists() and not self.root.is_dir():
            raise TorchVaeError(f"{self.root} is a file, not a folder: folder:PATH takes the "
                                "folder that holds the images")  # fmt: skip
        if not self.root.is_dir():
            raise TorchVaeError(f"image folder {self.root} does not exist")
        looked = f"looked for {', '.join(sorted(IMAGE_SUFFIXES))}"
        if self.split_folders():
            files = _scan_images(self.root / split, (split,), skipped)
            if not files:
                raise TorchVaeError(f"no images in {self.root / split} ({looked})")
            return files
        every = _scan_images(self.root, (), skipped)
        if not every:
            raise TorchVaeError(f"no images in {self.root} ({looked})")
        files = [p for i, p in enumerate(every) if (i % 10 == 9) == (split == "test")]
        if not files:  # fewer than 10 images: no test split
            raise TorchVaeError(
                f"{self.root} holds {len(every)} images, too few: every tenth is its test "
                "split, so a folder needs at least 10 (or train/ and test/ subfolders); "
                "commands with a --split flag (evaluate, score, embed...) read them all with "
                "--split train, and reconstruct without --rec_testdata"
            )
        return files

    def prepare(self, split, size, data_dir, progress=True, allocate=None):
        skipped: list[str] = []
        files = [Path(path) for _, path, _ in self.listing(split, skipped)]
        self._say_left_out(split, skipped)
        if split == "train":
            self._say_upscaled(size)
        return decode_all(
            files,
            _decode_path,
            self.channels,
            size,
            desc=f"{self.root.name} {split}: decoding",
            progress=progress,
            allocate=allocate,
        )


# Part of a folder's fingerprint: raise it when decoding turns the same files into other pixels
# (2: 16-bit and float images scaled to 8 bits instead of clipped; 3: EXIF orientation applied).
FOLDER_DECODING = 3


def _scan_images(
    folder: Path, prefix: tuple[str, ...] = (), skipped: list[str] | None = None
) -> list[tuple[tuple[str, ...], str, os.stat_result]]:
    """The image files under ``folder``: (``prefix`` + their path relative to ``folder`` as a
    tuple of names, their path, their stat), in the order of their sorted Paths. Symlinked
    files are followed, and so are symlinked folders that lead out of ``folder`` (one whose
    images are inside it already, or that holds ``folder``, is not entered; two links to one
    folder: the first by name); unreadable folders are skipped, and so are hidden files and
    folders (a name that starts with a dot: macOS's ._* companions, .ipynb_checkpoints). One
    os.scandir pass and one stat per image; sorted on name tuples (compared in C) instead of
    Paths (compared in Python, 4x slower). ``skipped``, where given, gets the names of the
    other files (not hidden) that are not of the kinds read (``IMAGE_SUFFIXES``)."""
    found = []
    stack = [(prefix, os.fspath(folder))]
    root = os.path.realpath(folder)
    entered = {root}
    while stack:
        rel, where = stack.pop()
        try:
            with os.scandir(where) as it:
                entries = list(it)
        except OSError:
            continue
        folders = []
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                continue
            dot = name.rfind(".")
            try:
                if entry.is_dir():
                    folders.append(entry)
                    continue
                if not (0 < dot < len(name) - 1 and name[dot:].lower() in IMAGE_SUFFIXES):
                    if skipped is not None:
                        skipped.append(name)
                    continue
                st = entry.stat()
            except OSError:  # vanished meanwhile, or a dangling link
                continue
            if stat.S_ISREG(st.st_mode):
                found.append(((*rel, name), entry.path, st))
        for entry in sorted(folders, key=lambda e: e.name, reverse=True):  # popped by name
            if entry.is_symlink() and not _outside(os.path.realpath(entry.path), root, entered):
                continue
            stack.append(((*rel, entry.name), entry.path))
    if os.path.normcase("A") == "A":  # POSIX: Paths compare their names as they are
        found.sort(key=lambda item: item[0])
    else:  # Windows: case-insensitively
        found.sort(key=lambda item: tuple(os.path.normcase(n) for n in item[0]))
    return found


def _outside(real: str, root: str, entered: set[str]) -> bool:
    """Whether a symlinked folder whose target is ``real`` leads out of the folder ``root`` to
    images not reached before (``entered``: the symlinked folders' targets so far, which this
    one joins)."""
    inside = real == root or real.startswith(root + os.sep)
    holds_root = root.startswith(real + os.sep)
    if inside or holds_root or real in entered:
        return False
    entered.add(real)
    return True


def folder_dataset(root: str | os.PathLike) -> FolderDataset:
    """A folder dataset; grayscale when every image is grayscale, otherwise RGB."""
    root = Path(root).expanduser()
    ds = FolderDataset(name=f"folder:{root}", channels=3, root=root)
    modes, bad, shortest = set(), [], []
    for split in ds.splits():
        for path in ds.list_images(split):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("error", Image.DecompressionBombWarning)
                    with open_image(path) as img:
                        modes.add(img.mode)
                        shortest.append(min(img.size))
            except DECODE_ERRORS as exc:
                bad.append((str(path), f"cannot read image {path} ({exc}); remove or replace it"))
    if bad:  # every one named at once (the first few), not one per run
        raise unreadable(bad)
    channels = 1 if modes <= GRAY_MODES else 3
    return FolderDataset(name=f"folder:{root}", channels=channels, root=root,
                         shortest=tuple(shortest))  # fmt: skip


def _idx(name, base, md5s, aliases):
    files = tuple(RemoteFile(f, base + f, m) for f, m in md5s.items())
    return IdxDataset(
        name=name,
        channels=1,
        files=files,
        aliases=aliases,
        split_files={"train": "train-images-idx3-ubyte.gz", "test": "t10k-images-idx3-ubyte.gz"},
    )


_MNIST_BASE = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION_BASE = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_CIFAR_BASE = "https://www.cs.toronto.edu/~kriz/"
_CELEBA_BASE = "https://graal.ift.ulaval.ca/public/celeba/"

# Only the image files are needed: a VAE does not use labels.
DATASET_HELP = (
    "mnist, fashion-mnist, cifar-10, cifar-100, celeb-a, or a folder of images as folder:PATH"
)
DATASETS: dict[str, Dataset] = {
    "mnist": _idx(
        "mnist",
        _MNIST_BASE,
        {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        },
        ("MNIST/raw",),
    ),
    "fashion-mnist": _idx(
        "fashion-mnist",
        _FASHION_BASE,
        {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        },
        ("FashionMNIST/raw",),
    ),
    "cifar-10": CifarDataset(
        name="cifar-10",
        channels=3,
        files=(
            RemoteFile(
                "cifar-10-python.tar.gz",
                _CIFAR_BASE + "cifar-10-python.tar.gz",
                "c58f30108f718f92721af3b95e74349a",
            ),
        ),
        folder="cifar-10-batches-py",
        members={"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
    ),
    "cifar-100": CifarDataset(
        name="cifar-100",
        channels=3,
        files=(
            RemoteFile(
                "cifar-100-python.tar.gz",
                _CIFAR_BASE + "cifar-100-python.tar.gz",
                "eb9058c3a382ffc7106e4002c42a8d85",
            ),
        ),
        folder="cifar-100-python",
        members={"train": ["train"], "test": ["test"]},
        label_key=b"fine_labels",
    ),
    "celeb-a": CelebADataset(
        name="celeb-a",
        channels=3,
        crop=True,
        aliases=("celeba",),
        files=(
            RemoteFile(
                "img_align_celeba.zip",
                _CELEBA_BASE + "img_align_celeba.zip",
                "00d2c5bc6d35e252742224ab0c1e8fcb",
            ),
            RemoteFile(
                "list_eval_partition.txt",
                _CELEBA_BASE + "list_eval_partition.txt",
                "d32c9cbf5e040fd4025c592c306e6668",
            ),
        ),
        partitions={"train": 0, "test": 2},
    ),
}


def get_dataset(name: str) -> Dataset:
    """A registered dataset by name, or a folder of images given as 'folder:PATH' or a path."""
    if name in DATASETS:
        return DATASETS[name]
    if name.startswith("folder:"):
        if not name.removeprefix("folder:").strip():
            raise TorchVaeError(f"{name!r} needs the folder's path: folder:PATH")
        return folder_dataset(name.removeprefix("folder:"))
    if os.sep in name or Path(name).is_dir():
        return folder_dataset(name)
    raise TorchVaeError(
        f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}, or pass a folder of "
        "images as folder:PATH"
    )


def absolute_name(name: str) -> str:
    """``name`` as runs and reports record it: a folder of images (``folder:PATH`` or a path)
    as ``folder:ABSOLUTE_PATH``, which names the same folder from any working folder; a
    registered dataset's name as it is (and ``folder:`` without a path, which get_dataset
    refuses, not the working folder). Nothing is read."""
    if name in DATASETS or not name.removeprefix("folder:").strip():
        return name
    if name.startswith("folder:") or os.sep in name or Path(name).is_dir():
        return f"folder:{Path(name.removeprefix('folder:')).expanduser().resolve()}"
    return name


def gone_folder(name: str) -> Path | None:
    """The folder of a folder dataset recorded as ``folder:PATH`` that no longer exists (moved
    or removed), else None."""
    folder = Path(name.removeprefix("folder:"))
    return folder if name.startswith("folder:") and not folder.exists() else None


def check_channels(name: str, channels: int, what: str, fix: str) -> None:
    """A one-line error unless dataset ``name`` has ``channels`` image channels, as ``what``
    (e.g. "the model expects") says; ``fix`` tells the user what to do."""
    have = get_dataset(name).channels
    if have != channels:
        raise TorchVaeError(f"dataset {name} has {have} channel(s) but {what} {channels}; {fix}")
