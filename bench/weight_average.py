"""Weight averaging after training: average the last K epoch checkpoints of a run folder.

    python bench/weight_average.py RUN --last 1 3 5 8

For each K: the element-wise mean of the weights in RUN/checkpoints (the last K epochs), then the
batch-norm running statistics recomputed with one pass over the training split (as stochastic
weight averaging does), then the test objective (the original's loss, z sampled with seed 0, as
``torch-vae evaluate`` and metrics.jsonl compute it). K = 1 is the run's own last epoch.
Prints one line per K and writes JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from torch_vae.checkpoint import load_model
from torch_vae.data import load_split
from torch_vae.device import to_float
from torch_vae.train import evaluate


def average(paths: list[Path]) -> dict[str, torch.Tensor]:
    states = [load_file(str(p)) for p in paths]
    out = {}
    for name, last in states[-1].items():
        if last.is_floating_point():
            out[name] = (sum(s[name].double() for s in states) / len(states)).to(last.dtype)
        else:  # batch counters: the last epoch's
            out[name] = last
    return out


@torch.no_grad()
def recompute_batch_norm(model: torch.nn.Module, images: torch.Tensor, batch: int = 500) -> None:
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a plain average over the pass
    model.train()
    torch.manual_seed(0)
    for start in range(0, len(images), batch):
        model(to_float(images[start : start + batch], torch.device("cpu")))
    model.eval()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("run", type=Path, help="run folder with checkpoints/epoch_NNN.safetensors")
    p.add_argument("--last", type=int, nargs="+", default=[1, 3, 5, 8])
    p.add_argument("--data_dir", type=Path, default=None)
    p.add_argument("--out", type=Path, default=Path("bench/weight-average.json"))
    args = p.parse_args(argv)
    model = load_model(args.run)
    ckpts = sorted((args.run / "checkpoints").glob("epoch_*.safetensors"))
    if not ckpts:
        raise SystemExit(f"{args.run} has no checkpoints/epoch_NNN.safetensors")
    size = model.config.image_size
    train = torch.from_numpy(load_split(model.dataset, "train", size, args.data_dir, False))
    test = torch.from_numpy(load_split(model.dataset, "test", size, args.data_dir, False))
    rows = []
    for k in args.last:
        model.load_state_dict(average(ckpts[-k:]))
        plain = evaluate(model, test, torch.device("cpu"))["loss"]
        recompute_batch_norm(model, train)
        swa = evaluate(model, test, torch.device("cpu"))["loss"]
        rows.append({"last": k, "from": ckpts[-k].name, "objective": plain, "objective_bn": swa})
        print(f"last {k} epochs (from {ckpts[-k].name}): test objective {plain:.3f}, "
              f"batch norm recomputed {swa:.3f}", flush=True)  # fmt: skip
    args.out.write_text(json.dumps({"run": str(args.run), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
