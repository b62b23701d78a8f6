"""Turning model outputs into PNG files and grids."""

from __future__ import annotations

import collections
import contextlib
import os
import struct
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Float images (B, C, H, W) in [0, 1] -> uint8 (B, H, W, C)."""
    arr = images.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)
    return arr.permute(0, 2, 3, 1).cpu().numpy()


def grid(images: np.ndarray, nrow: int = 8, pad: int = 2, fill: int = 255) -> np.ndarray:
    """Tile uint8 images (B, H, W, C) into one image, ``nrow`` per row, ``pad`` pixels apart."""
    b, h, w, c = images.shape
    rows = (b + nrow - 1) // nrow
    cols = min(b, nrow)
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), fill, dtype=np.uint8)
    for i in range(b):
        r, k = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + k * (w + pad)
        out[y : y + h, x : x + w] = images[i]
    return out


def with_row_labels(picture: np.ndarray, labels: list[str], height: int, pad: int = 2):
    """A ``grid`` of rows ``height`` pixels high (``pad`` apart) with each row's label written
    in a white margin at its left, in Pillow's own font, a size the rows fit."""
    from PIL import Image, ImageDraw, ImageFont

    size = max(8, min(14, height * 2 // 3))
    font = ImageFont.load_default(size=size)
    draw = ImageDraw.Draw(Image.new("L", (1, 1)))
    width = max(draw.textlength(label, font=font) for label in labels) if labels else 0
    margin = int(width) + 2 * pad + 4
    canvas = Image.new("L", (margin, picture.shape[0]), 255)
    draw = ImageDraw.Draw(canvas)
    for r, label in enumerate(labels):
        middle = pad + r * (height + pad) + height / 2
        draw.text((margin - pad - 2, middle), label, fill=0, font=font, anchor="rm")
    column = np.asarray(canvas)[..., None].repeat(picture.shape[2], axis=2)
    return np.concatenate([column, picture], axis=1)


def with_title(picture: np.ndarray, title: str, pad: int = 2) -> np.ndarray:
    """``picture`` (H, W, C) with ``title`` written in a white strip above it, at its left, in
    Pillow's own font, at most 11 pixels high and smaller where the picture is narrow."""
    from PIL import Image, ImageDraw, ImageFont

    draw = ImageDraw.Draw(Image.new("L", (1, 1)))
    for size in range(11, 6, -1):  # the largest that fits the width
        font = ImageFont.load_default(size=size)
        if draw.textlength(title, font=font) <= picture.shape[1] - 2 * pad:
            break
    strip = Image.new("L", (picture.shape[1], size + 2 * pad + 1), 255)
    ImageDraw.Draw(strip).text((pad, pad + 1), title, fill=0, font=font)
    rows = np.asarray(strip)[..., None].repeat(picture.shape[2], axis=2)
    return np.concatenate([rows, picture], axis=0)


def side_by_side(left: np.ndarray, right: np.ndarray, pad: int = 2) -> np.ndarray:
    """Pairs (B, H, W, C) + (B, H, W, C) -> (B, H, 2W + pad, C), a white gap between."""
    gap = np.full((*left.shape[:2], pad, left.shape[3]), 255, dtype=np.uint8)
    return np.concatenate([left, gap, right], axis=2)


def stack_rows(parts: list[np.ndarray], gap: int = 6) -> np.ndarray:
    """Stack uint8 images (H, W, C) vertically, padding each to the widest with white."""
    width = max(p.shape[1] for p in parts)
    rows = []
    for i, p in enumerate(parts):
        if i:
            rows.append(np.full((gap, width, p.shape[2]), 255, dtype=np.uint8))
        rows.append(np.pad(p, ((0, 0), (0, width - p.shape[1]), (0, 0)), constant_values=255))
    return np.concatenate(rows)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
try:  # ISA-L's deflate: 2.8x faster than zlib's at level 1, files of the same size
    from isal.isal_zlib import compress as deflate
except ImportError:  # a platform without the isal wheel: the standard library's zlib
    from zlib import compress as deflate

PNG_LEVEL = 1  # fast, and these small images compress about as well as at zlib's level 6
# each PNG's "Software" text: what tells torch-vae's own pictures from a user's (an output
# flag may replace the former, never the latter)
SOFTWARE = "torch-vae"
_SOFTWARE_CHUNK = b"Software\0" + SOFTWARE.encode()


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(data, zlib.crc32(tag))
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of one uint8 (H, W, C) image, C = 1 (grayscale) or 3 (RGB).

    A minimal encoder (8-bit samples, no row filter, deflate level 1 by ISA-L where installed,
    else zlib): faster than Pillow at the same level for the many small images that generate
    and reconstruct write (``bench/png_encoder.py``, docs/benchmarks.md "PNG encoding"), and
    read back exactly by any PNG decoder. Its "Software" text is ``SOFTWARE``.
    """
    h, w, c = image.shape
    if c not in (1, 3) or image.dtype != np.uint8:
        raise ValueError(f"expected uint8 (H, W, 1 or 3) image, got {image.dtype} {image.shape}")
    rows = np.zeros((h, 1 + w * c), dtype=np.uint8)  # each row: filter byte 0, then pixels
    rows[:, 1:] = image.reshape(h, w * c)
    header = struct.pack(">IIBBBBB", w, h, 8, 0 if c == 1 else 2, 0, 0, 0)
    return b"".join(
        (
            PNG_SIGNATURE,
            _png_chunk(b"IHDR", header),
            _png_chunk(b"tEXt", _SOFTWARE_CHUNK),
            _png_chunk(b"IDAT", deflate(rows.data, PNG_LEVEL)),
            _png_chunk(b"IEND", b""),
        )
    )


def save_png(image: np.ndarray, path: str | os.PathLike) -> None:
    """Write one uint8 (H, W, C) image; C is 1 or 3. A write that fails (a full disk) removes
    the file it began, so no half-written PNG is left, and the error names the file. (Written
    in place rather than renamed into place: ``generate`` and ``reconstruct`` write thousands
    of these, and a rename each cost more than the encoding.)"""
    data = encode_png(image)
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(path)
        if exc.filename is None:
            raise OSError(exc.errno, exc.strerror, os.fspath(path)) from exc
        raise


def _save_many(images: np.ndarray, paths: list[Path]) -> None:
    for image, path in zip(images, paths, strict=True):
        save_png(image, path)


class PngWriter:
    """Writes PNGs on worker threads while the caller computes the next batch (zlib and file
    writes release the GIL). ``submit`` returns at once unless ``ahead`` batches are still
    being written, so memory stays bounded; leaving the ``with`` block waits for every file
    and raises the first error of any."""

    def __init__(self, ahead: int = 2, workers: int | None = None):
        # ThreadPoolExecutor's own default (file writes wait on the disk, so more than cores)
        self.workers = workers or min(32, (os.cpu_count() or 1) + 4)
        self.pool = ThreadPoolExecutor(self.workers)
        self.ahead = ahead
        self.batches: collections.deque[list[Future]] = collections.deque()

    def _wait_until(self, in_flight: int) -> None:
        """Wait for the oldest batches until at most ``in_flight`` are being written."""
        while len(self.batches) > in_flight:
            for job in self.batches.popleft():
                job.result()

    def submit(self, images: np.ndarray, paths: list[Path]) -> None:
        """Write uint8 images (N, H, W, C) to ``paths``, in chunks over the threads."""
        self._wait_until(self.ahead - 1)
        n = len(images)
        step = max(16, -(-n // (4 * self.workers)))
        self.batches.append([
            self.pool.submit(_save_many, images[i : i + step], paths[i : i + step])
            for i in range(0, n, step)
        ])  # fmt: skip

    def __enter__(self) -> PngWriter:
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._wait_until(0)
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)
