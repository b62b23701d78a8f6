"""The training loop: one explicit epoch loop, a test evaluation and a checkpoint every epoch.

A run can be resumed from its last checkpoint (``train(..., resume=state)``); SIGINT and
SIGTERM save the current state before stopping, and a non-finite loss or weights stop training
without touching the last good checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .checkpoint import CHECKPOINTS_DIR, WEIGHTS_NAME, load_model, save_model
from .config import ModelConfig, TrainConfig
from .device import to_float
from .distributed import Distributed, wrap
from .errors import TorchVaeError, TrainingInterrupted
from .fileio import atomic_path, file_sha256, remove_stale_temporaries
from .images import grid, save_png, side_by_side, stack_rows, to_uint8
from .losses import per_image_terms, vae_loss
from .model import VAE, VAEOutput, native_residual
from .speed import Precision, maybe_compile, resident
from .trainstate import (
    METRICS_NAME,
    STATE_NAME,
    TOTAL_KEYS,
    all_finite,
    restore_train_state,
    save_train_state,
    trim_metrics,
    write_run_config,
)

log = logging.getLogger(__name__)

__all__ = ["METRICS_NAME", "STATE_NAME", "train"]

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
    stop: Callable[[], bool] | None = None,
) -> dict[str, float] | None:
    """Per-image metrics on uint8 images (N, H, W, C): the training objective with z sampled
    (seeded, as in training), its two parts, and the per-pixel MSE of the deterministic
    posterior-mean reconstruction. Returns None as soon as ``stop()`` is true."""
    model.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    sums = {"recon": 0.0, "kl": 0.0, "mse": 0.0}
    for start in range(0, len(images), batch_size):
        if stop is not None and stop():
            return None
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


class _StopOnSignal:
    """While active (in the main thread), SIGINT and SIGTERM only set ``signum``: the training
    loop then saves its state and stops. A second signal stops at once (KeyboardInterrupt);
    every file is written atomically, so that too leaves the last checkpoint intact."""

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> _StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                if hasattr(signal, name):
                    sig = getattr(signal, name)
                    self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


# Largest mean squared distance per pixel from the images to what upsampling from
# --native_size can produce that is still 8-bit rounding (which gives about 1e-6).
NATIVE_TOLERANCE = 1e-5


def check_native_size(images: torch.Tensor, native_size: int) -> None:
    """A one-line error unless the first images (uint8, (N, H, W, C)) are bilinear upsamplings
    of native_size x native_size images, as --native_size says."""
    residual = native_residual(to_float(images[:256], torch.device("cpu")), native_size)
    if residual > NATIVE_TOLERANCE:
        raise TorchVaeError(
            f"--native_size {native_size}: these images are not bilinear upsamplings of "
            f"{native_size}x{native_size} images (mean squared distance per pixel {residual:.1e}, "
            f"rounding gives < {NATIVE_TOLERANCE:g}); give the size the dataset's images had "
            "before resizing (28 for MNIST and Fashion-MNIST, 32 for CIFAR), or 0"
        )


def train(
    model_config: ModelConfig,
    train_config: TrainConfig,
    train_images: torch.Tensor,
    test_images: torch.Tensor,
    run_dir: Path,
    device: torch.device,
    progress: bool = True,
    resume: dict[str, Any] | None = None,
    dist: Distributed | None = None,
) -> VAE:
    """Train a VAE on uint8 images (N, H, W, C) and write everything into ``run_dir``:
    config.json, model.safetensors (latest), checkpoints/epoch_NNN.safetensors, ckpt.pt
    (training state), metrics.jsonl and images/epoch_NNN.png.

    ``resume``: a training state read with ``trainstate.load_train_state(run_dir)``; training
    continues from it, exactly as if it had never stopped. On SIGINT or SIGTERM the current
    state is saved to ckpt.pt and ``TrainingInterrupted`` is raised.

    ``dist``: this process's place in a distributed job (see ``distributed.py``); only rank 0
    writes files and shows progress.
    """
    cfg = train_config
    dist = dist or Distributed()
    main = dist.is_main
    progress = progress and main
    # checked before the run folder is created, so a bad --init_from leaves nothing behind
    if model_config.native_size:
        check_native_size(train_images, model_config.native_size)
    start = _initial_weights(cfg, model_config) if resume is None and cfg.init_from else None
    if main:
        if resume is None:
            check_new_run_dir(run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
        write_run_config(run_dir, model_config, cfg)  # on resume: the possibly extended --epochs
    torch.manual_seed(cfg.seed)
    model = VAE(model_config)
    if start is not None:
        model.load_state_dict(start)
    model = model.to(device, memory_format=torch.channels_last)
    # DDP (when distributed) and torch.compile wrap the model; ``model`` keeps the weights.
    forward = maybe_compile(wrap(model, dist, device), cfg.compile)
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
    step, first_epoch, partial = 0, 1, None
    if resume is not None:
        restore_train_state(resume, run_dir / STATE_NAME, model, opt, gen, n, steps_per_epoch)
        step, first_epoch, partial = resume["step"], resume["epoch"] + 1, resume["partial"]
        if main:
            if remove_stale_temporaries(run_dir):
                log.info("removed temporary files left by the interrupted run")
            trim_metrics(run_dir, resume["epoch"])
            log.info("resuming %s at epoch %d, step %d", run_dir, first_epoch, step)
    if dist.enabled:  # the same batches everywhere, but each process its own noise
        torch.manual_seed(dist.noise_seed(cfg.seed, step))
    eval_images = dist.shard(test_images) if dist.enabled else test_images
    log.info(
        "training %d parameters on %d images, %d steps per epoch, device %s",
        model.num_parameters(),
        n,
        steps_per_epoch,
        device,
    )
    with _StopOnSignal() as stop:
        for epoch in range(first_epoch, cfg.epochs + 1):
            model.train()
            if partial is not None:  # continue the epoch a signal interrupted
                perm, done = partial["perm"], partial["batch"]
                total, seen = dict(partial["totals"]), partial["seen"]
                spent = partial["seconds"]
                partial = None
            else:
                perm, done = torch.randperm(n, generator=gen), 0
                total, seen, spent = dict.fromkeys(TOTAL_KEYS, 0.0), 0, 0.0

            t0 = time.perf_counter()
            bar = tqdm(
                range(done, steps_per_epoch),
                desc=f"epoch {epoch}/{cfg.epochs}",
                unit="step",
                initial=done,
                total=steps_per_epoch,
                disable=not progress,
                dynamic_ncols=True,
                mininterval=0.5,
            )
            for i in bar:
                if dist.any(stop.requested()):
                    bar.close()
                    at = _progress(perm, i, total, seen, spent, t0)
                    raise _save_and_stop(
                        stop, model, opt, gen, device, run_dir, epoch, step, n, at, dist
                    )
                if cfg.max_steps and step >= cfg.max_steps:
                    break
                idx = dist.shard(perm[i * cfg.batchsize : (i + 1) * cfg.batchsize])
                x = to_float(train_images[idx], device)
                for group in opt.param_groups:
                    group["lr"] = cfg.lr_at(step, total_steps)
                with amp.autocast():
                    out = forward(x)
                beta = cfg.beta_at(step, steps_per_epoch)
                losses = vae_loss(out, x, beta, cfg.recon_loss)  # in fp32
                loss = losses["loss"].item()
                if dist.any(not math.isfinite(loss)):
                    bar.close()
                    raise TorchVaeError(
                        f"the loss became {loss} at epoch {epoch}, step {step + 1}; training "
                        f"stopped and {_kept(run_dir)}. Try a lower --lr"
                    )
                opt.zero_grad(set_to_none=True)
                amp.backward(losses["loss"])
                amp.step(opt)
                step += 1
                done = i + 1
                b = len(idx)
                seen += b
                for k in total:
                    total[k] += losses[k].item() * b if k != "loss" else loss * b
                if progress and (i % 10 == 0 or i == steps_per_epoch - 1):
                    rate = seen / (spent + time.perf_counter() - t0)
                    bar.set_postfix(loss=f"{total['loss'] / seen:.2f}", img_s=f"{rate:.0f}")
            bar.close()
            seconds = spent + time.perf_counter() - t0
            if dist.enabled:
                dist.average_buffers(model)
                total, seen = _job_totals(total, seen, dist)
            test = evaluate(
                model,
                eval_images,
                device,
                max(cfg.batchsize, 256),
                cfg.recon_loss,
                cfg.beta,
                seed=cfg.seed,
                stop=stop.requested,
            )
            if dist.enabled:
                test = _reduce_test(test, len(eval_images), dist, cfg.beta)
            if test is None:
                at = _progress(perm, done, total, seen, spent, t0)
                raise _save_and_stop(
                    stop, model, opt, gen, device, run_dir, epoch, step, n, at, dist
                )
            _check_finite(model, run_dir, epoch, step)
            dist.check_replicas(model, f"after epoch {epoch}")
            record = {
                "epoch": epoch,
                "step": step,
                **{f"train_{k}": v / max(seen, 1) for k, v in total.items()},
                **{f"test_{k}": v for k, v in test.items()},
                "train_images": seen,
                "train_img_per_s": seen / seconds,
                "epoch_seconds": seconds,
            }
            if main:
                save_checkpoint(model, opt, gen, device, run_dir, epoch, step, cfg.dataset, n,
                                record, _picture(model, fixed_z, test_images, device))  # fmt: skip
            log.info(
                "epoch %d: train loss %.2f, test loss %.2f (recon %.2f, kl %.2f) per image, "
                "%.0f img/s",
                epoch,
                record["train_loss"],
                test["loss"],
                test["recon"],
                test["kl"],
                record["train_img_per_s"],
            )
            if dist.any(stop.requested()):  # arrived while the epoch was evaluated and saved
                raise _interrupted(stop, run_dir, epoch, step)
            if cfg.max_steps and step >= cfg.max_steps:
                break
    return model


def _initial_weights(cfg: TrainConfig, config: ModelConfig) -> dict[str, torch.Tensor]:
    """The weights of ``cfg.init_from``, if they are still the same file and fit ``config``."""
    path = Path(cfg.init_from)
    try:
        digest = file_sha256(path)
    except OSError as exc:
        raise TorchVaeError(f"cannot read the initial weights {path}: {exc.strerror}") from None
    if digest != cfg.init_sha256:
        raise TorchVaeError(
            f"the initial weights {path} changed since the run was set up (SHA-256 {digest[:12]}, "
            f"expected {cfg.init_sha256[:12]}); restore that file or start a new run"
        )
    init = load_model(path)
    # native_size has no weights: a model may be fine-tuned with another one
    if dataclasses.replace(init.config, native_size=config.native_size) != config:
        raise TorchVaeError(f"the initial weights {path} are for another model: {init.config}")
    return init.state_dict()


def _progress(perm, done, total, seen, spent, t0) -> dict[str, Any]:
    """How far the current epoch got: resuming continues it from here."""
    seconds = float(spent + time.perf_counter() - t0)
    return {"perm": perm, "batch": done, "totals": dict(total), "seen": seen, "seconds": seconds}


def _save_and_stop(
    stop, model, opt, gen, device, run_dir, epoch, step, n, progress, dist
) -> TrainingInterrupted:
    """Save the state in the middle of ``epoch`` and return the error that ends training."""
    _check_finite(model, run_dir, epoch, step)
    if dist.enabled:  # the whole job's totals so far; rank 0 writes
        progress["totals"], progress["seen"] = _job_totals(
            progress["totals"], progress["seen"], dist
        )
    if dist.is_main:
        save_train_state(run_dir, model, opt, gen, device, epoch - 1, step, n, progress)
    dist.barrier()
    return _interrupted(stop, run_dir, epoch, step)


def _job_totals(
    total: dict[str, float], seen: int, dist: Distributed
) -> tuple[dict[str, float], int]:
    """The training-loss sums and image count of every process together."""
    sums = dist.sum([total[k] for k in TOTAL_KEYS] + [seen])
    return dict(zip(TOTAL_KEYS, sums[:-1], strict=True)), int(sums[-1])


def _reduce_test(
    test: dict[str, float] | None, n_local: int, dist: Distributed, beta: float
) -> dict[str, float] | None:
    """Per-image test metrics of the whole test set from every process's shard; None on every
    process if any was stopped by a signal."""
    if dist.any(test is None):
        return None
    keys = ("recon", "kl", "mse")
    sums = dist.sum([test[k] * n_local for k in keys] + [n_local])
    m = {k: v / max(sums[-1], 1) for k, v in zip(keys, sums[:-1], strict=False)}
    m["loss"] = m["recon"] + beta * m["kl"]
    return m


def _picture(model, fixed_z, test_images, device) -> np.ndarray:
    return epoch_picture(model, fixed_z, test_images[:N_PICTURE], device)


def _kept(run_dir: Path) -> str:
    if (run_dir / STATE_NAME).exists():
        return f"the last good checkpoint in {run_dir} was kept"
    return f"no checkpoint was written (no epoch had completed), nothing in {run_dir} is usable"


def _check_finite(model: VAE, run_dir: Path, epoch: int, step: int) -> None:
    """Never save broken weights over good ones."""
    if not all_finite(model):
        raise TorchVaeError(
            f"the weights became non-finite (NaN or infinite) at epoch {epoch}, by step {step}; "
            f"training stopped and {_kept(run_dir)}. Try a lower --lr"
        )


def _interrupted(stop: _StopOnSignal, run_dir: Path, epoch: int, step: int) -> TrainingInterrupted:
    name = signal.Signals(stop.signum).name if stop.signum else "a signal"
    return TrainingInterrupted(
        f"stopped by {name} at step {step} (epoch {epoch}); the training state is saved, "
        f"continue with: torch-vae train --resume {run_dir}",
        exit_code=128 + (stop.signum or 2),
    )


def save_checkpoint(
    model: VAE,
    opt: torch.optim.Optimizer,
    gen: torch.Generator,
    device: torch.device,
    run_dir: Path,
    epoch: int,
    step: int,
    dataset: str,
    n_train: int,
    record: dict[str, Any],
    picture: np.ndarray,
) -> None:
    """Write this epoch's weights, metrics, picture and, last, the training state: ckpt.pt is
    the commit point, so a crash before it only means the epoch is trained again on resume."""
    save_model(model, run_dir / CHECKPOINTS_DIR / f"epoch_{epoch:03d}.safetensors", dataset)
    save_model(model, run_dir / WEIGHTS_NAME, dataset)
    with open(run_dir / METRICS_NAME, "a") as f:  # a torn last line is dropped on resume
        f.write(json.dumps(record) + "\n")
    with atomic_path(run_dir / "images" / f"epoch_{epoch:03d}.png") as tmp:
        save_png(picture, tmp)
    save_train_state(run_dir, model, opt, gen, device, epoch, step, n_train)
