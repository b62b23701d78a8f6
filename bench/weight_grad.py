"""The weight gradients of the original architecture's stride-2 3x3 layers, fp32 on the CPU:
oneDNN's against nine matrix products, to see whether the step's slowest convolutions (the
weight gradients: about half as fast as the forward convolutions of the same size) could run
faster another way:

    python bench/weight_grad.py              # 5 rounds, alternating, 5 calls each
    python bench/weight_grad.py --rounds 9

- ``onednn``: ``aten.convolution_backward`` for the weight only, what training runs;
- ``products``: the gradient as nine (C, M) x (M, C') matrix products, one per kernel tap,
  over the larger tensor split into its four stride-2 phases (each tap of a phase is a shift
  of whole rows of the flattened phase, so no im2col copy is needed; the smaller tensor is
  padded with a zero row and column so that the shifts stay inside each image);
- ``forward``: the layer's forward convolution, for scale (the same multiply-adds).

The products are checked against ``onednn`` (the same numbers up to the sums' order). Sizes:
the encoder's 32->64 and 64->128 convolutions and the decoder's 128->64 and 64->32 transposed
ones at batch 128, channels_last. Prints the CPU's model name and the medians (ms per call).
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F
from machine_info import timing_args, torch_line

BATCH = 128
# (kind, in channels, out channels, input size)
LAYERS = (("conv", 32, 64, 32), ("conv", 64, 128, 16), ("convT", 128, 64, 8), ("convT", 64, 32, 16))


def products(small: torch.Tensor, big_pad: torch.Tensor) -> torch.Tensor:
    """out[s, b, i, j] = sum over n, h, w of small[n, h, w, s] * big_pad[n, 2h + i, 2w + j, b]
    for 3x3 taps; ``small`` (N, H, W, S) and ``big_pad`` (N, 2H + 2, 2W + 2, B), dense."""
    n, h, w, s = small.shape
    b, length = big_pad.shape[-1], (h + 1) * (w + 1)
    padded = small.new_zeros(n, h + 1, w + 1, s)
    padded[:, :h, :w] = small
    g = padded.view(n * length, s)
    out = small.new_empty(s, b, 3, 3)
    for a in range(2):
        for c in range(2):
            phase = big_pad[:, a::2, c::2].contiguous().view(n * length, b)
            for i in range(a, 3, 2):
                for j in range(c, 3, 2):
                    shift = (i // 2) * (w + 1) + j // 2
                    out[:, :, i, j] = g[: n * length - shift].t() @ phase[shift:]
    return out


def _pad(t: torch.Tensor) -> torch.Tensor:
    """A channels_last (N, C, H, W) as (N, H + 2, W + 2, C), one zero pixel around it."""
    d = t.permute(0, 2, 3, 1)
    n, h, w, c = d.shape
    out = d.new_zeros(n, h + 2, w + 2, c)
    out[:, 1 : h + 1, 1 : w + 1] = d
    return out


def layer(kind: str, c_in: int, c_out: int, size: int):
    """The three ways for one layer, as callables, and the products' largest relative error."""
    cl = torch.channels_last
    x = torch.randn(BATCH, c_in, size, size).contiguous(memory_format=cl)
    if kind == "conv":
        w = torch.randn(c_out, c_in, 3, 3)
        g = torch.randn(BATCH, c_out, size // 2, size // 2).contiguous(memory_format=cl)
        geometry = (False, (0, 0))

        def mine():
            return products(g.permute(0, 2, 3, 1), _pad(x))

        def forward():
            return F.conv2d(x, w, None, 2, 1)
    else:
        w = torch.randn(c_in, c_out, 3, 3)
        g = torch.randn(BATCH, c_out, 2 * size, 2 * size).contiguous(memory_format=cl)
        geometry = (True, (1, 1))

        def mine():
            return products(x.permute(0, 2, 3, 1), _pad(g))

        def forward():
            return F.conv_transpose2d(x, w, None, 2, 1, 1)

    def onednn():
        return torch.ops.aten.convolution_backward(
            g, x, w, None, (2, 2), (1, 1), (1, 1), *geometry, 1, (False, True, False)
        )[1]

    ref = onednn()
    err = ((ref - mine()).abs().max() / ref.abs().max()).item()
    return {"onednn": onednn, "products": mine, "forward": forward}, err


def timed(fn, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1e3


def main() -> None:
    args = timing_args(__doc__)
    print(torch_line())
    for kind, c_in, c_out, size in LAYERS:
        ways, err = layer(kind, c_in, c_out, size)
        for fn in ways.values():  # warm-up
            fn()
        times: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(args.rounds):
            for name, fn in ways.items():
                times[name].append(timed(fn, args.calls))
        cells = ", ".join(f"{name} {statistics.median(t):.2f} ms" for name, t in times.items())
        print(f"{kind} {c_in}->{c_out} at {size}x{size}: {cells} (products' error {err:.1e})")


if __name__ == "__main__":
    main()
