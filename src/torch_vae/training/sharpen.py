"""Sharpening a trained model's decoder with an adversarial term (``torch-vae sharpen``).

A decoder trained on squared error alone draws the mean of what a code could be: blur, most of
what separates its images from real ones in the features FID measures. Here the decoder alone is
fine-tuned on the training images with its squared error plus an adversarial term from a small
patch discriminator (hinge loss, spectral norm; the decoder's side as in VQGAN, Esser et al.,
2021), weighted adaptively: at each step the adversarial gradient at the decoder's last layer is
scaled to ``adversarial`` times the norm of the squared error's there, so the weight needs no
tuning per dataset or image size; the first ``warmup`` steps leave the adversarial term out
(the decoder learns from its squared error alone while the discriminator catches up).

The encoder (and a VQ model's codebook) is frozen and kept in eval mode: every image gets the
latents it had, so the samplers fitted to those latents (``fit-sampler``: posterior means, or
code grids) stay valid and are carried over to the new model, re-bound to its weights. Only the
decoder's weights and batch-norm statistics change, which ``sharpen_decoder`` checks before it
returns.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm
from tqdm import tqdm

from ..errors import TorchVaeError
from ..io.files import file_sha256
from ..models import VAE
from ..priors import preference, read_sampler, sampler_path, save_sampler
from ..runtime.device import to_float
from ..runtime.precision import Precision

log = logging.getLogger(__name__)
GRADIENT_FLOOR = 1e-4  # added to the adversarial gradient's norm before dividing by it
MAX_WEIGHT = 1e4  # the adaptive weight's ceiling, where the adversarial gradient vanishes


@dataclass(frozen=True)
class SharpenSettings:
    """How ``sharpen_decoder`` fine-tunes (the flags of ``torch-vae sharpen``)."""

    epochs: int = 2
    adversarial: float = 1.0  # the adversarial gradient's norm over the squared error's
    lr: float = 1e-4  # the decoder's Adam learning rate
    disc_lr: float = 2e-4  # the discriminator's
    disc_width: int = 64  # the discriminator's first layer's channels (then 2x, 4x)
    warmup: int = 50  # first steps without the adversarial term
    batchsize: int = 128
    seed: int = 0
    precision: str = "auto"
    max_steps: int = 0  # stop after this many steps (0: every step of the epochs)


class Discriminator(nn.Module):
    """A patch discriminator: two stride-2 4x4 convolutions, a 3x3 one (widths w, 2w, 4w,
    leaky ReLU 0.2) and a 3x3 convolution to one logit per patch (a 7x7 map at 28 pixels), each
    under spectral norm (Miyato et al., 2018), which keeps it from overpowering the decoder."""

    def __init__(self, channels: int, width: int = 64):
        super().__init__()
        w = width
        shapes = [(channels, w, 4, 2), (w, 2 * w, 4, 2), (2 * w, 4 * w, 3, 1), (4 * w, 1, 3, 1)]
        self.convs = nn.ModuleList(
            spectral_norm(nn.Conv2d(c_in, c_out, k, s, padding=1 if k == 3 else (k - s) // 2))
            for c_in, c_out, k, s in shapes
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs[:-1]:
            x = F.leaky_relu(conv(x), 0.2)
        return self.convs[-1](x)


def last_layer_weight(decoder: nn.Module) -> nn.Parameter:
    """The weight of the decoder's last convolution or linear layer (the last parameter of more
    than one dimension): where the adaptive weight compares the two gradients."""
    weights = [p for p in decoder.parameters() if p.dim() > 1]
    if not weights:
        raise TorchVaeError("this model's decoder has no weight matrix to sharpen")
    return weights[-1]


def adaptive_weight(recon: torch.Tensor, adv: torch.Tensor, last: nn.Parameter, scale: float):
    """``scale`` * ||d recon / d last|| / (||d adv / d last|| + GRADIENT_FLOOR), at most
    MAX_WEIGHT (a float; no gradient flows through it)."""
    g_recon = torch.autograd.grad(recon, last, retain_graph=True)[0].norm()
    g_adv = torch.autograd.grad(adv, last, retain_graph=True)[0].norm()
    return scale * min(float(g_recon / (g_adv + GRADIENT_FLOOR)), MAX_WEIGHT)


class _Trainer:
    """The two optimisers and one step of each (``step``)."""

    def __init__(self, model: VAE, s: SharpenSettings, device: torch.device):
        torch.manual_seed(s.seed)  # the discriminator's initial weights
        self.model, self.s = model, s
        self.disc = Discriminator(model.config.in_channels, s.disc_width).to(device)
        self.opt_g = torch.optim.Adam(model.decoder.parameters(), s.lr, betas=(0.5, 0.9))
        self.opt_d = torch.optim.Adam(self.disc.parameters(), s.disc_lr, betas=(0.5, 0.9))
        self.amp = Precision(device, s.precision, train=True)  # its warnings for training
        self.last = last_layer_weight(model.decoder)
        self.generator = torch.Generator().manual_seed(s.seed)  # posterior samples, batches
        self.steps = 0

    def step(self, x: torch.Tensor, y: torch.Tensor | None) -> tuple[float, float, float]:
        """One step of the discriminator, then of the decoder: (squared error per image,
        discriminator loss, adversarial weight)."""
        model, disc = self.model, self.disc
        with torch.no_grad():  # in float32: the latents the samplers were fitted to
            z = model.encode(x, y).sample(self.generator)
        with self.amp.autocast():
            fake = model.decode(z.detach(), y)
        fake = fake.float()
        loss_d = F.relu(1 - disc(x)).mean() + F.relu(1 + disc(fake.detach())).mean()
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        recon = (fake - x).pow(2).flatten(1).sum(1).mean()
        weight = 0.0
        loss = recon
        if self.steps >= self.s.warmup:
            adv = -disc(fake).mean()
            weight = adaptive_weight(recon, adv, self.last, self.s.adversarial)
            loss = recon + weight * adv
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()
        self.steps += 1
        return float(recon.detach()), float(loss_d.detach()), weight


def sharpen_decoder(
    model: VAE,
    images,
    labels: torch.Tensor | None,
    settings: SharpenSettings,
    device: torch.device,
    progress: bool = True,
    rows=None,
) -> list[dict]:
    """Fine-tune ``model``'s decoder in place on ``images`` (uint8 (N, H, W, C), or the
    ``rows`` of them; a conditional model's classes ``labels`` of all N) as the module
    docstring says; the model ends in eval mode.
    Returns a record per epoch (mean squared error per image, discriminator loss, adversarial
    weight, seconds)."""
    s = settings
    rows = torch.as_tensor(rows if rows is not None else range(len(images)))
    n = len(rows)
    if n < s.batchsize:
        raise TorchVaeError(f"{n} training images are fewer than --batchsize {s.batchsize}; "
                            "pass a smaller --batchsize")  # fmt: skip
    frozen = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("decoder.")}
    model.eval()
    model.requires_grad_(False)
    model.decoder.requires_grad_(True).train()
    trainer = _Trainer(model, s, device)
    total = s.epochs * (n // s.batchsize)
    total = min(total, s.max_steps) if s.max_steps else total
    bar = tqdm(total=total, desc="sharpen", unit="step", disable=not progress)
    records = []
    try:
        for epoch in range(1, s.epochs + 1):
            if trainer.steps >= total:  # --max_steps reached
                break
            records.append(_epoch(trainer, images, labels, rows, device, bar, epoch, total))
            r = records[-1]
            log.info("epoch %d/%d: squared error %.4f per image, discriminator loss %.4f, "
                     "adversarial weight %.3f, %.0f s", epoch, s.epochs, r["recon"],
                     r["disc_loss"], r["adversarial_weight"], r["seconds"])  # fmt: skip
    finally:
        bar.close()
        model.eval()
        model.requires_grad_(True)
    changed = [
        k for k, v in model.state_dict().items() if k in frozen and not torch.equal(v, frozen[k])
    ]
    if changed:
        raise RuntimeError(f"sharpen changed more than the decoder: {changed[:3]}")
    return records


def _epoch(trainer: _Trainer, images, labels, rows, device, bar, epoch: int, total: int) -> dict:
    """One epoch's steps (those left of ``total`` steps in all, at most) and its record."""
    s, start, sums = trainer.s, time.perf_counter(), torch.zeros(3, dtype=torch.float64)
    order = rows[torch.randperm(len(rows), generator=trainer.generator)]
    per_epoch = min(len(rows) // s.batchsize, total - trainer.steps)
    for i in range(per_epoch):
        batch = order[i * s.batchsize : (i + 1) * s.batchsize].sort().values.numpy()
        x = to_float(torch.from_numpy(images[batch]), device)
        y = labels[batch].to(device) if labels is not None else None
        stats = trainer.step(x, y)
        if not all(math.isfinite(v) for v in stats):
            raise TorchVaeError(f"sharpen diverged at step {trainer.steps} (a loss is not "
                                "finite); pass a smaller --lr or --adversarial")  # fmt: skip
        sums += torch.tensor(stats, dtype=torch.float64)
        bar.update()
        bar.set_postfix(epoch=epoch, recon=f"{stats[0]:.3f}", disc=f"{stats[1]:.3f}")
    recon, disc, weight = (sums / per_epoch).tolist()
    seconds = round(time.perf_counter() - start, 1)
    return {"epoch": epoch, "steps": per_epoch, "recon": recon, "disc_loss": disc,
            "adversarial_weight": weight, "seconds": seconds}  # fmt: skip


def carry_samplers(source: Path, source_weights: Path, weights: Path) -> list[str]:
    """Copy the samplers fitted to ``source_weights`` (the model at ``source``) beside
    ``weights`` (the sharpened model), re-bound to it: its latents are the source's. A sampler
    fitted to other weights, or unreadable, is left behind with a warning. Returns the kinds
    carried over."""
    source_sha, sha = file_sha256(source_weights), file_sha256(weights)
    carried = []
    for kind in preference():
        path = sampler_path(source, kind)
        if not path.is_file():
            continue
        try:
            prior = read_sampler(path)
        except TorchVaeError as exc:
            log.warning("left behind: %s", exc)
            continue
        if prior.info.get("model_sha256") != source_sha:
            log.warning("left behind: %s was fitted to other weights than %s", path,
                        source_weights)  # fmt: skip
            continue
        prior.info["model_sha256"] = sha
        prior.info["carried_over"] = {
            "from": str(path), "model_sha256": source_sha,
            "note": "the latents are the source model's; the validation score was measured "
                    "with its decoder, before sharpen",
        }  # fmt: skip
        save_sampler(prior, sampler_path(weights, kind))
        carried.append(kind)
    return carried
