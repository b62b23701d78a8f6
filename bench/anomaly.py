"""The AUROC table of docs/anomaly.md: how well each score of ``torch-vae score`` tells
Fashion-MNIST apart from other images, offline.

    python bench/anomaly.py                      # everything: 30-75 minutes, one thread per command
    python bench/anomaly.py --classes 0 7 --models dcgan-d8

1. Digits: scikit-learn's bundled handwritten digits (``load_digits``: 1,797 images of 8x8
   pixels, values 0-16; MNIST itself is not available offline), scaled to 0-255 and resized
   bilinearly to 28x28 (Pillow), written as PNGs to WORK/digits-28/. Each shipped model
   (--models, under models/fashion-mnist/) scores the Fashion-MNIST test split against them:
   ``torch-vae score --ood folder:WORK/digits-28``.
2. Held-out class: for each class C (--classes), a small model is trained on the other nine
   (``torch-vae train --exclude_class C``, the recipe in TRAIN below) and scores the test
   split's other nine classes against class C: ``torch-vae score --ood_class C``.

Every command runs as a subprocess with ``--threads 1`` (the printed lines are the commands);
the wall time of each is recorded. Writes the results as JSON (--out) and prints the tables
in Markdown.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from machine_info import cpu_model

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("dcgan-d8", "dcgan-g32", "dcgan-f192-d8-p28")
TRAIN = ("--dataset fashion-mnist --arch dcgan --image_size 32 --native_size 28 "
         "--latent_dims 8 --lr 2e-3 --lr_schedule cosine --batchsize 128")  # fmt: skip
SCORES = ("neg_elbo", "recon", "iw_nll", "neg_elbo_ic", "iw_nll_ic")
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")  # fmt: skip


def write_digits(folder: Path) -> int:
    """scikit-learn's digits as 28x28 8-bit PNGs in ``folder``; how many."""
    from PIL import Image
    from sklearn.datasets import load_digits

    folder.mkdir(parents=True, exist_ok=True)
    images = load_digits().images
    for i, img in enumerate(images):
        pixels = np.round(img * 255 / 16).astype(np.uint8)
        Image.fromarray(pixels).resize((28, 28), Image.BILINEAR).save(folder / f"{i:04d}.png")
    return len(images)


def command(args: list[str]) -> float:
    """Run ``torch-vae ARGS`` (one thread, no progress bars); its wall time in seconds."""
    line = ["torch-vae", *args, "--threads", "1", "--quiet"]
    print("$ " + shlex.join(line), flush=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "torch_vae", *line[1:]], check=True, cwd=ROOT)
    return round(time.perf_counter() - start, 1)


def score_row(path: Path, seconds: float) -> dict:
    s = json.loads(path.read_text())
    dims = s["image_size"] ** 2
    row = {name: round(v["auroc"], 4) for name, v in s["scores"].items()}
    row.update({f"{name}_tpr": round(v["tpr"], 4) for name, v in s["scores"].items()})
    for name in ("neg_elbo", "iw_nll"):  # bits per dimension, for the likelihood comparison
        if name in s["scores"]:
            row[f"{name}_bpd_in"] = round(s["scores"][name]["mean_in"] / (dims * np.log(2)), 4)
            row[f"{name}_bpd_ood"] = round(s["scores"][name]["mean_ood"] / (dims * np.log(2)), 4)
    row["png_bpd_in"], row["png_bpd_ood"] = (round(v, 4) for v in s["png_bpd_mean"].values())
    row["images"] = [s["in_distribution"]["images"], s["out_of_distribution"]["images"]]
    row["seconds"] = seconds
    return row


def table(rows: dict[str, dict], first: str) -> str:
    lines = [f"| {first} | " + " | ".join(SCORES) + " |", "|---" * (len(SCORES) + 1) + "|"]
    for name, row in rows.items():
        best = max(row.get(s, 0) for s in SCORES)
        cells = [(f"**{row[s]:.3f}**" if row[s] == best else f"{row[s]:.3f}") if s in row else ""
                 for s in SCORES]  # fmt: skip
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", nargs="*", default=list(MODELS), help="shipped models to score")
    p.add_argument("--classes", type=int, nargs="*", default=list(range(10)))
    p.add_argument("--epochs", type=int, default=5, help="epochs of each held-out-class model")
    p.add_argument("--iw_samples", type=int, default=16)
    p.add_argument("--work", type=Path, default=Path("bench/work/anomaly"))
    p.add_argument("--out", type=Path, default=Path("docs/bench/anomaly.json"))
    args = p.parse_args(argv)
    work, iw = args.work, ["--iw_samples", str(args.iw_samples)]
    digits = work / "digits-28"
    results = {"cpu": cpu_model(), "iw_samples": args.iw_samples, "train": TRAIN,
               "epochs": args.epochs, "digits": {}, "held_out": {}}  # fmt: skip
    results["digit_images"] = write_digits(digits)
    for name in args.models:
        out = work / f"{name}-digits.json"
        seconds = command(["score", "--model", f"models/fashion-mnist/{name}", "--ood",
                           f"folder:{digits}", *iw, "--out", str(out)])  # fmt: skip
        results["digits"][name] = score_row(ROOT / out, seconds)
    for c in args.classes:
        run = work / "runs" / f"without-{c}"
        train_seconds = None  # a model trained before, reused
        if not (ROOT / run / "model.safetensors").is_file():
            train_seconds = command(["train", *TRAIN.split(), "--epochs", str(args.epochs),
                                     "--exclude_class", str(c), "--run_dir", str(run)])  # fmt: skip
        out = work / f"without-{c}.json"
        seconds = command(["score", "--model", str(run), "--ood_class", str(c), *iw,
                           "--out", str(out)])  # fmt: skip
        row = score_row(ROOT / out, seconds)
        row["train_seconds"] = train_seconds
        metrics = (ROOT / run / "metrics.jsonl").read_text().splitlines()
        row["val_loss"] = round(json.loads(metrics[-1])["val_loss"], 3)
        results["held_out"][f"{c} {CLASSES[c]}"] = row
    (ROOT / args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nFashion-MNIST test against digits ({results['cpu']}):\n")
    print(table(results["digits"], "model"))
    print("\nHeld-out class (test split: the other nine against it):\n")
    held = dict(results["held_out"])
    if held:
        held["mean"] = {s: float(np.mean([r[s] for r in results["held_out"].values()]))
                        for s in SCORES}  # fmt: skip
    print(table(held, "class"))
    print(f"\nresults: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
