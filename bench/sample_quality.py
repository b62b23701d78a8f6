"""Sample quality of the latent samplers: the prior N(0, I) against ex-post densities fitted to
the training posterior means (a full-covariance Gaussian, Gaussian mixtures of several sizes),
for the shipped Fashion-MNIST models and the original's imported checkpoints.

    python bench/sample_quality.py                    # all models, 10,000 samples each
    python bench/sample_quality.py --nsamples 2000 --models dcgan-d8

For every model: the posterior means of the whole training split, each sampler fitted to them
(GMMs seeded), N samples from each (seed 0, as ``torch-vae generate --sampler ...`` draws
them), measured against the whole test split as ``torch-vae sample-quality`` does: Fréchet
distance, precision, recall (k = 3) and the class KL. Fashion-MNIST models in the shipped
classifier's feature space (one floor, N training images, for all of them); the original's
MNIST models in their own encoder's space (a floor per model; those numbers compare the
samplers of one model only). Writes JSON (--out; a model already in it is not measured again
unless --fresh), one PNG per model with the first 64 samples of each sampler side by side
(--images), and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from machine_info import cpu_model

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from torch_vae import load_model  # noqa: E402
from torch_vae.cli import main as cli  # noqa: E402
from torch_vae.data import load_split  # noqa: E402
from torch_vae.errors import TorchVaeError  # noqa: E402
from torch_vae.evaluation.classifier import load_classifier  # noqa: E402
from torch_vae.evaluation.sample_quality import (  # noqa: E402
    classifier_space,
    encoder_space,
    make_reference,
    measure,
    sample_images,
)
from torch_vae.io.png import grid, save_png  # noqa: E402
from torch_vae.priors import (  # noqa: E402
    fit_gaussian,
    fit_gmm,
    posterior_means,
    read_sampler,
    save_sampler,
)

SHIPPED = ["dcgan-d2", "dcgan-d8", "dcgan-d64", "dcgan-f192-d8-p28"]
ORIGINALS = REPO.parent / "shared" / "torch-vae-checkpoints"
WORK = REPO / "bench" / "work" / "samplers"
# Mixtures with more covariance numbers (components x d^2) are skipped: latent 64 with 100
# components would be a 1.6 MB file, and its EM fit takes over 20 minutes on a shared 2-core CPU.
MAX_COVARIANCE_NUMBERS = 300_000


def models(wanted: list[str] | None) -> list[tuple[str, str, Path]]:
    """(name, dataset, weights) of the shipped models and of the imported originals."""
    found = [(m, "fashion-mnist", REPO / "models" / "fashion-mnist" / m) for m in SHIPPED]
    for pth in sorted(ORIGINALS.glob("*/*.pth")):
        dataset = pth.parent.name
        out = WORK / f"original-{dataset}-{pth.stem}.safetensors"
        if not out.exists():
            out.parent.mkdir(parents=True, exist_ok=True)
            argv = ["import-torch-vae", str(pth), "--dataset", dataset, "--out", str(out)]
            if cli(argv) != 0:
                raise SystemExit(f"cannot import {pth}")
        found.append((f"original {dataset} {pth.stem}", dataset, out))
    return [m for m in found if not wanted or m[0] in wanted or m[2].name in wanted]


def fitted(tag: str, means: np.ndarray, args) -> dict:
    """name -> (sampler or None for the prior, seconds its fit took). Fits are kept in
    bench/work/samplers/ and read back by later runs (with the seconds of the fit)."""
    out = {"prior": (None, 0.0)}
    d = means.shape[1]
    kept = [k for k in args.components if k * d * d <= MAX_COVARIANCE_NUMBERS]
    for name in ["gaussian", *(f"gmm{k}" for k in kept)]:
        path = WORK / f"{tag}-{name}-seed{args.seed}.safetensors"
        if path.exists():
            sampler = read_sampler(path)
        else:
            t0 = time.perf_counter()
            if name == "gaussian":
                sampler = fit_gaussian(means)
            else:
                sampler = fit_gmm(means, int(name[3:]), args.seed)
            sampler.info["seconds"] = round(time.perf_counter() - t0, 1)
            save_sampler(sampler, path)
        out[name] = (sampler, sampler.info["seconds"])
    return out


def tag_of(path: Path) -> str:
    return path.stem if path.suffix == ".safetensors" else path.name


def latents(model, tag: str, train: torch.Tensor) -> tuple[np.ndarray, float]:
    """The posterior means of the training split (kept in bench/work/samplers/), seconds."""
    path = WORK / f"{tag}-train-means.npy"
    if path.exists():
        return np.load(path), None  # computed by an earlier run
    t0 = time.perf_counter()
    means = posterior_means(model, train).numpy()
    WORK.mkdir(parents=True, exist_ok=True)
    np.save(path, means)
    return means, time.perf_counter() - t0


def bench_model(name, dataset, path, data, args, space_ref) -> tuple[dict, list[np.ndarray]]:
    """The numbers of every sampler of one model, and its first 64 samples from each."""
    model = load_model(path)
    train, test = data[dataset]
    means, seconds = latents(model, tag_of(path), train)
    seconds = None if seconds is None else round(seconds, 1)
    samplers = fitted(tag_of(path), means, args)
    result = {"latent_dims": model.config.latent_dims, "path": str(path.relative_to(REPO)),
              "seconds_posterior_means": seconds, "samplers": {}}  # fmt: skip
    if args.fit_only:
        return result, []
    if space_ref is None:  # no classifier: the model's own encoder, its own floor
        space = encoder_space(model)
        ref = make_reference(space, test, args.k)
        result["features"] = "encoder"
        result["floor"] = measure(space, train[: args.nsamples], ref)
    else:
        space, ref = space_ref
        result["features"] = "classifier"
    pictures = []
    for sname, (sampler, fit_s) in samplers.items():
        t0 = time.perf_counter()
        fake = sample_images(model, sampler, args.nsamples, args.seed)
        row = measure(space, fake, ref)
        row.update(seconds_fit=fit_s, seconds_measure=round(time.perf_counter() - t0, 1))
        if sampler is not None and sampler.kind == "gmm":
            row.update(
                converged=sampler.info["converged"], em_iterations=sampler.info["em_iterations"]
            )
        result["samplers"][sname] = row
        pictures.append(grid(fake[:64].numpy(), nrow=8))
        print(f"  {name} {sname}: FD {row['fd']:.3f} precision {row['precision']:.3f} "
              f"recall {row['recall']:.3f}", flush=True)  # fmt: skip
    return result, pictures


def half(image: np.ndarray) -> np.ndarray:
    """Half the size (2x2 means): the 64x64 samples at 32x32 keep the files small."""
    h, w, c = image.shape
    blocks = image[: h // 2 * 2, : w // 2 * 2].reshape(h // 2, 2, w // 2, 2, c)
    return blocks.mean((1, 3)).round().astype(np.uint8)


def side_by_side(pictures: list[np.ndarray], gap: int = 12) -> np.ndarray:
    h, _, c = pictures[0].shape
    white = np.full((h, gap, c), 255, np.uint8)
    parts = [p for pic in pictures for p in (pic, white)][:-1]
    return np.concatenate(parts, axis=1)


def row(cells: list) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def numbers(r: dict) -> list[str]:
    kl = f"{r['class_kl']:.4f}" if "class_kl" in r else ""
    return [f"{r['fd']:.3f}", f"{r['precision']:.3f}", f"{r['recall']:.3f}", kl]


def table(results: dict) -> str:
    lines = [row(["model", "latent", "features", "sampler", "FD", "precision", "recall",
                  "class KL"]), "|---" * 8 + "|"]  # fmt: skip
    if floor := results.get("floor"):
        lines.append(row(["Fashion-MNIST training images (floor)", "", "classifier", "",
                          *numbers(floor)]))  # fmt: skip
    for name, m in results["models"].items():
        rows = list(m["samplers"].items())
        if "floor" in m:
            rows.append(("training images (floor)", m["floor"]))
        for sname, r in rows:
            lines.append(row([name, m["latent_dims"], m["features"], sname, *numbers(r)]))
    return "\n".join(lines)


def split(dataset: str, name: str) -> torch.Tensor:
    return torch.from_numpy(np.asarray(load_split(dataset, name, 64)))


def machine() -> dict:
    return {"cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version()}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nsamples", type=int, default=10000)
    p.add_argument("--components", type=int, nargs="+", default=[10, 50, 100])
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--models", nargs="*", help="names (default: all)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "sample-quality.json")
    p.add_argument("--images", type=Path, default=REPO / "docs" / "images")
    p.add_argument("--fresh", action="store_true", help="measure models already in --out again")
    p.add_argument("--fit-only", action="store_true", help="only fit (and keep) the samplers")
    args = p.parse_args()
    results = json.loads(args.out.read_text()) if args.out.exists() and not args.fresh else {}
    results.update(machine=machine(), nsamples=args.nsamples, k=args.k, seed=args.seed,
                   components=args.components)  # fmt: skip
    results.setdefault("models", {})
    data, spaces = {}, {}
    for name, dataset, path in models(args.models):
        if name in results["models"] and not args.fit_only:
            continue
        if dataset not in data:
            try:
                data[dataset] = (split(dataset, "train"), split(dataset, "test"))
            except TorchVaeError as exc:
                print(f"skipping the {dataset} models: {exc}")
                data[dataset] = None
        if data[dataset] is None:
            continue
        clf = REPO / "models" / dataset / "classifier"
        if dataset not in spaces and clf.is_dir() and not args.fit_only:
            space = classifier_space(load_classifier(clf))
            spaces[dataset] = (space, make_reference(space, data[dataset][1], args.k))
            results["floor"] = measure(space, data[dataset][0][: args.nsamples], spaces[dataset][1])
        result, pictures = bench_model(name, dataset, path, data, args, spaces.get(dataset))
        if args.fit_only:
            print(f"  {name}: fitted", flush=True)
            continue
        results["models"][name] = result
        args.images.mkdir(parents=True, exist_ok=True)
        save_png(half(side_by_side(pictures)), args.images / f"samplers-{tag_of(path)}.png")
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    if not args.fit_only:
        print(table(results))


if __name__ == "__main__":
    main()
