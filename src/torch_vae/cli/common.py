"""What the commands share: loading the model a command works on with its dataset, the
original's architecture flags checked against it, and the output folder checked before work."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from ..data import check_channels, load_split
from ..data.datasets import DECODE_ERRORS
from ..data.imaging import UnsupportedImage, to_array
from ..errors import TorchVaeError
from ..models import VAE, ModelConfig, load_model
from ..runtime.device import pick_device
from .options import Runtime


def load(model_path: Path, runtime: Runtime) -> VAE:
    """The model at ``model_path`` (run folder or weights file) on the runtime's device."""
    return load_model(model_path, pick_device(runtime.device, runtime.cpu))


def resolve_dataset(model: VAE, dataset: str | None, model_path: Path) -> str:
    """``dataset``, by default the one the model was trained on, checked against the model's
    channels."""
    dataset = dataset or model.dataset
    if dataset is None:
        raise TorchVaeError(
            f"{model_path} does not say which dataset it was trained on; pass --dataset"
        )
    check_channels(dataset, model.config.in_channels, "the model expects",
                   "pass the dataset the model was trained on")  # fmt: skip
    return dataset


def model_and_dataset(model_path: Path, dataset: str | None, runtime: Runtime) -> tuple[VAE, str]:
    """``load`` and ``resolve_dataset`` in one."""
    model = load(model_path, runtime)
    return model, resolve_dataset(model, dataset, model_path)


def split_images(
    model: VAE, dataset: str, split: str, data_dir: Path | None, runtime: Runtime
) -> np.ndarray:
    """The model-sized uint8 images (N, H, W, C) of ``split``."""
    return load_split(dataset, split, model.config.image_size, data_dir, not runtime.quiet)


def check_flags(config: ModelConfig, **flags: int | None) -> None:
    """Architecture flags given on the command line (the original's scripts took them), checked
    against a model's config."""
    for name, value in flags.items():
        if value is None:
            continue
        have = getattr(config, name, None)
        flag = {"in_channels": "nimg_channels"}.get(name, name)
        if value != have:
            raise TorchVaeError(
                f"--{flag} {value} does not match the checkpoint, which has {flag}={have}; "
                "drop the flag (the checkpoint knows its architecture)"
            )


def check_outdir(outdir: Path) -> None:
    """Before any work: the output folder can be made."""
    if outdir.exists() and not outdir.is_dir():
        raise TorchVaeError(f"--outdir {outdir} is a file, not a folder; choose another --outdir")


def model_name(model_path: Path) -> str:
    """How a title names the model: its folder's (or file's) name."""
    path = Path(model_path)
    return path.stem if path.suffix == ".safetensors" else path.resolve().name


def read_image(path: Path, channels: int, size: int) -> np.ndarray:
    """An image file as the dataset pipeline makes it: 8 bits, grayscale or RGB to ``channels``,
    centre-cropped to a square, resized bilinearly to ``size``: uint8 (size, size, C)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                return to_array(img, channels, size, crop=True)
    except OSError as exc:
        raise TorchVaeError(f"cannot read image {path} ({exc.strerror or exc})") from None
    except (UnsupportedImage, *DECODE_ERRORS) as exc:
        raise TorchVaeError(f"cannot read image {path} ({exc}); pass a PNG or JPEG") from None


def check_index(i: int, n: int, what: str) -> None:
    if not 0 <= i < n:
        raise TorchVaeError(f"--index {i} is out of range: {what} has {n} images (0..{n - 1})")
