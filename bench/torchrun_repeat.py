"""Repeat a tiny 2-process torchrun training on the CPU and count how the processes ended.

    python bench/torchrun_repeat.py --runs 100

Each run: ``torchrun --standalone --nproc_per_node 2 -m torch_vae train --cpu`` for 2 epochs on
a folder of 60 small generated PNGs. A run fails if torchrun's exit status is not 0; the first
failure's stderr is printed. Used to check that distributed runs end cleanly (see
docs/distributed.md).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent


def make_folder(root: Path, n: int = 60, size: int = 16) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        cy, cx, r = rng.uniform(4, 12), rng.uniform(4, 12), rng.uniform(2, 5)
        img = (((yy - cy) ** 2 + (xx - cx) ** 2) < r * r).astype(np.uint8) * 255
        Image.fromarray(img, "L").save(root / f"img_{i:03d}.png")
    return root


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=100)
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="torchrun-repeat-"))
    images = make_folder(work / "images")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    train = ["-m", "torch_vae", "train", "--cpu", "--quiet", f"--dataset=folder:{images}",
             "--image_size=16", "--depth=2", "--latent_dims=3", "--max_filters=8",
             "--batchsize=16", "--epochs=2", f"--data_dir={work / 'data'}"]  # fmt: skip
    failures, first = 0, None
    t0 = time.perf_counter()
    for i in range(args.runs):
        proc = subprocess.run(
            [*launch, *train, f"--run_dir={work / f'run{i}'}"],
            capture_output=True,
            text=True,
            env=env,
        )
        if proc.returncode != 0:
            failures += 1
            first = first or proc.stderr[-3000:]
        print(f"run {i + 1}: exit {proc.returncode}", flush=True)
    print(f"{failures} of {args.runs} runs failed ({time.perf_counter() - t0:.0f} s)")
    if first:
        print("first failure:\n" + first)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
