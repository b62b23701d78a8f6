"""A transposed convolution to one channel (the last layer on grayscale images): oneDNN's
kernel against ``models.layers._GemmTransposedConv`` (one matrix product and strided sums).

    python bench/last_layer.py                     # fp32: the layer alone, then whole steps
    python bench/last_layer.py --precision fp32,bf16 --steps 40 --rounds 3

For each precision: the original architecture's last layer alone (batch 128, 32 channels,
32x32 to 64x64, channels_last), forward and backward, median milliseconds over --reps calls of
each path; then whole training steps of the original architecture
(``bench/profile_train.py``'s ``profile``: the training loop's own step) with the path on and
off, alternating --rounds times (fp32 only: under bf16 autocast ``ConvTranspose2d`` never takes
the GEMM path, which this script times for the layer alone, to show what it would give).
Prints the CPU's model name, its bf16 support and the commit.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from machine_info import code_version, cpu_bf16, cpu_model  # noqa: E402
from profile_train import profile  # noqa: E402

from torch_vae.models import layers  # noqa: E402

GEOMETRY = ((2, 2), (1, 1), (1, 1))  # stride, padding, output_padding


def layer_ms(precision: str, reps: int) -> dict[str, tuple[float, float]]:
    """Median (forward, backward) milliseconds of each path for the last layer alone."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    x = torch.randn(128, 32, 32, 32, dtype=dtype).to(memory_format=torch.channels_last)
    x.requires_grad_()
    weight = (torch.randn(32, 1, 3, 3) * 0.1).to(dtype).requires_grad_()
    bias = torch.zeros(1, dtype=dtype, requires_grad=True)
    grad = torch.randn(128, 1, 64, 64, dtype=dtype)
    paths = {
        "oneDNN": lambda: F.conv_transpose2d(x, weight, bias, *GEOMETRY),
        "GEMM": lambda: layers._GemmTransposedConv.apply(x, weight, bias, *GEOMETRY),
    }
    out = {}
    for name, run in paths.items():
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            y = run()
            t1 = time.perf_counter()
            y.backward(grad)
            times.append((t1 - t0, time.perf_counter() - t1))
            x.grad = weight.grad = bias.grad = None
        out[name] = tuple(statistics.median(t[i] for t in times) * 1000 for i in (0, 1))
    return out


def step_ms(precision: str, steps: int, gemm: bool) -> float:
    """Median milliseconds of a whole training step with the GEMM path allowed or not."""
    allowed = layers.ConvTranspose2d._gemm_path
    if not gemm:
        layers.ConvTranspose2d._gemm_path = lambda self, x: False
    try:
        return sum(profile(precision, steps, "default").values())
    finally:
        layers.ConvTranspose2d._gemm_path = allowed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--precision", default="fp32", help="comma-separated (fp32,bf16)")
    p.add_argument("--reps", type=int, default=30, help="calls of the layer alone per path")
    p.add_argument("--steps", type=int, default=30, help="training steps per measurement")
    p.add_argument("--rounds", type=int, default=3, help="alternations of whole steps")
    args = p.parse_args()
    print(f"{cpu_model()} (bf16: {cpu_bf16()}), {torch.get_num_threads()} threads, "
          f"code {code_version()}")  # fmt: skip
    for precision in args.precision.split(","):
        for name, (fwd, bwd) in layer_ms(precision, args.reps).items():
            print(f"{precision} last layer alone, {name:6s}: forward {fwd:6.2f} ms, "
                  f"backward {bwd:6.2f} ms, both {fwd + bwd:6.2f} ms")  # fmt: skip
        if precision != "fp32":
            print(f"{precision} training steps: not measured (under autocast ConvTranspose2d "
                  "keeps oneDNN)")  # fmt: skip
            continue
        rows: dict[str, list[float]] = {"oneDNN": [], "GEMM": []}
        for _ in range(args.rounds):
            rows["oneDNN"].append(step_ms(precision, args.steps, gemm=False))
            rows["GEMM"].append(step_ms(precision, args.steps, gemm=True))
        for name, ms in rows.items():
            each = " / ".join(f"{m:.1f}" for m in ms)
            print(f"{precision} training step, last layer by {name:6s}: {each} ms "
                  f"(median {statistics.median(ms):.1f})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
