"""A stride-2 4x4 transposed convolution (the DCGAN family's decoder layers) three ways, forward
and backward, fp32 on the CPU, to see whether a decoder could run faster without oneDNN's
transposed convolution:

    python bench/subpixel.py                 # 5 rounds, alternating, 5 calls each
    python bench/subpixel.py --rounds 9

- ``transposed``: ``F.conv_transpose2d`` (oneDNN), what the families run;
- ``four-phase``: the same layer as four 2x2 convolutions, one per output phase (the sub-pixel
  form: each output pixel of phase (r, s) is a 2x2 window of the input times the taps of
  that phase), and the phases interleaved: the same multiply-adds, as forward convolutions;
- ``one-conv``: a 3x3 convolution to 4x the channels and a pixel shuffle (the usual
  sub-pixel layer; 2.25x the multiply-adds, each phase's zero taps included).

The four-phase outputs are checked against ``transposed`` (the same numbers up to the sums'
order). Sizes: the decoder of ``--arch dcgan --network_size 32`` at batch 128 (channels_last).
Prints the CPU's model name and the medians; each number is one call's forward and backward.
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

LAYERS = ((128, 64, 4), (64, 32, 8))  # (in, out channels, input size): 4 -> 8, 8 -> 16
TAPS = {0: [3, 1], 1: [2, 0]}  # output phase -> the kernel rows (or columns) it uses, in order


def four_phase(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """conv_transpose2d(x, w, stride 2, padding 1) for a (C, O, 4, 4) ``w``, as four 2x2
    convolutions of the padded input, interleaved."""
    n, _, h, width = x.shape
    xp = F.pad(x, (1, 1, 1, 1))
    out = x.new_empty(n, w.shape[1], 2 * h, 2 * width)
    for r in (0, 1):
        for s in (0, 1):
            k = w[:, :, TAPS[r]][:, :, :, TAPS[s]].transpose(0, 1)
            out[:, :, r::2, s::2] = F.conv2d(xp[:, :, r : r + h + 1, s : s + width + 1], k)
    return out


def timed(fn, calls: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1000


def layer_row(cin: int, cout: int, size: int, rounds: int, calls: int) -> str:
    """One layer's line: each way's median milliseconds and its ratio to ``transposed``."""
    x = torch.randn(128, cin, size, size).to(memory_format=torch.channels_last)
    x.requires_grad_()
    w = torch.randn(cin, cout, 4, 4, requires_grad=True)
    w3 = torch.randn(4 * cout, cin, 3, 3, requires_grad=True)
    ref = F.conv_transpose2d(x, w, None, 2, 1)
    assert torch.allclose(four_phase(x, w), ref, atol=1e-4 * ref.abs().max().item())
    ways = {
        "transposed": lambda: F.conv_transpose2d(x, w, None, 2, 1).sum().backward(),
        "four-phase": lambda: four_phase(x, w).sum().backward(),
        "one-conv": lambda: F.pixel_shuffle(F.conv2d(x, w3, None, 1, 1), 2).sum().backward(),
    }
    ms = {name: [] for name in ways}
    for _ in range(rounds):  # alternating: the machine's drift hits every way alike
        for name, fn in ways.items():
            ms[name].append(timed(fn, calls))
    med = {name: statistics.median(v) for name, v in ms.items()}
    row = ", ".join(f"{n} {m:.2f} ms ({m / med['transposed']:.2f}x)" for n, m in med.items())
    return f"{cin}->{cout} channels, {size}x{size} -> {2 * size}x{2 * size}: {row}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--calls", type=int, default=5)
    args = p.parse_args()
    torch.manual_seed(0)
    print(f"{cpu_model()} (bf16: {cpu_bf16()}), code {code_version()}, fp32, batch 128")
    for cin, cout, size in LAYERS:
        print(layer_row(cin, cout, size, args.rounds, args.calls))
    return 0


if __name__ == "__main__":
    sys.exit(main())
