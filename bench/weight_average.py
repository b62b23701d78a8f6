"""Weight averaging after training: average the last K epoch checkpoints of a run folder.

    python bench/weight_average.py RUN --last 1 3 5 8
    python bench/weight_average.py RUN --files A.safetensors B.safetensors

The same computation as ``torch-vae average``, for several K at once, without writing models.
For each K: the element-wise mean of the weights in RUN/checkpoints (the last K epochs), then the
batch-norm running statistics recomputed with one pass over the training split (as stochastic
weight averaging does), then the test objective (the original's loss, z sampled with seed 0, as
``torch-vae evaluate`` and metrics.jsonl compute it). K = 1 is the run's own last epoch.
With --files: one average of exactly those weight files (for example the final weights of runs
fine-tuned from one model: a "model soup"); RUN then only names the architecture.
Prints one line per K and writes JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from torch_vae.data import load_split
from torch_vae.evaluation.likelihood import test_metrics
from torch_vae.models import load_model
from torch_vae.training.averaging import average_weights, epoch_checkpoints, recompute_batch_norm


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("run", type=Path, help="run folder with checkpoints/epoch_NNN.safetensors")
    p.add_argument("--last", type=int, nargs="+", default=[1, 3, 5, 8])
    p.add_argument("--files", type=Path, nargs="+", help="average these weight files instead")
    p.add_argument("--data_dir", type=Path, default=None)
    p.add_argument("--out", type=Path, default=Path("bench/weight-average.json"))
    args = p.parse_args(argv)
    model = load_model(args.run)
    if args.files:
        groups = [args.files]
    else:
        ckpts = epoch_checkpoints(args.run)
        groups = [ckpts[-k:] for k in args.last]
    size = model.config.image_size
    train = torch.from_numpy(load_split(model.dataset, "train", size, args.data_dir, False))
    test = torch.from_numpy(load_split(model.dataset, "test", size, args.data_dir, False))
    rows = []
    for group in groups:
        model.load_state_dict(average_weights(group))
        plain = test_metrics(model, test, torch.device("cpu"))["loss"]
        recompute_batch_norm(model, train, torch.device("cpu"))
        swa = test_metrics(model, test, torch.device("cpu"))["loss"]
        names = [str(p) for p in group]
        rows.append({"files": names, "objective": plain, "objective_bn": swa})
        print(f"average of {len(group)} ({names[0]} .. {names[-1]}): test objective {plain:.3f}, "
              f"batch norm recomputed {swa:.3f}", flush=True)  # fmt: skip
    args.out.write_text(json.dumps({"run": str(args.run), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
