"""Model quality: the shipped Fashion-MNIST models against the original's, through one pipeline.

    python bench/quality.py                       # shipped models + originals (when available)
    python bench/quality.py --nll-images 1000 --iw-samples 128
    python bench/quality.py --refine-steps 50     # semi-amortized: bench/quality-refine50.json

For every model: ``torch-vae evaluate`` on the whole Fashion-MNIST test split (objective, SSE,
KL, MSE, PSNR, active units; no NLL), then again on the first --nll-images test images for the
importance-weighted NLL (it costs about --iw-samples decoder passes per image). The original's
checkpoints (../shared/torch-vae-checkpoints/fashion-mnist, or --originals) are imported with
``torch-vae import-torch-vae`` first. Prints a Markdown table and writes JSON (--out).
With --refine-steps N every evaluation refines each image's posterior with N gradient steps
first (``torch-vae evaluate --refine_steps N``), the same for every model.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "models" / "fashion-mnist"
ORIGINALS = REPO.parent / "shared" / "torch-vae-checkpoints" / "fashion-mnist"


def torch_vae(*args: str) -> None:
    cmd = [sys.executable, "-m", "torch_vae", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr.strip()[-2000:]}")


def evaluate(model: Path, work: Path, tag: str, args: argparse.Namespace) -> dict:
    if args.refine_steps:
        tag += f"-refine{args.refine_steps}"
    full, nll = work / f"{tag}-full.json", work / f"{tag}-nll.json"
    if model.is_relative_to(Path.cwd()):  # reports name repo-relative paths
        model = model.relative_to(Path.cwd())
    common = ["--model", str(model), "--dataset", "fashion-mnist", "--quiet"]
    common += ["--seed", str(args.seed), "--refine_steps", str(args.refine_steps)]
    t0 = time.perf_counter()
    torch_vae("evaluate", *common, "--iw_samples", "0", "--report", str(full))
    t1 = time.perf_counter()
    torch_vae("evaluate", *common, "--iw_samples", str(args.iw_samples),
              "--nimages", str(args.nll_images), "--report", str(nll))  # fmt: skip
    t2 = time.perf_counter()
    a, b = json.loads(full.read_text()), json.loads(nll.read_text())
    a.update(
        nll=b["nll"],
        nll_stderr=b["nll_stderr"],
        bits_per_dim=b["bits_per_dim"],
        nll_images=b["n_images"],
        iw_samples=args.iw_samples,
        seconds_metrics=round(t1 - t0, 1),
        seconds_nll=round(t2 - t1, 1),
    )
    return a


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", type=Path, default=MODELS, help="folder of shipped run folders")
    p.add_argument("--originals", type=Path, default=ORIGINALS, help="the original's .pth files")
    p.add_argument("--work", type=Path, default=Path("bench/work-quality"), help="scratch folder")
    p.add_argument("--out", type=Path, default=None, help="JSON results (bench/quality.json)")
    p.add_argument("--nll-images", type=int, default=1000, help="test images for the NLL (1000)")
    p.add_argument("--iw-samples", type=int, default=128, help="importance samples (128)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", nargs="+", default=None, help="evaluate only these model names")
    p.add_argument(
        "--refine-steps", type=int, default=0, help="posterior refinement steps per image (0)"
    )
    args = p.parse_args(argv)
    if args.out is None:
        suffix = f"-refine{args.refine_steps}" if args.refine_steps else ""
        args.out = Path(f"bench/quality{suffix}.json")
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []

    def wanted(name: str) -> bool:
        return args.only is None or name in args.only

    for pth in sorted(args.originals.glob("*.pth")) if args.originals.is_dir() else []:
        if not wanted(pth.stem):
            continue
        out = args.work / f"original-{pth.stem}.safetensors"
        if not out.exists():
            torch_vae("import-torch-vae", str(pth), "--dataset", "fashion-mnist",
                      "--out", str(out), "--quiet")  # fmt: skip
        rows.append((f"original {pth.stem}", evaluate(out, args.work, pth.stem, args), None))
        print(f"evaluated {pth.name}", flush=True)
    # model folders only: the shipped classifier's folder has a config.json too
    models = (d for d in args.models.iterdir() if (d / "model.safetensors").is_file())
    for run in sorted(models):
        if not wanted(run.name):
            continue
        # an averaged model (torch-vae average) has no metrics.jsonl: its runs' times are in
        # its README entry
        log = run / "metrics.jsonl"
        metrics = [json.loads(x) for x in log.read_text().splitlines()] if log.is_file() else []
        train_s = sum(m["epoch_seconds"] for m in metrics) or None
        rows.append((run.name, evaluate(run, args.work, run.name, args), train_s))
        print(f"evaluated {run.name}", flush=True)
    nll = f"NLL nats ({args.nll_images} imgs, K={args.iw_samples})"
    head = "| model | latent | params | objective | SSE | KL | PSNR dB | active | "
    head += f"{nll} | bits/dim | train time |"
    lines = [head, "|" + "---|" * 11]
    for name, r, train_s in rows:
        t = f"{train_s / 60:.0f} min" if train_s else "-"
        lines.append(
            f"| {name} | {r['latent_dims']} | {r['parameters']:,} | {r['objective']:.2f} | "
            f"{r['sse']:.2f} | {r['kl']:.2f} | {r['psnr']:.2f} | {r['active_units']} | "
            f"{r['nll']:.1f} ± {r['nll_stderr']:.1f} | {r['bits_per_dim']:.4f} | {t} |"
        )
    print("\n".join(lines))
    results = {}
    if args.only is not None and args.out.exists():  # keep the other models' results
        results = json.loads(args.out.read_text())
    results.update({name: dict(r, train_seconds=t) for name, r, t in rows})
    args.out.write_text(json.dumps(results, indent=1))
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
