"""Where a training step's time goes: the original architecture (64x64, latent 8, batch 128).

    python bench/profile_train.py                      # fp32 and bf16, 60 steps each
    python bench/profile_train.py --precision bf16 --steps 100 --optimizer fused
    python bench/profile_train.py --precision bf16 --onednn 10   # time in each oneDNN primitive
    python bench/profile_train.py --precision fp32 --steps 40 --norm-act-rounds 3

Times each phase of ``training.loop._step`` separately, with the same code the training loop
runs (``training.batches.batch_source`` + ``runtime.device.to_float``, the model under
``runtime.precision.Precision``'s autocast, ``VAE.objective``, backward, AdamW from
``training.compile.make_optimizer``): batch gather + to_float, forward, loss, backward,
optimizer step, and the host sync the loop does every 10 steps. On the CPU every operation is
synchronous, so timing each phase on the host is exact. Random uint8 images stand in for
Fashion-MNIST (the arithmetic does not depend on the pixels). Prints median milliseconds per
phase and the share of the step; ``--torch-profile N`` also prints torch.profiler's top N ops.

``--norm-act-rounds N`` (the original architecture) is an experiment, not what training runs:
N pairs of steps' timings, alternating, with each batch norm and leaky ReLU as PyTorch runs
them and then compiled by ``torch.compile`` into one kernel each (the encoder's and decoder's
``forward`` replaced for the run: the same computation up to rounding, the convolutions left to
PyTorch); the first compiled round's seconds include the compilation.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from torch_vae.models import VAE, ModelConfig  # noqa: E402
from torch_vae.runtime.allocator import keep_freed_memory  # noqa: E402
from torch_vae.runtime.device import to_float  # noqa: E402
from torch_vae.runtime.precision import Precision  # noqa: E402
from torch_vae.training.batches import batch_source  # noqa: E402
from torch_vae.training.compile import make_optimizer  # noqa: E402

PHASES = ("batch", "forward", "loss", "backward", "optimizer", "sync")


def _norm_act(norm: torch.nn.BatchNorm2d, h: torch.Tensor) -> torch.Tensor:
    from torch_vae.models.original import LEAKY_SLOPE

    h = F.batch_norm(h, norm.running_mean, norm.running_var, norm.weight, norm.bias,
                     norm.training, norm.momentum, norm.eps)  # fmt: skip
    return F.leaky_relu(h, LEAKY_SLOPE)


def fused_norm_act(compiled: bool) -> None:
    """The original architecture's encoder and decoder with each batch norm + leaky ReLU
    compiled (``compiled``) or as they are (the classes' own ``forward``)."""
    from torch_vae.models import original
    from torch_vae.models.layers import linear_to_chw, linears_of_chw
    from torch_vae.models.posterior import Posterior

    fn = torch.compile(_norm_act, dynamic=False)

    def encoder(self, x):
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = fn(norm, conv(x))
        return Posterior.clamped(*linears_of_chw(x, self.proj_mu, self.proj_logvar))

    def decoder(self, z):
        s = self.config.bottleneck_size
        h = linear_to_chw(z, self.lin, (self.config.channels[-1], s, s))
        for conv, norm in zip(self.convs[:-1], self.norms, strict=True):
            h = fn(norm, conv(h, batch_norm_follows=True))
        return torch.sigmoid(self.convs[-1](h))

    for cls, fused in ((original.Encoder, encoder), (original.Decoder, decoder)):
        if not hasattr(cls, "_eager_forward"):
            cls._eager_forward = cls.forward
        cls.forward = fused if compiled else cls._eager_forward


def profile(
    precision: str,
    steps: int,
    optimizer: str,
    batch: int = 128,
    compiled: bool = False,
    arch: str = "original",
) -> dict[str, float]:
    torch.manual_seed(0)
    device = torch.device("cpu")
    config = ModelConfig(latent_dims=8, arch=arch)
    model = VAE(config).to(memory_format=torch.channels_last).train()
    amp = Precision(device, precision, train=True)
    forward = torch.compile(model) if compiled else model
    if optimizer == "default":
        opt = make_optimizer(model, 3e-4, 0.01, device)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.01,
                                **{optimizer: True})  # fmt: skip
    images = torch.randint(0, 256, (6000, 64, 64, 1), dtype=torch.uint8)
    fetch = batch_source(images, device, batch)
    times: dict[str, list[float]] = {p: [] for p in PHASES}
    pending = []
    for step in range(steps):
        t = [time.perf_counter()]
        x = to_float(fetch(torch.randint(0, len(images), (batch,))), device)
        t.append(time.perf_counter())
        with amp.autocast():
            out = forward(x)
        t.append(time.perf_counter())
        losses = model.objective(out, x)  # as the loop: beta 1 here, mse, in fp32
        t.append(time.perf_counter())
        opt.zero_grad(set_to_none=True)
        amp.backward(losses["loss"])
        t.append(time.perf_counter())
        amp.step(opt)
        t.append(time.perf_counter())
        pending.append(torch.stack([losses[k].detach() for k in ("loss", "recon", "kl")]))
        if len(pending) == 10:
            torch.stack(pending).tolist()
            pending.clear()
        t.append(time.perf_counter())
        if step >= min(5, steps // 2):  # warm-up (fewer steps: the first half)
            for p, a, b in zip(PHASES, t, t[1:], strict=False):
                times[p].append(b - a)
    return {p: statistics.median(v) * 1000 for p, v in times.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--precision", default="fp32,bf16", help="comma-separated (fp32,bf16)")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument(
        "--optimizer", default="default", help="default (what training uses), foreach, fused"
    )
    p.add_argument("--arch", default="original", choices=("original", "dcgan"))
    p.add_argument("--compile", action="store_true", help="torch.compile the model (as --compile)")
    p.add_argument("--onednn", type=int, default=0,
                   help="also time oneDNN's primitives (ONEDNN_VERBOSE) over N steps")  # fmt: skip
    p.add_argument("--onednn-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--torch-profile", type=int, default=0, help="top N ops from torch.profiler")
    p.add_argument("--norm-act-rounds", type=int, default=0,
                   help="N rounds: batch norm + leaky ReLU as they are, then compiled")  # fmt: skip
    args = p.parse_args()
    keep_freed_memory()  # as the torch-vae command does
    if args.onednn_child:  # the steps whose oneDNN calls onednn_table reads
        profile(args.precision, args.steps, args.optimizer, compiled=args.compile, arch=args.arch)
        return 0
    if args.norm_act_rounds:
        norm_act_rounds(args)
        return 0
    for precision in args.precision.split(","):
        start = time.perf_counter()
        ms = profile(precision, args.steps, args.optimizer, compiled=args.compile, arch=args.arch)
        print(f"{precision}: {time.perf_counter() - start:.1f} s in all (compilation included)")
        total = sum(ms.values())
        print(f"{precision} ({args.optimizer} AdamW): {total:.1f} ms/step, "
              f"{128 / total * 1000:.0f} img/s")  # fmt: skip
        for phase, v in ms.items():
            print(f"  {phase:10s} {v:7.2f} ms  {100 * v / total:5.1f}%")
        if args.torch_profile:
            with torch.profiler.profile() as prof:
                profile(precision, 15, args.optimizer, compiled=args.compile, arch=args.arch)
            print(prof.key_averages().table(sort_by="self_cpu_time_total",
                                            row_limit=args.torch_profile))  # fmt: skip
        if args.onednn:
            print(onednn_table(precision, args.onednn, args.optimizer, args.arch))
    return 0


def norm_act_rounds(args: argparse.Namespace) -> None:
    """Steps with the batch norms + leaky ReLUs as they are and compiled, alternating."""
    for r in range(1, args.norm_act_rounds + 1):
        for compiled in (False, True):
            fused_norm_act(compiled)
            start = time.perf_counter()
            ms = profile(args.precision.split(",")[0], args.steps, args.optimizer)
            name = "compiled" if compiled else "as they are"
            print(f"round {r}, norm + activation {name}: {sum(ms.values()):.1f} ms/step "
                  f"({time.perf_counter() - start:.1f} s in all)", flush=True)  # fmt: skip


def onednn_table(precision: str, steps: int, optimizer: str, arch: str) -> str:
    """Milliseconds per step in each oneDNN primitive (kind, implementation, shape), from
    ONEDNN_VERBOSE=1 in a child process that runs ``steps`` steps: their execution times
    (primitive creation not included), averaged over all the steps."""
    cmd = [sys.executable, __file__, "--onednn-child", "--precision", precision,
           "--steps", str(steps), "--optimizer", optimizer, "--arch", arch]  # fmt: skip
    env = {**os.environ, "ONEDNN_VERBOSE": "1"}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    per_step: dict[str, float] = collections.defaultdict(float)
    for line in out.splitlines():
        fields = line.split(",")
        if line.startswith("onednn_verbose") and ",exec,cpu," in line:
            kind_impl = ",".join(fields[fields.index("exec") + 2 : fields.index("exec") + 4])
            per_step[f"{kind_impl} {fields[-2]}"] += float(fields[-1]) / steps
    total = sum(per_step.values())
    rows = sorted(per_step.items(), key=lambda kv: -kv[1])[:20]
    lines = [f"oneDNN, {precision}: {total:.1f} ms per step in its primitives (top 20)"]
    lines += [f"  {ms:7.2f} ms {100 * ms / total:5.1f}%  {key}" for key, ms in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
