"""The training loop: one explicit epoch loop, a test evaluation and a checkpoint every epoch."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import __version__
from .checkpoint import CONFIG_NAME, WEIGHTS_NAME, save_model
from .config import ModelConfig, TrainConfig
from .device import to_float
from .errors import TorchVaeError
from .fileio import atomic_path, write_text_atomic
from .images import grid, save_png, side_by_side, stack_rows, to_uint8
from .losses import per_image_terms, vae_loss
from .model import VAE, VAEOutput
from .speed import Precision, maybe_compile, resident

log = logging.getLogger(__name__)

STATE_NAME = "ckpt.pt"
METRICS_NAME = "metrics.jsonl"
N_PICTURE = 32  # samples and reconstructions drawn into each epoch's picture


def new_run_dir(base: Path, name: str) -> Path:
    """``base/name``, or ``base/name-2``, ``-3``... so that no existing run is touched."""
    candidate, i = base / name, 1
    while candidate.exists():
        i += 1
        candidate = base / f"{name}-{i}"
    return candidate


def check_new_run_dir(path: Path) -> None:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise TorchVaeError(
            f"run folder {path} already exists and is not empty; choose another --run_dir "
            "(nothing was overwritten)"
        )


@torch.no_grad()
def evaluate(
    model: VAE,
    images: torch.Tensor,
    device: torch.device,
    batch_size: int = 256,
    recon_loss: str = "mse",
    beta: float = 1.0,
    seed: int = 0,
) -> dict[str, float]:
    """Per-image metrics on uint8 images (N, H, W, C): the training objective with z sampled
    (seeded, as in training), its two parts, and the per-pixel MSE of the deterministic
    posterior-mean reconstruction."""
    model.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    sums = {"recon": 0.0, "kl": 0.0, "mse": 0.0}
    for start in range(0, len(images), batch_size):
        x = to_float(images[start : start + batch_size], device)
        post = model.encode(x)
        out = VAEOutput(model.decode(post.sample(gen)), post.mu, post.logvar)
        terms = per_image_terms(out, x, recon_loss)
        sums["recon"] += terms["recon"].sum().item()
        sums["kl"] += terms["kl"].sum().item()
        sums["mse"] += (model.decode(post.mu) - x).pow(2).mean((1, 2, 3)).sum().item()
    m = {k: v / len(images) for k, v in sums.items()}
    m["loss"] = m["recon"] + beta * m["kl"]
    return m


@torch.no_grad()
def epoch_picture(model: VAE, z: torch.Tensor, test_images: torch.Tensor, device) -> np.ndarray:
    """Top: samples from fixed latents; bottom: test images beside their reconstructions."""
    model.eval()
    top = grid(to_uint8(model.decode(z)), nrow=8)
    x = to_float(test_images, device)
    bottom = grid(side_by_side(to_uint8(x), to_uint8(model.reconstruct(x))), nrow=4)
    return stack_rows([top, bottom])


def train(
    model_config: ModelConfig,
    train_config: TrainConfig,
    train_images: torch.Tensor,
    test_images: torch.Tensor,
    run_dir: Path,
    device: torch.device,
    progress: bool = True,
) -> VAE:
    """Train a VAE on uint8 images (N, H, W, C) and write everything into ``run_dir``:
    config.json, model.safetensors (latest), checkpoints/epoch_NNN.safetensors, ckpt.pt
    (training state), metrics.jsonl and images/epoch_NNN.png."""
    cfg = train_config
    check_new_run_dir(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(
        run_dir / CONFIG_NAME,
        json.dumps(
            {
                "torch_vae_version": __version__,
                "model": model_config.to_dict(),
                "train": cfg.to_dict(),
            },
            indent=2,
        ),
    )
    torch.manual_seed(cfg.seed)
    model = VAE(model_config).to(device, memory_format=torch.channels_last)
    forward = maybe_compile(model, cfg.compile)  # shares its weights with model
    amp = Precision(device, cfg.precision)
    train_images = resident(train_images, device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)  # batch order
    fixed_z = torch.randn(N_PICTURE, model_config.latent_dims, generator=gen).to(device)
    n = len(train_images)
    steps_per_epoch = math.ceil(n / cfg.batchsize)
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    step = 0
    log.info(
        "training %d parameters on %d images, %d steps per epoch, device %s",
        model.num_parameters(),
        n,
        steps_per_epoch,
        device,
    )
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        perm = torch.randperm(n, generator=gen)
        total = {"loss": 0.0, "recon": 0.0, "kl": 0.0}
        seen = 0
        t0 = time.perf_counter()
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"epoch {epoch}/{cfg.epochs}",
            unit="step",
            disable=not progress,
            dynamic_ncols=True,
            mininterval=0.5,
        )
        for i in bar:
            idx = perm[i * cfg.batchsize : (i + 1) * cfg.batchsize]
            x = to_float(train_images[idx], device)
            for group in opt.param_groups:
                group["lr"] = cfg.lr_at(step, total_steps)
            with amp.autocast():
                out = forward(x)
            losses = vae_loss(out, x, cfg.beta_at(step, steps_per_epoch), cfg.recon_loss)  # fp32
            opt.zero_grad(set_to_none=True)
            amp.backward(losses["loss"])
            loss = losses["loss"].item()
            if not math.isfinite(loss):
                raise TorchVaeError(
                    f"the loss became {loss} at epoch {epoch}, step {step + 1}; training stopped "
                    f"and the last good checkpoint in {run_dir} was kept. Try a lower --lr"
                )
            amp.step(opt)
            step += 1
            b = len(idx)
            seen += b
            for k in total:
                total[k] += losses[k].item() * b if k != "loss" else loss * b
            if progress and (i % 10 == 0 or i == steps_per_epoch - 1):
                rate = seen / (time.perf_counter() - t0)
                bar.set_postfix(loss=f"{total['loss'] / seen:.2f}", img_s=f"{rate:.0f}")
            if cfg.max_steps and step >= cfg.max_steps:
                break
        bar.close()
        seconds = time.perf_counter() - t0
        test = evaluate(
            model,
            test_images,
            device,
            max(cfg.batchsize, 256),
            cfg.recon_loss,
            cfg.beta,
            seed=cfg.seed,
        )
        record = {
            "epoch": epoch,
            "step": step,
            **{f"train_{k}": v / seen for k, v in total.items()},
            **{f"test_{k}": v for k, v in test.items()},
            "train_img_per_s": seen / seconds,
            "epoch_seconds": seconds,
        }
        save_checkpoint(model, opt, run_dir, epoch, step, cfg.dataset)
        with open(run_dir / METRICS_NAME, "a") as f:
            f.write(json.dumps(record) + "\n")
        picture = epoch_picture(model, fixed_z, test_images[:N_PICTURE], device)
        (run_dir / "images").mkdir(exist_ok=True)
        save_png(picture, run_dir / "images" / f"epoch_{epoch:03d}.png")
        log.info(
            "epoch %d: train loss %.2f, test loss %.2f (recon %.2f, kl %.2f) per image, %.0f img/s",
            epoch,
            record["train_loss"],
            test["loss"],
            test["recon"],
            test["kl"],
            record["train_img_per_s"],
        )
        if cfg.max_steps and step >= cfg.max_steps:
            break
    return model


def save_checkpoint(model, opt, run_dir: Path, epoch: int, step: int, dataset: str) -> None:
    """Write this epoch's weights, the latest weights and the training state, each atomically."""
    save_model(model, run_dir / "checkpoints" / f"epoch_{epoch:03d}.safetensors", dataset)
    save_model(model, run_dir / WEIGHTS_NAME, dataset)
    state = {"optimizer": opt.state_dict(), "epoch": epoch, "step": step}
    with atomic_path(run_dir / STATE_NAME) as tmp:
        torch.save(state, tmp)
