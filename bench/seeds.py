"""One epoch's test objective per seed, gathered from bench/peers.py's JSON files, and whether two
systems differ (docs/benchmarks.md, "over 16 seeds").

    python bench/seeds.py docs/bench/peers-2026-12-06-xeon-seeds.json \\
        docs/bench/peers-2026-12-06-xeon-equal-work.json \\
        docs/bench/peers-2026-12-06-xeon-seeds-3-7-all.json \\
        docs/bench/peers-2026-12-06-xeon-seeds-8-15.json --compare torch-vae-all,original

Round r of a file trained with seed ``first_seed + r - 1``; the objectives are deterministic per
seed, so a seed measured in two files is one value (the script checks that they agree). Prints
each system's seeds, median, mean and range, and for --compare A,B: the share of pairs of seeds
where A is lower, a two-sided Mann-Whitney U test, and a bootstrap 95% interval for the
difference of the medians (A - B).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
from scipy import stats


def objectives(files: list[Path]) -> dict[str, dict[int, float]]:
    """system -> seed -> test objective, over every file."""
    out: dict[str, dict[int, float]] = {}
    for f in files:
        data = json.loads(f.read_text())
        first = data["args"].get("first_seed", 0)
        for system, runs in data["objective"].items():
            for run in runs:
                if "objective" not in run:
                    continue
                seed, value = first + run["round"] - 1, run["objective"]
                known = out.setdefault(system, {}).setdefault(seed, value)
                if abs(known - value) > 1e-6:
                    raise SystemExit(f"{f}: {system} seed {seed} gave {value}, elsewhere {known}: "
                                     "the files come from different code or settings")  # fmt: skip
    return out


def compare(a: list[float], b: list[float], resamples: int = 20_000) -> dict[str, float]:
    rng = np.random.default_rng(0)
    diffs = [
        np.median(rng.choice(a, len(a))) - np.median(rng.choice(b, len(b)))
        for _ in range(resamples)
    ]
    low, high = np.percentile(diffs, [2.5, 97.5])
    return {
        "a_lower_share": float(np.mean([x < y for x in a for y in b])),
        "mann_whitney_p": float(stats.mannwhitneyu(a, b, alternative="two-sided").pvalue),
        "median_diff_low": float(low),
        "median_diff_high": float(high),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("files", nargs="+", type=Path, help="bench/peers.py JSON results")
    p.add_argument("--compare", help="two systems, A,B")
    args = p.parse_args(argv)
    missing = [str(f) for f in args.files if not f.is_file()]
    if missing:
        p.error(f"no such file: {', '.join(missing)}")
    found = objectives(args.files)
    if args.compare:
        names = args.compare.split(",")
        if len(names) != 2 or not set(names) <= set(found):
            p.error(f"--compare takes two systems, A,B, of {', '.join(sorted(found))}")
        a, b = names
        common = sorted(set(found[a]) & set(found[b]))
        if len(common) < 2:
            p.error(f"--compare: {a} and {b} share {len(common)} seed(s); at least 2 are needed")
    else:
        a = b = ""
    print("| system | seeds | median | mean | range |\n|---|---|---|---|---|")
    for system, by_seed in found.items():
        v = list(by_seed.values())
        seeds = sorted(by_seed)
        print(f"| {system} | {seeds[0]}-{seeds[-1]} ({len(v)}) | {statistics.median(v):.2f} | "
              f"{statistics.mean(v):.2f} | {min(v):.2f}-{max(v):.2f} |")  # fmt: skip
    if a:
        r = compare([found[a][s] for s in common], [found[b][s] for s in common])
        print(f"\n{a} against {b}, seeds {common[0]}-{common[-1]} ({len(common)}): {a} lower in "
              f"{r['a_lower_share']:.0%} of the pairs of seeds; Mann-Whitney p = "
              f"{r['mann_whitney_p']:.2f}; median difference, bootstrap 95%: "
              f"{r['median_diff_low']:+.1f} to {r['median_diff_high']:+.1f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
