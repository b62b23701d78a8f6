"""``torch-vae manifold``: decoded codes on a grid over the latent space."""

from __future__ import annotations

import logging

import torch

from ..analysis import figures, latent
from ..errors import TorchVaeError
from ..io.png import to_uint8
from .common import (
    check_outdir,
    check_outside_dataset,
    decoded_class,
    load,
    model_name,
    resolve_dataset,
    split_images,
    split_labels,
)
from .options import ManifoldOptions, Runtime

log = logging.getLogger(__name__)


def run(o: ManifoldOptions, runtime: Runtime) -> None:
    check_outdir(o.outdir)
    model = load(o.model, runtime)
    check_outside_dataset(o.outdir, model.dataset)  # its training folder
    latent.require_gaussian(model, "manifold decodes a grid over a Gaussian latent")
    d, n = model.config.latent_dims, o.grid
    if d < 2:
        raise TorchVaeError(f"a manifold needs a model with 2 or more latent dimensions, not {d}")
    c = decoded_class(model, o.class_, (), "the grid")
    images, labels, source = None, None, ""
    if d > 2:
        dataset = resolve_dataset(model, o.dataset, o.model, convert=True, writes=o.outdir)
        images = split_images(model, dataset, o.split, o.data_dir, runtime)
        labels = split_labels(model, dataset, o.split, o.data_dir, len(images))  # to encode them
        images = images[: o.nimages or None]
        labels = labels[: len(images)] if labels is not None else None
        source = f" of the posterior means of {len(images)} {o.split} images of {dataset}"
    codes = latent.manifold_codes(model, n, images, labels)
    pictures = to_uint8(latent.decode(model, codes.reshape(n * n, d), c))
    pictures = pictures.reshape(n, n, *pictures.shape[1:])
    if d == 2:
        xs, ys = codes[0, :, 0].tolist(), codes[:, 0, 1].tolist()
        names = ("z0 (prior quantiles)", "z1 (prior quantiles)")
        title = f"{model_name(o.model)}: decoded codes at the prior's quantiles"
    else:
        xs = torch.linspace(-2, 2, n).tolist()
        ys = xs[::-1]
        names = tuple(f"{k} principal direction (standard deviations)" for k in ("first", "second"))
        title = f"{model_name(o.model)}: the plane of the two leading principal directions{source}"
    if c is not None:
        title += f", decoded as class {model.config.classes[c]!r}"
    out = figures.plot_manifold(pictures, xs, ys, names, title, o.outdir / "manifold.png")
    log.info("wrote %s: %d x %d decoded codes", out, n, n)
