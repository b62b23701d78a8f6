"""Files written so that a crash never leaves a half-written file where a good one was, and the
temporaries of killed writers are swept without touching those of live ones.

Every temporary is named ``.NAME.RANDOM.tmp`` beside its target and holds an exclusive
``flock`` for as long as it exists; the kernel drops the lock when its process dies, so
``remove_stale_temporaries`` deletes exactly the temporaries nobody holds: a write killed a
second ago is cleaned up on the next run, while another process writing in the same folder at
the same time keeps its own, however long it takes. Where the file system cannot lock (flock
fails other than "held"), or on systems without flock, only temporaries untouched for
``STALE_AGE`` are removed: a live writer touches its file continually.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

try:
    import fcntl
except ImportError:  # not on a POSIX system: temporaries are told apart by age alone
    fcntl = None

log = logging.getLogger(__name__)

STALE_AGE = 3600.0  # seconds
# How a temporary of NAME is named: ".NAME.RANDOM.tmp", RANDOM being tempfile.mkstemp's 8
# characters.
TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


@contextlib.contextmanager
def locked_atomic_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Yield a temporary file beside ``path``, open for writing and locked; on success flush it
    to disk and rename it over ``path``. On error (or interruption) the temporary is removed and
    ``path`` is untouched: readers see either the old file or the complete new one."""
    with _locked_temporary(path) as (f, _):
        yield f


@contextlib.contextmanager
def _locked_temporary(path: str | os.PathLike) -> Iterator[tuple[BinaryIO, Path]]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(10):
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        tmp = Path(name)
        f = os.fdopen(fd, "r+b")
        try:
            with contextlib.suppress(OSError):
                # mkstemp makes 0600: the mode open() would have given instead
                os.fchmod(fd, 0o666 & ~current_umask())
            if fcntl is not None:
                with contextlib.suppress(OSError):  # no locks here: go on without
                    fcntl.flock(fd, fcntl.LOCK_EX)  # waits out a sweeper's probe, if any
            if not _same_file(f, tmp):  # removed by a sweeper before it was locked: again
                continue
            try:
                yield f, tmp
                f.flush()
                os.fsync(fd)
                os.replace(tmp, path)  # still locked: no sweeper can take it meanwhile
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            fsync_dir(path.parent)
            return
        finally:
            f.close()
    raise OSError(errno.EAGAIN, f"temporary files beside {path} keep disappearing")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """As ``locked_atomic_file``, for writers that take a path (torch.save, safetensors,
    Pillow): yields the locked temporary's path; they write the same file (same inode), which
    the lock keeps from any sweeper until it is renamed over ``path``."""
    with _locked_temporary(path) as (_, tmp):
        try:
            yield tmp
        except (OSError, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - a writer's own error for a failed write
            failed = write_error(exc, Path(path))
            if failed is None:
                raise
            raise failed from exc
        # the writer wrote through its own handle, and may have replaced the file (safetensors
        # does): give it the mode open() would have given, and flush it to disk
        os.chmod(tmp, 0o666 & ~current_umask())
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())


# How writers that are not Python's own files say a write failed: torch.save ("PytorchStreamWriter
# failed writing file data/0: file write failed"), safetensors ("Error while serializing: I/O
# error: No space left on device (os error 28)")
_WRITE_FAILED = ("failed writing", "write failed", "os error", "i/o error", "ioerror", "no space",
                 "inline_container")  # fmt: skip


@contextlib.contextmanager
def no_empty_folders_on_failure(folder: str | os.PathLike) -> Iterator[None]:
    """Run the block; if it fails, remove ``folder`` and those of its parents that it made
    (missing when the block began), where they are empty, so that a failed download or
    cache build leaves no empty folders behind."""
    folder = Path(folder).absolute()
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        yield
    except BaseException:
        for p in missing:  # the deepest first
            with contextlib.suppress(OSError):
                p.rmdir()  # only an empty folder goes
        raise


def write_error(exc: BaseException, path: Path) -> OSError | None:
    """The OSError that a writer's own error for a failed write stands for (a full disk when
    the folder has no room left), or None when ``exc`` is no such error."""
    text = str(exc).lower()
    if not any(words in text for words in _WRITE_FAILED):
        return None
    try:
        full = shutil.disk_usage(path.parent).free < 1 << 20
    except OSError:
        full = False
    code = errno.ENOSPC if full or "no space" in text or "os error 28" in text else errno.EIO
    return OSError(code, os.strerror(code), str(path))


def not_a_file(path: str | os.PathLike) -> str:
    """Why ``path``, which is not a regular file, cannot be read as one: "no such file" or
    "not a regular file" (a folder, a FIFO, a device)."""
    return "no such file" if not Path(path).exists() else "not a regular file"


def unwritable(folder: str | os.PathLike) -> str | None:
    """Why files cannot be written into ``folder`` (made if missing): the nearest existing
    folder on its way is a file, or not writable; None if they can."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        return f"{folder} is a file, not a folder"
    if not os.access(folder, os.W_OK):
        return f"the folder {folder} is not writable"
    return None


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with locked_atomic_file(path) as f:
        f.write(text.encode("utf-8"))


def current_umask() -> int:
    """The process's umask (read without changing it for longer than the call)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _try_lock(f: BinaryIO, exclusive: bool) -> bool | None:
    """Lock ``f`` without waiting: True if locked, False if another open file holds a lock,
    None if locking is not possible here."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(f.fileno(), (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError:  # ENOLCK, EOPNOTSUPP...: a file system without locks
        return None


def _same_file(f: BinaryIO, path: Path) -> bool:
    try:
        a, b = os.fstat(f.fileno()), os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def remove_stale_temporaries(folder: str | os.PathLike, recursive: bool = False) -> int:
    """Delete the temporaries (``.NAME.RANDOM.tmp``) in ``folder`` (and below it, if
    ``recursive``) whose process is gone, as the module docstring says; return how many.
    Never raises."""
    folders = [Path(folder)]
    if recursive:
        with contextlib.suppress(OSError):
            folders += [p for p in Path(folder).rglob("*") if p.is_dir() and not p.is_symlink()]
    removed = freed = 0
    for where in folders:
        n, size = _sweep(where)
        removed, freed = removed + n, freed + size
    if removed:
        log.info("removed %d temporary file(s) (%.1f MB) that killed processes left in %s",
                 removed, freed / 1e6, folder)  # fmt: skip
    return removed


def _sweep(folder: Path) -> tuple[int, int]:
    removed = freed = 0
    try:
        entries = [e for e in os.scandir(folder) if TEMPORARY.fullmatch(e.name)]
    except OSError:
        return 0, 0
    for entry in entries:
        path = Path(entry.path)
        try:
            with open(path, "rb", opener=_nofollow) as f:
                st = os.fstat(f.fileno())
                if not stat.S_ISREG(st.st_mode):
                    continue
                held = _try_lock(f, exclusive=False)
                if held is False:
                    continue  # in use
                if held is None and time.time() - st.st_mtime < STALE_AGE:
                    continue  # cannot tell: only remove what is long untouched
                if _same_file(f, path):
                    path.unlink()
                    removed += 1
                    freed += st.st_size
        except OSError:
            continue
    return removed, freed


def _nofollow(path: str, flags: int) -> int:
    return os.open(path, flags | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
