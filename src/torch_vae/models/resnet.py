"""``resnet``: the DCGAN-style ladder with residual blocks. At every resolution of the encoder
and of the decoder, ``blocks`` residual blocks (two 3x3 convolutions with batch norm and an
identity shortcut, He et al., 2016) follow the stride-2 convolution, so the network is deeper
at the same widths without losing the gradient path. ``--arch resnet --blocks 1`` (the
default) at 64x64, F=128, latent 8 has 1,179,985 parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..fields import option, positive
from .base import VAE
from .config import ConvConfig
from .layers import ConvTranspose2d, cpu_channels_last, fold_batch_norms
from .posterior import Posterior
from .registry import register_model

SLOPE = 0.2


@dataclass(frozen=True)
class ResNetConfig(ConvConfig):
    arch: str = option("resnet", "the model family (see docs/model.md)")
    blocks: int = option(1, "residual blocks at every resolution")
    BOTTLENECK: ClassVar[int] = 4
    FALLBACK_DEPTH: ClassVar[int] = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        positive("--blocks", self.blocks, 16, "--blocks 1")


class ResBlock(nn.Module):
    """x + BN(conv(act(BN(conv(x))))), then the activation; ``convs[i]`` and ``norms[i]`` pair
    up for batch-norm folding."""

    def __init__(self, width: int, act):
        super().__init__()
        self.act = act
        self.convs = nn.ModuleList(
            nn.Conv2d(width, width, 3, padding=1, bias=False) for _ in range(2)
        )
        self.norms = nn.ModuleList(nn.BatchNorm2d(width) for _ in range(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.norms[0](self.convs[0](x)))
        return self.act(x + self.norms[1](self.convs[1](h)))


class Stage(nn.Module):
    """A stride-2 convolution (transposed in the decoder) with batch norm and the activation,
    then the residual blocks."""

    def __init__(self, conv: nn.Module, width: int, blocks: int, act):
        super().__init__()
        self.act = act
        self.convs = nn.ModuleList([conv])
        self.norms = nn.ModuleList([nn.BatchNorm2d(width)])
        self.blocks = nn.ModuleList(ResBlock(width, act) for _ in range(blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.norms[0](self.convs[0](x)))
        for block in self.blocks:
            h = block(h)
        return h

    def fold(self) -> None:
        fold_batch_norms(self.convs, self.norms)
        for block in self.blocks:
            fold_batch_norms(block.convs, block.norms)


def _leaky(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, SLOPE)


class ResNetEncoder(nn.Module):
    def __init__(self, config: ResNetConfig):
        super().__init__()
        widths = (config.in_channels, *config.channels)
        self.stages = nn.ModuleList(
            Stage(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=False), c_out,
                  config.blocks, _leaky)
            for c_in, c_out in zip(widths[:-1], widths[1:], strict=True)
        )  # fmt: skip
        s = config.bottleneck_size
        self.head = nn.Conv2d(config.channels[-1], 2 * config.latent_dims, kernel_size=s)
        self.latent_dims = config.latent_dims

    def forward(self, x: torch.Tensor) -> Posterior:
        h = x
        for stage in self.stages:
            h = stage(h)
        h = self.head(h).flatten(1)  # (B, 2d)
        return Posterior.clamped(h[:, : self.latent_dims], h[:, self.latent_dims :])


class ResNetDecoder(nn.Module):
    def __init__(self, config: ResNetConfig):
        super().__init__()
        widths = tuple(reversed(config.channels))  # e.g. (128, 64, 32, 16)
        s = config.bottleneck_size
        first = ConvTranspose2d(config.latent_dims, widths[0], kernel_size=s, bias=False)
        self.stages = nn.ModuleList([Stage(first, widths[0], config.blocks, F.relu)])
        self.stages.extend(
            Stage(ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False), c_out,
                  config.blocks, F.relu)
            for c_in, c_out in zip(widths[:-1], widths[1:], strict=True)
        )  # fmt: skip
        self.out = ConvTranspose2d(widths[-1], config.in_channels, 4, stride=2, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = cpu_channels_last(z[:, :, None, None])
        for stage in self.stages:
            h = stage(h)
        return torch.sigmoid(self.out(h))


@register_model
class ResNetVAE(VAE):
    """The residual VAE (``--arch resnet``)."""

    config_class = ResNetConfig

    encoder_class, decoder_class = ResNetEncoder, ResNetDecoder

    def fold_batch_norm(self) -> None:
        for stage in (*self.encoder.stages, *self.decoder.stages):
            stage.fold()
