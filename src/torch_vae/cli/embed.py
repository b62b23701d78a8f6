"""``torch-vae embed``: a scatter plot of a split's posterior means (a discrete model's encoder
outputs), coloured by class."""

from __future__ import annotations

import logging

from ..analysis import figures, latent
from ..errors import TorchVaeError
from .common import check_outdir, load, model_name, resolve_dataset, split_images, split_labels
from .options import EmbedOptions, Runtime

log = logging.getLogger(__name__)


def _labels(dataset: str, split: str, data_dir, n: int):
    """The first ``n`` labels of the split and the class names, or (None, None) with a warning
    when they cannot be had: a map without colours is still a map."""
    names = latent.class_names(dataset, data_dir)
    try:
        labels = latent.load_labels(dataset, split, data_dir)
    except TorchVaeError as exc:
        log.warning("no class colours: %s", exc)
        return None, None
    if labels is None or names is None:
        log.warning("no class colours: %s has no labels (a folder's images have them "
                    "from its subfolders)", dataset)  # fmt: skip
        return None, None
    return labels[:n], names


def run(o: EmbedOptions, runtime: Runtime) -> None:
    check_outdir(o.outdir)
    model = load(o.model, runtime)
    discrete = model.latent_kind == "discrete"
    if model.config.latent_dims < 2 and not discrete:
        raise TorchVaeError("a 2-D map needs a model with 2 or more latent dimensions, not 1")
    dataset = resolve_dataset(model, o.dataset, o.model, convert=True, writes=o.outdir)
    images = split_images(model, dataset, o.split, o.data_dir, runtime)
    # a conditional model encodes each image with its class
    condition = split_labels(model, dataset, o.split, o.data_dir, len(images))
    images = images[: o.nimages or None]
    if len(images) < 2:
        raise TorchVaeError(f"the {o.split} split of {dataset} has too few images to map")
    if condition is not None:
        condition = condition[: len(images)]
    xy = latent.embed(model, images, o.method, o.seed, condition).numpy()
    labels, names = _labels(dataset, o.split, o.data_dir, len(images))
    d = model.config.latent_dims
    method = o.method if o.method != "auto" else ("code" if d == 2 and not discrete else "pca")
    axes = {"code": ("z0", "z1"), "pca": ("PC1", "PC2"), "umap": ("UMAP 1", "UMAP 2")}[method]
    how = {"code": "the code itself", "pca": "principal components", "umap": "UMAP"}[method]
    title = (f"{model_name(o.model)} (latent {d}): posterior means of {len(images)} {o.split} "
             f"images of {dataset}, {how}")  # fmt: skip
    if discrete:
        h, w = model.latent_shape
        title = (f"{model_name(o.model)} ({h}x{w} codes of {model.codebook_size}): encoder "
                 f"outputs z_e of {len(images)} {o.split} images of {dataset}, {how}")  # fmt: skip
    out = figures.plot_embedding(xy, labels, names, axes, title, o.outdir / "embed.png")
    log.info("wrote %s: %d %s images mapped by %s%s", out, len(images), o.split, how,
             "" if labels is not None else ", uncoloured")  # fmt: skip
