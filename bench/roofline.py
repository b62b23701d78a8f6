"""How near each system's training comes to the rate of this machine's fastest fp32 kernel.

    python bench/roofline.py                                        # FLOPs, product rate, ceilings
    python bench/roofline.py --peers docs/bench/peers-DATE.json     # + each system's share

Counts the floating-point operations of one training step (forward, loss and backward, with
``torch.utils.flop_counter.FlopCounterMode``: the convolutions and matrix products, 2 per
multiply-add; the batch norms, activations and the optimizer are not counted) of

- the peers' network (``--arch original``, 64x64, latent 8, filters up to 128: what
  bench/peers.py trains in every system), and
- the time-to-quality recipe's (bench/run.py's ``QUALITY_RECIPE``: the DCGAN ladder of a 32x32
  model on the 28x28 originals),

and times this machine's fp32 matrix product (``torch.mm`` of two 2048x2048 matrices, on every
thread PyTorch uses, the best of ``--repeats``): the rate of PyTorch's best kernel here, not
the cores' theoretical peak (which the script does not know). From these, each model's
ceiling: the images per second of a step whose counted operations all ran at that rate and
nothing else took time. With ``--peers``:

- each system's loop images/s (images / loop seconds, the median over rounds) as a share of
  the ceiling, and torch-vae-all's loop against each system's, round by round (the median of
  the rounds' ratios);
- what share of the ceiling torch-vae-all's loop would need for the goals of
  docs/benchmarks.md (3x the original's, 2.5x pythae's, 2x the plain loop's whole-command
  time): the goal's seconds (the other system's / the factor) less what torch-vae-all spent
  outside its loop (start-up, data, the test split, saving) in the same round, as a loop rate;
  the median over rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from machine_info import code_version, cpu_model  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from torch_vae.models import VAE, ModelConfig  # noqa: E402

PEERS = ModelConfig(arch="original", image_size=64, latent_dims=8, max_filters=128)
QUALITY = ModelConfig(arch="dcgan", image_size=64, native_size=28, network_size=32,
                      latent_dims=8)  # fmt: skip
GOALS = {"original": 3.0, "pythae": 2.5, "plain": 2.0}  # docs/benchmarks.md, issue's goals
QUALITY_IMAGES = 6 * 55000  # the recipe's 6 epochs of the 55,000 training images
QUALITY_SECONDS = 120


def step_flops(config: ModelConfig, batch: int = 16) -> float:
    """Counted floating-point operations of one training step, per image."""
    torch.manual_seed(0)
    model = VAE(config).train()
    x = torch.rand(batch, config.in_channels, config.image_size, config.image_size)
    with FlopCounterMode(display=False) as counter:
        out = model(x)
        model.objective(out, x)["loss"].backward()
    return counter.get_total_flops() / batch


def matmul_rate(n: int = 2048, repeats: int = 7) -> float:
    """fp32 FLOP/s of torch.mm of two n x n matrices here: the best of ``repeats``."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up: threads started, the kernel chosen
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def _loop_rates(peers: dict) -> dict[str, float]:
    """Each system's median loop images/s over its training rounds."""
    rates = {}
    for system, rounds in peers["runs"]["train"].items():
        per = [r["images"] / r["loop_seconds"] for r in rounds if r.get("loop_seconds")]
        if per:
            rates[system] = statistics.median(per)
    return rates


def _by_round(peers: dict, system: str) -> dict[int, dict]:
    return {r["round"]: r for r in peers["runs"]["train"].get(system, []) if r.get("seconds")}


def _loop_ratio(peers: dict, system: str, mine: str) -> float | None:
    """The median over rounds of ``system``'s loop seconds per image / ``mine``'s."""
    ours, theirs = _by_round(peers, mine), _by_round(peers, system)
    ratios = [(t["loop_seconds"] / t["images"]) / (ours[n]["loop_seconds"] / ours[n]["images"])
              for n, t in theirs.items() if n in ours and t.get("loop_seconds")]  # fmt: skip
    return statistics.median(ratios) if ratios else None


def _goal_loop_rate(peers: dict, system: str, times: float, mine: str) -> float | None:
    """The loop images/s ``mine`` would need, the median over rounds, for its whole command to
    take 1/``times`` of ``system``'s: the goal's seconds less its own time outside the loop."""
    ours, theirs = _by_round(peers, mine), _by_round(peers, system)
    needs = []
    for n, t in theirs.items():
        if n in ours and ours[n].get("loop_seconds"):
            outside = ours[n]["seconds"] - ours[n]["loop_seconds"]
            loop = t["seconds"] / times - outside
            needs.append(ours[n]["images"] / loop if loop > 0 else float("inf"))
    return statistics.median(needs) if needs else None


def _peers_report(path: Path, ceiling: float) -> dict:
    """Print and return the --peers part: shares of the ceiling, loop ratios, goals' needs."""
    peers = json.loads(path.read_text())
    rates = _loop_rates(peers)
    mine = "torch-vae-all" if "torch-vae-all" in rates else "torch-vae"
    out = {"peers": str(path), "loop_img_per_s": rates, "goals": {}}
    print(f"\nloop images/s from {path} (median of rounds), share of the ceiling:")
    for system, r in rates.items():
        print(f"  {system:<17} {r:7.0f}  {r / ceiling:5.1%}")
    print(f"{mine}'s loop against each (median of the rounds' ratios), and what the goals "
          "(whole commands) would need of it:")  # fmt: skip
    for system, times in GOALS.items():
        ratio = _loop_ratio(peers, system, mine)
        need = _goal_loop_rate(peers, system, times, mine)
        if ratio is None or need is None:
            continue
        out["goals"][system] = {"times": times, "loop_ratio_now": ratio,
                                "loop_img_per_s_needed": need,
                                "share_of_ceiling_needed": need / ceiling}  # fmt: skip
        print(f"  {system:<9} loop {ratio:.2f}x now; {times:g}x its command needs a loop of "
              f"{need:,.0f} images/s, {need / ceiling:.0%} of the ceiling")  # fmt: skip
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--peers", type=Path, help="a bench/peers.py JSON of this machine")
    p.add_argument("--repeats", type=int, default=7, help="timed matrix products (7)")
    p.add_argument("--out", type=Path, help="write the numbers as JSON here")
    args = p.parse_args()
    peers_flops, quality_flops = step_flops(PEERS), step_flops(QUALITY)
    rate = matmul_rate(repeats=args.repeats)
    out = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "code": code_version(),
           "command": " ".join(["python", *sys.argv]), "machine": cpu_model(),
           "threads": torch.get_num_threads(),
           "torch": torch.__version__, "matmul_gflops": rate / 1e9,
           "peers_step_mflop_per_image": peers_flops / 1e6,
           "quality_step_mflop_per_image": quality_flops / 1e6}  # fmt: skip
    ceiling = rate / peers_flops
    out["peers_ceiling_img_per_s"] = ceiling
    print(f"{cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"fp32 matrix product: {rate / 1e9:.1f} GFLOP/s (torch.mm 2048x2048, best of "
          f"{args.repeats})")  # fmt: skip
    print(f"peers' network (original, 64x64, latent 8): {peers_flops / 1e6:.1f} MFLOP a "
          f"training image; ceiling {ceiling:,.0f} images/s")  # fmt: skip
    floor = QUALITY_IMAGES * quality_flops / rate
    out["quality_floor_seconds"] = floor
    print(f"time-to-quality recipe (dcgan, network 32): {quality_flops / 1e6:.1f} MFLOP a "
          f"training image; its {QUALITY_IMAGES:,} images take at least {floor:.0f} s of "
          f"counted operations at that rate ({floor / QUALITY_SECONDS:.0%} of the "
          f"{QUALITY_SECONDS} s goal, before data, start-up and the rest)")  # fmt: skip
    if args.peers:
        out.update(_peers_report(args.peers, ceiling))
    if args.out:
        args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
