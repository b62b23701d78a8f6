"""The training set's batches on the device: ``batch_source(images, device, batch)`` gives the
uint8 batches of a training set on the device: on CUDA, from a copy kept on the GPU (4x smaller
than float) when it fits, else through pinned staging buffers copied asynchronously; on the CPU,
read from the cache file (data.cache.FileGather)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from ..data.cache import gather_for

log = logging.getLogger(__name__)

# Keep the uint8 training set on the GPU when it takes at most this share of the free memory.
RESIDENT_SHARE = 0.5


def batch_source(
    images: torch.Tensor, device: torch.device, batch: int, rows: torch.Tensor | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function from indices (a CPU int64 tensor) to those images of the uint8 set ``images``
    (N, H, W, C), on ``device`` or ready for ``device.to_float`` to move there; with ``rows``,
    index i means the image ``rows[i]`` (the training split without its validation images).
    On CUDA the set
    is copied to the GPU once if it takes at most ``RESIDENT_SHARE`` of the free memory, else
    batches go through ``PinnedBatches``. Elsewhere (the CPU, MPS) a batch is indexed on the
    host and copied synchronously. The whole set is never pinned: indexing a pinned tensor
    returns a new, unpinned one, so that only cost memory (once per process under torchrun)."""
    if rows is not None:
        rows = rows.to(torch.int64)
        whole = batch_source(images, device, batch)
        return lambda idx: whole(rows[idx])
    device = torch.device(device)
    if device.type != "cuda":
        # a mapped cache: each image read from the file, nothing mapped (data.cache.FileGather)
        return gather_for(images) or (lambda idx: images[idx])
    try:
        free, _ = torch.cuda.mem_get_info(device)
    except RuntimeError:
        free = 0
    nbytes = images.numel() * images.element_size()
    if nbytes <= RESIDENT_SHARE * free:
        log.info("keeping the %.0f MB training set on %s", nbytes / 1e6, device)
        on_gpu = images.to(device)
        return lambda idx: on_gpu[idx.to(device)]
    log.info("training set (%.0f MB) stays in host memory", nbytes / 1e6)
    try:
        return PinnedBatches(images, device, batch)
    except RuntimeError:  # pinned memory unavailable: index and copy synchronously
        return lambda idx: images[idx]


class PinnedBatches:
    """Batches of host images for a CUDA device through pinned staging buffers. A batch is
    gathered into a pinned buffer and copied with ``non_blocking=True``, which is safe because
    the buffer lives on and is not touched until the copy is done: ``SLOTS`` buffers are used in
    turn, and before one is refilled the host waits for the event recorded after the copy out
    of it (by then the GPU has long finished it, so the wait costs nothing)."""

    SLOTS = 2

    def __init__(self, images: torch.Tensor, device: torch.device, batch: int, pin: bool = True):
        self.images, self.device = images, torch.device(device)
        shape = (batch, *images.shape[1:])
        self.buffers = [torch.empty(shape, dtype=images.dtype, pin_memory=pin)
                        for _ in range(self.SLOTS)]  # fmt: skip
        self.copied: list = [None] * self.SLOTS  # the event after each buffer's last copy
        self.turn = 0

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        slot, self.turn = self.turn, (self.turn + 1) % self.SLOTS
        if self.copied[slot] is not None:
            self.copied[slot].synchronize()
        buf = self.buffers[slot][: len(idx)]
        torch.index_select(self.images, 0, idx, out=buf)
        out = self.copy(buf)
        self.copied[slot] = self.record()
        return out

    def copy(self, buf: torch.Tensor) -> torch.Tensor:
        return buf.to(self.device, non_blocking=True)

    def record(self):
        """An event that completes when the work queued so far on the device is done."""
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(self.device))
        return event
