"""Decoding and resizing images with Pillow, once, when a dataset's cache is built."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm


def center_square(img: Image.Image) -> Image.Image:
    """Crop the largest centred square (CelebA's 178x218 faces -> 178x178)."""
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return img.crop((left, top, left + side, top + side))


# The formats images are read in (datasets, folders, files given to a command, uploads). Pillow
# knows others, by content whatever the file's name, and some of them hand the file to an
# external program (EPS to Ghostscript): a dataset holds none of those.
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF", "PPM")


def open_image(fp) -> Image.Image:
    """``Image.open`` for the ``IMAGE_FORMATS`` only (others raise UnidentifiedImageError)."""
    return Image.open(fp, formats=IMAGE_FORMATS)


def with_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """uint8 images (N, H, W, C) with ``channels`` channels: RGB to grey as Pillow converts
    (ITU-R 601-2 luma), grey to RGB by repeating it."""
    if images.shape[-1] == channels:
        return images
    if channels == 3:
        return np.repeat(images, 3, axis=-1)
    grey = [np.asarray(Image.fromarray(img).convert("L")) for img in images]
    return np.stack(grey)[..., None] if grey else images[..., :1]


EXIF_ORIENTATION = 0x0112  # the tag a camera sets when the picture is stored turned


class UnsupportedImage(ValueError):
    """An image whose pixel values have no known 8-bit scale; the message names its mode."""


# Modes whose samples are integers wider than 8 bits, and the range they must lie in.
SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


def to_8bit(img: Image.Image) -> Image.Image:
    """``img`` on the 0-255 scale of its 8-bit twin, as an image Pillow converts to "L" or "RGB"
    without clipping; raises UnsupportedImage when its values have no known scale.

    Pillow's own convert() clips wider samples instead of scaling them: a 16-bit image turns
    mostly white, a float one in [0, 1] black. Here 16-bit samples (and 32-bit "I" ones within
    0..65535) are divided by 257 with rounding (v * 257 -> v); float ("F") samples are scaled
    by 255 when they lie in [0, 1], kept when they lie in [0, 255] (a float copy of 8-bit
    values), and refused otherwise (negative, beyond 255, NaN or infinite). Other modes are 8
    bits per sample already ("LAB" goes through RGB, which Pillow can convert it to).
    """
    if img.mode in SIXTEEN_BIT_MODES:
        arr = np.asarray(img)
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise UnsupportedImage(
                f"mode {img.mode} with values {lo}..{hi}, beyond the 16-bit range 0..65535"
            )
        return Image.fromarray(((arr.astype(np.uint32) + 128) // 257).astype(np.uint8))
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        if arr.size and not np.isfinite(arr).all():
            raise UnsupportedImage(f"mode {img.mode} with NaN or infinite values")
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if lo < 0 or hi > 255:
            raise UnsupportedImage(
                f"mode {img.mode} with values in [{lo:g}, {hi:g}], neither in [0, 1] nor [0, 255]"
            )
        scale = 255.0 if hi <= 1 else 1.0
        return Image.fromarray(np.rint(arr * scale).astype(np.uint8))
    if img.mode == "LAB":
        return img.convert("RGB")
    return img


def to_array(img: Image.Image, channels: int, size: int, crop: bool) -> np.ndarray:
    """Bring to 8 bits (:func:`to_8bit`), convert to grayscale or RGB, optionally centre-crop
    to a square, resize bilinearly to size x size, and return uint8 (size, size, channels).
    A photo's EXIF orientation is applied first: the image as viewers show it."""
    if img.getexif().get(EXIF_ORIENTATION, 1) != 1:
        img = ImageOps.exif_transpose(img)
    img = to_8bit(img).convert("L" if channels == 1 else "RGB")
    if crop:
        img = center_square(img)
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[:, :, None] if channels == 1 else arr


def resize_arrays(
    images: np.ndarray, size: int, desc: str, progress: bool = True, allocate=None
) -> np.ndarray:
    """Resize uint8 images (N, H, W) or (N, H, W, 3) to (N, size, size, C), bilinear as Pillow
    (the same resampling as torchvision's Resize on a PIL image), into ``allocate((N, size,
    size, C))`` (default: a new array)."""
    if images.ndim == 3:
        images = images[..., None]
    n, h, w, c = images.shape
    if (h, w) == (size, size) and allocate is None:
        return np.ascontiguousarray(images)
    out = allocate((n, size, size, c)) if allocate else np.empty((n, size, size, c), np.uint8)
    if (h, w) == (size, size):
        out[...] = images
        return out
    for i in tqdm(range(n), desc=desc, unit="img", disable=not progress, mininterval=0.5):
        img = Image.fromarray(images[i, :, :, 0] if c == 1 else images[i])
        out[i] = to_array(img, c, size, crop=False)
    return out
