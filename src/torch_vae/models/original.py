"""``original``: the original torch-vae network, generalised to any image size and depth, and
the converter for the original's own checkpoints (``import-torch-vae``).

For ``depth`` 3 at 64x64 pixels: the encoder has stride-2 3x3 convolutions with F/4, F/2, F
filters (64 -> 8 pixels), each followed by batch norm and leaky ReLU, then two linear maps of
the flattened features to the posterior's mean and log-variance; the decoder maps the code
linearly to an (F, 8, 8) feature map and back up with transposed convolutions, batch norm and
leaky ReLU between them and a sigmoid at the end.
"""

from __future__ import annotations

import math
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import TorchVaeError, first_line
from ..fields import option
from .base import VAE
from .config import ConvConfig
from .layers import (
    ConvTranspose2d,
    fold_ladders,
    linear_to_chw,
    linears_of_chw,
    uses_batch_statistics,
)
from .posterior import Posterior
from .registry import register_model

# The original uses leaky_relu with PyTorch's default slope.
LEAKY_SLOPE = 0.01


@dataclass(frozen=True)
class OriginalConfig(ConvConfig):
    """The ladder's defaults are the original's (an 8x8 bottleneck, depth 3 otherwise)."""

    arch: str = option("original", "the model family (see docs/model.md)")


class Encoder(nn.Module):
    """Stride-2 3x3 convolutions, each followed by batch norm and leaky ReLU, then two linear
    projections of the flattened features to the posterior mean and log-variance."""

    def __init__(self, config: OriginalConfig):
        super().__init__()
        widths = (config.in_channels, *config.channels)
        self.convs = nn.ModuleList(
            nn.Conv2d(c_in, c_out, kernel_size=3, stride=2, padding=1)
            for c_in, c_out in zip(widths[:-1], widths[1:], strict=True)
        )
        self.norms = nn.ModuleList(nn.BatchNorm2d(c) for c in config.channels)
        flat = config.channels[-1] * config.bottleneck_size**2
        self.proj_mu = nn.Linear(flat, config.latent_dims)
        self.proj_logvar = nn.Linear(flat, config.latent_dims)

    def forward(self, x: torch.Tensor) -> Posterior:
        h = x
        for conv, norm in zip(self.convs, self.norms, strict=True):
            h = F.leaky_relu(norm(conv(h)), LEAKY_SLOPE, inplace=True)
        # both projections take the features flattened in (C, H, W) order, in one product
        mu, logvar = linears_of_chw(h, self.proj_mu, self.proj_logvar)
        return Posterior.clamped(mu, logvar)


class Decoder(nn.Module):
    """A linear map to a (F, s, s) feature map, then stride-2 transposed convolutions back to the
    image size; batch norm and leaky ReLU between them, a sigmoid at the end."""

    def __init__(self, config: OriginalConfig):
        super().__init__()
        self.config = config
        s = config.bottleneck_size
        self.lin = nn.Linear(config.latent_dims, config.channels[-1] * s * s)
        widths = (*reversed(config.channels), config.in_channels)
        self.convs = nn.ModuleList(
            ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=1)
            for c_in, c_out in zip(widths[:-1], widths[1:], strict=True)
        )
        self.norms = nn.ModuleList(nn.BatchNorm2d(c) for c in widths[1:-1])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        s = self.config.bottleneck_size
        h = linear_to_chw(z, self.lin, (self.config.channels[-1], s, s))  # (B, F, s, s)
        for conv, norm in zip(self.convs[:-1], self.norms, strict=True):
            h = conv(h, batch_norm_follows=uses_batch_statistics(norm))
            h = F.leaky_relu(norm(h), LEAKY_SLOPE, inplace=True)
        return torch.sigmoid(self.convs[-1](h))  # (B, C, H, W)


@register_model
class OriginalVAE(VAE):
    """The original torch-vae network (``--arch original``, the default)."""

    config_class = OriginalConfig

    encoder_class, decoder_class = Encoder, Decoder

    def fold_batch_norm(self) -> None:
        # norms[i] follows convs[i]; the decoder's last convolution has none
        fold_ladders(self.encoder, self.decoder)


# -- the original's checkpoints -----------------------------------------------------------

# original key -> ours; the original's shortcut layers are never used in its forward pass, so
# they are dropped.
_RULES = [
    (r"^encoder\.conv(\d+)\.(.+)$", "encoder.convs.{}.{}"),
    (r"^encoder\.bn(\d+)\.(.+)$", "encoder.norms.{}.{}"),
    (r"^decoder\.conv(\d+)\.(.+)$", "decoder.convs.{}.{}"),
    (r"^decoder\.bn(\d+)\.(.+)$", "decoder.norms.{}.{}"),
]
_RENAMES = {
    "encoder.proj_log_var.": "encoder.proj_logvar.",
    "encoder.proj_mu.": "encoder.proj_mu.",
    "decoder.lin1.": "decoder.lin.",
}


def _rename(key: str) -> str | None:
    if ".shortcut" in key:
        return None
    for pattern, template in _RULES:
        m = re.match(pattern, key)
        if m:
            return template.format(int(m.group(1)) - 1, m.group(2))
    for old, new in _RENAMES.items():
        if key.startswith(old):
            return new + key[len(old) :]
    raise TorchVaeError(f"unexpected key {key!r}: this is not an original torch-vae checkpoint")


def infer_config(state: dict[str, torch.Tensor]) -> OriginalConfig:
    """Read C, F, d, depth and the image size off the tensors' shapes."""
    try:
        depth = sum(1 for k in state if re.match(r"^encoder\.conv\d+\.weight$", k))
        first = state["encoder.conv1.weight"]  # (F/2^(depth-1), C, 3, 3)
        last = state[f"encoder.conv{depth}.weight"]  # (F, F/2, 3, 3)
        mu = state["encoder.proj_mu.weight"]  # (d, F * s * s)
    except KeyError as exc:
        raise TorchVaeError(
            f"missing {exc.args[0]!r}: this is not an original torch-vae checkpoint"
        ) from None
    if first.dim() != 4 or last.dim() != 4 or mu.dim() != 2:
        raise TorchVaeError("the convolution and projection weights have the wrong number of dims")
    in_channels, max_filters, latent = first.shape[1], last.shape[0], mu.shape[0]
    side = math.isqrt(mu.shape[1] // max(max_filters, 1))
    if side * side * max_filters != mu.shape[1]:
        raise TorchVaeError(
            "encoder.proj_mu does not fit a square feature map; not a torch-vae model"
        )
    return OriginalConfig(
        in_channels=int(in_channels),
        image_size=int(side * 2**depth),
        latent_dims=int(latent),
        max_filters=int(max_filters),
        depth=depth,
    )


def load_original_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a bare state_dict safely (weights_only: no code from the file runs); one kept under
    "state_dict" (or "model_state_dict", "model") beside other entries, or with the "module."
    prefix DistributedDataParallel gives its keys, is taken out."""
    path = Path(path)
    if path.is_dir():
        raise TorchVaeError(f"{path} is a folder; pass the original's .pth file")
    if not path.is_file():
        raise TorchVaeError(f"{path} does not exist")
    if _is_safetensors(path):
        raise TorchVaeError(f"{path} is a safetensors file, not the original's .pth; a "
                            "torch-vae model's weights are used as they are (--model)")  # fmt: skip
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # PyTorch's message is a page of advice; the object it met is what says what is wrong
        found = re.search(r"(?:GLOBAL|Unsupported class) (\S+)", str(exc))
        what = (f"a Python object ({found.group(1)}) besides tensors" if found
                else f"more than tensors ({_plain(exc)})")  # fmt: skip
        raise TorchVaeError(
            f"{path} holds {what}; refusing to load it, since that could run code from the file "
            "(the original's train.py saves a state_dict of tensors)"
        ) from None
    except Exception as exc:  # noqa: BLE001 - any parse failure means an unreadable file
        raise TorchVaeError(
            f"{path} is not a readable PyTorch checkpoint ({_plain(exc)}); pass the .pth file "
            "the original's train.py saved"
        ) from None
    if isinstance(state, dict):
        inner = next((state[k] for k in WRAPPERS if isinstance(state.get(k), dict)), None)
        state = inner if inner is not None else state
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise TorchVaeError(f"{path} is not a state_dict of named tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    bad = [k for k, v in state.items() if v.is_floating_point() and not v.isfinite().all()]
    if bad:
        raise TorchVaeError(f"{path} holds NaN or infinite weights ({bad[0]}); use a "
                            "checkpoint saved before training diverged")  # fmt: skip
    return state


WRAPPERS = ("state_dict", "model_state_dict", "model")  # where training scripts keep the weights


def _is_safetensors(path: Path) -> bool:
    """A safetensors file: an 8-byte little-endian header size, then its JSON header."""
    with open(path, "rb") as f:
        head = f.read(9)
    size = int.from_bytes(head[:8], "little") if len(head) == 9 else 0
    return 0 < size < path.stat().st_size and head[8:9] == b"{"


def _plain(exc: BaseException) -> str:
    """The first line of an exception's message without terminal colour codes."""
    return re.sub(r"\x1b\[[0-9;]*m", "", first_line(exc))


def import_original(path: str | os.PathLike) -> OriginalVAE:
    """A torch-vae model holding the weights of an original torch-vae ``.pth`` file."""
    state = load_original_state(path)
    config = infer_config(state)
    ours = {}
    for key, value in state.items():
        new = _rename(key)
        if new is not None:
            ours[new] = value
    model = OriginalVAE(config)
    try:
        model.load_state_dict(ours)
    except RuntimeError as exc:
        raise TorchVaeError(
            f"{path}: tensors do not fit the inferred architecture {config} "
            f"({str(exc).strip().splitlines()[-1].strip()})"
        ) from None
    return model.eval()
