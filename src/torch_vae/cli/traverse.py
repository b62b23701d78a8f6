"""``torch-vae traverse``: decoded codes that vary one latent dimension at a time, the
dimensions with the largest average KL first."""

from __future__ import annotations

import logging

import torch

from ..analysis import figures, latent
from ..io.png import to_uint8
from .common import (
    check_index,
    check_outdir,
    decoded_class,
    given_class,
    load,
    model_name,
    resolve_dataset,
    split_images,
    split_labels,
)
from .options import Runtime, TraverseOptions

log = logging.getLogger(__name__)


def run(o: TraverseOptions, runtime: Runtime) -> None:
    check_outdir(o.outdir)
    model = load(o.model, runtime)
    latent.require_gaussian(model, "traverse walks a Gaussian latent's dimensions")
    given_class(model, o.class_)  # a class the model cannot take: before any work
    dataset = resolve_dataset(model, o.dataset, o.model, convert=True, writes=o.outdir)
    images = split_images(model, dataset, o.split, o.data_dir, runtime)
    # a conditional model encodes each image with its class
    labels = split_labels(model, dataset, o.split, o.data_dir, len(images))
    own = None
    if o.index is not None:
        check_index(o.index, len(images), f"the {o.split} split of {dataset}")
        own = labels[o.index : o.index + 1] if labels is not None else None
    c = decoded_class(model, o.class_, () if own is None else own, "the traversal")
    first = slice(None, o.nimages or None)
    kl = latent.kl_per_dim(model, images[first], None if labels is None else labels[first])
    active = latent.active_dims(kl)
    dims = torch.argsort(kl, descending=True, stable=True)[: o.ndims].tolist()
    if o.index is None:
        z, around = torch.zeros(model.config.latent_dims), "the zero code"
        at = around
    else:
        z = latent.encode_mean(model, images[o.index : o.index + 1], own)[0]
        around = f"{o.split} image {o.index}"
        at = f"the code of {around} (its own values beside the rows)"
    if c is not None:
        around += f", decoded as class {model.config.classes[c]!r}"
        at += f", decoded as class {model.config.classes[c]!r}"
    rows = latent.traverse(model, z, dims, o.steps, o.span, c)
    flat = to_uint8(rows.flatten(0, 1))
    pictures = flat.reshape(*rows.shape[:2], *flat.shape[1:])
    d, n_active = model.config.latent_dims, int(active.sum())
    shown = "" if len(dims) == d else f"; the {len(dims)} with the largest KL shown"
    title = (f"{model_name(o.model)}: {n_active} of {d} latent dimensions active\n(average KL > "
             f"0.01 nats on {min(len(images), o.nimages or len(images))} {o.split} images)"
             f"{shown}\neach row sets one dimension to the values below, the others kept at "
             f"{at}")  # fmt: skip
    values = torch.linspace(-o.span, o.span, o.steps).tolist()
    own_values = None if o.index is None else z[dims].tolist()  # where the image itself is
    out = figures.plot_traversal(pictures, dims, kl[dims].tolist(), active[dims].tolist(), values,
                                 title, o.outdir / "traverse.png", own_values)  # fmt: skip
    log.info("wrote %s: %d dimensions x %d values around %s; %d of %d dimensions active",
             out, len(dims), o.steps, around, n_active, d)  # fmt: skip
