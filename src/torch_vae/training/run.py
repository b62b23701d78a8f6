"""``torch_vae.train``: a training run from Python, the way ``torch-vae train`` runs it (the
command builds the same configs from its flags and calls ``execute`` too).

    import torch_vae
    from torch_vae import ModelConfig, TrainConfig

    run = torch_vae.train(
        ModelConfig(arch="dcgan", latent_dims=8),
        TrainConfig(dataset="fashion-mnist", epochs=3, batchsize=128, lr=2e-3),
        run_dir="runs/mine",
    )
    run.model.sample(16)                               # the trained model, in eval mode
    torch_vae.train(resume="runs/mine", epochs=6)      # continue it
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..data import get_dataset
from ..errors import TrainingInterrupted
from ..models import VAE, ModelConfig
from ..priors.base import stale_samplers
from ..runtime.device import pick_device
from .config import TrainConfig
from .distributed import Distributed, setup, teardown
from .loggers import check_installed, logger_names
from .loop import ProcessLost, check_memory, run_plan
from .plan import RunPlan, load_run_data, plan_new, plan_resume
from .rundir import removed_if_unused

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainedRun:
    """A finished (or extended) run: its folder and its model, in eval mode."""

    run_dir: Path
    model: VAE


def train(
    model: ModelConfig | str | None = None,
    config: TrainConfig | None = None,
    *,
    run_dir: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    init_from: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None,
    epochs: int | None = None,
    max_steps: int | None = None,
    moved_to: str | os.PathLike | None = None,
    dry_run: bool = False,
    device: str = "auto",
    progress: bool = True,
) -> TrainedRun:
    """Train ``model`` (a config, or an architecture name for its defaults on the dataset's
    images) with ``config`` (default: ``TrainConfig()``) into ``run_dir`` (default: a new
    numbered folder under runs/); or, with ``init_from``, start from those weights; or, with
    ``resume``, continue that run (``epochs`` and ``max_steps`` may extend it; ``moved_to``:
    where its folder of images went, as ``--resume RUN --dataset folder:NEWPATH``). Writes the run
    folder as ``torch-vae train`` does; Ctrl-C saves the state and raises
    ``TrainingInterrupted`` (``resume`` continues it)."""
    _check_train_args(model, config, resume is not None)
    config = config or TrainConfig()
    if isinstance(model, str):
        model = ModelConfig(arch=model, in_channels=get_dataset(config.dataset).channels)
    data = Path(data_dir) if data_dir is not None else None

    def make_plan(dist: Distributed) -> RunPlan:
        if resume is not None:
            moved = None if moved_to is None else str(moved_to)
            return plan_resume(Path(resume), epochs, max_steps, data, dist.is_main, moved)
        if epochs is not None or max_steps is not None or moved_to is not None:
            raise TypeError("epochs, max_steps and moved_to go with resume (a new run takes "
                            "them in config)")  # fmt: skip
        folder = Path(run_dir) if run_dir is not None else None
        start = Path(init_from) if init_from is not None else None
        return plan_new(model, config, folder, data, start, dry_run, dist)

    return execute(make_plan, device, progress)


def _check_train_args(model, config, resuming: bool) -> None:
    """A one-line TypeError for what ``train`` cannot take: a built model, a dict, or a model
    and config beside ``resume`` (which continues the run with its own)."""
    if resuming and (model is not None or config is not None):
        raise TypeError("resume continues the run with its own model and training config; drop "
                        "model and config (epochs= or max_steps= extend it)")  # fmt: skip
    if isinstance(model, VAE):
        raise TypeError("train takes a ModelConfig or an architecture name, not a built model; to "
                        "start from its weights, save it (model.save_pretrained(FOLDER)) and pass "
                        "init_from=FOLDER")  # fmt: skip
    if model is not None and not isinstance(model, (ModelConfig, str)):
        raise TypeError(f"model must be a ModelConfig or an architecture name such as 'dcgan', "
                        f"not a {type(model).__name__} (ModelConfig.from_dict(d) reads a "
                        "dict)")  # fmt: skip
    if config is not None and not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, not a {type(config).__name__} "
                        "(TrainConfig(**d) or TrainConfig.from_dict(d) reads a dict)")  # fmt: skip


def execute(
    make_plan: Callable[[Distributed], RunPlan], device: str = "auto", progress: bool = True,
    cpu: bool = False,
) -> TrainedRun:  # fmt: skip
    """Plan and run training on ``device``; under torchrun, join the job first (gloo on the
    CPU, NCCL with one GPU per process) and leave it at the end. A new run that fails before
    it saved anything leaves no folder behind."""
    dist, where = setup(pick_device(device, cpu))
    if not dist.is_main:  # progress lines come from rank 0 alone; warnings and errors from all
        logging.getLogger("torch_vae").setLevel(logging.WARNING)
    progress = progress and dist.is_main
    plan = None
    try:
        try:
            plan = make_plan(dist)
            with removed_if_unused(plan.run_dir, plan.resume is None, dist.is_main):
                check_installed(logger_names(plan.train.logger))  # a missing package: now
                check_memory(plan, where)  # before the data: a model too large is told at once
                data = load_run_data(plan, progress, dist)
                model = run_plan(plan, data, None, where, progress, dist)
            if plan.temporary:
                split = "validation" if data.prefix == "val" else "test"
                log.info("dry run done: 1 epoch of at most 2 steps trained and %d %s images "
                         "evaluated; the folder is removed (pass --run_dir to keep it)",
                         len(data.eval), split)  # fmt: skip
            else:
                log.info("done. %s", next_steps(plan, model.latent_kind))
        except ProcessLost:  # another process ended: no collective can run
            raise
        except TrainingInterrupted:  # every process stopped at the same step
            dist.barrier()
            raise
        dist.barrier()  # every process is done before the group goes away
    finally:
        if plan is not None and plan.lock is not None:
            plan.lock.release()
        if plan is not None and plan.temporary and dist.is_main:
            shutil.rmtree(plan.run_dir, ignore_errors=True)
        teardown()
    model.dataset = plan.train.dataset  # as load_model(run_dir) gives it
    return TrainedRun(plan.run_dir, model.eval())


def next_steps(plan: RunPlan, latent_kind: str) -> str:
    """The commands to run next: generate, after fitting a sampler where one is needed (a
    discrete latent's own prior is uniform) or where the run's were fitted to weights it had
    before the end of this training (before a resume, or while it ran)."""
    run = plan.run_dir
    stale = stale_samplers(run)  # fitted before this training, or while it ran
    generate = f"torch-vae generate --model {run} --outdir samples"
    if stale:
        which = " and ".join(stale)
        many = len(stale) > 1
        fit = f"KIND, for KIND {which}" if many else stale[0]
        were = "s of this run were" if many else " of this run was"
        return (f"The {which} sampler{were} fitted to weights it had before the end of this "
                f"training; fit again with torch-vae fit-sampler --model {run} --sampler {fit}, "
                f"then {generate}")  # fmt: skip
    if latent_kind == "discrete":
        return f"Next: torch-vae fit-sampler --model {run} --sampler transformer, then {generate}"
    return f"Next: {generate}"
