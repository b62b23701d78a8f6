"""``vqvae``: a vector-quantised VAE (van den Oord et al., 2017, "Neural Discrete
Representation Learning"), the family with a discrete latent: each image is a grid of code
indices into a codebook of ``codebook_size`` vectors of ``latent_dims`` numbers.

- encoder: stride-2 4x4 convolutions (batch norm on all but the first, ReLU) down to the
  grid (8x8 at 32 pixels by default), ``blocks`` residual blocks (ReLU, 3x3 conv to F/4, ReLU,
  1x1 conv back to F, as in the paper), then a 1x1 convolution to ``latent_dims`` channels;
- quantiser: each position's vector is replaced by its nearest codebook vector, with the
  straight-through gradient (the decoder's gradient is passed to the encoder's output);
- decoder: a 3x3 convolution from the code vectors, the residual blocks, then stride-2 4x4
  transposed convolutions with batch norm and ReLU, and a sigmoid output.

The codebook is learned by exponential moving averages of the vectors assigned to each code
(decay ``ema_decay``, Laplace-smoothed counts) instead of a loss, and a code that no vector
was assigned to for ``restart_after`` training steps is restarted at a vector of the current
batch (all codes start that way, at the first training step). Its buffers (the codebook, the
moving averages, the steps each code has been idle) are part of the model's state, so they are
saved in model.safetensors and restored on resume. The objective is the reconstruction error
plus ``beta * commitment`` times the commitment loss ||z_e - sg(z_q)||^2 (summed per image,
like the reconstruction error); there is no KL term to train (the paper's KL to a uniform prior
is the constant h w log K, which ``Codes.kl`` gives). The prior over code grids is fitted
after training (``fit-sampler --sampler transformer``, priors/transformer.py).

``--arch vqvae --image_size 32 --max_filters 128 --latent_dims 16`` (depth 2, an 8x8 grid,
512 codes, 2 blocks) has 464,657 parameters and 8,192 codebook numbers.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import TorchVaeError
from ..fields import check_number, option, positive
from ..runtime.device import autocast_off
from .base import VAE
from .config import ConvConfig
from .layers import ConvTranspose2d, cpu_channels_last, fold_ladders
from .losses import reconstruction_error
from .registry import register_model

SMOOTHING = 1e-5  # Laplace smoothing of the codes' moving-average counts
RESTART_SEED = 0x5EED_C0DE  # the restarts' random choices: this and the update's number


@dataclass(frozen=True)
class VQVAEConfig(ConvConfig):
    arch: str = option("vqvae", "the model family (see docs/model.md)")
    latent_dims: int = option(16, "numbers per code vector")
    codebook_size: int = option(512, "codes in the codebook, K")
    blocks: int = option(2, "residual blocks at the code grid")
    commitment: float = option(0.25, "weight of the commitment loss")
    ema_decay: float = option(0.99, "decay of the codebook's moving averages")
    restart_after: int = option(100, "training steps a code may go unused before it restarts")
    BOTTLENECK: ClassVar[int] = 8  # the code grid's size
    FALLBACK_DEPTH: ClassVar[int] = 2
    TINY: ClassVar[dict[str, Any]] = {"max_filters": 16, "codebook_size": 16, "blocks": 1,
                                      "restart_after": 2}  # fmt: skip

    def __post_init__(self) -> None:
        super().__post_init__()
        positive("--codebook_size", self.codebook_size, 2**16, "--codebook_size 512")
        if self.codebook_size < 2:
            raise TorchVaeError("--codebook_size must be at least 2; pass e.g. 512")
        if self.blocks != 0:
            positive("--blocks", self.blocks, 16, "--blocks 2")
        check_number("--commitment", self.commitment, 0.0, False, "--commitment 0.25")
        check_number("--ema_decay", self.ema_decay, 0.0, False, "--ema_decay 0.99")
        if not self.ema_decay < 1:
            raise TorchVaeError(f"--ema_decay must be below 1, got {self.ema_decay}; pass 0.99")
        positive("--restart_after", self.restart_after, 10**9, "--restart_after 100")

    @property
    def grid(self) -> int:
        """The code grid's side: the image size halved ``depth`` times."""
        return self.bottleneck_size


class Codes(NamedTuple):
    """What a VQ model's ``encode`` gives, its posterior: the encoder's output ``z_e``, its
    nearest codebook vectors ``z_q`` (each (B, D, h, w)) and their ``indices`` (B, h, w), the
    code. A point mass on the code, so it has no noise: ``reparameterize`` ignores its
    ``eps`` (of ``noise_shape`` (), per image)."""

    z_e: Tensor
    z_q: Tensor
    indices: Tensor
    codebook_size: int

    @property
    def noise_shape(self) -> torch.Size:
        return torch.Size()

    def mode(self) -> Tensor:
        """The code: the indices (B, h, w)."""
        return self.indices

    def reparameterize(self, eps: Tensor | None = None) -> Tensor:
        """The code vectors ``z_q`` (the code, whatever ``eps``)."""
        return self.z_q

    def sample(self, generator: torch.Generator | None = None, n: int | None = None) -> Tensor:
        """The code vectors with the straight-through gradient (the decoder's gradient passed
        on to the encoder's output): what training decodes. (B, D, h, w), or ``n`` copies."""
        z = self.z_e + (self.z_q - self.z_e).detach()
        return z if n is None else z.expand(n, *z.shape)

    def kl(self, reduce: bool = True) -> Tensor:
        """KL(q(c|x) || uniform) per image (B,), or per position (B, h, w): log K at every
        position (q is a point mass), as in the paper."""
        kl = torch.full(self.indices.shape, math.log(self.codebook_size), device=self.z_e.device)
        return kl.flatten(1).sum(1) if reduce else kl

    def float(self) -> Codes:
        return Codes(self.z_e.float(), self.z_q.float(), self.indices, self.codebook_size)


class VQOutput(NamedTuple):
    """What a VQ model's ``forward`` (and ``output``) returns."""

    recon: Tensor  # (B, C, H, W) in [0, 1]
    z_e: Tensor  # (B, D, h, w)
    z_q: Tensor  # (B, D, h, w)
    indices: Tensor  # (B, h, w)


class Codebook(nn.Module):
    """K code vectors of D numbers, learned by moving averages (see the module docstring).
    ``forward(z_e)`` gives the ``Codes``; in training mode it also updates the codebook."""

    def __init__(self, size: int, dims: int, decay: float, restart_after: int):
        super().__init__()
        self.size, self.dims, self.decay, self.restart_after = size, dims, decay, restart_after
        self.register_buffer("embedding", torch.zeros(size, dims))
        self.register_buffer("ema_count", torch.zeros(size))
        self.register_buffer("ema_sum", torch.zeros(size, dims))
        # training steps since each code was last assigned a vector; every code starts idle
        # for long enough to be restarted at the first step
        self.register_buffer("idle", torch.full((size,), restart_after, dtype=torch.int64))
        self.register_buffer("updates", torch.zeros((), dtype=torch.int64))

    def nearest(self, flat: Tensor) -> Tensor:
        """The index of the nearest code of each vector (N, D), in float32."""
        e = self.embedding.float()
        d = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ e.T + e.pow(2).sum(1)[None]
        return d.argmin(1)

    def embed(self, indices: Tensor) -> Tensor:
        """Code vectors (B, D, h, w) of code indices (B, h, w)."""
        return F.embedding(indices, self.embedding).permute(0, 3, 1, 2)

    def forward(self, z_e: Tensor) -> Codes:
        b, d, h, w = z_e.shape
        with autocast_off(z_e.device.type):
            flat = z_e.detach().float().permute(0, 2, 3, 1).reshape(-1, d)
            indices = self.nearest(flat)
            if self.training and flat.device.type != "meta":
                self.update(flat, indices)
        indices = indices.view(b, h, w)
        z_q = self.embed(indices).to(z_e.dtype)
        return Codes(z_e, z_q, indices, self.size)

    @torch.no_grad()
    def update(self, flat: Tensor, indices: Tensor) -> None:
        """One step of the moving averages on vectors ``flat`` (N, D) assigned to ``indices``,
        then the restart of the codes idle for ``restart_after`` steps. Under torch.distributed
        the counts and sums are those of every process, and the restarts rank 0's."""
        counts = torch.bincount(indices, minlength=self.size).float()
        sums = torch.zeros(self.size, self.dims, device=flat.device).index_add_(0, indices, flat)
        distributed = dist.is_available() and dist.is_initialized()
        if distributed:
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        keep = self.decay
        self.ema_count.mul_(keep).add_(counts.to(self.ema_count.dtype), alpha=1 - keep)
        self.ema_sum.mul_(keep).add_(sums.to(self.ema_sum.dtype), alpha=1 - keep)
        n = self.ema_count.sum()
        smoothed = (self.ema_count + SMOOTHING) / (n + self.size * SMOOTHING) * n
        self.embedding.copy_(self.ema_sum / smoothed[:, None].clamp_min(SMOOTHING))
        self.idle.copy_(torch.where(counts > 0, 0, self.idle + 1))
        dead = self.idle >= self.restart_after
        if bool(dead.any()):
            self.restart(dead, flat, distributed)
        self.updates.add_(1)

    def restart(self, dead: Tensor, flat: Tensor, distributed: bool = False) -> None:
        """Restart the ``dead`` codes at vectors of ``flat`` drawn at random (without
        replacement where there are enough), seeded by the update's number: the same choices
        on a resume."""
        where = dead.nonzero().flatten()
        gen = torch.Generator().manual_seed(RESTART_SEED + int(self.updates))
        if len(flat) >= len(where):
            rows = torch.randperm(len(flat), generator=gen)[: len(where)]
        else:
            rows = torch.randint(len(flat), (len(where),), generator=gen)
        new = flat[rows.to(flat.device)].to(self.embedding.dtype)
        if distributed:
            dist.broadcast(new, 0)
        self.embedding[where] = new
        self.ema_sum[where] = new
        self.ema_count[where] = 1.0
        self.idle[where] = 0


class Residual(nn.Module):
    """x + conv1x1(relu(conv3x3(relu(x)))), with a bottleneck of width // 4 channels."""

    def __init__(self, width: int):
        super().__init__()
        hidden = max(1, width // 4)
        self.inner = nn.Conv2d(width, hidden, 3, padding=1)
        self.outer = nn.Conv2d(hidden, width, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.outer(F.relu(self.inner(F.relu(x))))


class VQEncoder(nn.Module):
    """Images -> the encoder's output z_e (B, D, h, w), before quantisation."""

    def __init__(self, config: VQVAEConfig):
        super().__init__()
        widths = (config.in_channels, *config.channels)
        self.convs = nn.ModuleList(
            nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=i == 0)
            for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:], strict=True))
        )
        self.norms = nn.ModuleList(
            nn.Identity() if i == 0 else nn.BatchNorm2d(c) for i, c in enumerate(config.channels)
        )
        self.blocks = nn.ModuleList(Residual(widths[-1]) for _ in range(config.blocks))
        self.head = nn.Conv2d(widths[-1], config.latent_dims, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = cpu_channels_last(x)
        for conv, norm in zip(self.convs, self.norms, strict=True):
            h = F.relu(norm(conv(h)))
        for block in self.blocks:
            h = block(h)
        return self.head(F.relu(h))


class VQDecoder(nn.Module):
    """Code vectors (B, D, h, w) -> images (B, C, H, W) in [0, 1]."""

    def __init__(self, config: VQVAEConfig):
        super().__init__()
        widths = tuple(reversed(config.channels))  # e.g. (128, 64)
        self.inp = nn.Conv2d(config.latent_dims, widths[0], 3, padding=1)
        self.blocks = nn.ModuleList(Residual(widths[0]) for _ in range(config.blocks))
        ups = [
            ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False)
            for c_in, c_out in zip(widths[:-1], widths[1:], strict=True)
        ]
        last = ConvTranspose2d(widths[-1], config.in_channels, 4, stride=2, padding=1)
        self.convs = nn.ModuleList([*ups, last])
        self.norms = nn.ModuleList(nn.BatchNorm2d(c) for c in widths[1:])  # after convs[i]

    def forward(self, z: Tensor) -> Tensor:
        h = self.inp(cpu_channels_last(z))
        for block in self.blocks:
            h = block(h)
        h = F.relu(h)
        for conv, norm in zip(self.convs[:-1], self.norms, strict=True):
            h = F.relu(norm(conv(h)))
        return torch.sigmoid(self.convs[-1](h))


@register_model
class VQVAE(VAE):
    """The vector-quantised VAE (``--arch vqvae``): a discrete latent, the code grid."""

    config_class = VQVAEConfig
    encoder_class, decoder_class = VQEncoder, VQDecoder
    latent_kind = "discrete"
    objective_terms = ("recon", "commit")

    def __init__(self, config: VQVAEConfig):
        super().__init__(config)
        self.codebook = Codebook(config.codebook_size, config.latent_dims, config.ema_decay,
                                 config.restart_after)  # fmt: skip

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (self.config.grid, self.config.grid)

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    def encode(self, x: Tensor, condition: Any = None) -> Codes:
        """Images -> their ``Codes`` (in training mode the codebook learns from them)."""
        return self.codebook(super().encode(x, condition))

    def decoder_input(self, z: Tensor, y: Tensor | None) -> Tensor:
        """Code indices (B, h, w) -> their code vectors; code vectors (B, D, h, w) (``z_q``,
        or any point of that space) as they are; a conditional model's one-hot class as
        planes beside them."""
        if not z.is_floating_point():
            z = self.code_vectors(z)
        elif z.dim() != 4 or tuple(z.shape[1:]) != (self.config.latent_dims, *self.latent_shape):
            h, w = self.latent_shape
            raise TorchVaeError(
                f"this model decodes code grids (N, {h}, {w}) of code indices (int64), or code "
                f"vectors (N, {self.config.latent_dims}, {h}, {w}); got {tuple(z.shape)} "
                "(samples: prior = torch_vae.priors.load_sampler(folder); prior.use_model(model); "
                "prior.sample(n))"
            )
        if y is None:
            return z
        planes = nn.functional.one_hot(y, self.config.num_classes).to(z.dtype)
        return torch.cat([z, planes[:, :, None, None].expand(-1, -1, *z.shape[2:])], 1)

    def code_vectors(self, indices: Tensor) -> Tensor:
        """The code vectors (B, D, h, w) of code indices (B, h, w), checked (a one-line error
        for a grid of another shape or an index outside the codebook)."""
        shape = self.latent_shape
        if indices.dim() != 3 or tuple(indices.shape[1:]) != shape:
            raise TorchVaeError(f"code indices must be (N, {shape[0]}, {shape[1]}) for this "
                                f"model, got {tuple(indices.shape)}")  # fmt: skip
        if len(indices) and indices.device.type != "meta":
            lo, hi = int(indices.min()), int(indices.max())
            if lo < 0 or hi >= self.codebook_size:
                raise TorchVaeError(f"code indices must lie in 0..{self.codebook_size - 1}, "
                                    f"got {lo}..{hi}")  # fmt: skip
        return self.codebook.embed(indices).to(self.dtype)

    def quantize(self, z_e: Tensor) -> Tensor:
        """The code indices (B, h, w) nearest to points ``z_e`` (B, D, h, w) (no update)."""
        b, d, h, w = z_e.shape
        with autocast_off(z_e.device.type):
            flat = z_e.float().permute(0, 2, 3, 1).reshape(-1, d)
            return self.codebook.nearest(flat).view(b, h, w)

    def output(self, post: Codes, z: Tensor, condition: Any = None) -> VQOutput:
        return VQOutput(self.decode(z, condition), post.z_e, post.z_q, post.indices)

    def per_image_terms(
        self, out: VQOutput, x: Tensor, recon_loss: str = "mse"
    ) -> dict[str, Tensor]:
        """The reconstruction error and the commitment loss ||z_e - sg(z_q)||^2 summed over
        the grid, per image (B,) in float32."""
        recon = reconstruction_error(out.recon, x, recon_loss)
        commit = (out.z_e.float() - out.z_q.float().detach()).pow(2).flatten(1).sum(1)
        return {"recon": recon, "commit": commit}

    def loss_of(self, terms: dict[str, Any], beta: float = 1.0) -> Any:
        """``recon + beta * commitment * commit`` (``--beta`` scales the regulariser, here
        the commitment loss)."""
        return terms["recon"] + beta * self.config.commitment * terms["commit"]

    def sample(self, n: int, generator=None, condition: Any = None, device=None) -> Tensor:
        """``VAE.sample``: code grids drawn uniformly, decoded, with a warning: a VQ-VAE's own
        prior is uniform over its codes, so these images are noise. A fitted prior draws the
        codes that make images (``torch-vae fit-sampler --sampler transformer``, then
        ``prior = torch_vae.priors.load_sampler(folder)``, ``prior.use_model(model)``,
        ``model.decode(prior.sample(n))``)."""
        warnings.warn(
            "a VQ-VAE's own prior is uniform over its codes: these samples are noise; draw the "
            "codes from a fitted prior: prior = torch_vae.priors.load_sampler(folder); "
            "prior.use_model(model); model.decode(prior.sample(n))",
            UserWarning,
            stacklevel=2,
        )
        return super().sample(n, generator, condition, device)

    def prior_sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        """``n`` code grids (n, h, w) of indices drawn uniformly (the prior the model was
        trained with; a fitted prior, ``fit-sampler --sampler transformer``, is what makes
        images), by ``generator`` on its own device; int64 whatever ``dtype``."""
        where = generator.device if generator is not None else "cpu"
        codes = torch.randint(self.codebook_size, (n, *self.latent_shape), generator=generator,
                              device=where)  # fmt: skip
        return codes.to(device or self.device)

    def prior_log_prob(self, z: Tensor) -> Tensor:
        """log p(c) of code grids (..., h, w) under the uniform prior: (...)."""
        per_grid = -math.prod(self.latent_shape) * math.log(self.codebook_size)
        return torch.full(z.shape[:-2], per_grid, device=z.device)

    def fold_batch_norm(self) -> None:
        fold_ladders(self.encoder, self.decoder)
