"""Memory of one training process against two torchrun processes, for one or more checkouts
of torch-vae on the same data, in one run.

    python bench/torchrun_memory.py                               # this checkout, 2 rounds
    git worktree add /tmp/before COMMIT
    python bench/torchrun_memory.py --checkout before=/tmp/before --checkout after=.

For each checkout and round: ``bench/scale.py``'s train job (``torch-vae train --dataset
celeb-a --image_size 128 --arch dcgan --batchsize 128 --max_steps 60 --threads 1``) in one
process, then the same under ``torchrun --nproc_per_node 2`` (the global batch split between
them), each process reporting its peak RSS, its PSS and private memory after its last training
step (before the evaluation that ends the run) and when the command has ended, and whether it
imported torch._dynamo. The split is bench/scale.py's synthetic
CelebA-like one (--images at 128x128, built once in --work; 202,599 images: 10 GB). Each
checkout runs its own ``src`` with this checkout's bench/scale.py as the harness. Writes JSON
(--out) and prints a line per round.

It also measures what ``import torch`` alone leaves in a fresh interpreter (bench/scale.py's
``import_torch`` job): its private memory is what every torchrun process adds, whatever it
then runs, and sets the floor of the two processes' PSS against one.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def load_harness(checkout: Path):
    """This checkout's bench/scale.py, run as if it lived in ``checkout`` (its ``src``)."""
    spec = importlib.util.spec_from_file_location(f"scale_{abs(hash(checkout))}",
                                                  HERE / "scale.py")  # fmt: skip
    scale = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scale)
    scale.REPO = checkout.resolve()
    return scale


def summary(one: list[dict], two: list[dict], how: str) -> str:
    """PSS of one process against a two-process job's, after the last training step: the
    training processes alone, and with the job's launcher (torchrun's agent, or the command
    that forked them), which rank 0 read at that moment."""
    procs = [x for x in two if "rank" in x]
    steps1 = sum(x.get("pss_mb_after_steps", 0) for x in one)
    steps2 = sum(x.get("pss_mb_after_steps", 0) for x in procs)
    parent = sum(x.get("parent_pss_mb_after_steps", 0) for x in procs)
    peak2 = max((x.get("peak_rss_mb", 0) for x in procs), default=0)
    errors = [x["error"] for x in (*one, *two) if "error" in x]
    if errors:
        return f"{how}: failed: {errors[0]}"
    return (f"PSS after the last step: one process {steps1:.0f} MB; {how} two processes "
            f"{steps2:.0f} MB ({steps2 / max(steps1, 1):.2f}x), with their launcher "
            f"{steps2 + parent:.0f} MB ({(steps2 + parent) / max(steps1, 1):.2f}x); peak RSS "
            f"per process {peak2:.0f} MB")  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkout", action="append", default=[],
                   help="NAME=PATH of a torch-vae checkout (default: this one)")  # fmt: skip
    p.add_argument("--images", type=int, default=202_599)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--fork", action="store_true",
                   help="also 2 processes forked by train --nproc_per_node 2")  # fmt: skip
    p.add_argument("--work", type=Path, default=Path("bench/work-scale"))
    p.add_argument("--out", type=Path, default=Path("bench/work-scale/torchrun-memory.json"))
    args = p.parse_args()
    checkouts = [c.split("=", 1) for c in args.checkout] or [["this", str(HERE.parent)]]
    shape = argparse.Namespace(images=args.images, test_images=256, size=128, compare_size=64,
                               steps=args.steps, warmup=10, batch=128, work=args.work)  # fmt: skip
    data = args.work / "data"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "2"]  # fmt: skip
    results: dict = {}
    imported = load_harness(HERE.parent).run_job("import_torch", {})[0]
    print(f"import torch alone: {imported}", flush=True)
    for rnd in range(args.rounds):
        for name, path in checkouts:
            scale = load_harness(Path(path))
            if not (data / "cache" / "celeb-a-train-128.npy").exists():
                built = scale.run_job("build", {"images": args.images, "test_images": 256,
                                                "sizes": [128], "data_dir": str(data)})  # fmt: skip
                print("built the split:", built, flush=True)
            shutil.rmtree(args.work / "runs", ignore_errors=True)
            one = scale.run_job("train", scale.train_spec(shape, 128, "one", ["--threads", "1"]))
            two = scale.run_job("train", scale.train_spec(shape, 128, "two", ["--threads", "1"]),
                                launcher)  # fmt: skip
            rec = {"round": rnd + 1, "one": one, "two": two}
            print(f"{name} round {rnd + 1}: {summary(one, two, 'torchrun')}", flush=True)
            if args.fork:
                fork = ["--threads", "1", "--nproc_per_node", "2"]
                rec["fork"] = scale.run_job("train", scale.train_spec(shape, 128, "fork", fork))
                print(f"{name} round {rnd + 1}: {summary(one, rec['fork'], 'forked')}", flush=True)
            results.setdefault(name, []).append(rec)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {"checkouts": dict(checkouts), "import_torch": imported, "results": results}
    args.out.write_text(json.dumps(record, indent=1))
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
