"""Time to the original's quality: recipes timed from the command to a saved model, alternating.

    python bench/time_to_quality.py                          # every recipe, 1 round each
    python bench/time_to_quality.py --rounds 2 --recipes network-32-b64,network-32
    python bench/time_to_quality.py --val-only               # choose recipes on validation

Each round runs every recipe's ``torch-vae train`` from scratch in its own process (the whole
command timed: start-up, data, training, saving; the run folder removed and the disk synced
before), recipes alternating within a round. Each run's validation objective (the 5,000
training images it holds out, measured by the run after its last epoch) is recorded, for
choosing a recipe without the test split; unless ``--val-only``, what it saved is then
measured on the test split with ``torch-vae evaluate --iw_samples 0`` (fp32, not timed).
The goal: a test objective <= 54.88 (the original's latent-8 Fashion-MNIST model after its
100 epochs) within 120 s. Prints a table and writes every round to ``--out`` as JSON, with
the CPU's model name, its bf16 support and the code's commit.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine_info import code_version, cpu_bf16, cpu_model  # noqa: E402
from run import QUALITY_RECIPE, QUALITY_SECONDS, QUALITY_TARGET, child_env  # noqa: E402

RECIPES = {
    # bench/run.py's: the DCGAN ladder of a 32x32 model on the 28x28 originals (docs/model.md),
    # in batches of 64 for 6 epochs
    "network-32-b64": QUALITY_RECIPE,
    # the same model in batches of 128 for 8 epochs (the recipe before, 2026-12-07)
    "network-32": [
        "--arch=dcgan",
        "--native_size=28",
        "--network_size=32",
        "--lr=2e-3",
        "--lr_schedule=cosine",
        "--epochs=8",
        "--batchsize=128",
        "--latent_dims=8",
    ],  # fmt: skip
    # the earlier recipe: the 64x64 ladder, its output projected onto the upsamplings
    "full-64": [
        "--arch=dcgan",
        "--native_size=28",
        "--lr=2e-3",
        "--lr_schedule=cosine",
        "--epochs=6",
        "--batchsize=128",
        "--latent_dims=8",
    ],  # fmt: skip
}


def torch_vae(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch_vae", *args]


def one_round(name: str, work: Path, data: Path, test: bool, seed: int) -> dict:
    """Train recipe ``name`` from scratch (timed); its validation objective, and (``test``)
    the test objective of what it saved."""
    run = work / f"run-{name}"
    shutil.rmtree(run, ignore_errors=True)
    os.sync()
    argv = torch_vae("train", *RECIPES[name], "--dataset=fashion-mnist", f"--data_dir={data}",
                     f"--run_dir={run}", f"--seed={seed}", "--quiet", "--device=cpu")  # fmt: skip
    start = time.perf_counter()
    subprocess.run(argv, env=child_env(), check=True)
    seconds = time.perf_counter() - start
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    result = {"recipe": name, "seed": seed, "seconds": seconds,
              "val_objective": epochs[-1]["val_loss"],
              "epoch_seconds": [e["epoch_seconds"] for e in epochs]}  # fmt: skip
    if test:
        report = work / f"report-{name}.json"
        evaluate = torch_vae("evaluate", f"--model={run}", "--split=test", "--iw_samples=0",
                             f"--data_dir={data}", f"--report={report}", "--quiet",
                             "--device=cpu")  # fmt: skip
        subprocess.run(evaluate, env=child_env(), check=True, stdout=subprocess.DEVNULL)
        result["test_objective"] = json.loads(report.read_text())["objective"]
    return result


def _values(rounds: list[dict], key: str, fmt: str) -> str:
    """The median of ``key`` over ``rounds``, then each round's value."""
    each = " / ".join(format(r[key], fmt) for r in rounds)
    return f"{statistics.median(r[key] for r in rounds):{fmt}} ({each})"


def table(rounds: list[dict]) -> str:
    test = all("test_objective" in r for r in rounds)
    head = "| recipe | flags | seconds (rounds) | val objective | "
    lines = [head + ("test objective | goal met |" if test else ""),
             "|---|---|---|---|" + ("---|---|" if test else "")]  # fmt: skip
    for name in dict.fromkeys(r["recipe"] for r in rounds):
        mine = [r for r in rounds if r["recipe"] == name]
        row = (f"| {name} | `{' '.join(RECIPES[name])}` | {_values(mine, 'seconds', '.1f')} "
               f"| {_values(mine, 'val_objective', '.2f')} |")  # fmt: skip
        if test:
            secs = statistics.median(r["seconds"] for r in mine)
            obj = statistics.median(r["test_objective"] for r in mine)
            met = "yes" if secs <= QUALITY_SECONDS and obj <= QUALITY_TARGET else "no"
            row += f" {_values(mine, 'test_objective', '.2f')} | {met} |"
        lines.append(row)
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated: "
                   + ", ".join(RECIPES))  # fmt: skip
    p.add_argument("--rounds", type=int, default=1, help="rounds of every recipe (1)")
    p.add_argument("--val-only", action="store_true", help="no test split (choosing recipes)")
    p.add_argument("--seed", type=int, default=0, help="every run's --seed (0)")
    p.add_argument(
        "--data_dir",
        type=Path,
        default=None,
        help="where fashion-mnist is cached (default: WORK/data)",
    )
    p.add_argument(
        "--work",
        type=Path,
        default=Path("bench/work/time-to-quality"),
        help="scratch folder for the runs (bench/work/time-to-quality)",
    )
    p.add_argument("--out", type=Path, default=Path("bench/work/time-to-quality.json"),
                   help="every round as JSON (bench/work/time-to-quality.json)")  # fmt: skip
    args = p.parse_args()
    names = args.recipes.split(",")
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        p.error(f"unknown recipe {unknown[0]!r}; choose from {', '.join(RECIPES)}")
    args.work.mkdir(parents=True, exist_ok=True)
    data = args.data_dir or args.work / "data"
    # the data cached before the first timed run, so that no recipe pays for it
    subprocess.run(torch_vae("train", "--dataset=fashion-mnist", f"--data_dir={data}",
                             "--dry_run", "--quiet", "--device=cpu"),
                   env=child_env(), check=True)  # fmt: skip
    rounds = []
    for i in range(args.rounds):
        for name in names:
            rounds.append(r := one_round(name, args.work, data, not args.val_only, args.seed))
            test = f", test {r['test_objective']:.3f}" if "test_objective" in r else ""
            print(f"round {i + 1} {name}: {r['seconds']:.1f} s, val objective "
                  f"{r['val_objective']:.3f}{test}", flush=True)  # fmt: skip
    result = {"cpu": cpu_model(), "bf16": cpu_bf16(), "code": code_version(),
              "target": QUALITY_TARGET, "goal_seconds": QUALITY_SECONDS,
              "recipes": {n: RECIPES[n] for n in names}, "rounds": rounds}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{result['cpu']} (bf16: {result['bf16']}), code {result['code']}")
    print(table(rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
