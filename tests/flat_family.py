"""A model family of linear layers, as a plug-in of another package might define it, for the
tests of what the toolkit does with such families (tests/test_plugins.py,
tests/test_models_contract.py)."""

import dataclasses

import torch
from torch import nn

from torch_vae import VAE, ModelConfig
from torch_vae.models import Posterior


def flat_family(arch: str, size: str = "work_size", fixed_batch: bool = False) -> type[VAE]:
    """A new family ``arch`` whose networks are one linear layer each, built for images of the
    config's ``size`` (``work_size``, as a family should, or ``image_size``, as one that
    ignores --network_size does); ``fixed_batch``: its decoder takes the batch size as a
    Python number (``len(z)``), which a traced export keeps."""

    name = arch  # a class body that assigns arch cannot read the argument of that name

    @dataclasses.dataclass(frozen=True)
    class FlatConfig(ModelConfig):
        arch: str = dataclasses.field(default=name)

    class FlatEncoder(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.net = nn.Linear(c.in_channels * getattr(c, size) ** 2, 2 * c.latent_dims)

        def forward(self, x):
            return Posterior.clamped(*self.net(x.flatten(1)).chunk(2, 1))

    class FlatDecoder(nn.Module):
        def __init__(self, c):
            super().__init__()
            s = getattr(c, size)
            self.shape = (c.in_channels, s, s)
            self.net = nn.Linear(c.latent_dims, c.in_channels * s * s)

        def forward(self, z):
            return torch.sigmoid(self.net(z)).view(len(z) if fixed_batch else -1, *self.shape)

    class FlatVAE(VAE):
        config_class, encoder_class, decoder_class = FlatConfig, FlatEncoder, FlatDecoder

        def fold_batch_norm(self):
            pass

    return FlatVAE


def train_help_with_plugin(folder, package: str, entry: str):
    """``torch-vae train --help`` run where an installed package ``package`` declares the model
    entry point ``entry`` ("name = module"; its metadata written by hand into ``folder``, which
    is put on the path)."""
    import os
    import subprocess
    import sys

    meta = folder / f"{package.replace('-', '_')}-0.1.dist-info"
    meta.mkdir()
    (meta / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n")
    (meta / "entry_points.txt").write_text(f"[torch_vae.models]\n{entry}\n")
    env = {**os.environ, "PYTHONPATH": str(folder)}
    return subprocess.run([sys.executable, "-m", "torch_vae", "train", "--help"], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
