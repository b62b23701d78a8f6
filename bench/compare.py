"""Compare training recipes on Fashion-MNIST (64x64) with everything else equal.

    python bench/compare.py --epochs 2                       # original vs dcgan architecture
    python bench/compare.py --epochs 2 --recipes "dcgan=--arch dcgan" \\
        "dcgan-warmup=--arch dcgan --kl_warmup_epochs 1"

Each recipe is ``NAME=FLAGS``: extra ``torch-vae train`` flags on top of the common ones
(latent 8, batch 128, lr 2e-3 with a cosine schedule, seed 0, unless a recipe overrides them).
Prints, per recipe, the test objective after every epoch (SSE + KL per image, z sampled, as
recorded in metrics.jsonl), the parameter count and the training speed; writes JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

DEFAULT_RECIPES = ["original=--arch original", "dcgan=--arch dcgan"]
COMMON = ["--dataset", "fashion-mnist", "--latent_dims", "8", "--batchsize", "128",
          "--lr", "2e-3", "--lr_schedule", "cosine", "--seed", "0", "--quiet"]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--recipes", nargs="+", default=DEFAULT_RECIPES, metavar="NAME=FLAGS")
    p.add_argument("--work", type=Path, default=Path("bench/work-compare"))
    p.add_argument("--out", type=Path, default=Path("bench/compare.json"))
    p.add_argument("--data_dir", default=None, help="passed on to torch-vae train")
    args = p.parse_args(argv)
    results = {}
    for recipe in args.recipes:
        name, _, flags = recipe.partition("=")
        run = args.work / name
        shutil.rmtree(run, ignore_errors=True)
        cmd = [sys.executable, "-m", "torch_vae", "train", *COMMON, *shlex.split(flags)]
        cmd += ["--epochs", str(args.epochs), "--run_dir", str(run)]
        if args.data_dir:
            cmd += ["--data_dir", args.data_dir]
        print("$", " ".join(cmd[1:]), flush=True)
        if subprocess.run(cmd).returncode != 0:
            return 1
        metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        from torch_vae import load_model

        results[name] = {
            "flags": flags,
            "parameters": load_model(run).num_parameters(),
            "test_objective": [round(m["test_loss"], 3) for m in metrics],
            "img_per_s": round(sum(m["train_img_per_s"] for m in metrics) / len(metrics)),
        }
    epochs = " | ".join(f"epoch {i + 1}" for i in range(args.epochs))
    print(f"\n| recipe | flags | parameters | {epochs} | img/s |")
    print("|---" * (args.epochs + 4) + "|")
    for name, r in results.items():
        cells = " | ".join(f"{v:.2f}" for v in r["test_objective"])
        print(f"| {name} | `{r['flags']}` | {r['parameters']:,} | {cells} | {r['img_per_s']} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
