"""The shipped models decode as they did when they were trained: their samples and
reconstructions against the pixels written by the torch-vae that shipped them (before models
became plug-ins), within one grey level (the CPU's float rounding may differ by machine)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from torch_vae import load_model
from torch_vae.io.png import to_uint8

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = np.load(Path(__file__).parent / "data" / "shipped-outputs.npz")


def _ramp() -> torch.Tensor:
    """Two 64x64 test images that need no dataset: a ramp and its mirrored transpose."""
    x = torch.linspace(0, 1, 64 * 64).reshape(1, 1, 64, 64).repeat(2, 1, 1, 1)
    x[1] = x[1].flip(-1).transpose(-1, -2)
    return x


@pytest.mark.parametrize("name", ["dcgan-d2", "dcgan-d8", "dcgan-f192-d8-p28"])
def test_shipped_model_gives_the_pixels_it_gave_when_shipped(name):
    model = load_model(ROOT / "models" / "fashion-mnist" / name)
    z = torch.randn(8, model.config.latent_dims, generator=torch.Generator().manual_seed(0))
    key = name.replace("-", "_")
    with torch.no_grad():
        samples = to_uint8(model.sample(8, torch.Generator().manual_seed(0))).astype(int)
        decoded = to_uint8(model.decode(z)).astype(int)
        rec = to_uint8(model.reconstruct(_ramp())).astype(int)
    assert np.abs(samples - REFERENCE[key]).max() <= 1
    assert np.abs(decoded - REFERENCE[key]).max() <= 1
    assert np.abs(rec - REFERENCE[key + "_rec"]).max() <= 1
