"""Dataset downloads with checksum verification and a progress bar (through pooch)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pooch
import requests

from ..errors import TorchVaeError

log = logging.getLogger(__name__)

# Set to a base URL to download every dataset file from a mirror instead of its official host.
MIRROR_ENV = "TORCH_VAE_MIRROR"


def md5sum(path: Path) -> str:
    return pooch.file_hash(str(path), alg="md5")


def download(url: str, md5: str, dest: Path, progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` unless a file with the right MD5 is already there.

    The file only appears at ``dest`` once complete and verified.
    """
    mirror = os.environ.get(MIRROR_ENV)
    if mirror:
        url = mirror.rstrip("/") + "/" + url.rsplit("/", 1)[-1]
    dest.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s to %s", url, dest)
    try:
        path = pooch.retrieve(
            url,
            known_hash=f"md5:{md5}",
            fname=dest.name,
            path=dest.parent,
            downloader=pooch.HTTPDownloader(progressbar=progress, timeout=60),
        )
    except ValueError as exc:
        if "hash" in str(exc).lower():
            raise TorchVaeError(
                f"checksum mismatch for {url} (expected MD5 {md5}); the server sent a different "
                f"file. Try again later, or download it by hand into {dest.parent}"
            ) from None
        raise
    except (requests.RequestException, OSError) as exc:
        kind = type(exc).__name__
        raise TorchVaeError(
            f"could not download {url} ({kind}); check your network, or download the file by "
            f"hand into {dest.parent}"
        ) from None
    return Path(path)
