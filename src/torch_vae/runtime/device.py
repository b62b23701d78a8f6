"""Choosing the compute device, moving uint8 batches onto it, and what differs between CUDA,
Apple's MPS and the CPU: where random numbers are drawn, which autocast exists, and the PyTorch
version that brought each (docs/devices.md)."""

from __future__ import annotations

import contextlib
import functools
import re
import warnings

import torch

from ..errors import TorchVaeError

DEVICES = ("auto", "cpu", "cuda", "mps")


def pick_device(name: str = "auto", cpu: bool = False) -> torch.device:
    """``auto`` takes CUDA, then MPS, then the CPU; ``--cpu`` is the CPU, and with another
    ``--device`` than auto or cpu a one-line error (which one was meant?)."""
    if cpu and name not in ("auto", "cpu"):
        raise TorchVaeError(f"--cpu and --device {name} ask for two devices; pass one of them")
    if cpu or name == "cpu":
        return torch.device("cpu")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TorchVaeError(f"--device {name} was asked for but no CUDA GPU is available; use "
                            "--cpu")  # fmt: skip
    if name == "mps" and not torch.backends.mps.is_available():
        raise TorchVaeError("--device mps was asked for but MPS is not available; use --cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise TorchVaeError(
            f"unknown --device {name!r}; choose one of {', '.join(DEVICES)} or cuda:N"
        ) from None
    if device.type not in DEVICES or (device.type != "cuda" and device.index is not None):
        # PyTorch knows more device types (xla, meta, ...): none of them runs torch-vae
        raise TorchVaeError(
            f"--device {name!r} is not one torch-vae runs on; choose one of {', '.join(DEVICES)} "
            "or cuda:N"
        )
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise TorchVaeError(
            f"--device {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
            f"numbered from 0"
        )
    return device


def available_memory(device: torch.device) -> int | None:
    """Bytes free for new tensors on ``device`` (None where it cannot be told)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def to_float(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 images (B, H, W, C) -> float (B, C, H, W) in [0, 1] on ``device``, channels_last
    (the fastest layout for these convolutions on CPU and GPU)."""
    device = torch.device(device)
    x = batch.to(device, non_blocking=can_copy_async(batch, device)).permute(0, 3, 1, 2)
    return x.float().div_(255).contiguous(memory_format=torch.channels_last)


def can_copy_async(batch: torch.Tensor, device: torch.device) -> bool:
    """Whether ``batch`` may be copied to ``device`` with ``non_blocking=True``: only from pinned
    host memory to CUDA. From pageable memory the copy may read the source after the call
    returned, when a temporary (a freshly indexed batch) may be freed already (MPS does so)."""
    device = torch.device(device)
    return device.type == "cuda" and batch.device.type == "cpu" and batch.is_pinned()


def randn(
    shape: tuple[int, ...] | torch.Size,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Standard normal numbers of ``shape`` on ``device``, drawn where ``generator`` lives.

    ``torch.randn(generator=g, device=d)`` refuses a generator of another device, such as a CPU
    generator for a model on CUDA or MPS. Here the numbers are drawn on the generator's own
    device and then moved, so they depend on the generator's seed and state only: a seeded CPU
    generator gives the same numbers for a model on any device. Without a generator, the
    device's default generator draws them, as ``torch.randn`` does. 16-bit numbers are drawn in
    float32 and rounded, the same way on every device."""
    if generator is None:
        return torch.randn(shape, device=device, dtype=dtype)
    draw = dtype if dtype in (None, torch.float32, torch.float64) else torch.float32
    z = torch.randn(shape, generator=generator, device=generator.device, dtype=draw)
    return z.to(device=device if device is not None else z.device, dtype=dtype or z.dtype)


def torch_version(version: str | None = None) -> tuple[int, int]:
    """(major, minor) of the installed PyTorch, or of ``version``."""
    found = re.match(r"(\d+)\.(\d+)", str(version or torch.__version__))
    return (int(found[1]), int(found[2])) if found else (0, 0)


# The first PyTorch release whose autocast runs on a device type in a dtype, where an earlier
# one has none: torch.autocast("mps") raises before 2.5, even disabled; 2.5 takes fp16 only and
# turns bf16 off with a mere warning; bf16 came in 2.6 (on macOS 14 or newer).
AUTOCAST_SINCE = {("mps", torch.float16): (2, 5), ("mps", torch.bfloat16): (2, 6)}


def autocast_works(device_type: str, dtype: torch.dtype, version: str | None = None) -> bool:
    """Whether ``torch.autocast(device_type, dtype=dtype)`` really autocasts with this PyTorch
    (``version`` for tests): it is neither refused nor turned off with a warning."""
    since = AUTOCAST_SINCE.get((device_type, dtype))
    if since is not None and torch_version(version) < since:
        return False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            torch.autocast(device_type, dtype=dtype)
        except (RuntimeError, ValueError, AssertionError):
            return False
    return not any("autocast" in str(w.message).lower() for w in caught)


@functools.cache
def has_autocast(device_type: str) -> bool:
    """Whether PyTorch has an autocast for ``device_type`` at all (not MPS before 2.5)."""
    try:
        torch.autocast(device_type, enabled=False)
    except (RuntimeError, ValueError, AssertionError):
        return False
    return True


def autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    """A context with autocast off on ``device_type``: ``torch.autocast(enabled=False)`` where
    PyTorch has an autocast for it, else nothing, since none can be on (constructing one
    raises there, even disabled). While compiling, the check's cache is not consulted: Dynamo
    would trace through it (and warn); the devices it compiles for all have an autocast."""
    if torch.compiler.is_compiling() or has_autocast(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.cache
def cpu_bf16_native(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bfloat16 natively: AMX or AVX-512 BF16 in the flags of
    ``cpuinfo`` (Linux). Elsewhere (macOS, Windows, ARM) False: bf16 is then emulated by
    PyTorch's CPU kernels and slower than fp32."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    return any(flag in line.split() for flag in CPU_BF16_FLAGS)
    except OSError:
        pass
    return False


def bf16_native(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively (the CPU or a CUDA GPU; not MPS)."""
    device = torch.device(device)
    if device.type == "cpu":
        return cpu_bf16_native()
    return device.type == "cuda" and cuda_bf16_native(device)


def cuda_bf16_native(device: torch.device) -> bool:
    """Whether the CUDA GPU ``device`` (not the current one) computes bfloat16 natively
    (Ampere or newer; always on ROCm); emulation, which PyTorch otherwise counts, is no gain."""
    if torch.version.hip:
        return True
    try:
        with torch.cuda.device(device):  # is_bf16_supported asks the current device
            return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # PyTorch < 2.4 has no including_emulation: read the compute capability
        return torch.cuda.get_device_properties(device).major >= 8
