"""Data-parallel training with ``torch.distributed`` (DistributedDataParallel on GPUs).

Launched by ``torchrun``, which sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT
for every process: ``torchrun --nproc_per_node N -m torch_vae train ...``. Without those
variables (or with WORLD_SIZE=1) training runs in one process, exactly as before.

Conventions:

- ``--batchsize`` is the global batch: every optimizer step consumes ``batchsize`` images in
  total, ``batchsize / WORLD_SIZE`` on each process. The same flags therefore describe the same
  training whatever the number of processes; the learning rate needs no change. To use more
  devices for a larger batch, raise ``--batchsize`` and scale ``--lr`` with it (the linear
  scaling rule), with a KL warm-up or a few epochs of patience at the start.
- Every process draws the same seeded permutation of the training set each epoch and takes its
  own interleaved share of each global batch, so the shards are disjoint and cover the epoch.
- Gradients are averaged over the processes before every optimizer step: on GPUs by DDP, on
  the CPU by one all-reduce of all of them, flattened, after the backward pass
  (``average_gradients``; DDP's constructor imports torch._dynamo, 70 MB of private memory and
  1.3 s in every process, and on the CPU its overlap of communication with the backward pass
  buys nothing measurable for these models). Batch-norm statistics are those of each process's
  share (SyncBatchNorm is used on GPUs, where PyTorch supports it) and their running averages
  are averaged over the processes at the end of every epoch, so all replicas hold the same
  weights, which is checked.
- Only rank 0 writes files and shows progress; test metrics are computed on shards and summed.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import inspect
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import torch
import torch.distributed as dist

from ..errors import TorchVaeError, first_line

log = logging.getLogger(__name__)


def _minutes(name: str, default: float) -> datetime.timedelta:
    value = os.environ.get(name, str(default))
    try:
        return datetime.timedelta(minutes=float(value))
    except ValueError:
        raise TorchVaeError(f"environment variable {name}={value!r} is not a number") from None


def collective_timeout() -> datetime.timedelta:
    """A collective that waits longer than this means another process died or hangs: fail
    instead of waiting forever (PyTorch's default is 10 to 30 minutes)."""
    return _minutes("TORCH_VAE_DIST_TIMEOUT_MIN", 5)


def prepare_timeout() -> datetime.timedelta:
    """How long the other processes wait for rank 0 to prepare the data (download, decode)."""
    return _minutes("TORCH_VAE_PREPARE_TIMEOUT_MIN", 24 * 60)


# How often a process waiting for rank 0's data preparation asks whether it is done.
POLL_SECONDS = 0.2


@dataclass(frozen=True)
class Distributed:
    """Where this process stands in the job; ``world == 1`` means no distribution at all."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, idx: torch.Tensor) -> torch.Tensor:
        """This process's share of a global batch (or of any index list)."""
        return idx[self.rank :: self.world] if self.enabled else idx

    def barrier(self) -> None:
        if not self.enabled:
            return
        if _nccl():  # NCCL's barrier on this process's own GPU, not one it guesses
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()

    def any(self, flag: bool) -> bool:
        """True on every process if ``flag`` is true on any of them."""
        if not self.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self._device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over the processes."""
        return self._reduce(values, dist.ReduceOp.SUM)

    def max(self, values: list[float]) -> list[float]:
        """Element-wise maximum over the processes."""
        return self._reduce(values, dist.ReduceOp.MAX)

    def _reduce(self, values: list[float], op) -> list[float]:
        if not self.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self._device())
        dist.all_reduce(t, op=op)
        return t.tolist()

    def average_buffers(self, model: torch.nn.Module) -> None:
        """Average the floating-point buffers (batch-norm running statistics) over processes:
        one all-reduce of a flattened copy, so that a collective failing half-way (another
        process ended) leaves every buffer as this process had it, fit to be saved."""
        if not self.enabled:
            return
        bufs = [b for b in model.buffers() if b.is_floating_point()]
        if bufs:
            self._average(bufs)

    def average_gradients(self, model: torch.nn.Module) -> None:
        """Average the gradients over the processes, in place: one all-reduce of them all,
        flattened (every process has the same parameters with gradients). On the CPU only;
        elsewhere ``wrap``'s DDP has averaged them during the backward pass."""
        if not self.enabled:  # the single-process step: nothing to gather
            return
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if grads and grads[0].device.type == "cpu":
            self._average(grads)

    def _average(self, tensors: list[torch.Tensor]) -> None:
        """Each of ``tensors`` set to its mean over the processes: one all-reduce of them all,
        flattened into a copy (written back only once it succeeded)."""
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat)
        flat.div_(self.world)
        offset = 0
        for t in tensors:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()

    def broadcast_weights(self, model: torch.nn.Module) -> None:
        """Give every process rank 0's parameters and buffers (as DDP does when it is built)."""
        if not self.enabled:
            return
        for t in (*model.parameters(), *model.buffers()):
            dist.broadcast(t.data, src=0)

    def check_replicas(self, model: torch.nn.Module, where: str) -> None:
        """Fail loudly if the processes' weights differ (they must be bitwise equal)."""
        if not self.enabled:
            return
        h = hashlib.sha256()
        for name, t in sorted(model.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        mine = torch.tensor(list(h.digest()), dtype=torch.uint8, device=self._device())
        lo, hi = mine.clone(), mine.clone()
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        if not torch.equal(lo, hi):
            raise TorchVaeError(f"the {self.world} processes' weights differ {where}")

    def decide(self, choose: Callable[[], Any]) -> Any:
        """Run ``choose()`` on rank 0 only and give every process its result, or raise its
        ``TorchVaeError`` everywhere."""
        if not self.enabled:
            return choose()
        box: list[Any] = [None]
        if self.is_main:
            try:
                box[0] = ("ok", choose())
            except TorchVaeError as exc:
                box[0] = ("error", str(exc))
        dist.broadcast_object_list(box, src=0)
        kind, value = box[0]
        if kind == "error":
            raise TorchVaeError(value)
        return value

    def first_then_others(self, work: Callable[[], Any]) -> Any:
        """``work()`` on rank 0, then on the others (e.g. build a cache once, then read it).

        Preparing data can take far longer than the collective timeout (CelebA: a download
        and 200k JPEGs to decode), and NCCL's watchdog aborts a process whose collective waits
        that long. So the others wait without a collective: they poll the job's key-value
        store (which torchrun or rank 0 serves) for rank 0's word, for up to
        ``prepare_timeout()``. If rank 0 fails, they stop with a line that says so."""
        if not self.enabled:
            return work()
        key = _next_key("first_then_others")
        store = dist.distributed_c10d._get_default_store()
        if self.is_main:
            try:
                result = work()
            except BaseException as exc:
                with contextlib.suppress(Exception):  # the original error matters more
                    store.set(key, f"error: {first_line(exc, with_type=False)}")
                    # the store may live in this process: let the others read the word
                    # before it goes (a few seconds at most)
                    _wait_for_count(store, f"{key}/read", self.world - 1, ACK_SECONDS)
                raise
            store.set(key, "ok")
            return result
        word = _wait_for(store, key, prepare_timeout())
        if word != "ok":
            with contextlib.suppress(Exception):
                store.add(f"{key}/read", 1)
            raise TorchVaeError(
                f"process {self.rank} of {self.world}: process 0 failed to prepare the data "
                f"({word.removeprefix('error: ')}); its own message says more"
            )
        return work()

    def seed_noise(self, seed: int, step: int, device: torch.device) -> None:
        """Seed the generator that draws this process's reparameterisation noise for ``step``
        (the one of ``device``): different on every rank, and the same for a step however the
        job got there, so a resumed job draws the noise of one never interrupted. Seeding one
        generator takes about a microsecond; ``torch.manual_seed`` seeds every device's, 0.1 ms."""
        value = (seed * 1_000_003 + step * 7919 + self.rank * 104_729) % 2**63
        if device.type == "cuda":
            index = torch.cuda.current_device() if device.index is None else device.index
            torch.cuda.default_generators[index].manual_seed(value)
        elif device.type == "cpu":
            torch.default_generator.manual_seed(value)
        else:
            torch.manual_seed(value)

    def _device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if _nccl() else torch.device("cpu")


def _nccl() -> bool:
    return dist.is_initialized() and dist.get_backend() == "nccl"


_KEYS: list[str] = []


def _next_key(name: str) -> str:
    """A store key for the next wait of this kind: every process makes the same calls in the
    same order, so they agree on it (a torchrun restart starts a new series)."""
    _KEYS.append(name)
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return f"torch_vae/{restart}/{name}/{_KEYS.count(name)}"


ACK_SECONDS = 10.0  # how long a failed rank 0 waits for the others to read its message


def _wait_for_count(store, key: str, count: int, seconds: float) -> None:
    """Wait until ``count`` processes have added 1 at ``key``, for ``seconds`` at most."""
    deadline = time.monotonic() + seconds
    while store.add(key, 0) < count and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)


def _wait_for(store, key: str, timeout: datetime.timedelta) -> str:
    """The value rank 0 sets at ``key``, polled for (no collective, so no collective timeout);
    a store that rank 0 served and took with it when it died fails the poll."""
    deadline = time.monotonic() + timeout.total_seconds()
    while not store.check([key]):
        if time.monotonic() > deadline:
            raise TorchVaeError(
                f"process 0 did not finish preparing the data within "
                f"{timeout.total_seconds() / 60:.0f} minutes; TORCH_VAE_PREPARE_TIMEOUT_MIN "
                "sets the limit"
            )
        time.sleep(POLL_SECONDS)
    return store.get(key).decode()


def from_env() -> Distributed:
    """The job layout that torchrun describes in the environment (none: one process)."""

    def read(name: str, default: int) -> int:
        value = os.environ.get(name)
        if value is None:
            return default
        try:
            return int(value)
        except ValueError:
            raise TorchVaeError(f"environment variable {name}={value!r} is not a number") from None

    world = read("WORLD_SIZE", 1)
    if world <= 1:
        return Distributed()
    rank, local = read("RANK", 0), read("LOCAL_RANK", 0)
    if not 0 <= rank < world:
        raise TorchVaeError(f"RANK={rank} is outside 0..WORLD_SIZE-1 ({world - 1})")
    return Distributed(rank=rank, world=world, local_rank=local)


_JOINED = []  # a true entry once this process has joined a torchrun job


def joined_a_job() -> bool:
    """Whether this process joined a distributed job (it may have left it since)."""
    return bool(_JOINED)


def end_process(code: int) -> NoReturn:
    """End a process that took part in a job, skipping the interpreter's shutdown: with gloo
    on the CPU, about one process in ten aborted there (SIGABRT, "terminate called without an
    active exception") after the process group was destroyed and every atexit handler had run.
    Logging, stdout and stderr are flushed first."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def setup(device: torch.device) -> tuple[Distributed, torch.device]:
    """Join the job torchrun started, if any: NCCL with one GPU per process when ``device`` is
    CUDA, gloo on the CPU. Returns the layout and this process's device."""
    d = from_env()
    if not d.enabled:
        return d, device
    if device.type == "cuda":
        n = torch.cuda.device_count()
        if d.local_rank >= n:
            raise TorchVaeError(
                f"process {d.rank} has LOCAL_RANK {d.local_rank} but this machine has {n} GPU(s); "
                f"use --nproc_per_node {n} or less"
            )
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise TorchVaeError(f"distributed training runs on CUDA or CPU, not {device.type}")
    if not dist.is_initialized():
        options = {"timeout": collective_timeout()}
        if (
            backend == "nccl"
            and "device_id" in inspect.signature(dist.init_process_group).parameters
        ):
            options["device_id"] = device  # PyTorch >= 2.3: bound to this GPU, none guessed
        try:
            dist.init_process_group(backend, **options)
        except (RuntimeError, ValueError) as exc:
            raise TorchVaeError(
                f"could not join the distributed job ({first_line(exc, with_type=False)}); "
                "check MASTER_ADDR, MASTER_PORT and that every node runs the same torchrun command"
            ) from None
    _JOINED.append(True)
    log.info("process %d of %d (%s, %s)", d.rank, d.world, backend, device)
    return d, device


def wrap(model: torch.nn.Module, d: Distributed, device: torch.device) -> torch.nn.Module:
    """DDP around ``model`` (which keeps owning the weights) on a GPU; ``model`` itself when
    alone, or on the CPU, where every process starts from rank 0's weights and the training
    step calls ``Distributed.average_gradients`` instead."""
    if not d.enabled:
        return model
    if device.type == "cpu":
        d.broadcast_weights(model)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    # Buffers (batch-norm running statistics) are not broadcast before every forward pass;
    # they are averaged once per epoch instead (``average_buffers``).
    params = inspect.signature(DDP).parameters
    no_sync = (
        {"forward_sync_buffers": False}
        if "forward_sync_buffers" in params
        else {"broadcast_buffers": False}
    )
    # a GPU: setup allows only CUDA and the CPU
    model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return DDP(model, device_ids=[device.index], **no_sync)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def describe_failure(exc: BaseException, d: Distributed) -> str:
    """A one-line message for a collective that failed because another process stopped."""
    return (
        f"process {d.rank} of {d.world}: another process of the job stopped or hung "
        f"({first_line(exc, with_type=False)}); its own message above says why"
    )


def is_collective_error(exc: BaseException) -> bool:
    names = {"DistBackendError", "DistNetworkError", "DistError"}
    return type(exc).__name__ in names or (
        isinstance(exc, RuntimeError) and from_env().enabled and _looks_like_comm(exc)
    )


def _looks_like_comm(exc: BaseException) -> bool:
    text = str(exc).lower()
    words = ("gloo", "nccl", "connection", "timed out", "timeout", "peer", "socket")
    return any(w in text for w in words)


__all__ = ["Distributed", "from_env", "setup", "teardown", "wrap"]
