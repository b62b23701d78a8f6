"""Speed options for training: torch.compile, mixed precision, and data kept on the GPU.

Each is a small helper the training loop calls, so the loop reads the same with every option:

- ``maybe_compile(model, True)`` returns ``torch.compile(model)``; the weights stay shared with
  ``model``, and checkpoints written from either have the same keys (no ``_orig_mod.``).
- ``Precision(device, "bf16")`` runs the forward pass under autocast and, for training in fp16
  on CUDA, scales the loss (GradScaler) in ``backward`` and ``step``. The loss itself is always
  computed in fp32 from the model's outputs.
- ``batch_source(images, device, batch)`` gives the uint8 batches of a training set on the
  device: on CUDA, from a copy kept on the GPU (4x smaller than float) when it fits, else
  through pinned staging buffers copied asynchronously.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import shutil
from collections.abc import Callable

import torch

from .config import PRECISIONS
from .data.cache import gather_for
from .device import autocast_works, bf16_native, cuda_bf16_native
from .errors import TorchVaeError

log = logging.getLogger(__name__)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


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


class Precision:
    """Mixed precision for one device: an autocast context for the forward pass and, when
    training (``train``) in fp16 on CUDA, loss scaling (bf16 and fp32 need none, nor does
    inference). ``scaler`` is then the GradScaler, whose state the training state saves."""

    def __init__(self, device: torch.device, precision: str = "fp32", train: bool = False):
        self.device = torch.device(device)
        self.precision = precision = resolve_precision(precision, self.device)
        if precision != "fp32":
            check_autocast(self.device, precision)
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


# Keep the uint8 training set on the GPU when it takes at most this share of the free memory.
RESIDENT_SHARE = 0.5


def batch_source(
    images: torch.Tensor, device: torch.device, batch: int
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function from indices (a CPU int64 tensor) to those images of the uint8 set ``images``
    (N, H, W, C), on ``device`` or ready for ``device.to_float`` to move there. On CUDA the set
    is copied to the GPU once if it takes at most ``RESIDENT_SHARE`` of the free memory, else
    batches go through ``PinnedBatches``. Elsewhere (the CPU, MPS) a batch is indexed on the
    host and copied synchronously. The whole set is never pinned: indexing a pinned tensor
    returns a new, unpinned one, so that only cost memory (once per process under torchrun)."""
    device = torch.device(device)
    if device.type != "cuda":
        # a mapped cache: each image read from the file, nothing mapped (data.cache.FileGather)
        return gather_for(images) or (lambda idx: images[idx])
    try:
        free, _ = torch.cuda.mem_get_info(device)
    except RuntimeError:
        free = 0
    nbytes = images.numel() * images.element_size()
    if nbytes <= RESIDENT_SHARE * free:
        log.info("keeping the %.0f MB training set on %s", nbytes / 1e6, device)
        on_gpu = images.to(device)
        return lambda idx: on_gpu[idx.to(device)]
    log.info("training set (%.0f MB) stays in host memory", nbytes / 1e6)
    try:
        return PinnedBatches(images, device, batch)
    except RuntimeError:  # pinned memory unavailable: index and copy synchronously
        return lambda idx: images[idx]


class PinnedBatches:
    """Batches of host images for a CUDA device through pinned staging buffers. A batch is
    gathered into a pinned buffer and copied with ``non_blocking=True``, which is safe because
    the buffer lives on and is not touched until the copy is done: ``SLOTS`` buffers are used in
    turn, and before one is refilled the host waits for the event recorded after the copy out
    of it (by then the GPU has long finished it, so the wait costs nothing)."""

    SLOTS = 2

    def __init__(self, images: torch.Tensor, device: torch.device, batch: int, pin: bool = True):
        self.images, self.device = images, torch.device(device)
        shape = (batch, *images.shape[1:])
        self.buffers = [torch.empty(shape, dtype=images.dtype, pin_memory=pin)
                        for _ in range(self.SLOTS)]  # fmt: skip
        self.copied: list = [None] * self.SLOTS  # the event after each buffer's last copy
        self.turn = 0

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        slot, self.turn = self.turn, (self.turn + 1) % self.SLOTS
        if self.copied[slot] is not None:
            self.copied[slot].synchronize()
        buf = self.buffers[slot][: len(idx)]
        torch.index_select(self.images, 0, idx, out=buf)
        out = self.copy(buf)
        self.copied[slot] = self.record()
        return out

    def copy(self, buf: torch.Tensor) -> torch.Tensor:
        return buf.to(self.device, non_blocking=True)

    def record(self):
        """An event that completes when the work queued so far on the device is done."""
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(self.device))
        return event


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
