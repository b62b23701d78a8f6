"""The convolutional VAE: the original torch-vae architecture, generalised to any size and depth."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import CONFIG_NAME, WEIGHTS_NAME, read_metadata, read_weights, write_weights
from .config import ModelConfig
from .device import autocast_off, randn
from .errors import TorchVaeError
from .fileio import write_text_atomic
from .layers import ConvTranspose2d
from .upsampling import upsampling_projector
from .version import __version__

# The original uses leaky_relu with PyTorch's default slope.
LEAKY_SLOPE = 0.01
# Keeps exp(logvar) and the KL finite in float32 for any input, yet wide enough that imported
# original models (whose log-variance exceeds 20 on unusual inputs) compute exactly as before.
LOGVAR_MIN, LOGVAR_MAX = -30.0, 50.0


class Posterior(NamedTuple):
    """Diagonal Gaussian q(z|x): mean and log-variance, each (B, latent_dims)."""

    mu: torch.Tensor
    logvar: torch.Tensor

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reparameterised sample z = mu + sigma * eps. ``generator`` may live on another device
        than ``mu`` (a CPU generator: the same eps on every device)."""
        eps = randn(self.mu.shape, generator, self.mu.device, self.mu.dtype)
        return self.mu + torch.exp(0.5 * self.logvar) * eps

    def kl(self) -> torch.Tensor:
        """KL(q(z|x) || N(0, I)) per image, shape (B,)."""
        return -0.5 * torch.sum(1 + self.logvar - self.mu.pow(2) - self.logvar.exp(), dim=1)


class VAEOutput(NamedTuple):
    recon: torch.Tensor  # (B, C, H, W) in [0, 1]
    mu: torch.Tensor  # (B, d)
    logvar: torch.Tensor  # (B, d)


class Encoder(nn.Module):
    """Stride-2 3x3 convolutions, each followed by batch norm and leaky ReLU, then two linear
    projections of the flattened features to the posterior mean and log-variance."""

    def __init__(self, config: ModelConfig):
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
            h = F.leaky_relu(norm(conv(h)), LEAKY_SLOPE)
        h = h.flatten(1)  # (B, F * s * s), flattened in (C, H, W) order
        logvar = self.proj_logvar(h).clamp(LOGVAR_MIN, LOGVAR_MAX)
        return Posterior(self.proj_mu(h), logvar)


class Decoder(nn.Module):
    """A linear map to a (F, s, s) feature map, then stride-2 transposed convolutions back to the
    image size; batch norm and leaky ReLU between them, a sigmoid at the end."""

    def __init__(self, config: ModelConfig):
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
        h = self.lin(z).view(-1, self.config.channels[-1], s, s)  # (B, F, s, s)
        if z.device.type == "cpu":
            # channels_last is several times faster for these convolutions on CPU.
            h = h.contiguous(memory_format=torch.channels_last)
        for conv, norm in zip(self.convs[:-1], self.norms, strict=True):
            h = F.leaky_relu(norm(conv(h)), LEAKY_SLOPE)
        return torch.sigmoid(self.convs[-1](h))  # (B, C, H, W)


# The DCGAN recipe (Radford et al., 2016) for the fully convolutional variant.
DCGAN_SLOPE = 0.2
DCGAN_KERNEL = 4


class DCGANEncoder(nn.Module):
    """Fully convolutional encoder after DCGAN: stride-2 4x4 convolutions with batch norm (except
    on the first) and LeakyReLU(0.2), then one convolution over the whole last feature map to
    the posterior mean and log-variance. No fully connected hidden layer."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        widths = (config.in_channels, *config.channels)
        k = DCGAN_KERNEL
        self.convs = nn.ModuleList(
            nn.Conv2d(c_in, c_out, k, stride=2, padding=1, bias=i == 0)
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
            h = F.leaky_relu(norm(conv(h)), DCGAN_SLOPE)
        h = self.head(h).flatten(1)  # (B, 2d)
        mu, logvar = h[:, : self.latent_dims], h[:, self.latent_dims :]
        return Posterior(mu, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX))


class DCGANDecoder(nn.Module):
    """Fully convolutional decoder after DCGAN: a transposed convolution from the latent vector
    (as a 1x1 map) to the smallest feature map, stride-2 4x4 transposed convolutions with batch
    norm and ReLU, and a sigmoid output in [0, 1]."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        widths = tuple(reversed(config.channels))  # e.g. (128, 64, 32, 16)
        s, k = config.bottleneck_size, DCGAN_KERNEL
        first = ConvTranspose2d(config.latent_dims, widths[0], kernel_size=s, bias=False)
        ups = [
            ConvTranspose2d(c_in, c_out, k, stride=2, padding=1, bias=False)
            for c_in, c_out in zip(widths[:-1], widths[1:], strict=True)
        ]
        last = ConvTranspose2d(widths[-1], config.in_channels, k, stride=2, padding=1)
        self.convs = nn.ModuleList([first, *ups, last])
        self.norms = nn.ModuleList(nn.BatchNorm2d(c) for c in widths)  # norms[i] after convs[i]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = z[:, :, None, None]
        if z.device.type == "cpu":
            h = h.contiguous(memory_format=torch.channels_last)
        for conv, norm in zip(self.convs[:-1], self.norms, strict=True):
            h = F.relu(norm(conv(h)))
        return torch.sigmoid(self.convs[-1](h))


ENCODERS = {"original": Encoder, "dcgan": DCGANEncoder}
DECODERS = {"original": Decoder, "dcgan": DCGANDecoder}


class VAE(nn.Module):
    """Convolutional variational autoencoder.

    ``forward`` is pure: it returns the reconstruction and the posterior parameters and keeps no
    state. In training mode it decodes a reparameterised sample; in eval mode it decodes the
    posterior mean, so reconstructions are deterministic.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.encoder = ENCODERS[config.arch](config)
        self.decoder = DECODERS[config.arch](config)
        if config.native_size:
            # Derived from the config, so not saved with the weights.
            p = upsampling_projector(config.native_size, config.image_size)
            self.register_buffer("projector", p, persistent=False)

    def encode(self, x: torch.Tensor) -> Posterior:
        """Images (B, C, H, W) in [0, 1] -> posterior q(z|x)."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (B, d) -> images (B, C, H, W) in [0, 1].

        With ``native_size`` set, the decoder's output is projected onto the images that
        bilinear upsampling from ``native_size`` can produce (the data pipeline's resize), then
        clipped to [0, 1]. Both steps move any output closer to every such image in [0, 1], so
        they only lower the squared error to them, and the decoder spends nothing on detail
        the data cannot have.
        """
        x = self.decoder(z)
        if not self.config.native_size:
            return x
        # in float32 even under autocast: the projection is cheap, and rounding it to
        # 16 bits would add error of its own
        with autocast_off(x.device.type):
            y = (self.projector @ x.float() @ self.projector).clamp(0, 1)
        return y.to(x.dtype)

    def forward(
        self, x: torch.Tensor, sample: bool | None = None, generator: torch.Generator | None = None
    ) -> VAEOutput:
        """Encode and decode ``x``. ``sample`` defaults to ``self.training``."""
        post = self.encode(x)
        if sample is None:
            sample = self.training
        z = post.sample(generator) if sample else post.mu
        return VAEOutput(self.decode(z), post.mu, post.logvar)

    @torch.no_grad()
    def sample(
        self, n: int, generator: torch.Generator | None = None, device: torch.device | None = None
    ) -> torch.Tensor:
        """Decode ``n`` latents drawn from the prior N(0, I) by ``generator`` (on any device: a
        seeded CPU generator gives the same latents for a model on any device)."""
        device = device or next(self.parameters()).device
        return self.decode(randn((n, self.config.latent_dims), generator, device))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decode the posterior mean of ``x`` (deterministic)."""
        return self.decode(self.encode(x).mu)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> VAE:
        """Load a model from a run folder, a model folder or a .safetensors file; the file
        carries the architecture, so no flags are needed. Returned in eval mode, with the
        dataset it was trained on (if recorded) as ``model.dataset``."""
        meta = read_metadata(path)
        # The shapes are checked against the config before anything is allocated, so that a
        # damaged config cannot ask for a huge model.
        state = read_weights(meta["path"], expected_shapes(meta["config"]))
        model = cls(meta["config"])
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()
            raise TorchVaeError(
                f"{meta['path']}: weights do not fit the stored model config ({first[-1].strip()})"
            ) from None
        bad = [k for k, v in state.items() if v.is_floating_point() and not v.isfinite().all()]
        if bad:
            raise TorchVaeError(
                f"{meta['path']} holds NaN or infinite weights ({bad[0]}); the file is damaged "
                "or was saved from a diverged run: use an earlier checkpoint"
            )
        model.dataset = meta["dataset"]
        return model.to(device).eval()

    def save_pretrained(self, folder: str | os.PathLike, dataset: str | None = None) -> Path:
        """Write ``folder/model.safetensors`` (weights with their config inside) and
        ``folder/config.json``; ``VAE.from_pretrained(folder)`` reads it back."""
        folder = Path(folder)
        dataset = dataset or getattr(self, "dataset", None)
        save_model(self, folder / WEIGHTS_NAME, dataset)
        config = {"torch_vae_version": __version__, "model": self.config.to_dict()}
        if dataset:
            config["dataset"] = dataset
        write_text_atomic(folder / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
        return folder


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor of a model with ``config``, computed without allocating it."""
    with torch.device("meta"):
        model = VAE(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def training_memory(config: ModelConfig, batch: int) -> int:
    """Bytes that training a model with ``config`` on batches of ``batch`` images needs, about:
    weights, gradients and AdamW's two moments (4 copies of the parameters), and the feature
    maps of both networks kept for the backward pass (about 4 float copies of each)."""
    params = sum(math.prod(s) for s in expected_shapes(config).values())
    maps = config.in_channels * config.image_size**2 * 2  # input and output images
    for i, width in enumerate(config.channels):
        maps += 2 * width * (config.image_size // 2 ** (i + 1)) ** 2  # encoder and decoder
    return 4 * (4 * params + 4 * batch * maps)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> VAE:
    """``VAE.from_pretrained``: a model from a run folder or a .safetensors file."""
    return VAE.from_pretrained(path, device)


def save_model(model: nn.Module, path: str | os.PathLike, dataset: str | None = None) -> Path:
    """Write ``model``'s weights and config to ``path`` (a .safetensors file), atomically."""
    model = getattr(model, "_orig_mod", model)  # unwrap torch.compile
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    return write_weights(model.state_dict(), model.config, path, dataset)
