"""``torch-vae score``: each image's anomaly scores (evaluation.anomaly) into a CSV or JSON
file; given out-of-distribution images (another dataset or folder, ``--ood``, or one class of
the dataset, ``--ood_class``), the ROC of every score, a table and a picture."""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..analysis.figures import plot_anomaly
from ..data import check_channels, get_dataset, load_split
from ..data.datasets import FolderDataset, absolute_name
from ..data.imaging import with_channels
from ..data.labels import class_names, load_labels, rows_without
from ..errors import TorchVaeError
from ..evaluation.anomaly import HELP, image_scores, roc, score_names
from ..evaluation.likelihood import calibrate_sigma
from ..evaluation.reports import dataset_tag, write_report
from ..io.files import write_text_atomic
from ..models.conditions import class_index
from .common import (
    FEW_IMAGES,
    check_output_file,
    check_outside_dataset,
    default_report,
    model_and_dataset,
    model_name,
    note_conversion,
    recorded_split,
    say_held_out_among,
    split_files,
    split_images,
    trained_without,
    validation_rows_of,
)
from .options import Runtime, ScoreOptions

log = logging.getLogger(__name__)
SIGMA_IMAGES = 10000  # training images the decoder sigma is calibrated on, as evaluate's


@dataclass
class ImageSet:
    """Images to score (uint8 (N, H, W, C)) and, for each, where it comes from."""

    name: str  # how the table names them
    images: np.ndarray
    dataset: str
    split: list[str]  # each image's split of ``dataset``
    index: np.ndarray  # each image's row in that split
    label: np.ndarray | None  # each image's class in ``dataset`` (-1: none)
    file: list[str] | None = None  # a folder's: each image's path in the folder


def run(o: ScoreOptions, runtime: Runtime) -> dict:
    """The score command: score, write the file(s), print a table."""
    start = time.perf_counter()
    if o.out is not None:
        output_paths(o, "")  # a bad --out is told before the model is loaded
    model, dataset = model_and_dataset(o.model, o.dataset, runtime, convert=True, digest=True)
    out, summary_path, figure = output_paths(o, dataset)
    check_inputs(o, model, dataset, out, figure)
    inlier, outlier, held, fit = image_sets(model, dataset, o, runtime)
    excluded = set(trained_without(o.model)) | set(held)
    sigma = decoder_sigma(model, dataset, excluded, o, runtime, fit)
    progress = not runtime.quiet
    sets = [s for s in (inlier, outlier) if s is not None]
    scores = [image_scores(model, s.images, model.device, sigma, o.iw_samples, o.batchsize,
                           o.seed, progress, f"scoring {s.name}")  # fmt: skip
              for s in sets]  # fmt: skip
    names = score_names(o.iw_samples)
    summary = {
        "model": str(o.model), "model_sha256": model.weights_sha256, "dataset": dataset,
        "split": o.split,
        "image_size": model.config.image_size, "decoder_sigma": sigma,
        "iw_samples": o.iw_samples, "seed": o.seed, "complexity": "PNG, zlib level 9",
        "in_distribution": describe(inlier),
    }  # fmt: skip
    if outlier is not None:
        summary["out_of_distribution"] = describe(outlier)
        summary["scores"] = {n: {**roc(scores[0][n], scores[1][n], o.fpr),
                                 "mean_in": float(scores[0][n].mean()),
                                 "mean_ood": float(scores[1][n].mean())}
                             for n in names}  # fmt: skip
    else:
        summary["scores"] = {n: {"mean": float(scores[0][n].mean())} for n in names}
    sources = ("in", "ood")[: len(scores)]
    summary["png_bpd_mean"] = {
        k: float(v["png_bpd"].mean()) for k, v in zip(sources, scores, strict=True)
    }
    summary["seconds"] = round(time.perf_counter() - start, 1)
    rows = image_rows(sets, scores, ("in", "ood"))
    if out.suffix.lower() == ".csv":
        write_text_atomic(out, csv_text(rows))
        write_report(summary_path, summary)
    else:
        write_report(out, {**summary, "images": rows})
    if outlier is not None:
        title = f"{model_name(o.model)}: {inlier.name} against {outlier.name}"
        pairs = {n: (scores[0][n], scores[1][n]) for n in names}
        plot_anomaly(pairs, summary["scores"], (inlier.name, outlier.name), title, figure, HELP)
    print_summary(summary, inlier, outlier, o)
    if outlier is not None:
        _say_few(len(inlier.images), o.fpr)
    print(f"scores: {out}" + (f", summary: {summary_path}" if summary_path != out else ""))
    if outlier is not None:
        print(f"picture: {figure}")
    return summary


def _say_few(n_in: int, fpr: float) -> None:
    """A warning when the in-distribution images are too few for more than a rough AUROC and
    threshold: the false-positive rate moves in steps of 1/n_in."""
    if n_in >= FEW_IMAGES:
        return
    allowed = math.floor(n_in * fpr + 1e-9)
    log.warning("the AUROC and the thresholds rest on %d in-distribution images, rough: the "
                "false-positive rate moves in steps of 1/%d, and --fpr %g lets %d of them score "
                "above the threshold%s; compare only on the same images", n_in, n_in, fpr,
                allowed, " (it is the highest in-distribution score)" if allowed == 0 else "",
                )  # fmt: skip


def check_inputs(o: ScoreOptions, model, dataset: str, out: Path, figure: Path) -> None:
    """One-line errors, before any image is read: --ood the very images scored, the picture
    inside an image folder read, a conditional model."""
    flag = "--figure" if o.figure is not None else f"--out {out}: its picture"
    ood = absolute_name(o.ood) if o.ood else None
    if ood is not None and ood == dataset:  # the same images, or the scored ones among them
        raise TorchVaeError(
            f"--ood {o.ood} is the dataset scored as in-distribution (--dataset, by default the "
            "model's): its images cannot be told from themselves; pass other images as --ood, "
            "or --ood_class for one of its classes"
        )
    if o.ood is not None or o.ood_class is not None:  # else no picture is drawn
        check_outside_dataset(figure, dataset, ood, model.dataset, flag=flag)
    check_outside_dataset(out, dataset, ood, model.dataset, flag="--out")
    if model.conditional:
        raise TorchVaeError(
            "score needs an unconditional model: a conditional one gives the likelihood of an "
            "image given its class, which out-of-distribution images do not have; score a "
            "model trained without --conditional"
        )


def output_paths(o: ScoreOptions, dataset: str) -> tuple[Path, Path, Path]:
    """The scores file, the summary file (the same for JSON) and the picture, each checked
    before any work."""
    if o.out is not None:
        out = Path(o.out)
    else:
        tag = f"score-{dataset_tag(dataset)}-{o.split}"
        if o.ood is not None:
            tag += f"-vs-{dataset_tag(absolute_name(o.ood))}"
        elif o.ood_class is not None:
            tag += f"-ood-class-{dataset_tag(o.ood_class)}"
        if o.nimages:  # never the name of a whole split's scores
            tag += f"-first{o.nimages}"
        out = default_report(o.model, tag)
    summary = out.with_suffix(".summary.json") if out.suffix.lower() == ".csv" else out
    figure = Path(o.figure) if o.figure is not None else out.with_suffix(".png")
    figure_flag = "--figure" if o.figure is not None else "the picture of --out"
    for path, flag in ((out, "--out"), (summary, "--out"), (figure, figure_flag)):
        check_output_file(path, flag, report=True)
    if o.figure is not None and figure.suffix.lower() != ".png":
        raise TorchVaeError(f"--figure {figure} must end in .png")
    return out, summary, figure


def image_sets(model, dataset: str, o: ScoreOptions, runtime: Runtime):
    """(in-distribution images, out-of-distribution images or None, the classes held out, the
    training rows the decoder sigma may be calibrated on: None for all)."""
    split = "train" if o.split == "val" else o.split  # val: the images the run held out of it
    recorded = recorded_split(o, model, dataset) if o.split == "val" else None  # before reads
    images = split_images(model, dataset, split, o.data_dir, runtime)
    labels = load_labels(dataset, split, o.data_dir)
    n, fit = len(images), None
    rows = np.arange(n)
    if recorded is not None:
        fit, held_out = validation_rows_of(o, n, recorded)
        rows = held_out.numpy()
    say_held_out_among(o.model, model, dataset, o.split, "score")
    first = slice(None, o.nimages or None)
    files = split_files(dataset, split)
    if o.ood_class is None:
        inlier = _subset(f"{dataset} {o.split}", images, dataset, split, rows[first], labels, files)
        if o.ood is None:
            return inlier, None, (), fit
        return inlier, ood_images(model, o, runtime, first, dataset), (), fit
    names = class_names(dataset, o.data_dir)
    if not names:
        raise TorchVaeError(
            f"--ood_class needs a dataset with classes; {dataset} has none (pass --ood instead)"
        )
    try:
        c = class_index(names, o.ood_class)
    except TorchVaeError as exc:
        raise TorchVaeError(f"--ood_class: {exc}") from None
    if c not in trained_without(o.model):
        log.warning("the model was trained on class %d %r (its run did not --exclude_class it): "
                    "its images are not out-of-distribution for it", c, names[c])  # fmt: skip
    other = np.isin(rows, rows_without(dataset, split, n, [c], o.data_dir, "--ood_class"))
    kept, held = rows[other], rows[~other]
    if not len(kept) or not len(held):
        raise TorchVaeError(
            f"--ood_class {o.ood_class}: {dataset}'s {o.split} split needs images of the class "
            "and of other classes"
        )
    sets = [_subset(name, images, dataset, split, r[first], labels, files)
            for name, r in ((f"{dataset} {o.split} without {names[c]!r}", kept),
                            (f"class {c} {names[c]!r}", held))]  # fmt: skip
    return sets[0], sets[1], (c,), fit


def _subset(name: str, images, dataset: str, split: str, rows: np.ndarray, labels, files):
    """The images at ``rows`` of ``dataset``'s ``split`` as an ImageSet."""
    return ImageSet(name, images[rows], dataset, [split] * len(rows), rows,
                    None if labels is None else labels[rows],
                    None if files is None else [files[i] for i in rows])  # fmt: skip


def _trim(s: ImageSet, first: slice) -> None:
    s.split, s.index = s.split[first], s.index[first]
    s.file = s.file[first] if s.file is not None else None
    s.label = s.label[first] if s.label is not None else None


def ood_images(model, o: ScoreOptions, runtime: Runtime, first: slice, scored: str) -> ImageSet:
    """The images of ``--ood``: a folder's every image (both of its splits), or a dataset's
    ``--split``; a warning where they are the model's own, or a folder holding some of them
    or of the images ``scored`` as in-distribution."""
    ood, channels = o.ood, model.config.in_channels
    if absolute_name(ood) == model.dataset:
        log.warning("--ood %s is the dataset the model was trained on: its images are "
                    "in-distribution (a folder's: its training images among them), so the scores "
                    "cannot tell the two sets apart; pass other images", ood)  # fmt: skip
    else:
        _warn_overlap(absolute_name(ood), model.dataset, scored)
    ds = get_dataset(ood)  # once: a folder's is a scan of every image
    folder = isinstance(ds, FolderDataset)
    if not folder:
        check_channels(ood, channels, "the model expects",
                       "pass out-of-distribution images with as many channels")  # fmt: skip
    else:
        note_conversion(ds, channels)
    size, progress = model.config.image_size, not runtime.quiet
    splits = ds.splits() if folder else ("test" if o.split == "val" else o.split,)
    parts, split, index, labels, files = [], [], [], [], []
    for s in splits:
        images = with_channels(load_split(ood, s, size, o.data_dir, progress), channels)
        parts.append(images)
        split += [s] * len(images)
        index.append(np.arange(len(images)))
        found = load_labels(ood, s, o.data_dir)
        labels.append(found if found is not None else np.full(len(images), -1))
        if folder:  # the order the folder's split is decoded in
            files += split_files(absolute_name(ood), s)
    name = ood if not ood.startswith("folder:") else Path(ood[len("folder:") :]).name
    out = ImageSet(name, np.concatenate(parts)[first], absolute_name(ood), split,
                   np.concatenate(index), np.concatenate(labels),
                   files if folder else None)  # fmt: skip
    _trim(out, first)
    return out


def _warn_overlap(ood: str, trained: str | None, scored: str) -> None:
    """A warning where the --ood folder and the folder the model trained on (or the one
    scored as in-distribution) hold one another: some --ood images are not out of it."""
    if not ood.startswith("folder:"):
        return
    a = Path(ood.removeprefix("folder:"))
    for other, what in ((trained, "the model was trained on"),
                        (scored, "scored as in-distribution")):  # fmt: skip
        if other is None or not other.startswith("folder:"):
            continue
        b = Path(other.removeprefix("folder:"))
        if a == b or a in b.parents or b in a.parents:
            log.warning("--ood %s and the image folder %s %s hold one another: images of one "
                        "are images of the other, not out-of-distribution ones (for a class of "
                        "it: train with --exclude_class, then score --ood_class)", a, b,
                        what)  # fmt: skip
            return


def decoder_sigma(
    model, dataset: str, excluded: set[int], o: ScoreOptions, runtime, fit=None
) -> float:
    """The decoder sigma of the likelihood scores, calibrated on the first training images of
    ``dataset`` (of the rows ``fit`` where given: not the validation images scored), none of a
    class left out of training or held out as out-of-distribution."""
    train = split_images(model, dataset, "train", o.data_dir, runtime)
    rows = np.arange(len(train)) if fit is None else np.asarray(fit)
    if excluded:
        kept = rows_without(dataset, "train", len(train), sorted(excluded), o.data_dir,
                            "--ood_class")  # fmt: skip
        rows = rows[np.isin(rows, kept)]
    images = torch.from_numpy(train[rows[:SIGMA_IMAGES]])
    return calibrate_sigma(model, images, model.device, seed=o.seed)


def describe(s: ImageSet) -> dict:
    return {"name": s.name, "dataset": s.dataset, "images": len(s.images)}


def image_rows(sets: list[ImageSet], scores: list[dict], sources: tuple[str, ...]) -> list[dict]:
    """One row per image: where it comes from, its class (None: none) and its scores."""
    rows = []
    for s, values, source in zip(sets, scores, sources, strict=False):
        for i in range(len(s.images)):
            label = int(s.label[i]) if s.label is not None and s.label[i] >= 0 else None
            row = {"source": source, "dataset": s.dataset, "split": s.split[i],
                   "index": int(s.index[i]), "file": s.file[i] if s.file else None,
                   "label": label}  # fmt: skip
            row.update({k: float(v[i]) for k, v in values.items()})
            rows.append(row)
    return rows


def csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["source"])
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return buf.getvalue()


def print_summary(summary: dict, inlier: ImageSet, outlier: ImageSet | None, o) -> None:
    size = summary["image_size"]
    where = f"{inlier.name}, {len(inlier.images)} images at {size}x{size}"
    if outlier is None:
        print(f"{where}; mean per image (larger: more anomalous):")
        for name, s in summary["scores"].items():
            print(f"  {name:<12} {HELP[name]:<40} {s['mean']:>12.4f}")
        return
    print(f"{where}, against {outlier.name}, {len(outlier.images)} images (positives):")
    print(f"  {'score':<12} {'AUROC':>7} {'threshold':>12} {'TPR':>7} {'at FPR':>7}")
    for name, s in summary["scores"].items():
        print(f"  {name:<12} {s['auroc']:>7.4f} {s['threshold']:>12.5g} {s['tpr']:>7.4f} "
              f"{s['fpr']:>7.4f}")  # fmt: skip
    print(f"  (threshold: the lowest with a false-positive rate of at most --fpr {o.fpr:g}; "
          "AUROC below 0.5: the out-of-distribution images score as more typical)")  # fmt: skip
