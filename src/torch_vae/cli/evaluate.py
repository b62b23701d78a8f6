"""``torch-vae evaluate``: the objective, reconstruction quality, active units and the NLL of a
model on a split (evaluation.likelihood), as a JSON report and a table."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from ..errors import TorchVaeError
from ..evaluation.likelihood import calibrate_sigma, evaluate_model
from ..evaluation.reports import dataset_tag, write_report
from .common import (
    FEW_IMAGES,
    check_output_file,
    check_outside_dataset,
    default_report,
    first_images,
    model_and_dataset,
    recorded_split,
    say_held_out_among,
    say_left_out,
    split_images,
    split_labels,
    validation_rows_of,
)
from .options import IW_SAMPLES, REFINE_LR, EvaluateOptions, Runtime

log = logging.getLogger(__name__)

SIGMA_IMAGES = 10000  # training images the decoder sigma is calibrated on


def run(o: EvaluateOptions, runtime: Runtime) -> dict:
    """The evaluate command: measure, print a table, write the JSON report."""
    if o.report is not None:
        check_output_file(o.report, "--report", report=True)
    model, dataset = model_and_dataset(o.model, o.dataset, runtime, convert=True, digest=True)
    if o.report is not None:  # never among the images read: the next command would read it
        check_outside_dataset(Path(o.report), dataset, model.dataset, flag="--report")
    device, size, progress = model.device, model.config.image_size, not runtime.quiet
    split = "train" if o.split == "val" else o.split
    recorded = recorded_split(o, model, dataset) if o.split == "val" else {}  # before any read
    images = split_images(model, dataset, split, o.data_dir, runtime)
    labels = split_labels(model, dataset, split, o.data_dir, len(images))
    fit_rows = None  # the training images the decoder's sigma is calibrated on: all of them
    if o.split == "val":  # ... but those held out, which are measured
        fit_rows, rows = validation_rows_of(o, len(images), recorded)
        images, labels = images[rows.numpy()], None if labels is None else labels[rows]
    else:  # the validation split holds none of them
        say_left_out(o.model, model, dataset, o.split, "measured")
        say_held_out_among(o.model, model, dataset, o.split, "measure")
    path = o.report
    if path is None:  # the default's name needs the split's size; checked before the work too
        discrete = model.latent_kind == "discrete"
        path = default_report(o.model, report_name(o, dataset, len(images), discrete))
        check_output_file(path, "the report (--report to write it elsewhere)", report=True)
    images = first_images(images, o.nimages, o.split, "measured")
    train = torch.from_numpy(split_images(model, dataset, "train", o.data_dir, runtime))
    train_labels = split_labels(model, dataset, "train", o.data_dir, len(train))
    if fit_rows is not None:
        train = train[fit_rows]
        train_labels = None if train_labels is None else train_labels[fit_rows]
    sigma = calibrate_sigma(model, train[:SIGMA_IMAGES], device, seed=o.seed,
                            labels=_first(train_labels, SIGMA_IMAGES))  # fmt: skip
    report = evaluate_model(
        model, torch.from_numpy(images), device, sigma, o.iw_samples, o.batchsize, o.seed,
        progress, o.refine_steps, o.refine_lr, _first(labels, len(images)),
    )  # fmt: skip
    finite = all(math.isfinite(v) for v in report.values() if isinstance(v, float))
    if o.refine_steps and (not finite or report["objective"] > report["encoder_objective"]):
        raise TorchVaeError(
            f"the posterior refinement diverged with --refine_lr {o.refine_lr} (objective "
            f"{report['objective']:.4g}, the encoder's {report['encoder_objective']:.4f}); pass "
            "a smaller --refine_lr, e.g. 0.01 (nothing was written)"
        )
    c = model.config
    report = {"model": str(o.model), "model_sha256": model.weights_sha256, "dataset": dataset,
              "split": o.split, "image_size": size,
              "latent_dims": c.latent_dims, "native_size": c.native_size,
              "network_size": c.network_size, "parameters": model.num_parameters(),
              "seed": o.seed, **report}  # fmt: skip
    if model.conditional:  # every number is given each image's class: the NLL is -log p(x | y)
        report["conditional"] = True
    print_report(report, o)  # first: the numbers are on the screen whatever befalls the file
    _say_few(report)
    write_report(path, report)
    print(f"report: {path}")
    return report


def _say_few(report: dict) -> None:
    """A warning when the images measured are too few for the decimals of their means: the
    objective's standard error over them (and the NLL's, in nats)."""
    n = report["n_images"]
    if n >= FEW_IMAGES:
        return
    if report["objective_stderr"] is None:  # one image: no spread to estimate it from
        log.warning("measured on 1 image: its numbers say nothing of the model's mean over "
                    "images (no standard error can be estimated from one)")  # fmt: skip
        return
    nll = f", the NLL's {report['nll_stderr']:.2f} nats" if "nll_stderr" in report else ""
    log.warning("measured on %d images, whose means are rough: the objective's standard error "
                "is %.2f%s; compare models only on the same images", n,
                report["objective_stderr"], nll)  # fmt: skip


def report_name(o: EvaluateOptions, dataset: str, n_split: int, discrete: bool = False) -> str:
    """``eval-<dataset>-<split>``, then each setting that changes the numbers where it is off
    its default (``-firstN``, ``-iwK``, ``-refineN``, ``-lrX``, ``-seedS``), so that a report
    never replaces one measured otherwise (a quick ``--iw_samples 0`` a long NLL's). A
    ``discrete`` model's NLL is the same whatever K (one code per image): ``-iw0`` alone."""
    name = f"eval-{dataset_tag(dataset)}-{o.split}"
    name += f"-first{o.nimages}" if 0 < o.nimages < n_split else ""
    changed = o.iw_samples == 0 if discrete else o.iw_samples != IW_SAMPLES
    name += f"-iw{o.iw_samples}" if changed else ""
    name += f"-refine{o.refine_steps}" if o.refine_steps else ""
    name += f"-lr{o.refine_lr:g}" if o.refine_steps and o.refine_lr != REFINE_LR else ""
    return name + (f"-seed{o.seed}" if o.seed else "")


def _first(labels: torch.Tensor | None, n: int) -> torch.Tensor | None:
    return None if labels is None else labels[:n]


def print_report(report: dict, o: EvaluateOptions) -> None:
    discrete = "codes_used" in report  # one code per image: nothing sampled, the KL log K each
    rows = [
        (
            "objective (SSE + KL)" if discrete else "objective (SSE + KL, z sampled)",
            report["objective"],
        ),
        ("sum of squared errors", report["sse"]),
        ("KL (log codebook size per code)" if discrete else "KL", report["kl"]),
        ("MSE per pixel (posterior mean)", report["mse"]),
        ("PSNR (dB; the mean of each image's)", report["psnr"]),
    ]
    if "codes_used" in report:  # a discrete latent
        rows += [
            ("codes used", f"{report['codes_used']} / {report['codebook_size']}"),
            ("codebook perplexity", report["perplexity"]),
        ]
    else:
        active = report["active_units"]
        shown = "n/a (1 image)" if active is None else f"{active} / {report['latent_dims']}"
        rows.append(("active units", shown))
    if o.iw_samples:
        rows += [
            (
                "NLL bound at the code, nats (any K)"
                if discrete
                else f"NLL, nats ({o.iw_samples} importance samples)",
                report["nll"],
            ),
            ("bits per dimension", report["bits_per_dim"]),
        ]
    size, count = report["image_size"], report["n_images"]
    print(f"{report['dataset']} {o.split}, {count} image{'s' * (count != 1)} at {size}x{size}, "
          "per image:")  # fmt: skip
    if (n := report["native_size"]) and (w := report["network_size"]):
        print(f"  (networks at {w}x{w} on the {n}x{n} originals, their output upsampled: "
              f"--network_size {w})")  # fmt: skip
    elif n:
        print(f"  (decoder output projected onto upsamplings of {n}x{n} images: --native_size {n})")
    if report.get("conditional"):
        print("  (conditional model: each image encoded and decoded with its class; the NLL is "
              "-log p(x | class))")  # fmt: skip
    if o.refine_steps:
        print(f"  (posteriors refined with {o.refine_steps} steps at lr {o.refine_lr})")
    for name, value in rows:
        shown = f"{value:>12.4f}" if isinstance(value, float) else f"{value:>12}"
        print(f"  {name:<42} {shown}")
