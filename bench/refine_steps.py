"""How the test objective falls with the number of posterior refinement steps.

    python bench/refine_steps.py MODEL [MODEL ...] --steps 0 10 25 50 100 200 --nimages 1000

For each model and each N: the objective (SSE + KL, z sampled with seed 0) on the first
--nimages Fashion-MNIST test images after refining each image's posterior with N Adam steps,
exactly as ``torch-vae evaluate --refine_steps N --iw_samples 0`` computes it; N = 0 is the
plain evaluation. Also the seconds each evaluation took (on this machine, for comparing N).
Prints one line per (model, N) and writes JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from torch_vae.data import load_split
from torch_vae.evaluation.likelihood import evaluate_model
from torch_vae.models import load_model


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("models", type=Path, nargs="+", help="run folders or .safetensors files")
    p.add_argument("--steps", type=int, nargs="+", default=[0, 10, 25, 50, 100, 200])
    p.add_argument("--nimages", type=int, default=1000)
    p.add_argument("--lr", type=float, default=0.01, help="refinement step size (0.01)")
    p.add_argument("--data_dir", type=Path, default=None)
    p.add_argument("--out", type=Path, default=Path("bench/refine-steps.json"))
    args = p.parse_args(argv)
    results = {}
    for path in args.models:
        model = load_model(path).eval()
        size = model.config.image_size
        test = load_split("fashion-mnist", "test", size, args.data_dir, False)[: args.nimages]
        images = torch.from_numpy(test)
        rows = []
        for n in args.steps:
            t0 = time.perf_counter()
            # sigma only matters for the NLL, which is skipped here
            r = evaluate_model(
                model, images, torch.device("cpu"), sigma=0.1, iw_samples=0, seed=0,
                progress=False, refine_steps=n, refine_lr=args.lr,
            )  # fmt: skip
            rows.append(
                {
                    "refine_steps": n,
                    "objective": r["objective"],
                    "sse": r["sse"],
                    "kl": r["kl"],
                    "psnr": r["psnr"],
                    "seconds": round(time.perf_counter() - t0, 1),
                }
            )
            print(
                f"{path}  N={n:<4d} objective {r['objective']:.3f}  SSE {r['sse']:.3f}  "
                f"KL {r['kl']:.3f}  {rows[-1]['seconds']:.0f} s",
                flush=True,
            )
        results[str(path)] = rows
    meta = {"nimages": args.nimages, "lr": args.lr, "threads": torch.get_num_threads()}
    args.out.write_text(json.dumps({"settings": meta, "models": results}, indent=1) + "\n")
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
