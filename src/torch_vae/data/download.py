"""Dataset downloads with checksum verification and a progress bar (through pooch's HTTP
downloader), and the locked temporary files that downloads and the cache are written through."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from ..errors import TorchVaeError
from ..fileio import current_umask, fsync_dir

try:
    import fcntl
except ImportError:  # not on a POSIX system: temporaries are told apart by age alone
    fcntl = None

log = logging.getLogger(__name__)

# Set to a base URL to download every dataset file from a mirror instead of its official host.
MIRROR_ENV = "TORCH_VAE_MIRROR"


class DownloadError(TorchVaeError):
    """A file could not be fetched (network, server); ``url`` and ``kind`` say which and why."""

    def __init__(self, message: str, url: str, kind: str):
        super().__init__(message)
        self.url = url
        self.kind = kind


def md5sum(path: Path) -> str:
    import pooch  # imported when needed: with requests, 0.1 s of every command's start-up

    return pooch.file_hash(str(path), alg="md5")


def mirrored(url: str) -> str:
    """``url``, or the same file name under ``$TORCH_VAE_MIRROR`` when that is set."""
    mirror = os.environ.get(MIRROR_ENV)
    return mirror.rstrip("/") + "/" + url.rsplit("/", 1)[-1] if mirror else url


def download(url: str, md5: str, dest: Path, progress: bool = True) -> Path:
    """Download ``url`` (or its copy on ``$TORCH_VAE_MIRROR``) to ``dest``.

    The file only appears at ``dest`` once complete and verified; until then it is a locked
    temporary beside it, which :func:`remove_stale_temporaries` removes if this process dies.
    """
    import pooch
    import requests

    url = mirrored(url)
    remove_stale_temporaries(dest.parent)
    # Announced here only: pooch.retrieve would print a second line of its own (through a
    # logger of its own that ignores --quiet), so its downloader is called directly.
    log.info("downloading %s to %s", url, dest)
    downloader = pooch.HTTPDownloader(progressbar=progress, timeout=60)
    try:
        with locked_atomic_file(dest) as f:
            downloader(url, f, None)
            f.seek(0)
            h = hashlib.md5()
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
            got = h.hexdigest()
            if got != md5:
                raise TorchVaeError(
                    f"checksum mismatch for {url} (expected MD5 {md5}, got {got}); the server "
                    f"sent a different file. Try again later, or download it by hand into "
                    f"{dest.parent}"
                )
    except OSError as exc:  # requests' errors are OSErrors too
        kind = type(exc).__name__
        if not isinstance(exc, (requests.RequestException, ConnectionError, TimeoutError)):
            raise TorchVaeError(
                f"could not write {dest} ({exc}); check that {dest.parent} is writable and has "
                "room for it"
            ) from None
        raise DownloadError(
            f"could not download {url} ({kind}); check your network, download the file by hand "
            f"into {dest.parent}, or set {MIRROR_ENV} to a base URL that serves it",
            url,
            kind,
        ) from None
    return dest


# Temporary files. A process killed outright (SIGKILL, out of memory, power loss) leaves its
# temporary behind: as large as the cache or download it was writing. Every temporary written
# through locked_atomic_file holds an exclusive flock for as long as it exists, which the kernel
# drops when its process dies; remove_stale_temporaries deletes the ones nobody holds. So a
# build killed a second ago is cleaned up on the next run, while the temporary of another
# process building another cache (or the same one) in the same folder at the same time is left
# alone, however long it takes. Where the file system cannot lock (flock fails other than
# "held"), or on systems without flock, only temporaries untouched for STALE_AGE are removed: a
# live writer touches its file continually. A temporary of a writer that takes no lock (an older
# torch-vae sharing the folder) may be removed under it: that writer then fails to rename it and
# goes on without its cache file, as after any failed write.

STALE_AGE = 3600.0  # seconds
# What fileio.atomic_path and locked_atomic_file name a temporary of NAME: ".NAME.RANDOM.tmp",
# RANDOM being tempfile.mkstemp's 8 characters.
TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


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


@contextlib.contextmanager
def locked_atomic_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Yield a temporary file beside ``path``, open for writing and locked; on success flush it
    to disk and rename it over ``path``. On error the temporary is removed and ``path`` is
    untouched. As :func:`torch_vae.fileio.atomic_path`, but the lock tells
    :func:`remove_stale_temporaries` that the temporary's process is alive."""
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
                yield f
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


def remove_stale_temporaries(folder: str | os.PathLike) -> int:
    """Delete the temporaries (``.NAME.RANDOM.tmp``) in ``folder`` (not below) whose process is
    gone, as the comment above says; return how many. Never raises."""
    removed = freed = 0
    try:
        entries = [e for e in os.scandir(folder) if TEMPORARY.fullmatch(e.name)]
    except OSError:
        return 0
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
    if removed:
        log.info(
            "removed %d temporary file(s) (%.1f MB) that killed processes left in %s",
            removed,
            freed / 1e6,
            folder,
        )
    return removed


def _nofollow(path: str, flags: int) -> int:
    return os.open(path, flags | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
