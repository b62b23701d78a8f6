"""``torch-vae fit-sampler``: a prior fitted to the posterior means of the images the model was
trained on, saved beside the model (priors/), and scored on its validation split."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ..errors import TorchVaeError
from ..evaluation.sample_quality import (
    encoder_space,
    make_reference,
    measure,
    sample_images,
    sample_labels,
)
from ..io.files import unwritable
from ..priors import PRIORS, check_kind, fit_sampler, load_sampler, posterior_means, sampler_path
from ..priors.mixture import check_components
from .common import (
    FEW_IMAGES,
    check_flags,
    held_out_rows,
    is_shipped,
    model_and_dataset,
    split_images,
    split_labels,
)
from .options import FitSamplerOptions, Runtime

log = logging.getLogger(__name__)
SCORE_SEED = 0
NLL_DRAWS = 1000  # a code prior's own draws whose NLL (its entropy) the score records
SCORE_K = 3  # the neighbours that set each image's ball in the score's precision and recall


def run(o: FitSamplerOptions, runtime: Runtime) -> Path:
    if is_shipped(o.model):
        raise TorchVaeError(
            f"{o.model} is a shipped model, whose folder holds the samplers fitted to it; fit "
            f"a copy instead: cp -r {o.model} my-model, then --model my-model"
        )
    model, dataset = model_and_dataset(o.model, o.dataset, runtime)
    check_kind(model, o.sampler)  # before any work: a kind this model's latent can take
    check_network_flags(o)
    if not o.overwrite:
        keep_fitted(o.model, o.sampler)
    problem = unwritable(sampler_path(o.model, o.sampler).parent)
    if problem:
        raise TorchVaeError(f"the sampler goes beside the model, which cannot be written there: "
                            f"{problem}; fit a copy of the model (nothing was fitted)")  # fmt: skip
    check_flags(model.config, latent_dims=o.latent_dims)
    images = split_images(model, dataset, "train", o.data_dir, runtime)
    # a conditional model's latents are the posterior means given each image's class
    labels = split_labels(model, dataset, "train", o.data_dir, len(images))
    fit_rows, held_out, where = held_out_rows(o.model, len(images), o.data_dir)
    if fit_rows is not None:
        rows = fit_rows[: o.nimages or None].numpy()
    else:
        rows = slice(None, o.nimages or None)
    if o.sampler == "gmm" and o.components is not None:  # before the images are encoded
        # the rows' count: an index array's length, or a slice's view (no copy of the images)
        check_components(o.components, len(rows) if fit_rows is not None else len(images[rows]))
    info = {"dataset": dataset, "split": "train" if fit_rows is None else "train - validation"}
    if labels is not None:
        info["latents"] = "posterior means given each image's class"
    score = None
    if o.nscore:
        if held_out is not None:
            rows_held = held_out[: o.nscore].numpy()
        elif fit_rows is not None:  # none held out: the last of those fitted, of its classes
            rows_held = fit_rows[-o.nscore :].numpy()
        else:
            rows_held = slice(-o.nscore, None)
        score = _scorer_or_none(model, images[rows_held], where, o, _at(labels, rows_held))
    options = {"components": o.components, "steps": o.steps, "seed": o.seed, "hidden": o.hidden,
               "layers": o.layers, "dropout": o.dropout, "precision": o.precision,
               "store": o.store}  # fmt: skip
    prior, path = fit_sampler(model, o.model, images[rows], o.sampler, options, o.batchsize, info,
                              not runtime.quiet, score, _at(labels, rows))  # fmt: skip
    if score is not None:
        v = prior.info["validation"]
        log.info("scored on %d %s in the model's encoder features: FD %.4f, precision %.3f, "
                 "recall %.3f", v["n_images"], v["images"], v["fd"], v["precision"],
                 v["recall"])  # fmt: skip
        if "nll" in v:
            log.info("NLL per code of the %s' code grids: %.4f nats; of %d of its own draws "
                     "(its entropy): %.4f", v["images"], v["nll"], NLL_DRAWS,
                     v["sample_nll"])  # fmt: skip
    return path


def _scorer_or_none(model, images: np.ndarray, where: str, o: FitSamplerOptions, labels):
    """``scorer`` of the held-out ``images``, with a warning where they are too few for more
    than a rough score, or None (and a warning) where they are too few for any."""
    if len(images) <= SCORE_K:  # precision and recall need each image's k-th nearest other one
        log.warning("the %d %s are too few to score the sampler (it takes more than %d); it "
                    "is fitted without a score (--nscore 0 says so)", len(images), where,
                    SCORE_K)  # fmt: skip
        return None
    if len(images) < FEW_IMAGES:
        log.warning("the sampler is scored on %d %s, too few for more than a rough score: "
                    "compare samplers only on the same images", len(images), where)  # fmt: skip
    return scorer(model, images, where, o.batchsize, labels)


def check_network_flags(o: FitSamplerOptions) -> None:
    """A one-line error for --steps, --hidden, --layers or --dropout given to a kind whose
    network has no such setting (or that has no network)."""
    flags = (("--steps", o.steps, "sets the training of"), ("--hidden", o.hidden, "sizes"),
             ("--layers", o.layers, "sizes"), ("--dropout", o.dropout, "regularises"))  # fmt: skip
    for flag, value, does in flags:
        takes = [k for k, cls in PRIORS.items() if flag[2:] in getattr(cls, "DEFAULTS", {})]
        if value and o.sampler not in takes:
            kinds_named = " or ".join([", ".join(takes[:-1]), *takes[-1:]] if takes[:-1] else takes)
            raise TorchVaeError(f"{flag} {does} the network of a {kinds_named} sampler; a "
                                f"{o.sampler} sampler takes no {flag} (leave it out)")  # fmt: skip
    if o.components is not None and o.sampler != "gmm":
        raise TorchVaeError(f"--components sizes a gmm sampler's mixture; a {o.sampler} sampler "
                            "takes none (leave it out)")  # fmt: skip
    in_bf16 = [k for k, cls in PRIORS.items() if getattr(cls, "fits_in_bf16", False)]
    if o.precision == "bf16" and o.sampler not in in_bf16:
        raise TorchVaeError(f"--precision bf16 applies to a {' or '.join(in_bf16)} sampler's "
                            f"fit; a {o.sampler} sampler fits in fp32 (leave it out)")  # fmt: skip
    in_half = [k for k, cls in PRIORS.items() if getattr(cls, "stores_half", False)]
    if o.store == "fp16" and o.sampler not in in_half:
        raise TorchVaeError(f"--store fp16 applies to a {' or '.join(in_half)} sampler's "
                            f"weights; a {o.sampler} sampler is stored as fitted (leave it "
                            "out)")  # fmt: skip


def keep_fitted(model_path: Path, kind: str) -> None:
    """A one-line error if ``model_path`` already holds a readable sampler of ``kind`` fitted
    to its present weights: hours of fitting, not to be replaced by accident. A damaged one,
    or one fitted to other weights, is replaced (it could not be used)."""
    path = sampler_path(model_path, kind)
    if not path.is_file():
        return
    try:
        fitted = load_sampler(model_path, kind)
    except TorchVaeError:
        log.info("replacing %s (damaged, or fitted to other weights)", path)
        return
    seconds = fitted.info.get("fit_seconds")
    took = f", fitted in {seconds:,.0f} s" if isinstance(seconds, int | float) else ""
    raise TorchVaeError(
        f"{path} already holds a {kind} sampler fitted to these weights ({fitted.describe()}"
        f"{took}); pass --overwrite to replace it, or fit a copy of the model"
    )


def _at(labels: torch.Tensor | None, rows) -> torch.Tensor | None:
    return None if labels is None else labels[rows]


def scorer(model, images: np.ndarray, where: str, batch: int, labels=None):
    """``score(prior)``: as many samples as ``images`` against them in the model's encoder
    features (the same for every sampler of this model: what ``--sampler auto`` compares). A
    conditional model encodes ``images`` with their classes ``labels``, and its samples (of
    classes drawn at random) with theirs."""
    space = encoder_space(model, batch)
    ref = make_reference(space, torch.from_numpy(np.asarray(images)), SCORE_K, labels=labels)
    discrete = model.latent_kind == "discrete"
    codes = posterior_means(model, images, batch, labels) if discrete else None

    def score(prior) -> dict:
        fake = sample_images(model, prior, len(images), SCORE_SEED, batch)
        m = measure(space, fake, ref, labels=sample_labels(model, len(images), SCORE_SEED))
        out = {"features": "encoder", "images": where, "n_images": len(images),
               "seed": SCORE_SEED, "fd": m["fd"], "precision": m["precision"],
               "recall": m["recall"]}  # fmt: skip
        if codes is not None and hasattr(prior, "nll"):  # a code prior has a likelihood
            out["nll"] = prior.nll(codes, labels)
            drawn = sample_labels(model, NLL_DRAWS, SCORE_SEED)
            own = prior.sample(NLL_DRAWS, torch.Generator().manual_seed(SCORE_SEED), drawn)
            out["sample_nll"] = prior.nll(own, drawn)
        return out

    return score
