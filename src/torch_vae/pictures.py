"""The picture commands: ``interpolate``, ``traverse``, ``manifold``, ``embed`` (what a model
learned, drawn from explore.py's tensors) and ``plot`` (training curves). Each writes PNGs
(``interpolate`` also an animated GIF) into --outdir and logs what it wrote."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import explore, plots
from .data import check_channels, load_split
from .data.datasets import DECODE_ERRORS
from .data.imaging import UnsupportedImage, to_array
from .device import pick_device
from .errors import TorchVaeError
from .fileio import atomic_path
from .images import grid, save_png, to_uint8
from .model import VAE, load_model
from .options import (
    EmbedOptions,
    InterpolateOptions,
    ManifoldOptions,
    PlotOptions,
    Runtime,
    TraverseOptions,
)
from .outputs import check_outdir

log = logging.getLogger(__name__)

GIF_FRAME_MS = 120  # each frame of the animation; its ends are held longer
GIF_END_MS = 700
GIF_MIN_SIDE = 128  # smaller images are enlarged (nearest neighbour) in the animation


def _name(model_path: Path) -> str:
    """How a title names the model: its folder's (or file's) name."""
    path = Path(model_path)
    return path.stem if path.suffix == ".safetensors" else path.resolve().name


def _model(path: Path, runtime: Runtime) -> VAE:
    return load_model(path, pick_device(runtime.device, runtime.cpu))


def _dataset(model: VAE, dataset: str | None, model_path: Path) -> str:
    """``dataset``, by default the model's, checked against the model's channels."""
    dataset = dataset or model.dataset
    if dataset is None:
        raise TorchVaeError(
            f"{model_path} does not say which dataset it was trained on; pass --dataset"
        )
    check_channels(dataset, model.config.in_channels, "the model expects",
                   "pass the dataset the model was trained on")  # fmt: skip
    return dataset


def _split(model: VAE, dataset: str, split: str, data_dir, runtime: Runtime) -> np.ndarray:
    """The model-sized uint8 images (N, H, W, C) of ``split``."""
    return load_split(dataset, split, model.config.image_size, data_dir, not runtime.quiet)


def _check_index(i: int, n: int, what: str) -> None:
    if not 0 <= i < n:
        raise TorchVaeError(f"--index {i} is out of range: {what} has {n} images (0..{n - 1})")


def read_image(path: Path, channels: int, size: int) -> np.ndarray:
    """An image file as the dataset pipeline makes it: 8 bits, grayscale or RGB to ``channels``,
    centre-cropped to a square, resized bilinearly to ``size``: uint8 (size, size, C)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                return to_array(img, channels, size, crop=True)
    except OSError as exc:
        raise TorchVaeError(f"cannot read image {path} ({exc.strerror or exc})") from None
    except (UnsupportedImage, *DECODE_ERRORS) as exc:
        raise TorchVaeError(f"cannot read image {path} ({exc}); pass a PNG or JPEG") from None


def _write_gif(frames: np.ndarray, out: Path) -> None:
    """An animated GIF of uint8 frames (T, H, W, C), there and back, looping; its ends held."""
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


def _strip(frames: np.ndarray, ends: list[np.ndarray] | None) -> np.ndarray:
    """The frames in one row; the two original images at its ends, set apart, when given."""
    row = grid(frames, nrow=len(frames))
    if ends is None:
        return row
    a, b = (grid(e[None], nrow=1) for e in ends)
    gap = np.full((row.shape[0], 8, row.shape[2]), 255, np.uint8)
    return np.concatenate([a, gap, row, gap, b], axis=1)


def _save_png(picture: np.ndarray, out: Path) -> None:
    with atomic_path(out) as tmp:
        save_png(picture, tmp)


def _endpoints(o: InterpolateOptions, model: VAE, runtime: Runtime):
    """The two ends (codes or uint8 images), the images to show beside the strip, and words
    for the log line."""
    cfg = model.config
    if o.random:
        a, b = torch.randn(2, cfg.latent_dims, generator=torch.Generator().manual_seed(o.seed))
        return a, b, None, f"two codes drawn from the prior (seed {o.seed})"
    if o.images:
        ends = [read_image(Path(p), cfg.in_channels, cfg.image_size) for p in o.images]
        return ends[0], ends[1], ends, f"{o.images[0]} and {o.images[1]}"
    dataset = _dataset(model, o.dataset, o.model)
    images = _split(model, dataset, o.split, o.data_dir, runtime)
    for i in o.index:
        _check_index(i, len(images), f"the {o.split} split of {dataset}")
    i, j = o.index
    ends = [np.array(images[i]), np.array(images[j])]
    return ends[0], ends[1], ends, f"images {i} and {j} of the {o.split} split of {dataset}"


def interpolate_command(o: InterpolateOptions, runtime: Runtime) -> None:
    check_outdir(o.outdir)
    model = _model(o.model, runtime)
    a, b, ends, what = _endpoints(o, model, runtime)
    frames = to_uint8(explore.interpolate(model, a, b, o.steps, o.method))
    png, gif = o.outdir / "interpolate.png", o.outdir / "interpolate.gif"
    _save_png(_strip(frames, ends), png)
    _write_gif(frames, gif)
    log.info("wrote %s and %s: %d %s steps between %s", png, gif, o.steps, o.method, what)


def traverse_command(o: TraverseOptions, runtime: Runtime) -> None:
    check_outdir(o.outdir)
    model = _model(o.model, runtime)
    dataset = _dataset(model, o.dataset, o.model)
    images = _split(model, dataset, o.split, o.data_dir, runtime)
    kl = explore.kl_per_dim(model, images[: o.nimages or None])
    active = explore.active_dims(kl)
    dims = torch.argsort(kl, descending=True, stable=True)[: o.ndims].tolist()
    if o.index is None:
        z, around = torch.zeros(model.config.latent_dims), "the zero code"
    else:
        _check_index(o.index, len(images), f"the {o.split} split of {dataset}")
        z = explore.encode_mean(model, images[o.index : o.index + 1])[0]
        around = f"{o.split} image {o.index}"
    rows = explore.traverse(model, z, dims, o.steps, o.span)
    flat = to_uint8(rows.flatten(0, 1))
    pictures = flat.reshape(*rows.shape[:2], *flat.shape[1:])
    d, n_active = model.config.latent_dims, int(active.sum())
    shown = "" if len(dims) == d else f"; the {len(dims)} with the largest KL shown"
    title = (f"{_name(o.model)}: {n_active} of {d} latent dimensions active\n(average KL > "
             f"0.01 nats on {min(len(images), o.nimages or len(images))} {o.split} images)"
             f"{shown}\neach row varies one dimension around {around}")  # fmt: skip
    values = torch.linspace(-o.span, o.span, o.steps).tolist()
    out = plots.plot_traversal(pictures, dims, kl[dims].tolist(), active[dims].tolist(), values,
                               title, o.outdir / "traverse.png")  # fmt: skip
    log.info("wrote %s: %d dimensions x %d values around %s; %d of %d dimensions active",
             out, len(dims), o.steps, around, n_active, d)  # fmt: skip


def manifold_command(o: ManifoldOptions, runtime: Runtime) -> None:
    check_outdir(o.outdir)
    model = _model(o.model, runtime)
    d, n = model.config.latent_dims, o.grid
    if d < 2:
        raise TorchVaeError(f"a manifold needs a model with 2 or more latent dimensions, not {d}")
    images, source = None, ""
    if d > 2:
        dataset = _dataset(model, o.dataset, o.model)
        images = _split(model, dataset, o.split, o.data_dir, runtime)[: o.nimages or None]
        source = f" of the posterior means of {len(images)} {o.split} images of {dataset}"
    codes = explore.manifold_codes(model, n, images)
    pictures = to_uint8(explore.decode(model, codes.reshape(n * n, d)))
    pictures = pictures.reshape(n, n, *pictures.shape[1:])
    if d == 2:
        xs, ys = codes[0, :, 0].tolist(), codes[:, 0, 1].tolist()
        names = ("z0 (prior quantiles)", "z1 (prior quantiles)")
        title = f"{_name(o.model)}: decoded codes at the prior's quantiles"
    else:
        xs = torch.linspace(-2, 2, n).tolist()
        ys = xs[::-1]
        names = tuple(f"{k} principal direction (standard deviations)" for k in ("first", "second"))
        title = f"{_name(o.model)}: the plane of the two leading principal directions{source}"
    out = plots.plot_manifold(pictures, xs, ys, names, title, o.outdir / "manifold.png")
    log.info("wrote %s: %d x %d decoded codes", out, n, n)


def _labels(dataset: str, split: str, data_dir, n: int):
    """The first ``n`` labels of the split and the class names, or (None, None) with a warning
    when they cannot be had: a map without colours is still a map."""
    names = explore.class_names(dataset, data_dir)
    try:
        labels = explore.load_labels(dataset, split, data_dir)
    except TorchVaeError as exc:
        log.warning("warning: no class colours: %s", exc)
        return None, None
    if labels is None or names is None:
        return None, None
    return labels[:n], names


def embed_command(o: EmbedOptions, runtime: Runtime) -> None:
    check_outdir(o.outdir)
    model = _model(o.model, runtime)
    if model.config.latent_dims < 2:
        raise TorchVaeError("a 2-D map needs a model with 2 or more latent dimensions, not 1")
    dataset = _dataset(model, o.dataset, o.model)
    images = _split(model, dataset, o.split, o.data_dir, runtime)[: o.nimages or None]
    if len(images) < 2:
        raise TorchVaeError(f"the {o.split} split of {dataset} has too few images to map")
    xy = explore.embed(model, images, o.method, o.seed).numpy()
    labels, names = _labels(dataset, o.split, o.data_dir, len(images))
    d = model.config.latent_dims
    method = o.method if o.method != "auto" else ("code" if d == 2 else "pca")
    axes = {"code": ("z0", "z1"), "pca": ("PC1", "PC2"), "umap": ("UMAP 1", "UMAP 2")}[method]
    how = {"code": "the code itself", "pca": "principal components", "umap": "UMAP"}[method]
    title = (f"{_name(o.model)} (latent {d}): posterior means of {len(images)} {o.split} "
             f"images of {dataset}, {how}")  # fmt: skip
    out = plots.plot_embedding(xy, labels, names, axes, title, o.outdir / "embed.png")
    log.info("wrote %s: %d %s images mapped by %s%s", out, len(images), o.split, how,
             "" if labels is not None else ", uncoloured")  # fmt: skip


def plot_command(o: PlotOptions) -> None:
    runs = [Path(r) for r in o.runs]
    for run in runs:
        if not (run / "metrics.jsonl").is_file():
            raise TorchVaeError(f"{run} has no metrics.jsonl: pass run folders of torch-vae train")
    if o.out.is_dir():
        raise TorchVaeError(f"--out {o.out} is a folder; pass a file name such as curves.png")
    out = plots.plot_curves(runs, o.out)
    log.info("wrote %s: training curves of %s", out, ", ".join(plots.run_labels(runs)))
