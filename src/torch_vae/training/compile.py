"""The optimizer and ``--compile``: AdamW (fused where PyTorch has it) and torch.compile, with
one-line errors where compiling cannot work. ``maybe_compile(model, True)`` returns
``torch.compile(model)``; the weights stay shared with ``model``, and checkpoints written from
either have the same keys (no ``_orig_mod.``)."""

from __future__ import annotations

import importlib.util
import shutil

import torch

from ..errors import TorchVaeError


def make_optimizer(
    model: torch.nn.Module, lr: float, weight_decay: float, device: torch.device
) -> torch.optim.Optimizer:
    """AdamW, fused (one kernel for every parameter's update) where this PyTorch has a fused
    AdamW for ``device`` (the CPU from 2.4, CUDA from 2.0), else PyTorch's default (foreach).
    Both keep the same state, so a checkpoint resumes with either."""
    params = list(model.parameters())
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def maybe_compile(model: torch.nn.Module, enabled: bool) -> torch.nn.Module:
    """``torch.compile(model)`` if ``enabled`` (else ``model``); a clear error if it cannot
    work here. Compilation happens lazily, on the first forward pass."""
    if not enabled:
        return model
    check_compile(next(model.parameters()).device)
    return torch.compile(model)


def check_compile(device: torch.device) -> None:
    """A one-line error, before training starts, where torch.compile cannot work on ``device``:
    its default backend builds C++ for the CPU, and Triton kernels for CUDA GPUs."""
    if not hasattr(torch, "compile"):
        raise TorchVaeError("--compile needs PyTorch >= 2.0; upgrade PyTorch or drop --compile")
    if device.type == "cpu" and not any(shutil.which(cc) for cc in ("cc", "gcc", "clang", "g++")):
        raise TorchVaeError(
            "--compile on the CPU needs a C/C++ compiler (gcc or clang) on the PATH; "
            "install one or drop --compile"
        )
    if device.type == "cuda" and not has_triton():
        raise TorchVaeError(
            "--compile on CUDA needs Triton (pip install triton, or a PyTorch build that ships "
            "it; it also needs a GPU of compute capability 7.0 or newer); or drop --compile"
        )


def has_triton() -> bool:
    """Whether torch.compile can generate GPU kernels with Triton here."""
    try:
        from torch.utils._triton import has_triton as torch_has_triton  # PyTorch >= 2.2
    except ImportError:
        return importlib.util.find_spec("triton") is not None
    return torch_has_triton()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module under a ``torch.compile`` wrapper (or ``model`` itself)."""
    return getattr(model, "_orig_mod", model)
