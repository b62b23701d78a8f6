"""Import checkpoints of the original torch-vae (bare state_dicts saved with torch.save)."""

from __future__ import annotations

import logging
import math
import os
import pickle
import re
from pathlib import Path

import torch

from .config import ModelConfig
from .data import check_channels
from .errors import TorchVaeError
from .model import VAE, save_model
from .options import ImportOptions

log = logging.getLogger(__name__)

# original key -> our key; the original's shortcut layers are never used in its forward pass,
# so they are dropped.
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


def infer_config(state: dict[str, torch.Tensor]) -> ModelConfig:
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
    in_channels, max_filters, latent = first.shape[1], last.shape[0], mu.shape[0]
    side = math.isqrt(mu.shape[1] // max_filters)
    if side * side * max_filters != mu.shape[1]:
        raise TorchVaeError(
            "encoder.proj_mu does not fit a square feature map; not a torch-vae model"
        )
    return ModelConfig(
        in_channels=int(in_channels),
        image_size=int(side * 2**depth),
        latent_dims=int(latent),
        max_filters=int(max_filters),
        depth=depth,
    )


def load_original_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a bare state_dict safely (weights_only: no code from the file runs)."""
    path = Path(path)
    if not path.is_file():
        raise TorchVaeError(f"{path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise TorchVaeError(
            f"{path} holds more than tensors ({str(exc).splitlines()[0][:120]}); refusing to load "
            "it, since that could run code from the file"
        ) from None
    except Exception as exc:  # noqa: BLE001 - any parse failure means an unreadable file
        raise TorchVaeError(
            f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TorchVaeError(f"{path} is not a state_dict of tensors")
    return state


def import_original(path: str | os.PathLike) -> VAE:
    """Build a torch-vae model holding the weights of an original torch-vae ``.pth`` file."""
    state = load_original_state(path)
    config = infer_config(state)
    ours = {}
    for key, value in state.items():
        new = _rename(key)
        if new is not None:
            ours[new] = value
    model = VAE(config)
    try:
        model.load_state_dict(ours)
    except RuntimeError as exc:
        raise TorchVaeError(
            f"{path}: tensors do not fit the inferred architecture {config} "
            f"({str(exc).strip().splitlines()[-1].strip()})"
        ) from None
    return model.eval()


def import_command(o: ImportOptions) -> Path:
    """The import-torch-vae command: convert ``o.checkpoint`` and write it, never over a file."""
    model = import_original(o.checkpoint)
    check_channels(
        o.dataset, model.config.in_channels, f"{o.checkpoint} has",
        "pass the dataset it was trained on",
    )  # fmt: skip
    out = o.out or Path("imported") / o.dataset / f"{o.checkpoint.stem}.safetensors"
    if out.exists():
        raise TorchVaeError(f"{out} already exists; pass another --out (nothing was overwritten)")
    save_model(model, out, dataset=o.dataset)
    c = model.config
    log.info("imported %s (C=%d, F=%d, d=%d, %dx%d) -> %s", o.checkpoint, c.in_channels,
             c.max_filters, c.latent_dims, c.image_size, c.image_size, out)  # fmt: skip
    return out
