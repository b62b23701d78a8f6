"""Batch norm and leaky ReLU, forward and backward, as PyTorch runs them and compiled into one
kernel by ``torch.compile`` (Inductor), fp32 on the CPU: what fusing the memory-bound part of
a training step could gain, and what compiling it costs:

    python bench/norm_act.py                 # 5 rounds, alternating, 5 calls each
    python bench/norm_act.py --rounds 9

Sizes: the original architecture's five normalised feature maps at batch 128 (channels_last):
32 channels at 32x32, 64 at 16x16, 128 at 8x8 (the encoder; the decoder has the first two
again). One call is the forward pass in training mode (batch statistics) and the gradients
of the input, the norm's weight and bias. Both ways' outputs are checked against float64.
Prints the CPU's model name, the compile time of each size (in a fresh Inductor cache, as a
first run) and the medians (ms per call).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from machine_info import timing_args, torch_line

BATCH = 128
SIZES = ((32, 32), (64, 16), (128, 8))  # (channels, side)


def norm_act(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """What the original architecture does after each convolution but the last."""
    return F.leaky_relu(F.batch_norm(x, None, None, weight, bias, True, 0.1, 1e-5), 0.01)


def call(fn, x, weight, bias, grad) -> tuple[torch.Tensor, ...]:
    y = fn(x, weight, bias)
    return torch.autograd.grad(y, (x, weight, bias), grad)


def check(compiled, x, weight, bias, grad) -> str:
    """Each way's largest difference from float64, relative to the largest value, of the
    output and of the weight's gradient (the input's gradient is left out: where a normalised
    value lies within rounding of 0, either way may take either slope of the leaky ReLU)."""
    exact = [t.double().detach().requires_grad_() for t in (x, weight, bias)]
    y64 = norm_act(*exact)
    (w64,) = torch.autograd.grad(y64, exact[1], grad.double())
    cells = []
    for name, fn in (("pytorch", norm_act), ("compiled", compiled)):
        y = fn(x, weight, bias)
        (w,) = torch.autograd.grad(y, weight, grad)
        out = ((y.double() - y64).abs().max() / y64.abs().max()).item()
        dw = ((w.double() - w64).abs().max() / w64.abs().max()).item()
        cells.append(f"{name} {out:.0e} output, {dw:.0e} weight gradient")
    return "; ".join(cells)


def timed(fn, args: tuple, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        call(fn, *args)
    return (time.perf_counter() - t0) / calls * 1e3


def main() -> None:
    args = timing_args(__doc__)
    print(torch_line())
    # a fresh cache: the compile times are those of a first run (Inductor keeps its kernels
    # on disk, and a later run on the same machine compiles faster)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="norm-act-inductor-")
    compiled = torch.compile(norm_act, dynamic=False)
    torch.manual_seed(0)
    for c, side in SIZES:
        cl = torch.channels_last
        x = torch.randn(BATCH, c, side, side).contiguous(memory_format=cl).requires_grad_()
        weight = torch.rand(c).add(0.5).requires_grad_()
        bias = torch.randn(c).requires_grad_()
        grad = torch.randn(BATCH, c, side, side).contiguous(memory_format=cl)
        t0 = time.perf_counter()
        call(compiled, x, weight, bias, grad)  # compiles it
        compile_s = time.perf_counter() - t0
        errors = check(compiled, x, weight, bias, grad)
        ways = {"pytorch": norm_act, "compiled": compiled}
        times: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(args.rounds):
            for name, fn in ways.items():
                times[name].append(timed(fn, (x, weight, bias, grad), args.calls))
        cells = ", ".join(f"{name} {statistics.median(t):.2f} ms" for name, t in times.items())
        print(f"{c} channels at {side}x{side}: {cells}; compiled in {compile_s:.1f} s "
              f"(against float64: {errors})")  # fmt: skip


if __name__ == "__main__":
    main()
