"""``torch-vae train --nproc_per_node N``: N data-parallel training processes on this machine,
started by PyTorch's elastic launcher (``torch.distributed.launcher``, the engine of ``torchrun
--standalone``) with the ``fork`` start method, once this process has imported PyTorch and
torch-vae.

Under the ``torchrun`` command every process imports PyTorch itself: about 150 MB of private
memory each (its Python objects and its libraries' start-up), plus the launcher's own. Forked
after the import, the processes share those pages with the launcher (copy-on-write), so N
processes cost little more memory than one (docs/benchmarks.md, "Data larger than memory").
Each process runs the same ``train`` command as under torchrun (``training.distributed``
reads the job from the environment the launcher sets). The processes' final lines (an error,
a stop) go to files that the launcher prints once for the job: N processes stopped by the same
Ctrl-C, or refusing the same flag, say it once.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import tempfile
import uuid
from pathlib import Path

from ..errors import TorchVaeError

# the launcher's own log lines (its configuration, rendezvous) are not the user's business
_QUIET_LOGGERS = (
    "torch.distributed.elastic",
    "torch.distributed.launcher",
    "torch.multiprocessing",
)
# what a process says when another one of the job stopped: the other's own line says why
_ECHO = "another process of the job"
# what a process says where it saved the training state: after the line that says why
_RESUME = "continue with:"

_SINK: list[Path] = []  # in a process of a job this launcher started: where its lines go


def launched_worker() -> bool:
    """Whether this process is one that ``launch`` started."""
    return bool(_SINK)


def say(line: str) -> None:
    """A final line of the command (an error, a stop): on stderr, in one write, or in a process
    of a ``--nproc_per_node`` job, in its file for the launcher to print once for the job."""
    if _SINK:
        with open(_SINK[0], "a", encoding="utf-8") as f:
            f.write(line + "\n")
    else:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


def check_can_launch(nproc: int) -> None:
    """A one-line error where ``--nproc_per_node`` cannot start a job from this process."""
    most = 4 * (os.cpu_count() or 1)
    if nproc > most:
        raise TorchVaeError(
            f"--nproc_per_node {nproc} is far more processes than this machine's "
            f"{os.cpu_count()} CPUs; pass at most {most} (as many as its CPUs or GPUs is usual)"
        )
    if os.environ.get("WORLD_SIZE"):
        raise TorchVaeError(
            "--nproc_per_node starts its own processes, and this one is already part of a "
            "job (WORLD_SIZE is set, e.g. by torchrun): leave out one or the other"
        )


def worker_threads(nproc: int, threads: int) -> int:
    """CPU threads of each process: ``threads`` if given (--threads), else the machine's CPUs
    shared out between the ``nproc`` processes (torchrun leaves each process 1)."""
    return threads or max(1, (os.cpu_count() or 1) // nproc)


def _worker(argv: list[str], threads: int, messages: str) -> int:
    """One process of the job: the train command as a torchrun process runs it. A failed or
    stopped process ends at once with its exit status, which the launcher reads: a returned
    status waits for the launcher to collect it, which it no longer does once it is stopping
    the job on a signal."""
    import torch

    from ..training.distributed import end_process
    from .main import _main

    _SINK.append(Path(messages) / f"rank{int(os.environ.get('RANK', '0')):05d}.txt")
    os.environ["TORCH_VAE_JOB"] = "nproc_per_node"  # how to resume it, in a stop message
    torch.set_num_threads(threads)
    rc = _main(argv)
    if rc:
        end_process(rc)
    return rc


def launch(argv: list[str], nproc: int, threads: int) -> int:
    """Run ``torch-vae`` with ``argv`` in ``nproc`` processes forked from this one, as one
    job; prints the processes' final lines once and returns the job's exit status."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # each of the launcher's modules sets its own logger's level: every one of them is quietened
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(_QUIET_LOGGERS):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    work = Path(tempfile.mkdtemp(prefix="torch-vae-job-"))
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"torch-vae-{uuid.uuid4().hex[:12]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",  # a free port, as torchrun --standalone
        max_restarts=0,
        start_method="fork",
        logs_specs=DefaultLogsSpecs(log_dir=str(work / "logs")),
    )
    try:
        elastic_launch(config, _worker)(argv, worker_threads(nproc, threads), str(work))
        return _report(work, nproc, 0)
    except ChildFailedError as exc:
        codes = {rank: failure.exitcode for rank, failure in exc.failures.items()}
        return _report(work, nproc, exc.get_first_failure()[1].exitcode, codes)
    except SignalException as exc:  # sent on to the processes, which stopped on it
        return _report(work, nproc, 128 + int(exc.sigval))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _report(work: Path, nproc: int, code: int, failed: dict[int, int] | None = None) -> int:
    """Print the processes' final lines, each once (a process's echo of another's failure
    only where no process said more), and a line of the launcher's where a process ended
    without one; returns the job's exit status. ``code``: the first failure's exit status;
    ``failed``: every failed process's (by rank; negative: the signal that killed it)."""
    said: dict[int, list[str]] = {}
    for r in range(nproc):
        f = work / f"rank{r:05d}.txt"
        if f.exists():
            said[r] = f.read_text(encoding="utf-8").splitlines()
    lines = list(dict.fromkeys(line for r in sorted(said) for line in said[r]))
    primary = [line for line in lines if _ECHO not in line and _RESUME not in line]  # why
    resume = [line for line in lines if _RESUME in line]  # what was saved: said last
    silent = [r for r in range(nproc) if r not in said]
    # the others' echoes point at its message: none where the failed process said nothing
    for line in primary or ([] if silent or resume else lines):
        say(line)
    code = _say_ended(code, failed or {}, nproc, silent, primary, bool(lines))
    for line in resume:
        say(line)
    return code


def _say_ended(
    code: int, failed: dict[int, int], nproc: int, silent: list[int], primary: list[str],
    said: bool,
) -> int:  # fmt: skip
    """A line of the launcher's where a process ended without one; the job's exit status."""
    killed = [r for r in silent if failed.get(r, 0) < 0]  # by a signal: it said nothing
    if killed:
        say(f"torch-vae: error: process {killed[0]} of the job was killed by "
            f"{_signal_name(-failed[killed[0]])}; the others were stopped")  # fmt: skip
        return 1
    if code and silent and not primary and failed:  # not a stop signal's end
        who = ", ".join(map(str, silent))
        others = "; the others were stopped" if len(silent) < nproc else ""
        say(f"torch-vae: error: process {who} of the job ended without a word (killed, e.g. "
            f"out of memory?){others}")  # fmt: skip
        return code if code > 0 else 1
    if code > 128 and not said:
        say(f"torch-vae: the job was stopped by {_signal_name(code - 128)} before its "
            "processes had anything to save")  # fmt: skip
    return code


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
