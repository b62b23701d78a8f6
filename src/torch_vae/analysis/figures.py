"""Figures drawn with matplotlib: training curves, latent traversals, the latent manifold and
the 2-D map of a dataset. matplotlib is imported inside the functions (it takes about a second
to import), and figures are drawn on its Agg canvas without pyplot: no window, no global
state, nothing changed in a notebook's or a server's own matplotlib setup."""

from __future__ import annotations

import io
import logging
import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..io.files import atomic_path
from ..io.png import SOFTWARE

log = logging.getLogger(__name__)

CURVES = (  # panel title, training key, the measured split's key (after its prefix)
    ("loss", "train_loss", "loss"),
    ("reconstruction", "train_recon", "recon"),
    ("KL", "train_kl", "kl"),  # a discrete model's: its commitment loss (REGULARISERS)
    ("held-out loss (validation split; test for a run without one)", None, "loss"),
)
REGULARISERS = {"kl": "KL", "commit": "commitment"}  # the objective's second term, by its key
GREY = "0.55"  # inactive latent dimensions
TITLE_LINE_INCHES = 0.2  # a line of a "medium" title, its spacing included
DPI = 100  # pictures of images are sized so that each pixel of theirs is one of the PNG's
MIN_WIDTH = 4.5  # inches: a small grid's picture still shows its title and its axes' names
TITLE_CHARS_PER_INCH = 11  # a title wraps at about this many characters of width


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _save(fig, out: Path) -> Path:
    """Write ``fig`` to ``out`` as a PNG, atomically (a reader never sees half a picture):
    grayscale when nothing in it has colour, else RGB (no alpha), 2-4x smaller than
    matplotlib's RGBA."""
    from PIL import Image, PngImagePlugin

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    with Image.open(buf) as img:
        rgb = img.convert("RGB")
    arr = np.asarray(rgb)
    gray = bool((arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all())
    out.parent.mkdir(parents=True, exist_ok=True)
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", SOFTWARE)  # as every PNG torch-vae writes (io.png)
    with atomic_path(out) as tmp:
        (rgb.convert("L") if gray else rgb).save(tmp, format="PNG", optimize=True, pnginfo=info)
    return out


def by_epoch(records: Sequence[dict]) -> list[dict]:
    """One record per epoch, in epoch order: the last written for an epoch (an epoch trained
    again after a resume is written twice)."""
    latest = {}
    for record in records:
        if isinstance(record.get("epoch"), int | float):
            latest[record["epoch"]] = record
    return [latest[e] for e in sorted(latest)]


def run_labels(runs: Sequence[Path]) -> list[str]:
    """Each run's folder name, or its whole path where two names are alike."""
    names = [Path(r).resolve().name for r in runs]
    return [n if names.count(n) == 1 else str(r) for n, r in zip(names, runs, strict=True)]


def _series(records: list[dict], key: str) -> tuple[list, list]:
    points = [(r["epoch"], r[key]) for r in records if _finite(r.get(key))]
    return [p[0] for p in points], [p[1] for p in points]


def _finite(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def plot_curves(runs: Sequence[Sequence[dict]], labels: Sequence[str], out: Path) -> Path:
    """Training curves of one or more runs (the records of their metrics.jsonl, one list per
    run), overlaid: the loss, its reconstruction and KL terms (training solid, held out
    dashed: the validation split, or the test split for a run without one) and the held-out
    loss, per epoch."""
    fig = _figure(10, 6.5)
    axes = fig.subplots(2, 2).ravel()
    colors = [f"C{i % 10}" for i in range(len(runs))]
    terms = set()  # the regularisers drawn in the third panel
    for run, label, color in zip(runs, labels, colors, strict=True):
        records = by_epoch(run)
        prefix = "val" if any("val_loss" in r for r in records) else "test"
        term = next((k for k in REGULARISERS if any(f"train_{k}" in r for r in records)), "kl")
        terms.add(REGULARISERS[term])
        for ax, (_, train_key, held_key) in zip(axes, CURVES, strict=True):
            if held_key == "kl":
                train_key, held_key = f"train_{term}", term
            held = f"{prefix}_{held_key}"
            # few epochs: each a marker, a dot for training and a cross for held out, which
            # tell the two apart where a line is too short to show its dashes (one epoch)
            for key, style, mark in (
                (train_key, "-", "o"),
                (held, "--" if train_key else "-", "x"),
            ):
                x, y = _series(records, key) if key else ([], [])
                if x:
                    ax.plot(x, y, style, color=color, marker=mark if len(x) <= 12 else None,
                            markersize=4, label=label if style == "-" else None)  # fmt: skip
    titles = [title for title, _, _ in CURVES]
    titles[2] = " / ".join(sorted(terms)) or titles[2]
    last = max((r["epoch"] for run in runs for r in by_epoch(run) if "epoch" in r), default=1)
    for ax, title, (_, train_key, _) in zip(axes, titles, CURVES, strict=True):
        how = "solid, o: training; dashed, x: held out" if last <= 12 else (
            "solid: training, dashed: held out")  # fmt: skip
        ax.set_title(f"{title} ({how})" if train_key else title, fontsize="medium")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if last <= 12:  # each epoch a tick, with room around the first and the last
            ax.set_xticks(range(1, last + 1))
            ax.set_xlim(0.5, last + 0.5)
    axes[0].set_ylabel("per image")
    handles, names = axes[-1].get_legend_handles_labels()
    if handles:
        axes[-1].legend(handles, names, fontsize="small")
    return _save(fig, out)


def _tile(images: np.ndarray, pad: int = 2) -> np.ndarray:
    """uint8 images (R, K, H, W, C) -> one (R*(H+pad)-pad, K*(W+pad)-pad, C) picture."""
    r, k, h, w, c = images.shape
    out = np.full((r * (h + pad) - pad, k * (w + pad) - pad, c), 255, np.uint8)
    for i in range(r):
        for j in range(k):
            out[i * (h + pad) : i * (h + pad) + h, j * (w + pad) : j * (w + pad) + w] = images[i, j]
    return out


def _show(ax, picture: np.ndarray) -> None:
    gray = picture.shape[2] == 1
    ax.imshow(picture[..., 0] if gray else picture, cmap="gray" if gray else None,
              vmin=0, vmax=255, interpolation="antialiased")  # fmt: skip


def value_label(value: float) -> str:
    """A traversal's column label: the value to three significant digits, signed (-2.25, not
    one decimal's -2.2, whose half rounds to even), a float32 zero's rounding (-5.96e-08 of
    linspace(-2, 2, 7)) shown as +0."""
    return f"{round(value, 6) + 0.0:+.3g}"  # + 0.0: -0.0 is +0


def plot_traversal(
    images: np.ndarray,
    dims: Sequence[int],
    kl: Sequence[float],
    active: Sequence[bool],
    values: Sequence[float],
    title: str,
    out: Path,
    own: Sequence[float] | None = None,
) -> Path:
    """One row per latent dimension (uint8 ``images`` (R, K, H, W, C)), labelled with its
    number and average KL (and ``own``, the value the image traversed around has there);
    inactive ones greyed and marked; columns labelled with the values the dimension takes."""
    r, k, h, w, _ = images.shape
    scale = max(1.0, 48 / h)  # small images drawn larger
    width = max(7.5, 2.2 + k * w * scale / DPI)
    title = _wrap(title, width - 2.2)  # its lines, and the axis label, get room of their own
    fig = _figure(width, r * h * scale / DPI + 0.9 + TITLE_LINE_INCHES * (title.count("\n") + 1))
    ax = fig.add_subplot()
    _show(ax, _tile(images))
    ax.set_xticks([j * (w + 2) + w / 2 for j in range(k)], [value_label(v) for v in values])
    ax.set_yticks([i * (h + 2) + h / 2 for i in range(r)])
    rows = zip(dims, kl, active, own if own is not None else [None] * r, strict=True)
    ax.set_yticklabels(
        [f"z{d}  KL {q:.{2 if q >= 0.1 else 3}f}" + ("" if v is None else f"\nimage's {v:+.2f}")
         + ("" if a else "\ninactive") for d, q, a, v in rows]
    )  # fmt: skip
    for label, a in zip(ax.get_yticklabels(), active, strict=True):
        label.set_color("black" if a else GREY)
    ax.tick_params(length=0)
    ax.set_xlabel("value of the dimension (the others kept)")
    ax.set_title(title, fontsize="medium")
    return _save(fig, out)


def plot_manifold(
    images: np.ndarray, xs: Sequence[float], ys: Sequence[float], axes: tuple[str, str],
    title: str, out: Path,
) -> Path:  # fmt: skip
    """The decoded grid (uint8 (n, n, H, W, C), rows top to bottom) with its coordinates:
    ``xs`` along the columns, ``ys`` down the rows, named by ``axes``."""
    n, _, h, w, _ = images.shape
    scale = max(1.0, 40 / h)
    side = n * (w + 2) * scale / DPI
    # room for the title and the axes' names, wrapped to the picture's sides
    width, height = max(1.4 + side, MIN_WIDTH), max(1.0 + side, MIN_WIDTH)
    fig = _figure(width, height)
    title = textwrap.fill(title, int(width * TITLE_CHARS_PER_INCH))
    axes = (textwrap.fill(axes[0], int(width * TITLE_CHARS_PER_INCH)),
            textwrap.fill(axes[1], int((height - 1.2) * TITLE_CHARS_PER_INCH)))  # fmt: skip
    ax = fig.add_subplot()
    _show(ax, _tile(images))
    every = max(1, n // 8)  # at most about 8 labels per axis
    picks = range(0, n, every)
    ax.set_xticks([j * (w + 2) + w / 2 for j in picks], [_number(xs[j]) for j in picks])
    ax.set_yticks([i * (h + 2) + h / 2 for i in picks], [_number(ys[i]) for i in picks])
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    ax.set_title(title, fontsize="medium")
    return _save(fig, out)


def _wrap(title: str, inches: float) -> str:
    """``title``'s lines wrapped to ``inches`` of width (a long run name is not cut off)."""
    width = max(20, int(inches * TITLE_CHARS_PER_INCH))
    return "\n".join(textwrap.fill(line, width) for line in title.split("\n"))


def _number(v: float) -> str:
    return f"{0.0 if abs(v) < 0.005 else v:.2f}"  # no "-0.00"


def plot_embedding(
    xy: np.ndarray, labels: np.ndarray | None, names: Sequence[str] | None,
    axes: tuple[str, str], title: str, out: Path,
) -> Path:  # fmt: skip
    """A scatter plot of the points ``xy`` (N, 2), coloured by class ``labels`` (N,) with a
    legend of their ``names`` (up to 20 classes; more get a colour bar), or in one colour."""
    from matplotlib.lines import Line2D

    fig = _figure(9 if labels is not None else 7, 7)
    ax = fig.add_subplot()
    size = 6 if len(xy) > 3000 else 12
    if labels is None or names is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=size, alpha=0.6, linewidths=0)
    elif len(names) <= 20:
        # one scatter, in a fixed shuffled order: no class hides the others under it
        order = np.random.default_rng(0).permutation(len(xy))
        colors = [_class_color(len(names), c) for c in range(len(names))]
        ax.scatter(xy[order, 0], xy[order, 1], s=size, alpha=0.6, linewidths=0,
                   color=[colors[c] if c >= 0 else GREY for c in labels[order]])  # fmt: skip
        counts = [(name, colors[c], int((labels == c).sum())) for c, name in enumerate(names)]
        counts.append(("no class", GREY, int((labels < 0).sum())))
        handles = [
            Line2D([], [], ls="", marker="o", color=color, label=f"{name} ({n})")
            for name, color, n in counts
            if n
        ]
        ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5),
                  fontsize="small", frameon=False)  # fmt: skip
    else:
        dots = ax.scatter(xy[:, 0], xy[:, 1], c=labels, cmap="viridis", s=size, alpha=0.6,
                          linewidths=0)  # fmt: skip
        fig.colorbar(dots, ax=ax, label="class")
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    ax.set_title(_wrap(title, 6.0), fontsize="medium")  # the axes' width: the legend beside
    ax.grid(alpha=0.3)
    return _save(fig, out)


def _class_color(classes: int, index: int):
    from matplotlib import colormaps

    return colormaps["tab10" if classes <= 10 else "tab20"](index)


def plot_anomaly(
    scores: dict[str, tuple[np.ndarray, np.ndarray]], summary: dict[str, dict],
    names: tuple[str, str], title: str, out: Path, described: dict[str, str] | None = None,
) -> Path:  # fmt: skip
    """ROC curves of every score (``summary[score]``: ``evaluation.anomaly.roc``'s, its
    operating point marked) and, beside them, each score's histograms of the in- and
    out-of-distribution images (``scores[score]`` = (inliers, outliers), named by ``names``)
    with the threshold drawn, its axis named by ``described[score]`` (what it is, its unit)."""
    from matplotlib.ticker import MaxNLocator

    n = len(scores)
    cols = min(3, n)
    rows = 1 + math.ceil(n / cols)
    fig = _figure(4.2 * cols, 3.4 * rows)
    grid = fig.add_gridspec(rows, cols)
    ax = fig.add_subplot(grid[0, :])
    for i, (name, s) in enumerate(summary.items()):
        curve = s["curve"]
        ax.plot(curve["fpr"], curve["tpr"], color=f"C{i}",
                label=f"{name}  AUROC {s['auroc']:.3f}")  # fmt: skip
        ax.plot([s["fpr"]], [s["tpr"]], "o", color=f"C{i}", ms=4)
    ax.plot([0, 1], [0, 1], ":", color=GREY)
    ax.set_xlabel("false-positive rate (in-distribution flagged)")
    ax.set_ylabel("true-positive rate")
    ax.set_title(title, fontsize="medium")
    ax.legend(loc="lower right", fontsize="small")
    ax.grid(alpha=0.3)
    for i, (name, (inlier, outlier)) in enumerate(scores.items()):
        ax = fig.add_subplot(grid[1 + i // cols, i % cols])
        both = np.r_[inlier, outlier]
        lo, hi = np.percentile(both, [0.5, 99.5]) if len(both) else (0.0, 1.0)
        threshold = summary[name]["threshold"]
        if np.isfinite(threshold):  # drawn whatever the spread (a few images: outside it)
            lo, hi = min(lo, threshold), max(hi, threshold)
        bins = np.linspace(lo, hi if hi > lo else lo + 1, 50)
        for values, label, color in ((inlier, names[0], "C0"), (outlier, names[1], "C3")):
            ax.hist(np.clip(values, bins[0], bins[-1]), bins=bins, density=True, alpha=0.5,
                    color=color, label=f"{label} ({len(values)})")  # fmt: skip
        if np.isfinite(threshold):
            ax.axvline(threshold, color="black", lw=1, ls="--")
        ax.set_title(f"{name}  (dashed: threshold at FPR {summary[name]['target_fpr']:g})",
                     fontsize="small")  # fmt: skip
        ax.legend(fontsize="x-small")
        ax.set_yticks([])
        ax.set_ylabel("share of images", fontsize="small")
        ax.set_xlabel((described or {}).get(name, name), fontsize="small")
        ax.xaxis.set_major_locator(MaxNLocator(5))  # nats run to five digits
    return _save(fig, out)
