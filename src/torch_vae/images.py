"""Turning model outputs into PNG files and grids."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image


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


def save_png(image: np.ndarray, path: str | os.PathLike) -> None:
    """Write one uint8 (H, W, C) image as PNG (whatever the file name); C is 1 or 3."""
    img = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
    img.save(path, format="PNG", compress_level=1)


def save_pngs(images: np.ndarray, paths: list[Path], pool: ThreadPoolExecutor) -> None:
    """Write many PNGs in parallel (Pillow's encoder releases the GIL)."""
    list(pool.map(save_png, images, paths))
