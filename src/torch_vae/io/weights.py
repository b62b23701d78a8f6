"""The weights file format: safetensors weights that carry their model config.

A model folder holds ``model.safetensors`` and ``config.json``; a run folder also holds
``checkpoints/epoch_NNN.safetensors`` and ``ckpt.pt`` (training state). Any of the safetensors
files alone is enough to rebuild the model: its config is stored in the metadata, as JSON, and
the models package (``torch_vae.models``) turns it back into the model family's config. This
module knows the file, not the models.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from ..errors import TorchVaeError
from ..version import __version__
from .files import atomic_path

FORMAT = "torch-vae"
FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
STATE_NAME = "ckpt.pt"  # a run's training state (training.state), which is no weights file
CONFIG_NAME = "config.json"
CHECKPOINTS_DIR = "checkpoints"  # a run's epoch_NNN.safetensors, one per epoch


def write_weights(
    state: dict[str, torch.Tensor],
    config: dict[str, Any],
    path: str | os.PathLike,
    dataset: str | None = None,
    module: str | None = None,
) -> Path:
    """Write a model's ``state`` with its ``config`` (a JSON-able dict; and its dataset, and the
    Python module of its family, which a loader without that family names) to ``path``,
    atomically."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    meta = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "torch_vae_version": __version__,
        "model_config": json.dumps(config),
    }
    if dataset:
        meta["dataset"] = dataset
    if module:
        meta["model_module"] = module
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, meta)
    return path


def save_file(
    tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str]
) -> None:
    """``safetensors.torch.save_file`` whose header lists its keys in sorted order, so that the
    same tensors and metadata give the same bytes every time: the library writes its metadata
    in an order that changes from call to call, and a run's files would otherwise hash
    differently for the same numbers. The header keeps its length (the same compact JSON,
    reordered), so the tensors' offsets hold."""
    data = save(tensors, metadata=metadata)
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    sorted_header = text.encode("utf-8")
    with open(path, "wb") as f:
        if len(sorted_header) > n:  # never seen; the library's own bytes are as valid
            f.write(data)
            return
        f.write(data[:8])
        f.write(sorted_header.ljust(n, b" "))  # the library pads it with spaces as well
        f.write(memoryview(data)[8 + n :])


def is_run_config(path: Path) -> bool:
    """Whether ``path`` is the config.json a training run writes when it starts."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "train" in config and "model" in config


def resolve_weights(path: str | os.PathLike) -> Path:
    """A run folder or a weights file -> the weights file, with a clear error if there is none."""
    path = Path(path)
    if path.is_dir():
        weights = path / WEIGHTS_NAME
        if not weights.is_file() and (path / "ckpt.pt").is_file():
            raise TorchVaeError(
                f"{path} has no {WEIGHTS_NAME} yet: its run stopped before the end of its first "
                f"epoch; continue it with torch-vae train --resume {path}"
            )
        if not weights.is_file() and is_run_config(path / CONFIG_NAME):  # in its first epoch
            raise TorchVaeError(
                f"{path} has no {WEIGHTS_NAME} yet: its run is in its first epoch (or was "
                "killed in it); the weights are written when the epoch ends"
            )
        if not weights.is_file():
            raise TorchVaeError(
                f"{path} has no {WEIGHTS_NAME}; pass a run folder written by "
                "'torch-vae train' or a .safetensors weights file"
            )
        return weights
    if not path.exists():
        raise TorchVaeError(
            f"model {path} does not exist; pass a run folder or a .safetensors file"
        )
    return path


def _looks_like_torch_pickle(path: Path) -> bool:
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        return f.read(2) == b"\x80\x02"  # legacy torch.save pickle protocol 2


def epoch_checkpoint_files(run_dir: Path) -> list[Path]:
    """A run's per-epoch weight files, ``checkpoints/epoch_NNN.safetensors``, oldest first;
    nothing else there (a sampler fitted to one of them lies beside it)."""
    found = Path(run_dir, CHECKPOINTS_DIR).glob("epoch_*.safetensors")
    return sorted(p for p in found if re.fullmatch(r"epoch_\d+\.safetensors", p.name))


def _newest_checkpoint_hint(weights: Path) -> str:
    """For a run's damaged model.safetensors: the run's newest epoch checkpoint, which holds
    the same weights (a run saves both after each epoch), to pass instead."""
    found = epoch_checkpoint_files(weights.parent)
    if weights.name != WEIGHTS_NAME or not found:
        return ""
    return f"; its run's newest epoch checkpoint can stand in for it: {found[-1]}"


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of a torch-vae weights file (or of the one in a run or model folder):
    ``{"config": dict, "dataset": str | None, "module": str | None, "path": Path}``
    (``module``: the Python module of the model's family, where the file names it)."""
    weights = resolve_weights(path)
    try:
        with safe_open(str(weights), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        if weights.name == STATE_NAME:
            raise TorchVaeError(
                f"{weights} is a run's training state (for train --resume), not its weights; "
                f"pass the run folder {weights.parent} or {weights.parent / WEIGHTS_NAME}"
            ) from None
        if _looks_like_torch_pickle(weights):
            raise TorchVaeError(
                f"{weights} is a PyTorch pickle checkpoint (as written by the original "
                "torch-vae), not a torch-vae safetensors file; convert it with "
                f"'torch-vae import-torch-vae {weights} --dataset DATASET'"
            ) from None
        raise TorchVaeError(f"{weights} is not a readable safetensors file ({exc})"
                            f"{_newest_checkpoint_hint(weights)}") from None  # fmt: skip
    if meta.get("format") != FORMAT or "model_config" not in meta:
        raise TorchVaeError(
            f"{weights} is a safetensors file without a torch-vae model config; "
            "only weights written by torch-vae can be loaded"
        )
    version = meta.get("format_version", "0")
    if not (version.isascii() and version.isdigit() and len(version) <= 6):
        raise TorchVaeError(f"{weights} has a corrupt format version {version[:20]!r}")
    if int(version) > FORMAT_VERSION:
        raise TorchVaeError(
            f"{weights} uses checkpoint format {version}, newer than this "
            f"torch-vae ({__version__}) reads; upgrade with pip install -U torch-vae"
        )
    try:
        config = json.loads(meta["model_config"])
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise TorchVaeError(f"{weights} has a corrupt model config ({exc})") from None
    if not isinstance(config, dict):
        raise TorchVaeError(f"{weights} has a corrupt model config (not a JSON object)")
    return {"config": config, "dataset": meta.get("dataset"), "module": meta.get("model_module"),
            "path": weights}  # fmt: skip


# safetensors' names of the floating-point dtypes (a model's weights) and of the integer ones
# a model may hold (batch norm's step counter)
FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}
INT_DTYPES = {torch.int64: "I64", torch.int32: "I32"}


def read_weights(
    weights: Path, expected: dict[str, tuple[tuple[int, ...], torch.dtype]]
) -> dict[str, torch.Tensor]:
    """The tensors of ``weights``, after checking their names, shapes and dtypes against
    ``expected`` (name -> (shape, dtype); so that nothing is allocated for a file that does not
    fit, and integer or boolean tensors never stand in for weights)."""
    try:
        with safe_open(str(weights), framework="pt", device="cpu") as f:
            slices = {key: f.get_slice(key) for key in f.keys()}  # noqa: SIM118 (not a dict)
            have = {k: (tuple(s.get_shape()), s.get_dtype()) for k, s in slices.items()}
            _check_tensors(weights, have, expected)
            return {key: f.get_tensor(key) for key in have}
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as exc:
        raise TorchVaeError(f"{weights} is corrupt or truncated ({exc})") from None


def _check_tensors(weights: Path, have: dict, want: dict) -> None:
    _check_shapes(weights, {k: v[0] for k, v in have.items()}, {k: v[0] for k, v in want.items()})
    for key, (_, dtype) in want.items():
        stored = have[key][1]
        ok = stored in FLOAT_DTYPES if dtype.is_floating_point else stored == INT_DTYPES.get(dtype)
        if not ok:
            kind = "floating-point" if dtype.is_floating_point else str(dtype).split(".")[-1]
            raise TorchVaeError(
                f"{weights}: {key} is stored as {stored}, not as {kind} numbers; the file is "
                "damaged or was not written by torch-vae"
            )


def _check_shapes(weights: Path, have: dict, want: dict) -> None:
    missing, unexpected = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    wrong = [k for k in want if k in have and have[k] != want[k]]
    if missing or unexpected or wrong:
        if wrong:
            detail = f"{wrong[0]} has shape {list(have[wrong[0]])}, expected {list(want[wrong[0]])}"
        elif missing:
            detail = f"missing {missing[0]}"
        else:
            detail = f"unexpected {unexpected[0]}"
        raise TorchVaeError(f"{weights}: weights do not fit the stored model config ({detail})")
