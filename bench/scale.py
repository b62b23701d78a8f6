"""Data larger than memory: a synthetic CelebA-like split, memory-mapped by every process.

    python bench/scale.py                                   # 202,599 images at 128x128 (10 GB)
    python bench/scale.py --images 20000 --work /tmp/scale  # a quicker, smaller check

Writes the cache of a synthetic ``celeb-a`` split (RGB, --size pixels, smooth random blobs) in
the real cache format, through the same streaming writer as a real build, then measures:

- build: seconds and the builder's peak RSS (the split is written through a memory map, so it
  never has to fit in memory);
- start-up: seconds from the start of ``torch-vae train --dataset celeb-a`` to its first
  optimizer step, with the cache in place;
- training at --size: peak RSS per process, and images/s (steady, after --warmup steps);
- memory-mapped against in-memory at --compare-size (64): the same steps with the split as a
  memory map and as a copy in memory (images/s of each, and their ratio);
- torchrun: one process against two (``torchrun --nproc_per_node 2``, gloo) on the same split;
  proportional set size (PSS: shared pages split between the processes that map them) summed
  over the processes, when the command has ended (``pss_mb``) and after the last training step,
  before the evaluation that ends the run (``pss_mb_after_steps``).

The test split is kept small (--test-images): the end-of-run evaluation is not what is measured.
Results are printed and written as JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from machine_info import cpu_model

REPO = Path(__file__).resolve().parent.parent
TAG = "SCALE_RESULT "


class SyntheticCelebA:
    """Stands in for the registered ``celeb-a`` while its cache is written: the same name,
    channels and cache key, images made up instead of decoded."""

    name, channels, files = "celeb-a", 3, ()

    def __init__(self, counts: dict[str, int]):
        self.counts = counts

    def cache_key(self, split: str, size: int) -> str:
        return f"celeb-a-{split}-{size}"

    def fingerprint(self, split: str) -> None:
        return None

    def prepare(self, split, size, data_dir, progress=True, allocate=None):
        import numpy as np

        n = self.counts[split]
        out = allocate((n, size, size, 3))
        rng = np.random.default_rng(0 if split == "train" else 1)
        yy, xx = np.mgrid[0:size, 0:size] / size
        chunk = 512
        for start in range(0, n, chunk):
            k = min(chunk, n - start)
            cx, cy, r = rng.uniform(0.2, 0.8, (3, k, 1, 1)) * [[[[1]]], [[[1]]], [[[0.4]]]]
            blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r**2))  # (k, H, W)
            color = rng.uniform(60, 255, (k, 1, 1, 3))
            out[start : start + k] = (blob[..., None] * color).astype(np.uint8)
        return out


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _memory_mb(pid: int | str = "self") -> dict[str, float]:
    """A process's (this one's) proportional set size (PSS), its private memory (USS) and the
    written part of that (private dirty: what no other process can share), MB."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        fields = {k: int(v.split()[0]) / 1024 for k, v in
                  (line.split(":", 1) for line in f if ":" in line and "kB" in line)}  # fmt: skip
    private = fields["Private_Clean"] + fields["Private_Dirty"]
    return {
        "pss_mb": fields["Pss"],
        "private_mb": private,
        "private_dirty_mb": fields["Private_Dirty"],
    }


def _emit(result: dict) -> None:
    # one write of the whole line: the processes of a torchrun job share this pipe, and a
    # write of under 4 KiB to a pipe is never interleaved with another's
    sys.stdout.write(TAG + json.dumps(result) + "\n")
    sys.stdout.flush()


def job_build(spec: dict) -> None:
    from torch_vae.data import datasets, load_split

    fake = SyntheticCelebA({"train": spec["images"], "test": spec["test_images"]})
    datasets.DATASETS["celeb-a"] = fake
    t0 = time.perf_counter()
    for split in ("train", "test"):
        for size in spec["sizes"]:
            load_split("celeb-a", split, size, spec["data_dir"], progress=False)
    _emit({"seconds": time.perf_counter() - t0, "peak_rss_mb": _peak_mb()})


def job_import_torch(spec: dict) -> None:
    """What ``import torch`` alone leaves in a fresh interpreter."""
    import torch  # noqa: F401

    _emit({"peak_rss_mb": _peak_mb(), **_memory_mb()})


def job_train(spec: dict) -> None:
    """``torch-vae train`` in this process; times of its steps from its progress bar."""
    import numpy as np

    import torch_vae.training.distributed as dist_mod
    import torch_vae.training.loop as train_mod
    import torch_vae.training.plan as run_mod
    from torch_vae.cli import main
    from torch_vae.cli.launch import launched_worker

    stamps: list[float] = []
    after_steps: dict[str, float] = {}
    base = train_mod.tqdm

    class TimedBar(base):
        def __iter__(self):
            try:
                for item in super().__iter__():
                    stamps.append(time.time())
                    yield item
            finally:  # the loop is done with the bar: after its last step, before evaluating
                after_steps.update(_memory_mb())
                if os.environ.get("RANK") == "0":  # a job's launcher: torchrun's or the fork's
                    parent = _memory_mb(os.getppid())
                    after_steps.update({f"parent_{k}": v for k, v in parent.items()})
                if launched_worker():  # a fork of --nproc_per_node: reports from here
                    _emit(_train_result(spec, stamps, after_steps, final=False))

    # a torchrun process ends inside main() (os._exit); report first, then end it that way
    end_process = dist_mod.end_process
    dist_mod.end_process = lambda code: None

    train_mod.tqdm = TimedBar
    if spec.get("in_memory"):  # the split copied into memory: the path the map replaces
        real = run_mod.load_split
        run_mod.load_split = lambda *a, **k: np.array(real(*a, **k))
    rc = main(spec["argv"])
    if rc != 0:
        _emit({"error": f"torch-vae train exited with {rc}"})
        return
    if not stamps:  # the launcher of --nproc_per_node: its processes reported
        _emit({"launcher": True, "peak_rss_mb": _peak_mb(), **_memory_mb()})
        return
    _emit(_train_result(spec, stamps, after_steps, final=True))
    if dist_mod.joined_a_job():
        end_process(0)


def _train_result(spec: dict, stamps: list[float], after_steps: dict, final: bool) -> dict:
    """One training process's record: start-up, steady images/s, memory (PSS and private
    memory after the last step; also at the end of the command when ``final``; the job's
    launcher's when this is rank 0 of a job: ``parent_pss_mb_after_steps``)."""
    warm = min(spec["warmup"], len(stamps) - 2)
    return {
        "rank": int(os.environ.get("RANK", "0")),
        "startup_s": stamps[0] - spec["t0"],
        "img_per_s": spec["batch"] * (len(stamps) - 1 - warm) / (stamps[-1] - stamps[warm]),
        "peak_rss_mb": _peak_mb(),
        **(_memory_mb() if final else {}),
        **{f"{k}_after_steps": v for k, v in after_steps.items()},
        "imported_dynamo": "torch._dynamo" in sys.modules,
    }


def run_job(kind: str, spec: dict, launcher: list[str] | None = None) -> list[dict]:
    """Run a job in fresh process(es); the results each printed."""
    spec = {**spec, "t0": time.time()}
    argv = [*(launcher or [sys.executable]), str(Path(__file__).resolve()), "--job", kind]
    env = {**os.environ, "SCALE_SPEC": json.dumps(spec), "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    results = [json.loads(line[len(TAG) :]) for line in proc.stdout.splitlines()
               if line.startswith(TAG)]  # fmt: skip
    if proc.returncode != 0 or not results:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return [{"error": f"exit {proc.returncode}: " + " | ".join(tail)}]
    return results


def train_spec(args, size: int, run: str, extra: list[str] | None = None) -> dict:
    argv = ["train", "--dataset", "celeb-a", "--image_size", str(size), "--arch", "dcgan",
            "--batchsize", str(args.batch), "--max_steps", str(args.steps), "--epochs", "1",
            "--data_dir", str(args.work / "data"), "--run_dir", str(args.work / "runs" / run),
            "--quiet", "--cpu", *(extra or [])]  # fmt: skip
    return {"argv": argv, "warmup": args.warmup, "batch": args.batch}


def bench(args) -> dict:
    results: dict = {"machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python":
                                 platform.python_version()}}  # fmt: skip
    sizes = sorted({args.size, args.compare_size})
    spec = {"images": args.images, "test_images": args.test_images, "sizes": sizes,
            "data_dir": str(args.work / "data")}  # fmt: skip
    results["build"] = run_job("build", spec)[0]
    cache = args.work / "data" / "cache" / f"celeb-a-train-{args.size}.npy"
    results["cache_gb"] = cache.stat().st_size / 1e9 if cache.exists() else None
    results["train"] = run_job("train", train_spec(args, args.size, "big"))[0]
    for name, in_memory in (("mapped", False), ("in_memory", True)):
        spec = {**train_spec(args, args.compare_size, f"cmp-{name}"), "in_memory": in_memory}
        results[f"compare_{name}"] = run_job("train", spec)[0]
    one = train_spec(args, args.size, "one", ["--threads", "1"])
    results["torchrun_1"] = run_job("train", one)
    two = train_spec(args, args.size, "two", ["--threads", "1"])
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "2"]  # fmt: skip
    results["torchrun_2"] = run_job("train", two, launcher)
    return results


def report(r: dict) -> str:
    lines = [f"CPU: {r['machine']['cpu']} ({r['machine']['cores']} cores)"]
    b = r["build"]
    lines.append(f"cache: {r['cache_gb']:.2f} GB, built in {b.get('seconds', 0):.0f} s, "
                 f"builder peak RSS {b.get('peak_rss_mb', 0):.0f} MB")  # fmt: skip
    t = r["train"]
    startup, peak, rate = (t.get(k, 0) for k in ("startup_s", "peak_rss_mb", "img_per_s"))
    lines.append(f"train: start-up {startup:.1f} s to the first step, peak RSS {peak:.0f} MB, "
                 f"{rate:.0f} img/s")  # fmt: skip
    m, c = r["compare_mapped"], r["compare_in_memory"]
    if "img_per_s" in m and "img_per_s" in c:
        lines.append(f"memory-mapped {m['img_per_s']:.0f} img/s vs in memory {c['img_per_s']:.0f} "
                     f"img/s: {m['img_per_s'] / c['img_per_s']:.1%}")  # fmt: skip
    one = sum(x.get("pss_mb", 0) for x in r["torchrun_1"])
    two = sum(x.get("pss_mb", 0) for x in r["torchrun_2"])
    if one and two:
        lines.append(f"PSS: one process {one:.0f} MB, two processes {two:.0f} MB "
                     f"({two / one:.2f}x)")  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--job", help=argparse.SUPPRESS)
    p.add_argument("--images", type=int, default=202_599, help="training images (202,599)")
    p.add_argument("--test-images", type=int, default=256, help="test images (256)")
    p.add_argument("--size", type=int, default=128, help="image size of the big split (128)")
    p.add_argument("--compare-size", type=int, default=64, help="size of the comparison (64)")
    p.add_argument("--steps", type=int, default=60, help="steps per training run (60)")
    p.add_argument("--warmup", type=int, default=10, help="steps not in the rate (10)")
    p.add_argument("--batch", type=int, default=128, help="batch size (128)")
    p.add_argument("--work", type=Path, default=Path("bench/work-scale"), help="scratch folder")
    p.add_argument("--out", type=Path, default=Path("bench/scale.json"), help="JSON results")
    args = p.parse_args()
    if args.job:
        spec = json.loads(os.environ["SCALE_SPEC"])
        {"build": job_build, "train": job_train, "import_torch": job_import_torch}[args.job](spec)
        return 0
    (args.work / "runs").mkdir(parents=True, exist_ok=True)
    for old in (args.work / "runs").iterdir():
        subprocess.run(["rm", "-rf", str(old)], check=True)
    results = bench(args)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
