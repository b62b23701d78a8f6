"""PNG files of what a model makes: samples and reconstructions (``generate`` and
``reconstruct`` write them), the picture a training run draws after every epoch, and the strip
and animation of an interpolation."""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from ..io.files import atomic_path
from ..io.png import (
    PngWriter,
    grid,
    side_by_side,
    stack_rows,
    to_uint8,
    with_row_labels,
    with_title,
)
from ..models import VAE
from ..runtime.device import to_float
from ..runtime.precision import Precision

log = logging.getLogger(__name__)

GRID_LIMIT = 1024  # all.png shows at most this many images
PAIRS_TITLE = "image | reconstruction"  # reconstruct's all.png, a grid of such pairs
N_PICTURE = 32  # samples and reconstructions drawn into each epoch's picture
LATENT_BLOCK = 4096  # latents drawn at once: memory stays flat however many samples are asked
GIF_FRAME_MS = 120  # each frame of the animation; its ends are held longer
GIF_END_MS = 700
GIF_MIN_SIDE = 128  # smaller images are enlarged (nearest neighbour) in the animation

# Draws n codes (n, d), float32 on the CPU, with a generator (and, as the keyword ``labels``,
# the classes of a conditional model's samples): a fitted prior's ``sample``, or
# ``prior_draw(model)``.
Draw = Callable[..., Tensor]


def numbered(outdir: Path, prefix: str) -> list[Path]:
    """The ``outdir/<prefix>_NNNNN.png`` files there are (the names generate and reconstruct
    give their images), sorted."""
    if not outdir.is_dir():
        return []
    return sorted(p for p in outdir.glob(f"{prefix}_*.png")
                  if re.fullmatch(rf"{prefix}_\d{{5,}}\.png", p.name) and p.is_file())  # fmt: skip


def clear_earlier(outdir: Path, prefix: str) -> int:
    """Remove ``outdir/<prefix>_NNNNN.png`` files an earlier generate or reconstruct wrote, so
    that the folder holds this run's images alone (other files are left); how many. The
    commands check first that torch-vae wrote them (``cli.common.check_outdir``)."""
    removed = 0
    for path in numbered(outdir, prefix):
        path.unlink()
        removed += 1
    if removed:
        log.info("removed %d %s_*.png file%s an earlier torch-vae command wrote in %s", removed,
                 prefix, "s" * (removed != 1), outdir)  # fmt: skip
    return removed


@contextlib.contextmanager
def staged(outdir: Path, prefix: str) -> Iterator[Path]:
    """A hidden folder in ``outdir`` that this run's images are written to; once all are,
    the ``<prefix>_NNNNN.png`` files an earlier run left make way (``clear_earlier``) and the
    new ones, ``all.png`` last, move in. A run that stops before (Ctrl-C, an error) removes
    the folder and leaves the earlier images as they were."""
    outdir.mkdir(parents=True, exist_ok=True)
    for left in outdir.glob(f".{prefix}-partial-*"):  # a run killed before it could clean up
        if left.is_dir() and not left.is_symlink():
            shutil.rmtree(left, ignore_errors=True)
            log.info("removed %s, the unfinished images of a run that was killed", left)
    stage = Path(tempfile.mkdtemp(prefix=f".{prefix}-partial-", dir=outdir))
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    clear_earlier(outdir, prefix)
    for path in sorted(stage.iterdir(), key=lambda p: p.name == "all.png"):
        os.replace(path, outdir / path.name)
    stage.rmdir()


def prior_draw(model: VAE) -> Draw:
    """The model's own prior as a ``Draw``: the same codes for the same seed on any device and
    in any dtype."""
    return lambda n, generator, labels=None: model.prior_sample(n, generator, "cpu", torch.float32)


def picture_rows(n: int) -> Tensor:
    """The rows of the ``n`` held-out images that an epoch's picture shows: ``N_PICTURE`` of
    them spread evenly over the split (its first ones would be of one class in a folder
    sorted by class), or all of fewer."""
    k = min(n, N_PICTURE)
    return torch.arange(k) * n // max(k, 1)


@torch.no_grad()
def epoch_picture(
    model: VAE,
    z: Tensor,
    test_images: Tensor,
    device,
    test_labels: Tensor | None = None,
    heading: str = "",
) -> np.ndarray:
    """Top: samples from fixed latents (a conditional model's: class i % K in sample i);
    bottom: test images (of the classes ``test_labels``) beside their reconstructions. A
    discrete model's picture has no samples: its own prior is uniform over the codes, which
    decodes to noise (its samples come from a prior fitted after training). ``heading``
    (e.g. "epoch 3, step 1290") begins the picture's first title."""
    model.eval()
    x = to_float(test_images, device)
    y = test_labels.to(x.device) if test_labels is not None else None
    pairs = grid(side_by_side(to_uint8(x), to_uint8(model.reconstruct(x, y))), nrow=4)
    lead = f"{heading}: " if heading else ""
    if model.latent_kind == "discrete":
        return with_title(pairs, f"{lead}held-out {PAIRS_TITLE}")
    bottom = with_title(pairs, f"held-out {PAIRS_TITLE}")
    k = model.config.num_classes
    y = torch.arange(len(z), device=z.device) % k if k else None
    drawn = "samples (fixed codes" + (", classes in turn)" if k else ")")
    top = with_title(grid(to_uint8(model.decode(z, y)), nrow=8), lead + drawn)
    return stack_rows([top, bottom])


def latent_batches(
    n: int, seed: int, batch_size: int, draw: Draw, labels: Tensor | None = None
) -> Iterator[tuple[int, Tensor]]:
    """``n`` latents from ``draw`` for ``seed`` (of the classes ``labels``, (n,), for a
    conditional model), as (index of the first, batch) pairs. They are drawn in blocks of
    ``LATENT_BLOCK`` rows, whatever the batch size, so they depend on ``seed`` and ``n`` only;
    up to ``LATENT_BLOCK`` samples from the prior they are the numbers of one
    ``torch.randn(n, d)`` call, as in earlier versions."""
    gen = torch.Generator().manual_seed(seed)
    for block in range(0, n, LATENT_BLOCK):
        k = min(LATENT_BLOCK, n - block)
        if labels is None:
            z = draw(k, gen)
        else:
            z = draw(k, gen, labels=labels[block : block + k].cpu())
        for start in range(0, len(z), batch_size):
            yield block + start, z[start : start + batch_size]


def batch_count(n: int, batch_size: int) -> int:
    """How many batches ``latent_batches`` yields for ``n`` latents: each block of
    ``LATENT_BLOCK`` is cut into batches of its own."""
    full, rest = divmod(n, LATENT_BLOCK)
    return full * -(-LATENT_BLOCK // batch_size) + -(-rest // batch_size)


@torch.no_grad()
def sample_images(
    model: VAE, n: int, seed: int, batch_size: int, draw: Draw | None = None, classes=None
):
    """The uint8 samples (B, H, W, C) that ``write_samples`` writes, batch by batch, as
    (index of the first, batch) pairs; ``model`` should be an inference copy. A conditional
    model's classes are ``classes`` (``sample_classes``)."""
    device = model.device
    labels = sample_classes(model, n, seed, classes)
    for start, z in latent_batches(n, seed, batch_size, draw or prior_draw(model), labels):
        y = labels[start : start + len(z)] if labels is not None else None
        yield start, to_uint8(model.decode(z.to(device), y))


CLASS_ROW = 8  # samples of one class in a row with --class all


def sample_classes(model: VAE, n: int, seed: int, classes=None) -> Tensor | None:
    """The classes of ``n`` samples of a conditional model: ``classes`` (one for all; "all":
    sample i is class i // 8 % K, a grid row per class), or None: drawn uniformly by a
    generator seeded with ``seed`` (``VAE.labels``). None for an unconditional model, which
    refuses a class."""
    if classes == "all" and model.conditional:
        return torch.arange(n, device=model.device) // CLASS_ROW % model.config.num_classes
    gen = torch.Generator().manual_seed(seed) if classes is None else None
    return model.labels(classes, n, gen)


@torch.no_grad()
def write_samples(
    model: VAE,
    n: int,
    outdir: Path,
    seed: int = 0,
    batch_size: int = 1000,
    progress: bool = True,
    precision: str = "fp32",
    draw: Draw | None = None,
    classes: str | None = None,
) -> Path:
    """Decode ``n`` samples into ``outdir/sample_NNNNN.png`` plus ``all.png`` (8 per row): their
    latents from the prior N(0, I), or from ``draw`` (a fitted prior's ``sample``); a
    conditional model's of the class ``classes`` ("all": a row per class; None: at random).

    The latents are drawn on the CPU from ``seed`` (``latent_batches``), so the same seed gives
    the same latents on any device and with any batch size. ``precision`` bf16 or fp16 decodes
    under autocast (faster where the hardware has those instructions; pixels may differ from
    fp32 by a grey level or two).
    """
    fast = model.inference_copy()  # batch norms folded into the convolutions
    amp = Precision(fast.device, precision)
    keep = []
    batches = sample_images(fast, n, seed, batch_size, draw or prior_draw(model), classes)
    with staged(outdir, "sample") as stage, PngWriter() as writer, amp.autocast():
        # files written while the next batch decodes
        for start, imgs in tqdm(
            batches, desc="generating", unit="batch", total=batch_count(n, batch_size),
            disable=not progress,
        ):  # fmt: skip
            names = [stage / f"sample_{i:05d}.png" for i in range(start, start + len(imgs))]
            writer.submit(imgs, names)
            if sum(len(k) for k in keep) < GRID_LIMIT:
                keep.append(imgs)
        shown = np.concatenate(keep)[:GRID_LIMIT]
        overview = grid(shown, nrow=CLASS_ROW)
        if classes == "all" and model.conditional:  # a row per class: named at its left
            names = model.config.classes
            rows = -(-len(shown) // CLASS_ROW)
            overview = with_row_labels(overview, [names[r % len(names)] for r in range(rows)],
                                       shown.shape[1])  # fmt: skip
        writer.submit(overview[None], [stage / "all.png"])
    return outdir / "all.png"


@torch.no_grad()
def write_reconstructions(
    model: VAE,
    images: Tensor,
    outdir: Path,
    batch_size: int = 500,
    progress: bool = True,
    precision: str = "fp32",
    labels: Tensor | None = None,
    files: list[str] | None = None,
) -> Path:
    """Reconstruct uint8 images (N, H, W, C) with the posterior's mode; write each original
    beside its reconstruction to ``outdir/rec_NNNNN.png`` and a grid of pairs to ``all.png``.
    ``precision`` as for :func:`write_samples`; ``labels``: the images' classes (N,), for a
    conditional model; ``files``: the image files they came from (an image folder's), listed
    beside them in ``rec_sources.csv`` (which a run without them removes)."""
    fast = model.inference_copy()  # batch norms folded into the convolutions
    device = fast.device
    amp = Precision(device, precision)
    keep = []
    # each batch's files are written while the next is computed
    with staged(outdir, "rec") as stage, PngWriter() as writer:
        for start in tqdm(
            range(0, len(images), batch_size), desc="reconstructing", unit="batch",
            disable=not progress,
        ):  # fmt: skip
            originals = images[start : start + batch_size]  # uint8 (B, H, W, C), as written
            x = to_float(originals, device)
            y = labels[start : start + len(x)].to(device) if labels is not None else None
            with amp.autocast():
                rec = fast.reconstruct(x, y)
            pairs = side_by_side(originals.numpy(), to_uint8(rec))
            names = [stage / f"rec_{i:05d}.png" for i in range(start, start + len(pairs))]
            writer.submit(pairs, names)
            if sum(len(k) for k in keep) < GRID_LIMIT:
                keep.append(pairs)
        overview = with_title(grid(np.concatenate(keep)[:GRID_LIMIT], nrow=4), PAIRS_TITLE)
        writer.submit(overview[None], [stage / "all.png"])
        if files is not None:
            with open(stage / SOURCES, "w", newline="", encoding="utf-8") as f:
                table = csv.writer(f)
                table.writerow(["reconstruction", "file"])
                table.writerows([f"rec_{i:05d}.png", name] for i, name in enumerate(files))
    if files is None:  # an earlier run's list would name other images
        (outdir / SOURCES).unlink(missing_ok=True)
    return outdir / "all.png"


SOURCES = "rec_sources.csv"  # reconstruct: each rec_NNNNN.png's image file (a folder's)


def write_gif(frames: np.ndarray, out: Path) -> None:
    """An animated GIF of uint8 frames (T, H, W, C), there and back, looping; its ends held."""
    from PIL import Image

    order = [*range(len(frames)), *range(len(frames) - 2, 0, -1)]
    scale = max(1, -(-GIF_MIN_SIDE // frames.shape[1]))
    pictures = []
    for i in order:
        f = frames[i, :, :, 0] if frames.shape[3] == 1 else frames[i]
        img = Image.fromarray(f)
        pictures.append(img.resize((img.width * scale, img.height * scale), Image.NEAREST))
    ends = {0, len(frames) - 1}
    durations = [GIF_END_MS if i in ends else GIF_FRAME_MS for i in order]
    with atomic_path(out) as tmp:
        pictures[0].save(tmp, format="GIF", save_all=True, append_images=pictures[1:],
                         duration=durations, loop=0)  # fmt: skip


STRIP_MIN_SIDE = 64  # a strip of smaller images is enlarged (nearest neighbour) to this


def enlarged(picture: np.ndarray, side: int) -> np.ndarray:
    """``picture`` (H, W, C) of images ``side`` pixels high, each pixel repeated so that the
    images are at least ``STRIP_MIN_SIDE`` high (a 28-pixel model's strip fits a slide)."""
    scale = max(1, -(-STRIP_MIN_SIDE // side))
    return picture.repeat(scale, axis=0).repeat(scale, axis=1)


def strip(frames: np.ndarray, ends: list[np.ndarray] | None) -> np.ndarray:
    """The frames in one row; the two original images at its ends, set apart, when given."""
    row = grid(frames, nrow=len(frames))
    if ends is None:
        return row
    a, b = (grid(e[None], nrow=1) for e in ends)
    gap = np.full((row.shape[0], 8, row.shape[2]), 255, np.uint8)
    return np.concatenate([a, gap, row, gap, b], axis=1)
