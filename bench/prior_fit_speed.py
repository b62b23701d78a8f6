"""Seconds per step of a transformer prior's fit in fp32 and in bf16, on this CPU.

    python bench/prior_fit_speed.py                     # the shipped vqvae-28 prior's size
    python bench/prior_fit_speed.py --hidden 128 --layers 4 --steps 10 --rounds 1

Fits a transformer prior (``fit_prior``, the code ``torch-vae fit-sampler --sampler
transformer --precision P`` runs) to random 7x7 grids of 512 codes for --steps steps, once per
precision and round, the precisions alternating, one process, both cores, and prints the
median seconds per step of each and their ratio. The grids are random: the arithmetic of a
step does not depend on them (the quality of a bf16 fit is measured on the real grids in
docs/sampling.md). Writes JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from machine_info import cpu_model

from torch_vae.priors import fit_prior

PRECISIONS = ("fp32", "bf16")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--hidden", type=int, default=256, help="width (256, as shipped)")
    p.add_argument("--layers", type=int, default=6, help="blocks (6, as shipped)")
    p.add_argument("--batch", type=int, default=128, help="grids per step (128)")
    p.add_argument("--steps", type=int, default=30, help="timed steps per fit (30)")
    p.add_argument("--rounds", type=int, default=2, help="fits per precision (2)")
    p.add_argument("--out", type=Path, default=Path("bench/work/prior-fit-speed.json"))
    args = p.parse_args(argv)
    grids = np.random.default_rng(0).integers(0, 512, (2000, 7, 7))
    info = {"codebook_size": 512, "latent_dims": 16}
    options = {"hidden": args.hidden, "layers": args.layers, "batch": args.batch, "seed": 0}
    seconds: dict[str, list[float]] = {k: [] for k in PRECISIONS}
    for r in range(args.rounds):
        for precision in PRECISIONS:
            # a few steps first, so that one-time work (oneDNN's kernels) is not in the timing
            fit_prior(grids, "transformer", {**options, "steps": 3, "precision": precision},
                      info, progress=False)  # fmt: skip
            start = time.perf_counter()
            prior = fit_prior(grids, "transformer",
                              {**options, "steps": args.steps, "precision": precision}, info,
                              progress=False)  # fmt: skip
            per_step = (time.perf_counter() - start) / args.steps
            seconds[precision].append(per_step)
            print(
                f"round {r + 1} {prior.info['precision']}: {per_step * 1000:.1f} ms/step",
                flush=True,
            )
    med = {k: statistics.median(v) for k, v in seconds.items()}
    ratio = med["fp32"] / med["bf16"]
    machine = f"{cpu_model()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
    print(f"width {args.hidden}, {args.layers} layers, batch {args.batch}: fp32 "
          f"{med['fp32'] * 1000:.1f} ms/step, bf16 {med['bf16'] * 1000:.1f} ms/step, "
          f"bf16 {ratio:.2f}x as fast ({machine})")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                    "machine": machine, "seconds_per_step": seconds,
                                    "median": med, "fp32_over_bf16": ratio}, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
