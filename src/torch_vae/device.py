"""Choosing the compute device and moving uint8 batches onto it."""

from __future__ import annotations

import torch

from .errors import TorchVaeError

DEVICES = ("auto", "cpu", "cuda", "mps")


def pick_device(name: str = "auto", cpu: bool = False) -> torch.device:
    """``--cpu`` wins; ``auto`` takes CUDA, then MPS, then the CPU."""
    if cpu or name == "cpu":
        return torch.device("cpu")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TorchVaeError("--device cuda was asked for but no CUDA GPU is available; use --cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise TorchVaeError("--device mps was asked for but MPS is not available; use --cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise TorchVaeError(f"unknown --device {name!r}; choose one of {DEVICES}") from None


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
    x = batch.to(device, non_blocking=True).permute(0, 3, 1, 2)
    return x.float().div_(255).contiguous(memory_format=torch.channels_last)
