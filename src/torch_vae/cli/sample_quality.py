"""``torch-vae sample-quality``: generated samples against the test split in a feature space
(evaluation.sample_quality), as a JSON report and a table."""

from __future__ import annotations

from ..evaluation.reports import write_report
from ..evaluation.sample_quality import inception_line, pick_space, quality_report
from ..priors import choose_sampler
from .common import check_output_file, default_report, model_and_dataset
from .options import Runtime, SampleQualityOptions


def run(o: SampleQualityOptions, runtime: Runtime) -> dict:
    """sample-quality: measure, write the JSON report, print a table."""
    if o.report is not None:
        check_output_file(o.report, "--report", report=True)
    model, dataset = model_and_dataset(o.model, o.dataset, runtime)
    space = pick_space(o.features, o.classifier, model, dataset, model.device, o.batchsize)
    sampler = choose_sampler(o.model, o.sampler, model.config.latent_dims)
    report = quality_report(
        model, dataset, space, sampler, o.nsamples, o.seed, o.k, o.data_dir, o.batchsize,
        not runtime.quiet, o.inception, str(o.model),
    )  # fmt: skip
    path = o.report or default_report(o.model, f"sample-quality-{report['sampler']}")
    write_report(path, report)
    print_quality(report)
    if line := inception_line(o.inception):
        print(line)
    print(f"report: {path}")
    return report


def print_quality(r: dict) -> None:
    s, t = r["samples"], r["train_floor"]
    print(
        f"{r['dataset']} test ({r['n_test']} images) against {s['n_images']} samples from "
        f"{r['sampler_description']} and {t['n_images']} training images (the floor);"
    )
    print(f"{r['features']} features ({r['feature_dims']}-d), k = {r['k']}:")
    print(f"  {'':<22} {'samples':>10} {'floor':>10}")
    rows = [("Frechet distance", "fd"), ("precision", "precision"), ("recall", "recall")]
    if "class_kl" in s:
        rows.append(("class KL (nats)", "class_kl"))
    for name, key in rows:
        print(f"  {name:<22} {_number(s[key]):>10} {_number(t[key]):>10}")
    if "inception_fid" in r:
        print(f"  {'Inception FID':<22} {r['inception_fid']:>10.4f}")
    if "class_histogram" in s:
        names = r.get("class_names") or [str(i) for i in range(len(s["class_histogram"]))]
        print("  classes (samples / test): " + ", ".join(
            f"{n} {a:.3f}/{b:.3f}"
            for n, a, b in zip(names, s["class_histogram"], r["test_class_histogram"], strict=True)
        ))  # fmt: skip


def _number(value: float | None) -> str:
    return "inf" if value is None else f"{value:.4f}"
