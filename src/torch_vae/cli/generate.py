"""``torch-vae generate``: samples of a model as PNG files and a grid."""

from __future__ import annotations

import logging

from ..analysis.pictures import CLASS_ROW, sample_classes, write_samples
from ..priors import choose_sampler
from .common import check_flags, check_outdir, check_outside_dataset, load
from .options import GenerateOptions, Runtime

log = logging.getLogger(__name__)


def run(o: GenerateOptions, runtime: Runtime) -> None:
    check_outdir(o.outdir, images="sample")
    model = load(o.model, runtime)
    check_outside_dataset(o.outdir, model.dataset)  # its training folder: the run would change
    check_flags(model.config, latent_dims=o.latent_dims, max_filters=o.max_filters,
                in_channels=o.nimg_channels)  # fmt: skip
    sample_classes(model, 1, o.seed, o.class_)  # a class it cannot take: before anything else
    rows = -(-o.nsamples // CLASS_ROW)  # rows of samples, a class each with --class all
    if o.class_ == "all" and model.conditional and rows < model.config.num_classes:
        log.warning("--class all draws a row of %d samples per class: --nsamples %d shows "
                    "%d of the %d classes (--nsamples %d for all)", CLASS_ROW, o.nsamples, rows,
                    model.config.num_classes, CLASS_ROW * model.config.num_classes)  # fmt: skip
    sampler = choose_sampler(o.model, o.sampler, model, o.temperature, o.guidance,
                             o.round_trips)  # fmt: skip
    draw = sampler.sample if sampler is not None else None
    out = write_samples(model, o.nsamples, o.outdir, o.seed, o.batchsize, not runtime.quiet,
                        o.precision, draw, o.class_)  # fmt: skip
    log.info("wrote %d sample%s to %s (overview: %s)", o.nsamples, "s" * (o.nsamples != 1),
             o.outdir, out)  # fmt: skip
