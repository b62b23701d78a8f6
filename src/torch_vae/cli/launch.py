"""``torch-vae train --nproc_per_node N``: N data-parallel training processes on this machine,
started by PyTorch's elastic launcher (``torch.distributed.launcher``, the engine of ``torchrun
--standalone``) with the ``fork`` start method, once this process has imported PyTorch and
torch-vae.

Under the ``torchrun`` command every process imports PyTorch itself: about 150 MB of private
memory each (its Python objects and its libraries' start-up), plus the launcher's own. Forked
after the import, the processes share those pages with the launcher (copy-on-write), so N
processes cost little more memory than one (docs/benchmarks.md, "Data larger than memory").
Each process runs the same ``train`` command as under torchrun (``training.distributed``
reads the job from the environment the launcher sets) and returns its exit status.
"""

from __future__ import annotations

import logging
import os
import signal
import uuid

from ..errors import TorchVaeError, TrainingInterrupted

# the launcher's own log lines (its configuration, rendezvous) are not the user's business
_QUIET_LOGGERS = ("torch.distributed.elastic", "torch.distributed.launcher")

_IN_WORKER: list[bool] = []  # a true entry inside a process this launcher started


def launched_worker() -> bool:
    """Whether this process is one that ``launch`` started."""
    return bool(_IN_WORKER)


def check_can_launch(nproc: int) -> None:
    """A one-line error where ``--nproc_per_node`` cannot start a job from this process."""
    if nproc < 1:
        raise TorchVaeError(f"--nproc_per_node must be at least 1, got {nproc}")
    cpus = os.cpu_count() or 1
    if nproc > 4 * cpus:
        raise TorchVaeError(
            f"--nproc_per_node {nproc} is far more processes than this machine's {cpus} CPUs; "
            f"pass at most {cpus}"
        )
    if nproc > 1 and os.environ.get("WORLD_SIZE") and not launched_worker():
        raise TorchVaeError(
            "--nproc_per_node starts its own processes, and this one is already part of a "
            "job (WORLD_SIZE is set, e.g. by torchrun): leave out one or the other"
        )


def worker_threads(nproc: int, threads: int) -> int:
    """CPU threads of each process: ``threads`` if given (--threads), else the machine's CPUs
    shared out between the ``nproc`` processes (torchrun leaves each process 1)."""
    return threads or max(1, (os.cpu_count() or 1) // nproc)


def _worker(argv: list[str], threads: int) -> int:
    """One process of the job: the train command as a torchrun process runs it. A failed or
    stopped process ends at once with its exit status, which the launcher reads: a returned
    status waits for the launcher to collect it, which it no longer does once it is stopping
    the job on a signal."""
    import torch

    from ..training.distributed import end_process
    from .main import _main

    _IN_WORKER.append(True)
    torch.set_num_threads(threads)
    rc = _main(argv)
    if rc:
        end_process(rc)
    return rc


def launch(argv: list[str], nproc: int, threads: int) -> int:
    """Run ``torch-vae`` with ``argv`` in ``nproc`` processes forked from this one, as one
    job; returns the worst exit status (0 when every process finished the run)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # each of the launcher's modules sets its own logger's level: every one of them is quietened
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(_QUIET_LOGGERS):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"torch-vae-{uuid.uuid4().hex[:12]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",  # a free port, as torchrun --standalone
        max_restarts=0,
        start_method="fork",
    )
    try:
        results = elastic_launch(config, _worker)(argv, worker_threads(nproc, threads))
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        raise _failure(rank, failure.exitcode) from None
    except SignalException as exc:  # the launcher sent it on to the processes
        raise _stopped(signal.Signals(exc.sigval)) from None
    return max((int(rc) for rc in results.values()), default=0)


def _stopped(sig: signal.Signals) -> TrainingInterrupted:
    return TrainingInterrupted(
        f"the job was stopped by {sig.name}; what its processes saved is said above",
        128 + int(sig),
    )


def _failure(rank: int, code: int) -> TorchVaeError:
    """The error of a job whose process ``rank`` ended with exit status ``code``: stopped by
    a signal it handled (128 + the signal's number, as the command exits), killed by one
    (negative), or failed with an error it printed."""
    if code > 128 and code - 128 in set(signal.Signals):
        return _stopped(signal.Signals(code - 128))
    if code < 0 and -code in set(signal.Signals):
        name = signal.Signals(-code).name
        return TorchVaeError(f"process {rank} of the job was killed by {name}; the others were "
                             "stopped")  # fmt: skip
    return TorchVaeError(f"the job failed: process {rank} ended with exit code {code} (the errors "
                         "the processes printed are above); the others were stopped")  # fmt: skip
