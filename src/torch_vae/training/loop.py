"""The training loop: epochs of optimizer steps, a test evaluation and a checkpoint after each.

``run_plan(plan, ...)`` runs a ``plan.RunPlan``: a new run, or one resumed from its saved state
exactly as if it had never stopped. SIGINT and SIGTERM save the current state before stopping;
a non-finite loss or weights stop training without touching the last good checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..analysis import figures
from ..analysis.pictures import N_PICTURE, epoch_picture, picture_rows
from ..data.cache import default_data_dir
from ..errors import TorchVaeError, TrainingInterrupted, describe_os_error
from ..evaluation.likelihood import test_metrics
from ..io.files import atomic_path, remove_stale_temporaries
from ..io.png import save_png
from ..io.weights import CHECKPOINTS_DIR, WEIGHTS_NAME
from ..models import VAE, save_model, training_memory
from ..models.upsampling import check_native_size
from ..runtime.device import available_memory, to_float
from ..runtime.precision import Precision, resolve_precision
from .batches import batch_source
from .compile import make_optimizer, maybe_compile
from .distributed import Distributed, is_collective_error, wrap
from .loggers import EPOCH_PICTURE, Loggers, epoch_scalars, logger_names, open_loggers, run_params
from .plan import RunData, RunPlan, folder_contents, folder_names, initial_weights
from .rundir import (
    append_metrics,
    check_new_run_dir,
    read_metrics,
    trim_metrics,
    write_run_config,
)
from .state import (
    STATE_NAME,
    EpochProgress,
    all_finite,
    restore_train_state,
    save_train_state,
)

log = logging.getLogger(__name__)
# Steps between two reads of the losses from the device. Reading waits for the device to finish
# (a host sync), so the losses stay there in between; the non-finite check, the progress bar and,
# under torchrun, the stop signal follow this rhythm.
LOG_EVERY = 10


class StopOnSignal:
    """While active (in the main thread), SIGINT, SIGTERM and SIGHUP (the terminal closed) only
    set ``signum``: the training loop then saves its state at the end of the current step and
    stops. A second signal only says so (the save comes within a step); a third stops at once
    (KeyboardInterrupt), except while files are being saved (``saving``): then right after
    them. Signals in a burst (``REPEAT_SECONDS``) count as one. Every file is written
    atomically, so a stop at once too leaves the last checkpoint intact."""

    SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")
    FORCE_AT = 3  # the signal that stops at once
    # A process of a job (torchrun, --nproc_per_node) gets a Ctrl-C twice: from the terminal,
    # as all of its process group, and passed on by the launcher a moment later. The second
    # within this many seconds is that echo, not another Ctrl-C.
    ECHO_SECONDS = 1.0
    # Outside a job, a signal within this many seconds of the last one counted is the same
    # Ctrl-C (the key hammered or held), so that a burst saves the state rather than forcing
    # a stop that saves nothing.
    REPEAT_SECONDS = 0.5

    def __init__(self) -> None:
        self.signum: int | None = None
        self.count = 0
        self._last = -math.inf  # time.monotonic() of the last signal counted
        self._in_job = bool(os.environ.get("WORLD_SIZE"))
        self._saving = 0
        self._deferred = False
        self._old: dict[int, Any] = {}

    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame) -> None:
        now = time.monotonic()
        if self._in_job:
            if now - self._last < self.ECHO_SECONDS:
                return  # the launcher passing on the signal this process already got
            self._last = now
        else:  # a burst lasts as long as its signals come within REPEAT_SECONDS of each other
            burst, self._last = now - self._last < self.REPEAT_SECONDS, now
            if burst:
                return
        self.count += 1
        if self.signum is None:
            self.signum = signum
        elif self.count < self.FORCE_AT:
            print("torch-vae: saving the training state at the end of this step, then "
                  "stopping; signal again to stop at once without saving it",
                  file=sys.stderr, flush=True)  # fmt: skip
        elif self._saving:
            self._deferred = True  # the files being written now are finished first
        else:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def saving(self) -> Iterator[None]:
        """Files written inside are finished before a signal stops the process at once."""
        self._saving += 1
        try:
            yield
        finally:
            self._saving -= 1
            if not self._saving and self._deferred:
                self._deferred = False
                raise KeyboardInterrupt

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                sig = getattr(signal, name, None)
                # one the process was started ignoring (nohup, `&` in a script) stays ignored
                if sig is not None and signal.getsignal(sig) is not signal.SIG_IGN:
                    self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, kind, exc, tb) -> None:
        # a process that lost another of its job ends now, after its last line: the launcher's
        # signal to end (its handler raises wherever the process is) is not needed for that
        ending = isinstance(exc, ProcessLost)
        for sig, handler in self._old.items():
            signal.signal(sig, signal.SIG_IGN if ending else handler)


@dataclass
class Loop:
    """What a training run holds while it runs; ``step`` counts optimizer steps so far."""

    plan: RunPlan
    model: VAE  # owns the weights; ``forward`` may wrap it (DDP, torch.compile)
    forward: torch.nn.Module
    opt: torch.optim.Optimizer
    amp: Precision
    gen: torch.Generator  # batch order
    fixed_z: torch.Tensor  # the latents of every epoch picture's samples
    device: torch.device
    dist: Distributed
    progress: bool
    train_images: torch.Tensor  # the training split's images (N, H, W, C), all of them
    test_images: torch.Tensor  # what each epoch is measured on (the validation split's)
    steps_per_epoch: int
    total_steps: int
    step: int = 0
    stop: StopOnSignal | None = None
    fetch: Callable[[torch.Tensor], torch.Tensor] | None = None  # indices -> uint8 batch
    rows: torch.Tensor | None = None  # the rows of train_images trained on (None: all)
    eval_prefix: str = "test"  # the metrics' name for what each epoch is measured on
    # a conditional model's classes of train_images (all of them) and of test_images
    train_labels: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None
    loggers: Loggers = dataclasses.field(default_factory=Loggers)  # --logger (rank 0's only)
    # the steps (step, images, losses) whose losses are still on the device, not yet read
    unread: list[tuple[int, int, torch.Tensor]] = dataclasses.field(default_factory=list)
    saved_step: int = -1  # the step of the training state last saved (ckpt.pt) here
    # under a job: the whole job's loss sums and images of the epoch a resume continues, as
    # saved (before this process's steps), and the buffers (batch-norm statistics) as they were
    # before the step in progress (None: no step in progress), for a save without the others
    carried: tuple[dict[str, float], int] | None = None
    step_buffers: list[torch.Tensor] | None = None

    def labels(self, idx: torch.Tensor) -> torch.Tensor | None:
        """The classes of the training images ``idx`` (indices as ``fetch`` takes them)."""
        if self.train_labels is None:
            return None
        rows = self.rows[idx] if self.rows is not None else idx
        return self.train_labels[rows].to(self.device)

    @property
    def cfg(self):
        return self.plan.train

    @property
    def keys(self) -> tuple[str, ...]:
        """The losses summed per epoch: "loss" and the model's ``objective_terms``."""
        return ("loss", *self.model.objective_terms)

    @property
    def n_train(self) -> int:
        return len(self.rows) if self.rows is not None else len(self.train_images)


def run_plan(
    plan: RunPlan,
    train_images: torch.Tensor | RunData,
    test_images: torch.Tensor | None = None,
    device: torch.device | None = None,
    progress: bool = True,
    dist: Distributed | None = None,
) -> VAE:
    """``train_images``: a ``RunData``, or the training images alone (then ``test_images``
    are what every epoch is measured on, as "test"). Train on the uint8 images (N, H, W, C)
    ``data.train`` (their ``data.rows`` only, if given: the training split without the
    validation images) as ``plan`` says, measuring each epoch on ``data.eval`` (recorded as
    ``<data.prefix>_loss``...), a conditional model given the labels ``data.train_labels``
    and ``data.eval_labels``, writing into ``plan.run_dir``: config.json, model.safetensors
    (latest), checkpoints/epoch_NNN.safetensors, ckpt.pt (training state), metrics.jsonl and
    images/epoch_NNN.png, and reporting to the loggers of ``--logger`` (loggers.py). Under a
    distributed job (``dist``), only rank 0 writes files, logs and shows progress."""
    dist = dist or Distributed()
    # --precision auto becomes the precision it chose here, so config.json (and a resume) has it
    precision = resolve_precision(plan.train.precision, device)
    if plan.train.precision == "auto" and plan.resume is None:
        why = "computes" if precision == "bf16" else "does not compute"
        log.info("--precision auto: %s (%s %s bfloat16 natively)", precision, device, why)
    plan = dataclasses.replace(plan, train=dataclasses.replace(plan.train, precision=precision))
    # checked before the run folder is created, so a bad flag leaves nothing behind
    if plan.train.batchsize < dist.world:
        raise TorchVaeError(
            f"--batchsize {plan.train.batchsize} is the job's batch, split among its "
            f"{dist.world} processes: each needs at least one image; pass --batchsize "
            f"{dist.world} or more"
        )
    data = train_images
    if not isinstance(data, RunData):
        data = RunData(train_images, None, test_images, "test")
    train_images, split = data.train, data.split
    if plan.model.native_size:
        check_native_size(train_images, plan.model.native_size)
    start = initial_weights(plan) if plan.resume is None and plan.train.init_from else None
    if dist.is_main:
        if plan.resume is None:
            check_new_run_dir(plan.run_dir)
            plan.run_dir.mkdir(parents=True, exist_ok=True)
            _write_config(plan, split)
        log.info("run folder: %s", plan.run_dir)
    loop = _start(plan, train_images, data.eval, device, progress and dist.is_main, dist, start,
                  data.rows)  # fmt: skip
    loop.eval_prefix = data.prefix
    loop.train_labels, loop.test_labels = data.train_labels, data.eval_labels
    first_epoch, partial = 1, None
    if plan.resume is not None:
        first_epoch, partial = _restore(loop, plan.resume)
        if dist.is_main:  # its extended --epochs, once the state is known to fit the data
            _write_config(plan, split)
    names = logger_names(plan.train.logger) if dist.is_main else ()
    with open_loggers(names, plan.run_dir, plan.train.mlflow_uri, loop.step) as loop.loggers:
        loop.loggers.params(run_params(plan.model, plan.train))
        with StopOnSignal() as loop.stop:
            _train_epochs(loop, first_epoch, partial)
        loop.loggers.artifact(plan.run_dir / WEIGHTS_NAME)
    return loop.model


def _write_config(plan: RunPlan, split: dict | None) -> None:
    """The run's config.json, as ``plan`` says (``split``: the validation split's record)."""
    dataset = plan.train.dataset
    write_run_config(plan.run_dir, plan.model, plan.train, split, folder_contents(dataset),
                     plan.data_dir or default_data_dir(), folder_names(dataset))  # fmt: skip


def _train_epochs(loop: Loop, first_epoch: int, partial: EpochProgress | None) -> None:
    """The epochs from ``first_epoch`` on (the first continuing ``partial``, if given)."""
    cfg = loop.cfg
    for epoch in range(first_epoch, cfg.epochs + 1):
        if partial is None:
            loop.carried = None
            ep = EpochProgress(
                torch.randperm(loop.n_train, generator=loop.gen),
                totals=dict.fromkeys(loop.keys, 0.0),
            )
        else:  # continue the epoch a signal interrupted
            ep, partial = partial, None
        try:
            train_one_epoch(loop, epoch, ep)
            end_epoch(loop, epoch, ep)
        except OSError as exc:  # a full disk, a folder made read-only: what there is to go on
            raise TorchVaeError(f"{describe_os_error(exc)}; {_after_failed_write(loop)}") from None
        except Exception as exc:
            if loop.dist.enabled and is_collective_error(exc):  # another process ended
                raise _save_alone(loop, epoch, ep) from exc
            raise
        if cfg.max_steps and loop.step >= cfg.max_steps:
            break


def _start(plan, train_images, test_images, device, progress, dist, start, rows=None) -> Loop:
    """Build the model, optimizer and generators, in an order fixed for reproducibility."""
    cfg = plan.train
    torch.manual_seed(cfg.seed)
    model = VAE(plan.model)
    if start is not None:
        model.load_state_dict(start)
    model = model.to(device, memory_format=torch.channels_last)
    forward = maybe_compile(wrap(model, dist, device), cfg.compile)
    amp = Precision(device, cfg.precision, train=True)
    opt = make_optimizer(model, cfg.lr, cfg.weight_decay, device)
    gen = torch.Generator().manual_seed(cfg.seed)
    fixed_z = model.prior_sample(N_PICTURE, gen, device, torch.float32)
    n_train = len(rows) if rows is not None else len(train_images)
    # an epoch's last, partial batch is left out where it has fewer images than processes
    # (one would have none); it stays in a run of one process
    steps_per_epoch = n_train // cfg.batchsize + (n_train % cfg.batchsize >= dist.world)
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    steps = "step" if steps_per_epoch == 1 else "steps"
    log.info("training %s parameters on %s images: %d %s per epoch, %d in all, on %s in %s",
             f"{model.num_parameters():,}", f"{n_train:,}", steps_per_epoch, steps, total_steps,
             device, cfg.precision)  # fmt: skip
    return Loop(plan, model, forward, opt, amp, gen, fixed_z, device, dist, progress,
                train_images, test_images, steps_per_epoch, total_steps,
                fetch=batch_source(train_images, device, cfg.batchsize, rows),
                rows=rows)  # fmt: skip


def check_memory(plan: RunPlan, device: torch.device) -> None:
    """Refuse, before allocating, a model that cannot be trained in the memory there is."""
    need, free = training_memory(plan.model, plan.train.batchsize), available_memory(device)
    if free is not None and need > free:
        raise TorchVaeError(
            f"training this model needs about {need / 2**30:.1f} GiB of memory on {device}, but "
            f"{free / 2**30:.1f} GiB are free; use a smaller --max_filters, --image_size, "
            "--latent_dims or --batchsize"
        )


def _restore(loop: Loop, state: dict[str, Any]) -> tuple[int, EpochProgress | None]:
    """Load a saved training state into the loop; the first epoch to run and its progress."""
    run_dir, n = loop.plan.run_dir, loop.n_train
    restore_train_state(state, run_dir / STATE_NAME, loop.model, loop.opt, loop.gen, n,
                        loop.steps_per_epoch, scaler=loop.amp.scaler)  # fmt: skip
    loop.step = loop.saved_step = state["step"]
    if loop.dist.is_main:
        if remove_stale_temporaries(run_dir, recursive=True):
            log.info("removed temporary files left by the interrupted run")
        cut = state["partial"] and (run_dir / CHECKPOINTS_DIR / f"epoch_{state['epoch'] + 1:03d}"
                                    ".safetensors").is_file()  # fmt: skip
        # an epoch cut short by --max_steps keeps its line until the epoch's end replaces it
        trim_metrics(run_dir, state["epoch"] + bool(cut))
        log.info("resuming %s at epoch %d, step %d", run_dir, state["epoch"] + 1, loop.step)
        if cut:
            log.info("epoch %d was cut short by --max_steps: its checkpoint, picture and metrics "
                     "line are replaced when it ends", state["epoch"] + 1)  # fmt: skip
        _warn_changed(state.get("threads"), torch.get_num_threads(), "threads", "--threads",
                      loop.device.type == "cpu")  # fmt: skip
        _warn_changed(state.get("processes"), loop.dist.world, "processes", "--nproc_per_node")
    if not state["partial"]:
        return state["epoch"] + 1, None
    partial = EpochProgress.from_state(state["partial"])
    loop.carried = (dict(partial.totals), partial.seen)
    if loop.dist.enabled and not loop.dist.is_main:  # the saved sums are the whole job's
        partial.totals, partial.seen = dict.fromkeys(loop.keys, 0.0), 0
    return state["epoch"] + 1, partial


def _warn_changed(saved: int | None, now: int, what: str, flag: str, matters: bool = True):
    """A warning where a resumed run goes on with another number of ``what`` (threads,
    processes) than it trained with (``saved``; None: an older state, unknown)."""
    if matters and saved is not None and saved != now:
        log.warning("the run trained with %d %s and goes on with %d: its numbers differ from "
                    "here on from a run that kept %d (%s %d for the same numbers)", saved, what,
                    now, saved, flag, saved)  # fmt: skip


def train_one_epoch(loop: Loop, epoch: int, ep: EpochProgress) -> None:
    """The optimizer steps of one epoch, from ``ep.batch`` on; ``ep`` is updated as it goes.
    The losses stay on the device until ``_read_losses`` (every ``LOG_EVERY``-th step and at the
    end), so the host never waits for the device in between."""
    loop.model.train()
    cfg, t0, spent, seen0 = loop.cfg, time.perf_counter(), ep.seconds, ep.seen
    # --max_steps may end the run before --epochs: the bar counts to the epoch it ends in
    per_epoch = loop.steps_per_epoch
    last = min(cfg.epochs, -(-loop.total_steps // per_epoch))
    steps = min(per_epoch, max(loop.total_steps - (epoch - 1) * per_epoch, ep.batch))
    bar = tqdm(range(ep.batch, per_epoch), desc=f"epoch {epoch}/{last}", unit="step",
               initial=ep.batch, total=steps, disable=not loop.progress, dynamic_ncols=True,
               mininterval=0.5)  # fmt: skip
    pending = loop.unread  # (step, images, losses) not read yet
    pending.clear()
    stop = False  # under torchrun: a process was asked to stop (known at the last read)
    with bar:
        for i in bar:
            ep.seconds = spent + time.perf_counter() - t0
            if stop or (not loop.dist.enabled and loop.stop.requested()):
                _read_losses(loop, epoch, ep, pending)
                raise _save_and_stop(loop, epoch, ep)
            if cfg.max_steps and loop.step >= cfg.max_steps:
                break
            idx = loop.dist.shard(ep.perm[i * cfg.batchsize : (i + 1) * cfg.batchsize])
            pending.append((loop.step + 1, len(idx), _step(loop, idx)))
            ep.batch, ep.seen = i + 1, ep.seen + len(idx)
            # at every LOG_EVERY-th step of the run (also after a resume, or in a later
            # epoch), and at the epoch's last step
            if loop.step % LOG_EVERY == 0 or i == steps - 1:
                stop = _read_losses(loop, epoch, ep, pending)
                if loop.progress:
                    # this call's images of the whole job (each process sees its share of
                    # a batch; a resumed epoch's images before are the job's, on rank 0)
                    rate = (ep.seen - seen0) * loop.dist.world / (time.perf_counter() - t0)
                    loss = ep.totals["loss"] / max(ep.seen, 1)
                    bar.set_postfix(loss=f"{loss:.2f}", img_s=f"{rate:.0f}")
    _read_losses(loop, epoch, ep, pending)  # stopped by --max_steps
    ep.seconds = spent + time.perf_counter() - t0


def _step(loop: Loop, idx: torch.Tensor) -> torch.Tensor:
    """One optimizer step on the training images ``idx``; the batch's losses per image
    (``loop.keys``), left on the device (reading them would make the host wait for the step)."""
    cfg = loop.cfg
    x, y = to_float(loop.fetch(idx), loop.device), loop.labels(idx)
    for group in loop.opt.param_groups:
        group["lr"] = cfg.lr_at(loop.step, loop.total_steps)
    if loop.dist.enabled:  # the same batches everywhere, but each process its own noise
        loop.dist.seed_noise(cfg.seed, loop.step, loop.device)
        loop.step_buffers = [b.detach().clone() for b in loop.model.buffers()]
    with loop.amp.autocast():
        out = loop.forward(x, condition=y)
    beta = cfg.beta_at(loop.step, loop.steps_per_epoch)
    losses = loop.model.objective(out, x, beta, cfg.recon_loss)  # in fp32
    loop.opt.zero_grad(set_to_none=True)
    loop.amp.backward(losses["loss"])
    loop.dist.average_gradients(loop.model)  # under torchrun on the CPU (DDP's on GPUs)
    loop.amp.step(loop.opt)
    loop.step, loop.step_buffers = loop.step + 1, None
    return torch.stack([losses[k].detach() for k in loop.keys])


def _read_losses(
    loop: Loop, epoch: int, ep: EpochProgress, pending: list[tuple[int, int, torch.Tensor]]
) -> bool:
    """Read the ``pending`` steps' losses from the device at once (one host sync) and add them
    to ``ep.totals``; stop at the first non-finite loss, naming its step. Returns whether a
    signal asked any process to stop: under torchrun one all-reduce carries both checks, and
    every process calls this at the same steps."""
    if not pending:
        return False
    values = torch.stack([losses for _, _, losses in pending]).tolist()
    steps = [step for step, _, _ in pending]
    bad = next((s for s, v in zip(steps, values, strict=True) if not math.isfinite(v[0])), None)
    stop = loop.stop.requested()
    if loop.dist.enabled:  # the first bad step of any process: -max(-step)
        flags = loop.dist.max([float(stop), -math.inf if bad is None else -float(bad)])
        stop, bad = flags[0] > 0, None if flags[1] == -math.inf else int(-flags[1])
    if bad is not None:
        loss = values[steps.index(bad)][0]
        what = f"the loss became {loss}" if not math.isfinite(loss) else (
            "the loss became non-finite on another process")  # fmt: skip
        raise TorchVaeError(
            f"{what} at epoch {epoch}, step {bad}; training stopped and {_kept(loop)}. "
            "Try a lower --lr"
        )
    for (_, n, _), row in zip(pending, values, strict=True):
        for k, v in zip(loop.keys, row, strict=True):
            ep.totals[k] += v * n
    if loop.loggers:
        _log_steps(loop, pending, values)
    pending.clear()
    return stop


def _log_steps(loop: Loop, pending: list[tuple[int, int, torch.Tensor]], values: list) -> None:
    """Log the losses per image of the steps just read (their mean, weighted by the images of
    each step), and the learning rate and KL weight of the last of them, at that step."""
    images = sum(n for _, n, _ in pending)
    sums = [sum(row[i] * n for (_, n, _), row in zip(pending, values, strict=True))
            for i in range(len(loop.keys))]  # fmt: skip
    scalars = {f"step/{k}": v / max(images, 1) for k, v in zip(loop.keys, sums, strict=True)}
    step, cfg = pending[-1][0], loop.cfg  # the step's count: it ran at lr_at(step - 1)
    scalars["step/lr"] = cfg.lr_at(step - 1, loop.total_steps)
    scalars["step/beta"] = cfg.beta_at(step - 1, loop.steps_per_epoch)
    loop.loggers.scalars(step, scalars)


def end_epoch(loop: Loop, epoch: int, ep: EpochProgress) -> None:
    """Evaluate on the test split, check the weights, and save the epoch (rank 0)."""
    cfg, dist, model = loop.cfg, loop.dist, loop.model
    totals, seen = ep.totals, ep.seen
    if dist.enabled:
        dist.average_buffers(model)
        totals, seen = _job_totals(totals, seen, dist, loop.keys)
    eval_images = dist.shard(loop.test_images)
    labels = dist.shard(loop.test_labels) if loop.test_labels is not None else None
    batch = max(cfg.batchsize, 256)
    # batch norm folded, at the training precision: 3-6x faster than fp32, within 0.01 in bf16
    with loop.amp.autocast():
        test = test_metrics(model.inference_copy(), eval_images, loop.device, batch,
                            cfg.recon_loss, cfg.beta, seed=cfg.seed,
                            stop=loop.stop.requested, labels=labels)  # fmt: skip
    if dist.enabled:
        test = _reduce_test(test, len(eval_images), dist, cfg.beta, model)
    if test is None:
        raise _save_and_stop(loop, epoch, ep)
    _check_finite(loop, epoch)
    dist.check_replicas(model, f"after epoch {epoch}")
    record = {
        "epoch": epoch,
        "step": loop.step,
        **{f"train_{k}": v / max(seen, 1) for k, v in totals.items()},
        **{f"{loop.eval_prefix}_{k}": v for k, v in test.items()},
        "train_images": seen,
        "train_img_per_s": seen / ep.seconds,
        "epoch_seconds": ep.seconds,
    }
    if dist.is_main:
        # an epoch that --max_steps cut short is saved as unfinished, so that resuming with a
        # larger --max_steps continues it as a run started with that value would have
        cut = ep.batch < loop.steps_per_epoch
        partial = EpochProgress(ep.perm, ep.batch, seen, ep.seconds, totals) if cut else None
        save_checkpoint(loop, epoch, record, partial)
    parts = ", ".join(f"{k} {test[k]:.2f}" for k in model.objective_terms)
    log.info("epoch %d: train loss %.2f, %s loss %.2f (%s) per image, %.0f img/s", epoch,
             record["train_loss"], loop.eval_prefix, test["loss"], parts,
             record["train_img_per_s"])  # fmt: skip
    _say_early(loop, record["train_loss"], test["loss"])
    if dist.any(loop.stop.requested()):  # arrived while the epoch was evaluated and saved
        raise _interrupted(loop, epoch)


EARLY_STEPS = 300  # a run this short may still have batch norms that lag its weights


def _say_early(loop: Loop, train: float, held_out: float) -> None:
    """A log line where a run of few steps measures far worse on held-out images than in
    training: eval mode's batch norms use running statistics that lag weights this young
    (their pictures' reconstructions can come out dark), which a longer run outgrows."""
    # a ratio of positive losses only (the gaussian reconstruction loss may be negative)
    if loop.step < EARLY_STEPS and 0 < train and held_out > 1.5 * train:
        log.info("after only %d steps the %s loss is %.1fx the training loss: the batch norms' "
                 "running statistics, which evaluation and pictures use, still lag the weights; "
                 "a few hundred steps more and they catch up", loop.step, loop.eval_prefix,
                 held_out / train)  # fmt: skip


def save_checkpoint(
    loop: Loop, epoch: int, record: dict[str, Any], partial: EpochProgress | None = None
) -> None:
    """Write this epoch's weights, metrics, picture and, last, the training state: ckpt.pt is
    the commit point, so a crash before it only means the epoch is trained again on resume.
    ``partial``: the epoch stopped early (--max_steps) and this is how far it got."""
    run_dir, model, dataset = loop.plan.run_dir, loop.model, loop.cfg.dataset
    shown = picture_rows(len(loop.test_images))
    labels = loop.test_labels[shown] if loop.test_labels is not None else None
    picture = epoch_picture(model, loop.fixed_z, loop.test_images[shown], loop.device,
                            labels, f"epoch {epoch}, step {loop.step}")  # fmt: skip
    with _saving(loop):
        save_model(model, run_dir / CHECKPOINTS_DIR / f"epoch_{epoch:03d}.safetensors", dataset)
        save_model(model, run_dir / WEIGHTS_NAME, dataset)
        append_metrics(run_dir, record)
        with atomic_path(run_dir / "images" / f"epoch_{epoch:03d}.png") as tmp:
            save_png(picture, tmp)
        _save_state(loop, epoch - 1 if partial else epoch, partial)
    loop.saved_step = loop.step
    # images/curves.png, when due and after the run's last epoch; never raises
    write_curves(run_dir, record, last=loop.step >= loop.total_steps)  # --max_steps' cut too
    loop.loggers.scalars(record["step"], epoch_scalars(record))
    loop.loggers.image(EPOCH_PICTURE, record["step"], picture)


def _saving(loop: Loop) -> contextlib.AbstractContextManager:
    return loop.stop.saving() if loop.stop is not None else contextlib.nullcontext()


def _save_state(
    loop: Loop, epochs_done: int, partial: EpochProgress | None = None, evaluated: bool = True
) -> None:
    save_train_state(loop.plan.run_dir, model=loop.model, opt=loop.opt, gen=loop.gen,
                     device=loop.device, epoch=epochs_done, step=loop.step,
                     n_train=loop.n_train, partial=partial,
                     scaler=loop.amp.scaler, evaluated=evaluated,
                     processes=loop.dist.world)  # fmt: skip


def _save_and_stop(loop: Loop, epoch: int, ep: EpochProgress) -> TrainingInterrupted:
    """Save the state in the middle of ``epoch`` and return the error that ends training."""
    _check_finite(loop, epoch)
    if loop.dist.enabled:  # the whole job's totals and running statistics; rank 0 writes
        loop.dist.average_buffers(loop.model)
        totals, seen = _job_totals(ep.totals, ep.seen, loop.dist, loop.keys)
        ep = EpochProgress(ep.perm, ep.batch, seen, ep.seconds, totals)
    if loop.dist.is_main:
        with _saving(loop):
            _save_state(loop, epochs_done=epoch - 1, partial=ep, evaluated=False)
        loop.saved_step = loop.step
    loop.dist.barrier()
    return _interrupted(loop, epoch)


class ProcessLost(TrainingInterrupted):
    """Another process of the job ended (killed, out of memory, its own error) and this one
    saved the training state alone: the job's collectives (a barrier) are gone."""


def _save_alone(loop: Loop, epoch: int, ep: EpochProgress) -> ProcessLost:
    """A collective failed: another process of the job ended. This process's weights are the
    job's (every process has the same) up to its last step: save them, with its share of the
    epoch's losses standing for the job's and its own batch-norm statistics, so that resuming
    loses none of the steps done. Every surviving process writes the same step (each file
    atomically); none where the state of this step is saved already."""
    rows = [losses.tolist() for _, _, losses in loop.unread]
    if all(math.isfinite(row[0]) for row in rows):
        for (_, n, _), row in zip(loop.unread, rows, strict=True):
            for k, v in zip(loop.keys, row, strict=True):
                ep.totals[k] += v * n
    else:  # the job stops at a bad loss anyway: the images of its unread steps count for none
        ep.seen -= sum(n for _, n, _ in loop.unread)
    loop.unread.clear()
    if loop.step_buffers is not None:  # the step in progress is done again on resume
        for b, before in zip(loop.model.buffers(), loop.step_buffers, strict=True):
            b.copy_(before)
    if loop.saved_step != loop.step:
        _check_finite(loop, epoch)
        job = _job_progress(loop, ep)
        with _saving(loop):
            _save_state(loop, epochs_done=epoch - 1, partial=job, evaluated=False)
        loop.saved_step = loop.step
    return ProcessLost(
        f"the job lost a process at step {loop.step} (epoch {epoch}); the training state is "
        f"saved, continue with: {_resume_hint(loop)}",
        exit_code=1,
    )


def _after_failed_write(loop: Loop) -> str:
    """What a run whose file could not be written can go on from: its last saved state."""
    if loop.saved_step < 0 or not (loop.plan.run_dir / STATE_NAME).is_file():
        return "no training state was saved yet: start the run again where there is room"
    return (f"the training state of step {loop.saved_step} is saved; once the file can be "
            f"written, continue with: {_resume_hint(loop)}")  # fmt: skip


def _job_progress(loop: Loop, ep: EpochProgress) -> EpochProgress:
    """``ep`` as the whole job's, from this process's part of it alone: the images of the
    job's steps so far, and its loss sums (those a resume carried, as saved, and this
    process's since, scaled from its images to the job's)."""
    carried, carried_seen = loop.carried or (dict.fromkeys(ep.totals, 0.0), 0)
    own = dict(ep.totals)
    own_seen = ep.seen
    if loop.dist.is_main:  # its sums began from the carried ones (the others' from 0)
        own = {k: v - carried.get(k, 0.0) for k, v in own.items()}
        own_seen -= carried_seen
    seen = min(ep.batch * loop.cfg.batchsize, loop.n_train)  # the job's images so far
    share = (seen - carried_seen) / max(own_seen, 1)
    totals = {k: carried.get(k, 0.0) + v * share for k, v in own.items()}
    return EpochProgress(ep.perm, ep.batch, seen, ep.seconds, totals)


def _job_totals(
    totals: dict[str, float], seen: int, dist: Distributed, keys: tuple[str, ...]
) -> tuple[dict[str, float], int]:
    """The training-loss sums (of ``keys``) and image count of every process together."""
    sums = dist.sum([totals[k] for k in keys] + [seen])
    return dict(zip(keys, sums[:-1], strict=True)), int(sums[-1])


def _reduce_test(
    test: dict[str, float] | None, n_local: int, dist: Distributed, beta: float, model: VAE
) -> dict[str, float] | None:
    """Per-image test metrics of the whole test set from every process's shard; None on every
    process if any was stopped by a signal."""
    if dist.any(test is None):
        return None
    keys = (*model.objective_terms, "mse")
    sums = dist.sum([test[k] * n_local for k in keys] + [n_local])
    m = {k: v / max(sums[-1], 1) for k, v in zip(keys, sums[:-1], strict=False)}
    m["loss"] = model.loss_of(m, beta)
    return m


def _kept(loop: Loop) -> str:
    run_dir = loop.plan.run_dir
    if (run_dir / STATE_NAME).exists():
        return f"the last good checkpoint in {run_dir} was kept"
    return f"no checkpoint was written (no epoch had completed), so {run_dir} is removed"


def _check_finite(loop: Loop, epoch: int) -> None:
    """Never save broken weights over good ones."""
    if not all_finite(loop.model):
        raise TorchVaeError(
            f"the weights became non-finite (NaN or infinite) at epoch {epoch}, by step "
            f"{loop.step}; training stopped and {_kept(loop)}. Try a lower --lr"
        )


def _interrupted(loop: Loop, epoch: int) -> TrainingInterrupted:
    signum = loop.stop.signum if loop.stop else None
    name = signal.Signals(signum).name if signum else "a signal"
    return TrainingInterrupted(
        f"stopped by {name} at step {loop.step} (epoch {epoch}); the training state is saved, "
        f"continue with: {_resume_hint(loop)}",
        exit_code=128 + (signum or 2),
    )


def _resume_hint(loop: Loop) -> str:
    """The command that continues the run as it ran: as many threads (and processes) as now,
    from the same data folder."""
    run, threads = loop.plan.run_dir, torch.get_num_threads()
    data = f" --data_dir {loop.plan.data_dir}" if loop.plan.data_dir is not None else ""
    if not loop.dist.enabled:
        return (f"torch-vae train --resume {run}{data} --threads {threads} (as many threads as "
                "now: the same numbers to the bit)")  # fmt: skip
    n = loop.dist.world
    ours = f"torch-vae train --resume {run}{data} --nproc_per_node {n} --threads {threads}"
    if os.environ.get("TORCH_VAE_JOB") == "nproc_per_node":  # train --nproc_per_node started it
        return f"{ours} (as many processes and threads as now)"
    torchrun = f"the torchrun command of this job with --resume {run} instead of the run's flags"
    if os.environ.get("LOCAL_WORLD_SIZE") != str(n):  # several machines
        return f"{torchrun} (as many processes and threads as now)"
    return f"{ours}, or {torchrun} (as many processes and threads as now)"


# Training draws its curves only as often as keeps the drawing under this share of its time.
CURVES_SHARE = 0.05
_drawing = {"seconds": 0.3}  # what the last drawing took here (a guess until the first)


def curves_due(epoch: int, epoch_seconds: float) -> bool:
    """Whether training draws its curves after ``epoch``, which took ``epoch_seconds``: from
    the second epoch on (one epoch is a point, not a curve, and a one-epoch run is spared
    matplotlib's import), after every epoch that lasts 20 times a drawing (about 6 s), else
    after every k-th epoch, so that the drawing takes at most ``CURVES_SHARE`` of the time (a
    test's tiny runs: never)."""
    every = math.ceil(_drawing["seconds"] / CURVES_SHARE / max(epoch_seconds, 1e-3))
    return epoch >= 2 and epoch % max(every, 1) == 0


def write_curves(run_dir: Path, record: dict, last: bool = False) -> None:
    """``run_dir/images/curves.png`` from its metrics.jsonl, after an epoch of training whose
    metrics are ``record``, when ``curves_due``, and after the run's ``last`` epoch where an
    earlier one drew them (so that they end where the run does). A picture is not worth a run:
    any failure is logged as a warning, never raised."""
    seconds = record.get("epoch_seconds")
    out = run_dir / "images" / "curves.png"
    due = curves_due(int(record.get("epoch", 0)), seconds if _is_finite(seconds) else 0.0)
    if not (due or last and out.is_file()):
        return
    try:
        start = time.perf_counter()
        figures.plot_curves([read_metrics(run_dir)], [run_dir.name], out)
        _drawing["seconds"] = time.perf_counter() - start
    except Exception as exc:  # matplotlib missing or broken, a full disk, a damaged file...
        log.warning("could not draw %s (%s: %s); training goes on",
                    out, type(exc).__name__, exc)  # fmt: skip


def _is_finite(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)
