"""Mixed precision: which precision ``--precision auto`` means on a device, an autocast context
for the forward pass, and, for training in fp16 on CUDA, loss scaling (GradScaler).

``Precision(device, "bf16")`` runs the forward pass under autocast and, when training in fp16
on CUDA, scales the loss in ``backward`` and ``step``. The loss itself is always computed in
fp32 from the model's outputs.
"""

from __future__ import annotations

import contextlib
import logging
import platform
from typing import Literal, get_args

import torch

from ..errors import TorchVaeError
from .device import autocast_works, bf16_native, cuda_bf16_native

log = logging.getLogger(__name__)

PrecisionName = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = get_args(PrecisionName)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
X86 = ("x86_64", "amd64", "i386", "i686")  # platform.machine(), lower case


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise TorchVaeError(f"unknown --precision {precision!r}; choose one of {PRECISIONS}")


def resolve_precision(precision: str, device: torch.device) -> str:
    """The concrete precision for ``--precision`` on ``device``: ``auto`` is bf16 where the
    device computes bf16 natively (``device.bf16_native``), else fp32; others are themselves."""
    check_precision(precision)
    if precision != "auto":
        return precision
    return "bf16" if bf16_native(device) else "fp32"


def bf16_emulated(device: torch.device) -> bool:
    """Whether bf16 on ``device`` is PyTorch's emulation, slower than fp32: an x86 CPU without
    AMX or AVX-512 BF16. Elsewhere (other CPUs, whose flags ``bf16_native`` does not read, and
    GPUs) nothing is claimed."""
    device = torch.device(device)
    x86 = platform.machine().lower() in X86
    return device.type == "cpu" and x86 and not bf16_native(device)


class Precision:
    """Mixed precision for one device: an autocast context for the forward pass and, when
    training (``train``) in fp16 on CUDA, loss scaling (bf16 and fp32 need none, nor does
    inference). ``scaler`` is then the GradScaler, whose state the training state saves."""

    def __init__(self, device: torch.device, precision: str = "fp32", train: bool = False):
        self.device = torch.device(device)
        self.precision = precision = resolve_precision(precision, self.device)
        if precision != "fp32":
            check_autocast(self.device, precision)
        if precision == "fp16" and self.device.type == "cpu" and train:
            log.warning("--precision fp16 on the CPU trains far slower than fp32 (a "
                        "hundred times on a Xeon, docs/benchmarks.md); bf16 is the CPU's half "
                        "precision: --precision auto takes it where the CPU computes it "
                        "natively")  # fmt: skip
        if precision == "bf16" and train and bf16_emulated(self.device):
            log.warning("this CPU has neither AMX nor AVX-512 BF16, so PyTorch emulates "
                        "bf16 and --precision bf16 trains 2-9x slower than fp32 here (2.3x on "
                        "an AVX-512 Xeon, 9x on an AVX2 AMD EPYC: docs/benchmarks.md); "
                        "--precision auto takes fp32 on it")  # fmt: skip
        scale = train and precision == "fp16" and self.device.type == "cuda"
        self.scaler = grad_scaler(self.device) if scale else None

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=DTYPES[self.precision])

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler:
            self.scaler.step(optimizer)  # skips the step if the gradients overflowed
            self.scaler.update()
        else:
            optimizer.step()


def check_autocast(device: torch.device, precision: str) -> None:
    """A one-line error where ``--precision`` bf16 or fp16 would not autocast on ``device``
    (PyTorch turns an unsupported one off with a mere warning, or raises at the first step)."""
    if device.type == "cuda":
        if precision == "bf16" and not cuda_bf16_native(device):
            raise TorchVaeError(
                f"--precision bf16 needs a GPU with bfloat16 support (Ampere or newer), which "
                f"{device} is not; use --precision fp16 or fp32"
            )
        return
    if autocast_works(device.type, DTYPES[precision]):
        return
    needs = {("mps", "fp16"): "PyTorch >= 2.5", ("mps", "bf16"): "PyTorch >= 2.6 and macOS >= 14"}
    need = needs.get((device.type, precision))
    raise TorchVaeError(
        f"--precision {precision} on {device.type} "
        + (f"needs {need} (this is PyTorch {torch.__version__})" if need else "is not supported")
        + "; use --precision "
        + ("fp32" if precision == "fp16" else "fp16 or fp32")
    )


def grad_scaler(device: torch.device):
    """A GradScaler for fp16 training on ``device``: torch.amp's (PyTorch >= 2.3), else
    torch.cuda.amp's (CUDA only) on older versions."""
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler(device.type)
    return torch.cuda.amp.GradScaler()
