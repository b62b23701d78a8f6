"""``torch-vae sample-quality``: generated samples (or reconstructions) against a reference
split in a feature space (evaluation.sample_quality), as a JSON report and a table; for a
conditional model, per class (``--class``) and with the classifier's class accuracy."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ..data.datasets import absolute_name
from ..evaluation.reports import dataset_tag, write_report
from ..evaluation.sample_quality import (
    accuracy_classifier,
    chosen_class,
    pick_space,
    quality_report,
)
from ..priors import choose_sampler
from .common import (
    FEW_IMAGES,
    check_output_file,
    check_outside_dataset,
    check_report_folder,
    default_report,
    held_out_rows,
    model_and_dataset,
    recorded_split,
    split_images,
    validation_rows_of,
)
from .options import NSAMPLES, Runtime, SampleQualityOptions

log = logging.getLogger(__name__)


def run(o: SampleQualityOptions, runtime: Runtime) -> dict:
    """sample-quality: measure, write the JSON report, print a table."""
    # before the work: the report's folder (the default's name depends on the sampler used)
    if o.report is not None:
        check_output_file(o.report, "--report", report=True)
    else:
        check_report_folder(default_report(o.model, "sample-quality").parent)
    model, dataset = model_and_dataset(o.model, o.dataset, runtime, digest=True)
    if o.report is not None:  # never among the images read: the next command would read it
        check_outside_dataset(Path(o.report), dataset, model.dataset, flag="--report")
    recorded = recorded_split(o, model, dataset, "--reference") if o.reference == "val" else None
    if o.reconstructions and o.nsamples != NSAMPLES:
        log.warning("--nsamples sets how many samples are drawn; --reconstructions measures "
                    "the reconstructions of every reference image (and as many training "
                    "images for the floor), whatever --nsamples says")  # fmt: skip
    chosen_class(model, o.class_)  # a class the model cannot take: before any work
    n_train = _n_train(model, dataset, o, runtime)
    if recorded is not None:  # or a one-line error where the dataset changed since
        fit_rows, val_rows = validation_rows_of(o, n_train, recorded, "--reference")
    else:
        fit_rows, val_rows, _ = held_out_rows(o.model, n_train, o.data_dir)
    features = "inception" if o.inception else o.features
    space = pick_space(features, o.classifier, model, dataset, model.device, o.batchsize,
                       not runtime.quiet)  # fmt: skip
    judge = accuracy_classifier(space, o.classifier, model, dataset, model.device, o.batchsize)
    sampler = None
    if not o.reconstructions:
        sampler = choose_sampler(o.model, o.sampler, model, o.temperature, o.guidance,
                                 o.round_trips)  # fmt: skip
    rows = (fit_rows, val_rows) if val_rows is not None else None
    start = time.perf_counter()
    report = quality_report(
        model, dataset, space, sampler, o.nsamples, o.seed, o.k, o.data_dir, o.batchsize,
        not runtime.quiet, str(o.model), o.reference, rows,
        "reconstructions" if o.reconstructions else "samples", not o.no_floor, o.class_, judge,
    )  # fmt: skip
    report["seconds"] = round(time.perf_counter() - start, 1)
    report["model_sha256"] = model.weights_sha256
    tag = "reconstructions" if o.reconstructions else report["sampler"]
    suffix = "" if space.name == "classifier" else f"-{space.name}"
    if space.name == "classifier" and o.classifier is not None:  # not the shipped one
        suffix += f"-clf-{dataset_tag(Path(o.classifier).resolve().name)}"
    if report.get("class") is not None:
        suffix += f"-class-{dataset_tag(str(report['class'])).replace(' ', '_')}"
    # a choice off its default names the report, so that it never replaces the default's
    if dataset != absolute_name(model.dataset or dataset):
        suffix += f"-{dataset_tag(dataset)}"
    suffix += f"-{o.reference}" if o.reference != "test" else ""
    suffix += f"-n{o.nsamples}" if o.nsamples != NSAMPLES and not o.reconstructions else ""
    suffix += f"-seed{o.seed}" if o.seed else ""
    path = o.report or default_report(o.model, f"sample-quality-{tag}{suffix}")
    _say_rough(report, o.reconstructions)
    print_quality(report)  # first: the numbers are on the screen whatever befalls the file
    write_report(path, report)
    print(f"report: {path}")
    return report


def _say_rough(report: dict, reconstructions: bool) -> None:
    """Warnings where the reference images or the samples are too few for more than a rough
    measure."""
    if report["n_reference"] < FEW_IMAGES:
        log.warning("the %s split holds %d images: distances measured against so few are "
                    "rough (FID's bias alone is large below a few thousand); compare models "
                    "only against the same images", report["reference"],
                    report["n_reference"])  # fmt: skip
    n = report["samples"]["n_images"]
    if not reconstructions and n < FEW_IMAGES:
        log.warning("measured on %d samples: the FD and KID fall as the samples grow, and the "
                    "recall rests on the k-NN balls of so few points; compare samplers and "
                    "models only at the same --nsamples (%d or more for more than a rough "
                    "measure)", n, FEW_IMAGES)  # fmt: skip


def _n_train(model, dataset, o: SampleQualityOptions, runtime: Runtime) -> int:
    return len(split_images(model, dataset, "train", o.data_dir, runtime))


def print_quality(r: dict) -> None:
    s, t = r["samples"], r.get("train_floor")
    floor = f" and {t['n_images']} training images (the floor)" if t else ""
    made = "images" if r["what"] == "reconstructions" else "samples"
    print(
        f"{r['dataset']} {r['reference']}{_of_class(r)} ({r['n_reference']} images at "
        f"{r['measured_size']}x{r['measured_size']}) against {s['n_images']} {made}"
        f"{_classes(r)} from {r['sampler_description']}{floor};"
    )
    fd = "FID" if r["features"] == "inception" else "Frechet distance"
    print(f"{r['features']} features ({r['feature_dims']}-d), k = {r['k']}:")
    print(f"  {'':<22} {made:>10} {'floor' if t else '':>10}".rstrip())
    rows = [(fd, "fd"), ("KID", "kid"), ("precision", "precision"), ("recall", "recall")]
    if "class_kl" in s:
        rows.append(("class KL (nats)", "class_kl"))
    for name, key in rows:
        print(f"  {name:<22} {_number(s[key]):>10} {_number(t[key]) if t else '':>10}".rstrip())
    if "class_kl" in s and (s["class_kl"] is None or (t and t.get("class_kl") is None)):
        print(f"  (class KL inf: some images are classified as a class that none of the "
              f"{r['reference']} images is; null in the JSON report)")  # fmt: skip
    if "class_histogram" in s:
        names = r.get("class_names") or [str(i) for i in range(len(s["class_histogram"]))]
        ref = r["reference_class_histogram"]
        print(f"  classes (samples / {r['reference']}): " + ", ".join(
            f"{n} {a:.3f}/{b:.3f}" for n, a, b in zip(names, s["class_histogram"], ref, strict=True)
        ))  # fmt: skip
    if "per_class" in r:
        print_per_class(r)
    if "accuracy" in r:
        a = r["accuracy"]
        print(f"class accuracy under the classifier {a['classifier']}: {a['overall']:.4f} of "
              f"{a['n_images']} {made} classified as the class they were made for")  # fmt: skip
        if "per_class" not in r and len(a["per_class"]) > 1:
            print("  per class: " + ", ".join(
                f"{n} {v:.3f}" for n, v in a["per_class"].items()
            ))  # fmt: skip


def print_per_class(r: dict) -> None:
    """The table of ``--class all``: each class against the reference images of that class."""
    fd = "FID" if r["features"] == "inception" else "FD"
    accuracy = r.get("accuracy", {}).get("per_class", {})
    print("per class, against the reference images of the class:")
    print(f"  {'class':<16} {'n_ref':>6} {fd:>10} {'floor ' + fd:>10} {'KID':>10} "
          f"{'precision':>10} {'recall':>10} {'accuracy':>10}")  # fmt: skip
    for name, e in r["per_class"].items():
        s, t = e["samples"], e.get("train_floor")
        acc = f"{accuracy[name]:.4f}" if name in accuracy else ""
        print(f"  {name[:16]:<16} {e['n_reference']:>6} {_number(s['fd']):>10} "
              f"{_number(t['fd']) if t else '':>10} {_number(s['kid']):>10} "
              f"{_number(s['precision']):>10} {_number(s['recall']):>10} {acc:>10}")  # fmt: skip


def _of_class(r: dict) -> str:
    c = r.get("class")
    return f" images of class {c!r}" if c not in (None, "all") else ""


def _classes(r: dict) -> str:
    if "class" not in r or r["what"] == "reconstructions":
        return ""
    c = r["class"]
    if c is None:
        return " (classes drawn at random)"
    if c == "all":
        k = len(r["per_class"])
        return f" ({r['samples']['n_images'] // k} of each of {k} classes)"
    return f" of class {c!r}"


def _number(value: float | None) -> str:
    return "inf" if value is None else f"{value:.4f}"
