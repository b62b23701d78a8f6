"""Pictures of a model's output: samples and reconstructions as PNG files (the generate and
reconstruct commands), and the picture a training run draws after every epoch."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from .checkpoint import check_flags
from .data import check_channels, load_split
from .device import pick_device, to_float
from .errors import TorchVaeError
from .images import PngWriter, grid, side_by_side, stack_rows, to_uint8
from .model import VAE, load_model
from .options import GenerateOptions, ReconstructOptions, Runtime
from .samplers import MixtureSampler, choose_sampler, prior_sample
from .speed import Precision, inference_model

log = logging.getLogger(__name__)

GRID_LIMIT = 1024  # all.png shows at most this many images
N_PICTURE = 32  # samples and reconstructions drawn into each epoch's picture


@torch.no_grad()
def epoch_picture(model: VAE, z: torch.Tensor, test_images: torch.Tensor, device) -> np.ndarray:
    """Top: samples from fixed latents; bottom: test images beside their reconstructions."""
    model.eval()
    top = grid(to_uint8(model.decode(z)), nrow=8)
    x = to_float(test_images, device)
    bottom = grid(side_by_side(to_uint8(x), to_uint8(model.reconstruct(x))), nrow=4)
    return stack_rows([top, bottom])


def check_outdir(outdir: Path) -> None:
    """Before any work: the output folder can be made."""
    if outdir.exists() and not outdir.is_dir():
        raise TorchVaeError(f"--outdir {outdir} is a file, not a folder; choose another --outdir")


def model_and_dataset(
    model_path: Path, dataset: str | None, runtime: Runtime
) -> tuple[VAE, str, torch.device]:
    """Load ``model_path`` on the chosen device and resolve ``dataset`` (default: the model's),
    checking that its images have the model's channels."""
    device = pick_device(runtime.device, runtime.cpu)
    model = load_model(model_path, device)
    dataset = dataset or model.dataset
    if dataset is None:
        raise TorchVaeError(
            f"{model_path} does not say which dataset it was trained on; pass --dataset"
        )
    check_channels(
        dataset, model.config.in_channels, "the model expects",
        "pass the dataset the model was trained on",
    )  # fmt: skip
    return model, dataset, device


def reconstruct_command(o: ReconstructOptions, runtime: Runtime) -> None:
    check_outdir(o.outdir)
    model, dataset, _ = model_and_dataset(o.model, o.dataset, runtime)
    check_flags(model.config, latent_dims=o.latent_dims, max_filters=o.max_filters)
    split = "test" if o.rec_testdata else "train"
    size, progress = model.config.image_size, not runtime.quiet
    images = load_split(dataset, split, size, o.data_dir, progress)[: o.nimages or None]
    out = write_reconstructions(
        model, torch.from_numpy(images), o.outdir, o.batchsize, progress, o.precision
    )
    log.info("wrote %d reconstructions of the %s split of %s to %s (overview: %s)",
             len(images), split, dataset, o.outdir, out)  # fmt: skip


def generate_command(o: GenerateOptions, runtime: Runtime) -> None:
    check_outdir(o.outdir)
    model = load_model(o.model, pick_device(runtime.device, runtime.cpu))
    check_flags(
        model.config,
        latent_dims=o.latent_dims,
        max_filters=o.max_filters,
        in_channels=o.nimg_channels,
    )
    sampler = choose_sampler(o.model, o.sampler)
    out = write_samples(
        model, o.nsamples, o.outdir, o.seed, o.batchsize, not runtime.quiet, o.precision, sampler
    )
    log.info("wrote %d samples to %s (overview: %s)", o.nsamples, o.outdir, out)


LATENT_BLOCK = 4096  # latents drawn at once: memory stays flat however many samples are asked


def latent_batches(
    n: int, dims: int, seed: int, batch_size: int, sampler: MixtureSampler | None = None
) -> Iterator[tuple[int, Tensor]]:
    """``n`` latents from N(0, I) (or from ``sampler``) for ``seed``, as (index of the first,
    batch) pairs. They are drawn in blocks of ``LATENT_BLOCK`` rows, whatever the batch size,
    so they depend on ``seed``, ``n`` and ``dims`` only; up to ``LATENT_BLOCK`` samples from
    the prior they are the numbers of one ``torch.randn(n, dims)`` call, as in earlier
    versions."""
    gen = torch.Generator().manual_seed(seed)
    draw = sampler.sample if sampler is not None else prior_sample(dims)
    for block in range(0, n, LATENT_BLOCK):
        z = draw(min(LATENT_BLOCK, n - block), gen)
        for start in range(0, len(z), batch_size):
            yield block + start, z[start : start + batch_size]


def batch_count(n: int, batch_size: int) -> int:
    """How many batches ``latent_batches`` yields for ``n`` latents: each block of
    ``LATENT_BLOCK`` is cut into batches of its own."""
    full, rest = divmod(n, LATENT_BLOCK)
    return full * -(-LATENT_BLOCK // batch_size) + -(-rest // batch_size)


@torch.no_grad()
def write_samples(
    model: VAE,
    n: int,
    outdir: Path,
    seed: int = 0,
    batch_size: int = 1000,
    progress: bool = True,
    precision: str = "fp32",
    sampler: MixtureSampler | None = None,
) -> Path:
    """Decode ``n`` samples into ``outdir/sample_NNNNN.png`` plus ``all.png`` (8 per row): their
    latents from the prior N(0, I), or from ``sampler`` (samplers.py).

    The latents are drawn on the CPU from ``seed`` (``latent_batches``), so the same seed gives
    the same latents on any device and with any batch size. ``precision`` bf16 or fp16 decodes
    under autocast (faster where the hardware has those instructions; pixels may differ from
    fp32 by a grey level or two).
    """
    outdir.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    model = inference_model(model)  # batch norms folded into the convolutions
    amp = Precision(device, precision)
    keep = []
    batches = latent_batches(n, model.config.latent_dims, seed, batch_size, sampler)
    with PngWriter() as writer:  # each batch's files are written while the next is decoded
        for start, z in tqdm(
            batches, desc="generating", unit="batch", total=batch_count(n, batch_size),
            disable=not progress,
        ):  # fmt: skip
            with amp.autocast():
                out = model.decode(z.to(device))
            imgs = to_uint8(out)
            names = [outdir / f"sample_{i:05d}.png" for i in range(start, start + len(imgs))]
            writer.submit(imgs, names)
            if sum(len(k) for k in keep) < GRID_LIMIT:
                keep.append(imgs)
        writer.submit(grid(np.concatenate(keep)[:GRID_LIMIT], nrow=8)[None], [outdir / "all.png"])
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
    with PngWriter() as writer:  # each batch's files are written while the next is computed
        for start in tqdm(
            range(0, len(images), batch_size),
            desc="reconstructing",
            unit="batch",
            disable=not progress,
        ):
            originals = images[start : start + batch_size]  # uint8 (B, H, W, C), as written
            x = to_float(originals, device)
            with amp.autocast():
                rec = model.reconstruct(x)
            pairs = side_by_side(originals.numpy(), to_uint8(rec))
            names = [outdir / f"rec_{i:05d}.png" for i in range(start, start + len(pairs))]
            writer.submit(pairs, names)
            if sum(len(k) for k in keep) < GRID_LIMIT:
                keep.append(pairs)
        writer.submit(grid(np.concatenate(keep)[:GRID_LIMIT], nrow=4)[None], [outdir / "all.png"])
    return outdir / "all.png"
