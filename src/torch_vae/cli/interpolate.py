"""``torch-vae interpolate``: decoded codes between two images or two codes, as a strip PNG and
an animated GIF."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ..analysis import latent
from ..analysis.pictures import strip, write_gif
from ..io.files import atomic_path
from ..io.png import save_png, to_uint8
from ..models import VAE
from .common import check_index, check_outdir, load, read_image, resolve_dataset, split_images
from .options import InterpolateOptions, Runtime

log = logging.getLogger(__name__)


def _endpoints(o: InterpolateOptions, model: VAE, runtime: Runtime):
    """The two ends (codes or uint8 images), the images to show beside the strip, and words
    for the log line."""
    cfg = model.config
    if o.random:
        a, b = model.prior_sample(2, torch.Generator().manual_seed(o.seed), "cpu", torch.float32)
        return a, b, None, f"two codes drawn from the prior (seed {o.seed})"
    if o.images:
        ends = [read_image(Path(p), cfg.in_channels, cfg.image_size) for p in o.images]
        return ends[0], ends[1], ends, f"{o.images[0]} and {o.images[1]}"
    dataset = resolve_dataset(model, o.dataset, o.model)
    images = split_images(model, dataset, o.split, o.data_dir, runtime)
    for i in o.index:
        check_index(i, len(images), f"the {o.split} split of {dataset}")
    i, j = o.index
    ends = [np.array(images[i]), np.array(images[j])]
    return ends[0], ends[1], ends, f"images {i} and {j} of the {o.split} split of {dataset}"


def run(o: InterpolateOptions, runtime: Runtime) -> None:
    check_outdir(o.outdir)
    model = load(o.model, runtime)
    a, b, ends, what = _endpoints(o, model, runtime)
    frames = to_uint8(latent.interpolate(model, a, b, o.steps, o.method))
    png, gif = o.outdir / "interpolate.png", o.outdir / "interpolate.gif"
    with atomic_path(png) as tmp:
        save_png(strip(frames, ends), tmp)
    write_gif(frames, gif)
    log.info("wrote %s and %s: %d %s steps between %s", png, gif, o.steps, o.method, what)
