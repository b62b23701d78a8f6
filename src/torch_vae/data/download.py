"""Dataset downloads with checksum verification and a progress bar (through pooch's HTTP
downloader), written through a locked temporary file (io.files)."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path

from ..errors import TorchVaeError
from ..io.files import locked_atomic_file, no_empty_folders_on_failure, remove_stale_temporaries

log = logging.getLogger(__name__)

# Set to a base URL to download every dataset file from a mirror instead of its official host.
MIRROR_ENV = "TORCH_VAE_MIRROR"
RETRIES = 2  # more tries of a download whose failure may pass (``passing``)
RETRY_WAIT = 2.0  # seconds before the first of them, doubled before each next one


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
    if mirror and not mirror.lower().startswith(("http://", "https://")):
        raise TorchVaeError(
            f"{MIRROR_ENV}={mirror!r} is not an http(s) URL; set it to the base URL of a server "
            "that serves the dataset's files (e.g. http://127.0.0.1:8000/), or unset it"
        )
    return mirror.rstrip("/") + "/" + url.rsplit("/", 1)[-1] if mirror else url


def unreachable_fix(files: str, kind: str = "") -> str:
    """What to check first when ``files`` ("the file by its name", "them by name") could not
    be downloaded (``kind``: the failure, e.g. "HTTP 404" or "ReadTimeout"): for a failure that
    may pass (a timeout, a dropped connection, a server error) trying again; then the
    mirror's layout where ``$TORCH_VAE_MIRROR`` is set, else the network."""
    again = "" if kind.startswith("HTTP 4") else "try again; if it keeps failing, "
    if os.environ.get(MIRROR_ENV):
        return f"{again}check that the mirror ({MIRROR_ENV}) serves {files} at BASE/NAME"
    return f"{again}check your network"


def or_mirror(what: str) -> str:
    """ ", or set $TORCH_VAE_MIRROR...", where it is not set (else the fix names the mirror)."""
    if os.environ.get(MIRROR_ENV):
        return ""
    return f", or set {MIRROR_ENV} to a base URL that serves {what}"


def _failure(exc: OSError, requests) -> str:
    """A download failure in words, with the exception's name ("HTTP 503" for a server's
    answer): ``passing`` reads "HTTP 4" and "Timeout" in it."""
    name = type(exc).__name__
    response = getattr(exc, "response", None)
    if isinstance(exc, requests.HTTPError) and response is not None:
        return f"HTTP {response.status_code}"
    if isinstance(exc, requests.Timeout):
        return f"no answer within a minute: {name}"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return f"the transfer broke off: {name}"
    if isinstance(exc, requests.ConnectionError):
        return f"no connection to the server: {name}"
    return name


def download(url: str, md5: str, dest: Path, progress: bool = True) -> Path:
    """Download ``url`` (or its copy on ``$TORCH_VAE_MIRROR``) to ``dest``, trying again
    ``RETRIES`` times after a failure that may pass (``passing``), ``RETRY_WAIT`` seconds
    later and then twice as long each time.

    The file only appears at ``dest`` once complete and verified; until then it is a locked
    temporary beside it, which :func:`remove_stale_temporaries` removes if this process dies.
    """
    for attempt in range(RETRIES):
        try:
            return _download(url, md5, dest, progress)
        except DownloadError as exc:
            if not passing(exc.kind):
                raise
            wait = RETRY_WAIT * 2**attempt
            log.warning("downloading %s failed (%s); trying again in %g s (%d of %d more tries)",
                        exc.url, exc.kind, wait, attempt + 1, RETRIES)  # fmt: skip
            time.sleep(wait)
    return _download(url, md5, dest, progress)  # the last try: its failure is the error


def passing(kind: str) -> bool:
    """Whether a download's failure ``kind`` may pass if tried again: a dropped connection, a
    transfer cut short, a server error (HTTP 5xx); not a missing file (HTTP 4xx), nor a
    timeout (which waited a minute already)."""
    return not kind.startswith("HTTP 4") and "Timeout" not in kind


def _download(url: str, md5: str, dest: Path, progress: bool) -> Path:
    """One try of ``download``."""
    import pooch
    import requests

    url = mirrored(url)
    remove_stale_temporaries(dest.parent)
    # Announced here only: pooch.retrieve would print a second line of its own (through a
    # logger of its own that ignores --quiet), so its downloader is called directly.
    log.info("downloading %s to %s", url, dest)
    downloader = pooch.HTTPDownloader(progressbar=progress, timeout=60)
    try:
        with no_empty_folders_on_failure(dest.parent), locked_atomic_file(dest) as f:
            downloader(url, f, None)
            f.seek(0)
            h = hashlib.md5()
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
            got = h.hexdigest()
            if got != md5:
                sender = (f"the mirror ({MIRROR_ENV}) sent another file than the official one; "
                          "it must serve the official files" if os.environ.get(MIRROR_ENV)
                          else "the server sent a different file. Try again later")  # fmt: skip
                raise TorchVaeError(
                    f"checksum mismatch for {url} (expected MD5 {md5}, got {got}); {sender}, "
                    f"or put the official file into {dest.parent} by hand (to train on images "
                    "of your own: --dataset folder:PATH)"
                )
    except OSError as exc:  # requests' errors are OSErrors too
        kind = _failure(exc, requests)
        if not isinstance(exc, (requests.RequestException, ConnectionError, TimeoutError)):
            raise TorchVaeError(
                f"could not write {dest} ({exc}); check that {dest.parent} is writable and has "
                "room for it"
            ) from None
        raise DownloadError(
            f"could not download {url} ({kind}); {unreachable_fix('the file by its name', kind)}, "
            f"or download the file by hand into {dest.parent}{or_mirror('it')}",
            url,
            kind,
        ) from None
    return dest
