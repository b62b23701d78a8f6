"""How near each system's training comes to what the CPU can compute at all.

    python bench/roofline.py                                        # FLOPs, peak, ceilings
    python bench/roofline.py --peers docs/bench/peers-DATE.json     # + each system's share

Counts the floating-point operations of one training step (forward, loss and backward, with
``torch.utils.flop_counter.FlopCounterMode``: the convolutions and matrix products, 2 per
multiply-add; the batch norms, activations and the optimizer are not counted) of

- the peers' network (``--arch original``, 64x64, latent 8, filters up to 128: what
  bench/peers.py trains in every system), and
- the time-to-quality recipe's (bench/run.py's ``QUALITY_RECIPE``: the DCGAN ladder of a 32x32
  model on the 28x28 originals),

and times this machine's fp32 matrix product (``torch.mm`` of two 2048x2048 matrices, on every
thread PyTorch uses, the best of ``--repeats``): the rate oneDNN's and MKL's best kernels reach
here, which no training step's convolutions exceed. From these: the images per second a step
could reach if all its counted operations ran at that rate (its ceiling), and, with
``--peers``, each system's loop images/s (the JSON's medians) as a share of the ceiling, and
what share the goals of docs/benchmarks.md (3x the original, 2.5x pythae, 2x the plain loop;
the quality within 120 s) would need.
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
from machine_info import cpu_model  # noqa: E402
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--peers", type=Path, help="a bench/peers.py JSON to set against the ceiling")
    p.add_argument("--repeats", type=int, default=7, help="timed matrix products (7)")
    p.add_argument("--out", type=Path, help="write the numbers as JSON here")
    args = p.parse_args()
    peers_flops, quality_flops = step_flops(PEERS), step_flops(QUALITY)
    rate = matmul_rate(repeats=args.repeats)
    out = {"machine": cpu_model(), "threads": torch.get_num_threads(),
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
        rates = _loop_rates(json.loads(args.peers.read_text()))
        mine = rates.get("torch-vae-all", rates.get("torch-vae"))
        out["loop_img_per_s"] = rates
        print(f"\nloop images/s from {args.peers} (median of rounds), share of the ceiling:")
        for system, r in rates.items():
            print(f"  {system:<17} {r:7.0f}  {r / ceiling:5.1%}")
        for system, times in GOALS.items():
            if system in rates and mine:
                need = times * rates[system]
                out.setdefault("goals", {})[system] = {
                    "times": times,
                    "img_per_s": need,
                    "share_of_ceiling": need / ceiling,
                }
                print(f"  {times:g}x {system}'s loop: {need:,.0f} images/s, "
                      f"{need / ceiling:.0%} of the ceiling (torch-vae now "
                      f"{mine / rates[system]:.2f}x)")  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
