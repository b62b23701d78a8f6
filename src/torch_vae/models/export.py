"""A model's two networks as files that another runtime loads without torch-vae: the encoder
(images (B, C, H, W) in [0, 1] -> the posterior's mean and log-variance, each (B, d)) and the
decoder (codes (B, d) -> images (B, C, H, W) in [0, 1], the native-size projection included),
each with a dynamic batch axis (a conditional model's both take ``labels`` too: (B,) int64
class indices; a discrete model's encoder gives its code grid ``codes`` (B, h, w) int64, which
its decoder takes), in float32, from the model's inference copy (batch norms
folded): ONNX files for onnxruntime, or TorchScript files (``torch.jit.trace``) for
``torch.jit.load``. ``max_difference`` runs the files on random inputs beside PyTorch.

ONNX goes through PyTorch's TorchScript-based exporter (``dynamo=False``), which needs only the
onnx package; the dynamo exporter also needs onnxscript (with onnx_ir and ml_dtypes) and took
10-15x longer on these networks (docs/export.md). The packages are imported when an
export needs them, with a one-line error naming the extra that brings them.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import inspect
import io
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import TorchVaeError
from ..version import __version__
from .base import VAE

FORMATS = ("onnx", "torchscript")
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}
TOLERANCE = 1e-4  # the largest difference from PyTorch an export may have (float32)
CHECK_BATCHES = (1, 5)  # the batch sizes the files are checked at (the axis is dynamic)
EXAMPLE_BATCH = 2  # the batch the networks are traced with (not 1, which could be baked in)
NEEDS = {"onnx": ("onnx", "onnxruntime"), "torchscript": ()}
EXTRA_HINT = "pip install 'torch-vae[onnx]'"


class _Encoder(nn.Module):
    def __init__(self, model: VAE):
        super().__init__()
        self.model = model

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        post = self.model.encode(images, labels)
        if self.model.latent_kind == "discrete":
            return (post.mode(),)
        return post.mu, post.logvar


class _Decoder(nn.Module):
    def __init__(self, model: VAE):
        super().__init__()
        self.model = model

    def forward(self, latents: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.decode(latents, labels)


@dataclass(frozen=True)
class Network:
    """One exported network: its module and its inputs' and outputs' names and shapes (the
    first axis of each is the batch, "batch")."""

    name: str
    module: nn.Module
    inputs: dict[str, tuple[Any, ...]]
    outputs: dict[str, tuple[Any, ...]]


def networks(model: VAE) -> tuple[Network, Network]:
    """The encoder and the decoder of ``model``'s float32 inference copy, on the CPU; a
    conditional model's take the images' classes as a second input, ``labels``."""
    fused = model.inference_copy().to(device="cpu", dtype=torch.float32)
    c = fused.config
    labels = {"labels": ("batch",)} if c.classes else {}
    with torch.no_grad():  # builds the native-size projector: a constant in the trace
        fused.decode(
            fused.prior_sample(1, torch.Generator().manual_seed(0)), 0 if c.classes else None
        )
    image = ("batch", c.in_channels, c.image_size, c.image_size)
    code = ("batch", *fused.latent_shape)
    if fused.latent_kind == "discrete":  # the code grid's indices, in and out
        codes = {"codes": code}
        encoded, latents = codes, codes
    else:
        encoded, latents = {"mu": code, "logvar": code}, {"latents": code}
    encoder = Network("encoder", _Encoder(_without(fused, "decoder")).eval(),
                      {"images": image, **labels}, encoded)  # fmt: skip
    decoder = Network("decoder", _Decoder(_without(fused, "encoder")).eval(),
                      {**latents, **labels}, {"images": image})  # fmt: skip
    return encoder, decoder


def _without(model: VAE, network: str) -> VAE:
    """A shallow copy of ``model`` without one of its networks (a TorchScript trace keeps
    every submodule, used or not)."""
    view = copy.copy(model)
    view._modules = {k: m for k, m in model._modules.items() if k != network}
    return view


def require(fmt: str) -> None:
    """A one-line error unless the packages that ``fmt`` needs are installed."""
    for name in NEEDS[fmt]:
        try:
            importlib.import_module(name)
        except ImportError:
            raise TorchVaeError(
                f"--format {fmt} needs the {' and '.join(NEEDS[fmt])} packages ({name} is "
                f"missing): {EXTRA_HINT}"
            ) from None


def random_inputs(net: Network, batch: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Inputs of ``net``: images uniform in [0, 1], codes from N(0, I), code indices and
    classes uniform."""
    out = []
    for name, shape in net.inputs.items():
        if name in ("labels", "codes"):
            model = _model(net)
            top = model.config.num_classes if name == "labels" else model.codebook_size
            out.append(torch.randint(top, (batch, *shape[1:]), generator=generator))
        else:
            draw = torch.rand if name == "images" else torch.randn
            out.append(draw((batch, *shape[1:]), generator=generator))
    return out


def _model(net: Network) -> VAE:
    return net.module.model


def export_network(net: Network, fmt: str, opset: int) -> bytes:
    """``net`` as the bytes of an ONNX file (operator set ``opset``) or a TorchScript file."""
    example = tuple(random_inputs(net, EXAMPLE_BATCH, torch.Generator().manual_seed(0)))
    # the exporters' notes (the legacy exporter's deprecation, the tracer's remarks on the
    # constant projector) say nothing about the file; a failure still raises
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if fmt == "torchscript":
            return _torchscript_bytes(net, example)
        return _onnx_bytes(net, example, opset)


def _torchscript_bytes(net: Network, example: tuple[torch.Tensor, ...]) -> bytes:
    traced = torch.jit.trace(net.module, example, check_trace=False)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    return buffer.getvalue()


def _onnx_bytes(net: Network, example: tuple[torch.Tensor, ...], opset: int) -> bytes:
    # the TorchScript-based exporter: PyTorch's only one before dynamo= (its default until 2.9)
    params = inspect.signature(torch.onnx.export).parameters
    legacy = {"dynamo": False} if "dynamo" in params else {}
    buffer = io.BytesIO()
    try:
        with _stdout_off():  # where it fails, the exporter prints its whole graph there
            _export_onnx(net, example, buffer, opset, **legacy)
    except (ValueError, RuntimeError, torch.onnx.OnnxExporterError) as exc:
        first = str(exc).strip().splitlines()
        raise TorchVaeError(
            f"PyTorch {torch.__version__} could not export the {net.name} at --opset {opset} "
            f"({first[0][:200] if first else type(exc).__name__}); try another --opset"
        ) from None
    return buffer.getvalue()


def _export_onnx(net: Network, example: tuple[torch.Tensor, ...], f: io.BytesIO, opset: int,
                 **legacy: bool) -> None:  # fmt: skip
    names = [*net.inputs, *net.outputs]
    torch.onnx.export(net.module, example, f, input_names=list(net.inputs),
                      output_names=list(net.outputs), opset_version=opset,
                      dynamic_axes={n: {0: "batch"} for n in names}, **legacy)  # fmt: skip


@contextlib.contextmanager
def _stdout_off() -> Iterator[None]:
    """The process's standard output (file descriptor 1, which C++ code writes to) sent to
    the null device meanwhile."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no standard output to hide
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def load_runner(net: Network, data: bytes, fmt: str, threads: int) -> Callable[..., list]:
    """A function that runs the exported file ``data`` (in onnxruntime, or TorchScript) on
    tensors and returns its outputs as arrays; onnxruntime with ``threads`` threads."""
    if fmt == "torchscript":
        module = torch.jit.load(io.BytesIO(data))

        def run_script(*xs: torch.Tensor) -> list[np.ndarray]:
            with torch.no_grad():
                out = module(*xs)
            return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]

        return run_script
    ort = importlib.import_module("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])

    def run_onnx(*xs: torch.Tensor) -> list[np.ndarray]:
        return session.run(None, {n: x.numpy() for n, x in zip(net.inputs, xs, strict=True)})

    return run_onnx


def max_difference(
    net: Network, data: bytes, fmt: str, seed: int, batches: Sequence[int] = CHECK_BATCHES
) -> float:
    """The largest absolute difference between the exported file's outputs and PyTorch's on
    the same random inputs, at each of ``batches`` (NaN where either gives NaN); a one-line
    error where an output's shape differs."""
    run = load_runner(net, data, fmt, torch.get_num_threads())
    generator = torch.Generator().manual_seed(seed)
    worst = []
    for batch in batches:
        xs = random_inputs(net, batch, generator)
        with torch.no_grad():
            want = net.module(*xs)
        want = want if isinstance(want, tuple) else (want,)
        for name, got, ref in zip(net.outputs, _run_at(run, xs, net, batch), want, strict=True):
            if tuple(got.shape) != tuple(ref.shape):
                raise TorchVaeError(
                    f"the exported {net.name}'s {name} has shape {tuple(got.shape)} at batch "
                    f"{batch}, PyTorch's {tuple(ref.shape)}; nothing was written"
                )
            worst.append(float(np.abs(got - ref.numpy()).max()))
    return float(np.max(worst))


def _run_at(run: Callable[..., list], xs: list[torch.Tensor], net: Network, batch: int) -> list:
    """The exported file's outputs on ``xs``, or a one-line error where it cannot run them."""
    try:
        return run(*xs)
    except Exception as exc:  # noqa: BLE001 - onnxruntime's and TorchScript's own error types
        lines = [s.strip() for s in str(exc).splitlines() if s.strip()]
        last = lines[-1] if lines else type(exc).__name__  # the runtimes' own words end there
        last = last if len(last) <= 200 else "..." + last[-200:]
        raise TorchVaeError(
            f"the exported {net.name} fails on a batch of {batch} ({last}); it was traced at a "
            f"batch of {EXAMPLE_BATCH}, and where a network takes the batch size as a number "
            "(len(x), x.shape[0] or x.size(0) in a view or reshape) the file keeps that "
            "number: use reshape(-1, ...) or flatten(1); nothing was written"
        ) from None


def manifest(
    model: VAE, nets: Sequence[Network], fmt: str, opset: int | None, diffs: dict[str, float]
) -> dict[str, Any]:
    """What the JSON beside the files says: each file's inputs and outputs and its measured
    difference from PyTorch (``diffs``, by file name), the sizes and the versions."""
    c = model.config
    files = {}
    for net in nets:
        name = f"{net.name}{SUFFIX[fmt]}"
        files[name] = {"inputs": _shapes(net.inputs), "outputs": _shapes(net.outputs),
                       "max_abs_difference": diffs[name]}  # fmt: skip
    return {
        "format": fmt, "opset": opset, "files": files, "dtype": "float32",
        "layout": "images (batch, channels, height, width) in [0, 1]; "
        + ("codes (batch, h, w) int64 code indices" if "codes" in nets[0].outputs
           else "latents (batch, dims)")
        + ("; labels (batch,) int64 class indices" if c.classes else ""),
        "classes": list(c.classes) or None, "arch": c.arch, "dataset": model.dataset,
        "image_size": c.image_size, "in_channels": c.in_channels, "latent_dims": c.latent_dims,
        "native_size": c.native_size, "network_size": c.network_size,
        "torch_vae_version": __version__,
        "torch_version": torch.__version__, "checked_batches": list(CHECK_BATCHES),
        "max_abs_difference": max(diffs.values()), "tolerance": TOLERANCE,
    }  # fmt: skip


def _shapes(names: dict[str, tuple[Any, ...]]) -> dict[str, list[Any]]:
    return {name: list(shape) for name, shape in names.items()}
