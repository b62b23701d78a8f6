"""``dcgan``: a fully convolutional VAE after DCGAN (Radford et al., 2016), with ``depth`` 4 at
64x64 pixels by default (down to 4x4).

The encoder has stride-2 4x4 convolutions with F/8, F/4, F/2, F filters, batch norm on all but
the first and LeakyReLU(0.2), then one convolution over the whole last feature map to the
posterior's mean and log-variance; the decoder is its mirror image with transposed
convolutions, batch norm, ReLU and a sigmoid output. No fully connected layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..fields import option
from .base import VAE
from .config import ConvConfig
from .layers import ConvTranspose2d, cpu_channels_last, fold_ladders
from .posterior import Posterior
from .registry import register_model

SLOPE = 0.2
KERNEL = 4


@dataclass(frozen=True)
class DCGANConfig(ConvConfig):
    arch: str = option("dcgan", "the model family (see docs/model.md)")
    BOTTLENECK: ClassVar[int] = 4
    FALLBACK_DEPTH: ClassVar[int] = 4


class DCGANEncoder(nn.Module):
    """Stride-2 4x4 convolutions with batch norm (except on the first) and LeakyReLU(0.2), then
    one convolution over the whole last feature map to the posterior mean and log-variance."""

    def __init__(self, config: DCGANConfig):
        super().__init__()
        widths = (config.in_channels, *config.channels)
        self.convs = nn.ModuleList(
            nn.Conv2d(c_in, c_out, KERNEL, stride=2, padding=1, bias=i == 0)
            for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:], strict=True))
        )
        # norms[i] follows convs[i]; the first convolution has none (as in DCGAN).
        self.norms = nn.ModuleList(
            nn.Identity() if i == 0 else nn.BatchNorm2d(c) for i, c in enumerate(config.channels)
        )
        s = config.bottleneck_size
        self.head = nn.Conv2d(config.channels[-1], 2 * config.latent_dims, kernel_size=s)
        self.latent_dims = config.latent_dims

    def forward(self, x: torch.Tensor) -> Posterior:
        h = x
        for conv, norm in zip(self.convs, self.norms, strict=True):
            h = F.leaky_relu(norm(conv(h)), SLOPE, inplace=True)
        h = self.head(h).flatten(1)  # (B, 2d)
        return Posterior.clamped(h[:, : self.latent_dims], h[:, self.latent_dims :])


class DCGANDecoder(nn.Module):
    """A transposed convolution from the code (as a 1x1 map) to the smallest feature map,
    stride-2 4x4 transposed convolutions with batch norm and ReLU, and a sigmoid output."""

    def __init__(self, config: DCGANConfig):
        super().__init__()
        widths = tuple(reversed(config.channels))  # e.g. (128, 64, 32, 16)
        s = config.bottleneck_size
        first = ConvTranspose2d(config.latent_dims, widths[0], kernel_size=s, bias=False)
        ups = [
            ConvTranspose2d(c_in, c_out, KERNEL, stride=2, padding=1, bias=False)
            for c_in, c_out in zip(widths[:-1], widths[1:], strict=True)
        ]
        last = ConvTranspose2d(widths[-1], config.in_channels, KERNEL, stride=2, padding=1)
        self.convs = nn.ModuleList([first, *ups, last])
        self.norms = nn.ModuleList(nn.BatchNorm2d(c) for c in widths)  # norms[i] after convs[i]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = cpu_channels_last(z[:, :, None, None])
        for conv, norm in zip(self.convs[:-1], self.norms, strict=True):
            h = F.relu(norm(conv(h)), inplace=True)
        return torch.sigmoid(self.convs[-1](h))


@register_model
class DCGANVAE(VAE):
    """The DCGAN-style VAE (``--arch dcgan``): the shipped models' family."""

    config_class = DCGANConfig

    encoder_class, decoder_class = DCGANEncoder, DCGANDecoder

    def fold_batch_norm(self) -> None:
        fold_ladders(self.encoder, self.decoder)
