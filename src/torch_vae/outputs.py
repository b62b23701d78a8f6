"""Writing samples and reconstructions as PNG files, batched."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .device import to_float
from .images import grid, save_png, save_pngs, side_by_side, to_uint8
from .model import VAE
from .speed import Precision, inference_model

GRID_LIMIT = 1024  # all.png shows at most this many images


@torch.no_grad()
def write_samples(
    model: VAE,
    n: int,
    outdir: Path,
    seed: int = 0,
    batch_size: int = 1000,
    progress: bool = True,
    precision: str = "fp32",
) -> Path:
    """Decode ``n`` prior samples into ``outdir/sample_NNNNN.png`` plus ``all.png`` (8 per row).

    The latents are drawn on the CPU from ``seed``, so the same seed gives the same samples on
    any device. ``precision`` bf16 or fp16 decodes under autocast (faster where the hardware has
    those instructions; pixels may differ from fp32 by a grey level or two).
    """
    outdir.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    model = inference_model(model)  # batch norms folded into the convolutions
    amp = Precision(device, precision)
    z = torch.randn(n, model.config.latent_dims, generator=torch.Generator().manual_seed(seed))
    keep = []
    with ThreadPoolExecutor() as pool:
        for start in tqdm(
            range(0, n, batch_size), desc="generating", unit="batch", disable=not progress
        ):
            with amp.autocast():
                out = model.decode(z[start : start + batch_size].to(device))
            imgs = to_uint8(out)
            names = [outdir / f"sample_{i:05d}.png" for i in range(start, start + len(imgs))]
            save_pngs(imgs, names, pool)
            if sum(len(k) for k in keep) < GRID_LIMIT:
                keep.append(imgs)
    save_png(grid(np.concatenate(keep)[:GRID_LIMIT], nrow=8), outdir / "all.png")
    return outdir / "all.png"


@torch.no_grad()
def write_reconstructions(
    model: VAE,
    images: torch.Tensor,
    outdir: Path,
    batch_size: int = 500,
    progress: bool = True,
    precision: str = "fp32",
) -> Path:
    """Reconstruct uint8 images (N, H, W, C) with the posterior mean; write each original beside
    its reconstruction to ``outdir/rec_NNNNN.png`` and a grid of pairs to ``all.png``.
    ``precision`` as for :func:`write_samples`."""
    outdir.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    model = inference_model(model)  # batch norms folded into the convolutions
    amp = Precision(device, precision)
    keep = []
    with ThreadPoolExecutor() as pool:
        for start in tqdm(
            range(0, len(images), batch_size),
            desc="reconstructing",
            unit="batch",
            disable=not progress,
        ):
            x = to_float(images[start : start + batch_size], device)
            with amp.autocast():
                rec = model.reconstruct(x)
            pairs = side_by_side(to_uint8(x), to_uint8(rec))
            names = [outdir / f"rec_{i:05d}.png" for i in range(start, start + len(pairs))]
            save_pngs(pairs, names, pool)
            if sum(len(k) for k in keep) < GRID_LIMIT:
                keep.append(pairs)
    save_png(grid(np.concatenate(keep)[:GRID_LIMIT], nrow=4), outdir / "all.png")
    return outdir / "all.png"
