"""``torch-vae interpolate``: decoded codes between two images or two codes, as a strip PNG and
an animated GIF. A discrete model's path runs between code vectors, linearly; its ``--random``
code grids come from its fitted prior where it has one (else uniformly)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ..analysis import latent
from ..analysis.pictures import enlarged, strip, write_gif
from ..errors import TorchVaeError
from ..io.files import atomic_path
from ..io.png import save_png, to_uint8, with_title
from ..models import VAE
from ..priors import load_sampler
from ..priors.base import ROUND_TRIPS, set_drawing
from .common import (
    check_index,
    check_outdir,
    check_outside_dataset,
    decoded_class,
    given_class,
    load,
    model_name,
    read_image,
    resolve_dataset,
    split_images,
    split_labels,
)
from .options import InterpolateOptions, Runtime

log = logging.getLogger(__name__)


def _endpoints(o: InterpolateOptions, model: VAE, runtime: Runtime):
    """The two ends (codes or uint8 images), the images to show beside the strip, words for
    the log line, and the ends' classes (a conditional model's, for images of --split)."""
    cfg = model.config
    if o.random and model.latent_kind == "discrete":  # uniform code grids make noise
        a, b, what = _random_grids(o, model)
        return a, b, None, what, None
    if o.random:
        a, b = model.prior_sample(2, torch.Generator().manual_seed(o.seed), "cpu", torch.float32)
        return a, b, None, f"two codes drawn from the prior (seed {o.seed})", None
    if o.images:
        ends = [read_image(Path(p), cfg.in_channels, cfg.image_size) for p in o.images]
        return ends[0], ends[1], ends, f"{o.images[0]} and {o.images[1]}", None
    dataset = resolve_dataset(model, o.dataset, o.model, convert=True, writes=o.outdir)
    images = split_images(model, dataset, o.split, o.data_dir, runtime)
    i, j = o.index or (0, 1)
    for k in (i, j):
        check_index(k, len(images), f"the {o.split} split of {dataset}")
    labels = split_labels(model, dataset, o.split, o.data_dir, len(images))
    ends = [np.array(images[i]), np.array(images[j])]
    own = None if labels is None else labels[[i, j]]
    return ends[0], ends[1], ends, f"images {i} and {j} of the {o.split} split of {dataset}", own


def _random_grids(o: InterpolateOptions, model: VAE):
    """Two code grids of a discrete model drawn from its fitted prior, or uniformly where it
    has none, and words for the log line."""
    gen = torch.Generator().manual_seed(o.seed)
    prior = load_sampler(o.model)
    if prior is None:
        set_drawing(None, o.model, round_trips=o.round_trips)  # other than 1: refused
        log.warning("%s has no fitted prior over its code grids: two uniform grids (fit one with "
                    "torch-vae fit-sampler --model %s --sampler transformer)", o.model,
                    o.model)  # fmt: skip
        a, b = model.prior_sample(2, gen, "cpu")
        return a, b, f"two uniform code grids (seed {o.seed})"
    set_drawing(prior, o.model, round_trips=o.round_trips, model=model)
    c = decoded_class(model, o.class_, (), "the path")  # a conditional prior draws its grids
    a, b = prior.sample(2, gen, labels=None if c is None else torch.tensor([c, c]))
    return a, b, f"two code grids drawn from its {prior.kind} prior (seed {o.seed})"


def run(o: InterpolateOptions, runtime: Runtime) -> None:
    check_outdir(o.outdir)
    model = load(o.model, runtime)
    check_outside_dataset(o.outdir, model.dataset)  # its training folder
    given_class(model, o.class_)  # a class the model cannot take: before any work
    if o.method == "slerp":  # before any work
        latent.require_gaussian(model, "--method slerp follows the sphere where a Gaussian "
                                "prior has its mass", "use --method linear")  # fmt: skip
    grids = o.random and model.latent_kind == "discrete"
    if o.round_trips not in (None, ROUND_TRIPS) and not grids:
        where = "add --random" if model.latent_kind == "discrete" else "leave it out"
        raise TorchVaeError("--round_trips applies to the code grids --random draws from a "
                            f"discrete model's fitted prior; {where}")  # fmt: skip
    a, b, ends, what, own = _endpoints(o, model, runtime)
    c = decoded_class(model, o.class_, () if own is None else own, "the path")
    if c is not None and ends is not None:  # each image encoded with its own class, or --class
        y = own if own is not None else torch.tensor([c, c])
        a = latent.encode_mean(model, a[None], y[:1])[0]
        b = latent.encode_mean(model, b[None], y[1:])[0]
    frames = to_uint8(latent.interpolate(model, a, b, o.steps, o.method, c))
    png, gif = o.outdir / "interpolate.png", o.outdir / "interpolate.gif"
    as_class = "" if c is None else f", decoded as class {model.config.classes[c]!r}"
    originals = ", the two originals at its ends" if ends is not None else ""
    title = f"{model_name(o.model)}: {o.method} path in {o.steps} steps{originals}{as_class}"
    with atomic_path(png) as tmp:
        save_png(with_title(enlarged(strip(frames, ends), frames.shape[1]), title), tmp)
    write_gif(frames, gif)
    log.info("wrote %s and %s: %d %s steps between %s%s", png, gif, o.steps, o.method, what,
             as_class)  # fmt: skip
