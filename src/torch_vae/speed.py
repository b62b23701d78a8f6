"""Speed options for training: torch.compile, mixed precision, and data kept on the GPU.

Each is a small helper the training loop calls, so the loop reads the same with every option:

- ``maybe_compile(model, True)`` returns ``torch.compile(model)``; the weights stay shared with
  ``model``, and checkpoints written from either have the same keys (no ``_orig_mod.``).
- ``Precision(device, "bf16")`` runs the forward pass under autocast and, for fp16 on CUDA,
  scales the loss (GradScaler) in ``backward`` and ``step``. The loss itself is always computed
  in fp32 from the model's outputs.
- ``resident(images, device)`` copies the uint8 training images to a CUDA device once (4x
  smaller than float), so a batch needs no host-to-device copy.
"""

from __future__ import annotations

import contextlib
import logging
import shutil

import torch

from .config import PRECISIONS
from .errors import TorchVaeError

log = logging.getLogger(__name__)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# Keep the uint8 training set on the GPU when it takes at most this share of the free memory.
RESIDENT_SHARE = 0.5


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise TorchVaeError(f"unknown --precision {precision!r}; choose one of {PRECISIONS}")


def maybe_compile(model: torch.nn.Module, enabled: bool) -> torch.nn.Module:
    """``torch.compile(model)`` if ``enabled`` (else ``model``); a clear error if it cannot
    work here. Compilation happens lazily, on the first forward pass."""
    if not enabled:
        return model
    if not hasattr(torch, "compile"):
        raise TorchVaeError("--compile needs PyTorch >= 2.0; upgrade PyTorch or drop --compile")
    device = next(model.parameters()).device
    if device.type == "cpu" and not any(shutil.which(cc) for cc in ("cc", "gcc", "clang", "g++")):
        raise TorchVaeError(
            "--compile on the CPU needs a C/C++ compiler (gcc or clang) on the PATH; "
            "install one or drop --compile"
        )
    return torch.compile(model)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module under a ``torch.compile`` wrapper (or ``model`` itself)."""
    return getattr(model, "_orig_mod", model)


class Precision:
    """Mixed precision for one device: an autocast context for the forward pass, and loss
    scaling for fp16 on CUDA (bf16 and fp32 need none)."""

    def __init__(self, device: torch.device, precision: str = "fp32"):
        check_precision(precision)
        self.device = torch.device(device)
        self.precision = precision
        if precision == "bf16" and self.device.type == "cuda":
            if not torch.cuda.is_bf16_supported():
                raise TorchVaeError(
                    "--precision bf16 needs a GPU with bfloat16 support (Ampere or newer); "
                    "use --precision fp16 or fp32"
                )
        if precision == "fp16" and self.device.type not in ("cuda", "cpu", "mps"):
            raise TorchVaeError(f"--precision fp16 is not supported on {self.device.type}")
        scale = precision == "fp16" and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=scale) if scale else None

    def autocast(self):
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


def resident(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move uint8 images to a CUDA ``device`` once if they fit comfortably; otherwise leave them
    in (pinned, when possible) host memory. On the CPU this returns ``images`` unchanged."""
    device = torch.device(device)
    if device.type != "cuda":
        return images
    try:
        free, _ = torch.cuda.mem_get_info(device)
    except RuntimeError:
        free = 0
    nbytes = images.numel() * images.element_size()
    if nbytes <= RESIDENT_SHARE * free:
        log.info("keeping the %.0f MB training set on %s", nbytes / 1e6, device)
        return images.to(device)
    log.info("training set (%.0f MB) stays in host memory", nbytes / 1e6)
    try:
        return images.pin_memory()
    except RuntimeError:
        return images


@torch.no_grad()
def inference_model(model: torch.nn.Module) -> torch.nn.Module:
    """An eval-mode copy of a VAE with every batch norm folded into the convolution before it
    (same outputs up to float rounding, fewer passes over memory), channels_last on the CPU.
    ``model`` itself is left as it is."""
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    from .model import VAE

    model = unwrap(model)
    if not isinstance(model, VAE):
        return model.eval()
    fused = copy.deepcopy(model).eval()
    for part in (fused.encoder, fused.decoder):
        for i, norm in enumerate(part.norms):
            if not isinstance(norm, torch.nn.BatchNorm2d):
                continue
            conv = part.convs[i]
            # output channels: dim 0 of a Conv2d weight, dim 1 of a ConvTranspose2d weight
            transpose = isinstance(conv, torch.nn.ConvTranspose2d)
            part.convs[i] = fuse_conv_bn_eval(conv, norm, transpose=transpose)
            part.norms[i] = torch.nn.Identity()
    if next(fused.parameters()).device.type == "cpu":
        fused = fused.to(memory_format=torch.channels_last)
    return fused
