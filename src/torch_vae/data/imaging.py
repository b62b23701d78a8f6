"""Decoding and resizing images with Pillow, once, when a dataset's cache is built."""

from __future__ import annotations

import numpy as np
from PIL import Image
from tqdm import tqdm


def center_square(img: Image.Image) -> Image.Image:
    """Crop the largest centred square (CelebA's 178x218 faces -> 178x178)."""
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return img.crop((left, top, left + side, top + side))


def to_array(img: Image.Image, channels: int, size: int, crop: bool) -> np.ndarray:
    """Convert to grayscale or RGB, optionally centre-crop to a square, resize bilinearly to
    size x size, and return uint8 (size, size, channels)."""
    img = img.convert("L" if channels == 1 else "RGB")
    if crop:
        img = center_square(img)
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[:, :, None] if channels == 1 else arr


def resize_arrays(images: np.ndarray, size: int, desc: str, progress: bool = True) -> np.ndarray:
    """Resize uint8 images (N, H, W) or (N, H, W, 3) to (N, size, size, C), bilinear as Pillow
    (the same resampling as torchvision's Resize on a PIL image)."""
    if images.ndim == 3:
        images = images[..., None]
    n, h, w, c = images.shape
    if (h, w) == (size, size):
        return np.ascontiguousarray(images)
    out = np.empty((n, size, size, c), dtype=np.uint8)
    for i in tqdm(range(n), desc=desc, unit="img", disable=not progress, mininterval=0.5):
        img = Image.fromarray(images[i, :, :, 0] if c == 1 else images[i])
        out[i] = to_array(img, c, size, crop=False)
    return out
