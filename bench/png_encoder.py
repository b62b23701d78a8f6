"""PNG encoding: a minimal zlib encoder against Pillow, on the images torch-vae writes.

    python bench/png_encoder.py                 # a few seconds on 2 CPU cores
    python bench/png_encoder.py --model models/fashion-mnist/dcgan-d8 --n 500 --repeats 5

The images are those ``generate`` and ``reconstruct`` write: decoder outputs of a shipped model
(``--model``), as 64x64 grayscale samples, 64x130 pairs (an image beside its reconstruction),
the same tinted into RGB (three different gamma curves of each image, smooth like a colour
model's output), and the ``all.png`` grids of 1,024 samples (8 per row) and 1,024 pairs (4 per
row). Without a model (``--model ''``) smooth random blobs stand in.

Encoders, each giving the bytes of one PNG file from a uint8 (H, W, C) array, in memory:

- ``minimal``: 8-bit samples, no row filter, ``zlib.compress(level=1)`` (the hand-written
  encoder torch-vae had in ``images.encode_png``; reproduced here so the comparison stays
  runnable).
- ``encode_png``: torch-vae's encoder now, the same with ISA-L's deflate (the ``isal``
  package) at level 1 instead of zlib's.
- ``pillow-1``: ``Image.fromarray(a).save(buf, format="PNG", compress_level=1)``.
- ``pillow-6``: the same at Pillow's default level 6, for reference (``--encoders
  minimal,pillow-1,pillow-6``; slow on the grids).

Prints, per image kind and encoder, the best of ``--repeats`` timings per image and the mean
file size, and each encoder's time and size against ``minimal``.
"""

from __future__ import annotations

import argparse
import io
import platform
import struct
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from machine_info import cpu_model
from PIL import Image

from torch_vae.io.png import encode_png, grid, side_by_side, to_uint8


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def minimal_png(image: np.ndarray) -> bytes:
    h, w, c = image.shape
    rows = np.zeros((h, 1 + w * c), dtype=np.uint8)  # filter byte 0 ("none"), then the pixels
    rows[:, 1:] = image.reshape(h, w * c)
    header = struct.pack(">IIBBBBB", w, h, 8, 0 if c == 1 else 2, 0, 0, 0)
    idat = zlib.compress(rows.tobytes(), 1)
    chunks = _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def pillow_png(level: int) -> Callable[[np.ndarray], bytes]:
    def encode(image: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).save(
            buf, format="PNG", compress_level=level
        )
        return buf.getvalue()

    return encode


ENCODERS = {
    "minimal": minimal_png,
    "encode_png": encode_png,  # what torch-vae writes with: the same, deflate by ISA-L
    "pillow-1": pillow_png(1),
    "pillow-6": pillow_png(6),
}


def decoder_outputs(model_path: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (n, 64, 64, 1) samples and their reconstructions, from a shipped model or, without
    one, smooth random blobs (upsampled noise) and a blurred copy of them."""
    gen = torch.Generator().manual_seed(0)
    if model_path:
        from torch_vae import load_model

        model = load_model(model_path)
        with torch.no_grad():
            x = model.sample(n, generator=gen)
            return to_uint8(x), to_uint8(model.reconstruct(x))
    x = torch.rand(n, 1, 8, 8, generator=gen)
    x = torch.nn.functional.interpolate(x, size=64, mode="bicubic").clamp(0, 1)
    return to_uint8(x), to_uint8(torch.nn.functional.avg_pool2d(x, 3, 1, 1))


def tint(gray: np.ndarray) -> np.ndarray:
    """Grayscale (B, H, W, 1) -> RGB (B, H, W, 3): each channel another gamma of the image."""
    x = gray.astype(np.float32) / 255
    rgb = np.concatenate([x**0.7, x, x**1.5], axis=3)
    return np.round(rgb * 255).astype(np.uint8)


def time_per_image(encode: Callable[[np.ndarray], bytes], images, repeats: int):
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        sizes = [len(encode(im)) for im in images]
        best = min(best, time.perf_counter() - t0)
    return best / len(images), float(np.mean(sizes))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    default_model = Path(__file__).resolve().parents[1] / "models" / "fashion-mnist" / "dcgan-d8"
    p.add_argument(
        "--model",
        default=str(default_model) if default_model.exists() else "",
        help="run folder or weights file of a 1-channel 64x64 model ('' for random blobs)",
    )
    p.add_argument("--n", type=int, default=200, help="single images of each kind")
    p.add_argument("--repeats", type=int, default=3, help="timings per case; the best is kept")
    p.add_argument(
        "--encoders",
        default="minimal,encode_png,pillow-1",
        help=f"comma-separated, of {','.join(ENCODERS)}",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    samples, recons = decoder_outputs(args.model, max(args.n, 1024))
    pairs = side_by_side(samples, recons)
    kinds = {
        "sample 64x64 L": samples[: args.n],
        "pair 64x130 L": pairs[: args.n],
        "sample 64x64 RGB": tint(samples[: args.n]),
        "pair 64x130 RGB": tint(pairs[: args.n]),
        "grid 1024 samples L": [grid(samples[:1024], nrow=8)],
        "grid 1024 pairs L": [grid(pairs[:1024], nrow=4)],
    }
    for images in kinds.values():  # every encoder must give back the same pixels
        for name in args.encoders.split(","):
            im = images[0]
            back = np.asarray(Image.open(io.BytesIO(ENCODERS[name](im))))
            assert np.array_equal(back.reshape(im.shape), im), name

    versions = f"Python {platform.python_version()}, Pillow {Image.__version__}"
    versions += f", zlib {zlib.ZLIB_RUNTIME_VERSION}"
    print(f"{cpu_model()}, {versions}; images from {args.model or 'random blobs'}")
    print(f"{'image':<30}{'encoder':<10}{'us/image':>10}{'bytes':>10}{'time':>8}{'size':>8}")
    for kind, images in kinds.items():
        base = None
        for name in args.encoders.split(","):
            seconds, size = time_per_image(ENCODERS[name], images, args.repeats)
            base = base or (seconds, size)
            shape = "x".join(map(str, images[0].shape[:2]))
            label = kind if len(images) > 1 else f"{kind} {shape}"
            print(f"{label:<30}{name:<10}{seconds * 1e6:>10.0f}{size:>10.0f}"
                  f"{seconds / base[0]:>7.2f}x{size / base[1]:>7.2f}x")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
