"""Decoding many image files into one uint8 array, in several processes.

Building the cache of a large image dataset (CelebA: 202,599 JPEGs) is bound by JPEG decoding
and resizing, which Pillow does one image at a time. The work is split into chunks of
consecutive images; each worker process opens the source itself (the zip archive, or the files
of a folder), decodes its chunk and sends back the uint8 array. The result is identical to
decoding in one process: same images, same order. Errors raised in a worker (a corrupt image)
reach the caller as the same one-line ``TorchVaeError``.

The number of processes is the number of CPUs this process may use; set the environment
variable ``TORCH_VAE_WORKERS`` (1 = no extra processes) to choose another.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

import numpy as np
from tqdm import tqdm

from ..errors import TorchVaeError

WORKERS_ENV = "TORCH_VAE_WORKERS"
CHUNK = 256  # images per task: large enough to amortise the transfer, small enough to balance
MIN_PER_WORKER = 2 * CHUNK  # fewer images than this per worker: not worth starting processes


def default_workers() -> int:
    """``$TORCH_VAE_WORKERS`` if set, else the number of CPUs this process may run on."""
    value = os.environ.get(WORKERS_ENV, "").strip()
    if value:
        try:
            n = int(value)
        except ValueError:
            n = 0
        if n <= 0:
            raise TorchVaeError(f"{WORKERS_ENV} must be a positive integer, got {value!r}")
        return n
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# A decoder turns (opened source, item) into one uint8 image (size, size, channels).
Decoder = Callable[[object, object, int, int], np.ndarray]
# Makes the uint8 array that decoded images are written into: np.empty by default; the cache
# passes a memory map of its file, so that a split never has to fit in memory.
Allocate = Callable[[tuple[int, ...]], np.ndarray]


def empty(shape: tuple[int, ...]) -> np.ndarray:
    return np.empty(shape, dtype=np.uint8)


def _decode_chunk(
    source: str | None, items: Sequence, decode: Decoder, channels: int, size: int
) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Decode ``items`` (member names of the zip ``source``, or file paths if ``source`` is
    None) into an array (len(items), size, size, channels), and the items that could not be
    decoded, each with its one-line error (their rows are left as they were)."""
    out = np.empty((len(items), size, size, channels), dtype=np.uint8)
    failed: list[tuple[str, str]] = []
    zf = None
    if source is not None:
        try:
            zf = zipfile.ZipFile(source)
        except (OSError, zipfile.BadZipFile) as exc:
            raise TorchVaeError(f"{source} is not a readable zip file ({exc})") from None
    with zf or contextlib.nullcontext():
        for i, item in enumerate(items):
            try:
                out[i] = decode(zf, item, channels, size)
            except TorchVaeError as exc:  # told with the others at the end
                failed.append((str(item), str(exc)))
    return out, failed


def unreadable(failed: list[tuple[str, str]]) -> TorchVaeError:
    """One error for every image that could not be read (each as its name and its own
    one-line error): the first one's words, then how many more and the first few of them."""
    first = failed[0][1]
    if len(failed) == 1:
        return TorchVaeError(first)
    rest = [item for item, _ in failed[1:]]
    named = ", ".join(rest[:4]) + (", ..." if len(rest) > 4 else "")
    fix = "; remove or replace it"
    more = f"{len(rest)} more cannot be read either: {named}"
    if not first.endswith(fix):  # its own fix (a corrupt zip's, say) stays last
        return TorchVaeError(f"{first}; {more}")
    return TorchVaeError(f"{first.removesuffix(fix)}; {more}; remove or replace them")


def _decode_in_pool(out, src, items, decode: Decoder, workers: int, bar) -> list:
    """``decode_all``'s work in ``workers`` processes, chunk by chunk into ``out``; the items
    that could not be decoded, in their order."""
    _, size, _, channels = out.shape
    pool = ProcessPoolExecutor(workers, mp_context=_pool_context())
    by_start = []
    try:
        futures = {
            pool.submit(_decode_chunk, src, items[s : s + CHUNK], decode, channels, size): s
            for s in range(0, len(items), CHUNK)
        }
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for fut in done:
                part, bad = fut.result()  # re-raises a worker's TorchVaeError here
                start = futures[fut]
                out[start : start + len(part)] = part
                by_start.append((start, bad))
                bar.update(len(part))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # after an error: stop at once
    return [f for _, bad in sorted(by_start) for f in bad]


def _pool_context():
    # fork starts workers at once (no re-import of PyTorch); elsewhere the platform's default.
    if sys.platform == "linux":
        return multiprocessing.get_context("fork")
    return None


def decode_all(
    items: Sequence,
    decode: Decoder,
    channels: int,
    size: int,
    source: str | os.PathLike | None = None,
    workers: int | None = None,
    desc: str = "decoding",
    progress: bool = True,
    allocate: Allocate | None = None,
) -> np.ndarray:
    """Decode every item into uint8 (len(items), size, size, channels), in order.

    ``allocate`` makes the output array (see ``Allocate``).
    ``decode(zf, item, channels, size)`` gets the opened zip file ``source`` (or None when
    ``source`` is None and items are file paths) and must be a module-level function, so that
    worker processes can run it. ``workers`` defaults to :func:`default_workers`; fewer are used
    when there are few images.
    """
    n = len(items)
    src = None if source is None else os.fspath(source)
    workers = default_workers() if workers is None else workers
    workers = max(1, min(workers, n // MIN_PER_WORKER))
    bar = tqdm(total=n, desc=desc, unit="img", disable=not progress, mininterval=0.5)
    out = (allocate or empty)((n, size, size, channels))
    try:
        if workers == 1:
            failed: list[tuple[str, str]] = []
            for start in range(0, n, CHUNK):
                part = items[start : start + CHUNK]
                out[start : start + len(part)], bad = _decode_chunk(src, part, decode, channels,
                                                                    size)  # fmt: skip
                failed += bad
                bar.update(len(part))
        else:
            failed = _decode_in_pool(out, src, items, decode, workers, bar)
        if failed:
            raise unreadable(failed)
        return out
    except BrokenProcessPool:
        raise TorchVaeError(
            f"a worker process decoding images died unexpectedly (out of memory?); "
            f"run again with {WORKERS_ENV}=1 to decode in one process"
        ) from None
    finally:
        bar.close()
