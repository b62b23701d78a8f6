"""A run folder's files outside the training state: its name, config.json, metrics.jsonl, and
the removal of a new run's folder when it fails before saving anything.

A run folder holds config.json (the model and training config), model.safetensors (the latest
weights), checkpoints/epoch_NNN.safetensors, ckpt.pt (the training state, state.py),
metrics.jsonl (one record per epoch) and images/ (each epoch's picture, the curves), and the
files of the loggers of --logger (loggers.py: tensorboard/, mlruns/, mlflow.json).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import TorchVaeError
from ..io.files import remove_stale_temporaries, unwritable, write_text_atomic
from ..io.weights import CONFIG_NAME
from ..models import ModelConfig
from ..version import __version__
from .config import TrainConfig
from .loggers import LOGGER_FILES

log = logging.getLogger(__name__)

METRICS_NAME = "metrics.jsonl"


class RunLock:
    """An advisory lock on a run folder, held by the one process that writes it: an exclusive
    ``flock`` on the folder itself (no file is added to it), which the kernel drops when the
    process ends, however it ends. A second run into the same folder, or a second ``--resume``
    of the same run, is refused with a line that says so (and leaves the folder alone)."""

    def __init__(self, run_dir: Path, resuming: bool = False):
        self.run_dir, self.fd = Path(run_dir), None
        try:
            import fcntl
        except ImportError:  # not a POSIX system: no lock
            return
        fd = os.open(self.run_dir, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            other = "" if resuming else ", or choose another --run_dir"
            raise TorchVaeError(
                f"the run in {self.run_dir} is being written by another torch-vae process "
                f"(a training run or a resume of it); wait until it ends{other} (nothing was "
                "changed)"
            ) from None
        except OSError:  # a file system without locks: go on without
            pass
        self.fd = fd

    @staticmethod
    def held(run_dir: Path) -> bool:
        """Whether another process holds the lock of ``run_dir`` (trains into it) now; probed
        with a shared lock, taken and given back at once."""
        try:
            import fcntl
        except ImportError:
            return False
        try:
            fd = os.open(run_dir, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        except OSError:  # a file system without locks
            return False
        finally:
            os.close(fd)  # gives back the shared lock, if taken

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    __del__ = release


def new_run_dir(base: Path, name: str) -> Path:
    """Make and return ``base/name``, or ``base/name-2``, ``-3``... whichever is free first;
    the folder is created atomically, so a run started at the same moment takes the next."""
    base.mkdir(parents=True, exist_ok=True)
    i = 1
    while True:
        candidate = base / (name if i == 1 else f"{name}-{i}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            i += 1


def check_new_run_dir(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise TorchVaeError(f"--run_dir {path} is a file; give a folder (nothing was changed)")
    problem = unwritable(path)
    if problem:
        raise TorchVaeError(f"--run_dir {path} cannot be written: {problem}")
    if path.exists() and any(path.iterdir()):
        raise TorchVaeError(
            f"run folder {path} already exists and is not empty; choose another --run_dir "
            "(nothing was overwritten)"
        )


@contextlib.contextmanager
def removed_if_unused(run_dir: Path, new: bool, is_main: bool = True) -> Iterator[None]:
    """If a ``new`` run fails before it saved any training state, remove the files it wrote
    and its folder: a folder with only config.json blocks its name and cannot be resumed."""
    try:
        yield
    except BaseException as ended:
        if new and is_main:
            try:
                if remove_unused_run(run_dir) and isinstance(ended, KeyboardInterrupt):
                    log.warning("stopped at once before anything of the run was saved: %s, "
                                "which held nothing yet, is removed", run_dir)  # fmt: skip
            except OSError as exc:  # the folder cannot be written: the error that ended the run
                log.warning("could not remove the unfinished run folder %s (%s)", run_dir,
                            exc.strerror or exc)  # fmt: skip
        raise


def remove_unused_run(run_dir: Path) -> bool:
    """Remove ``run_dir`` if it holds nothing of value: no training state and no weights,
    only config.json (and temporaries of its own, empty folders, and the loggers' files).
    Whether it did."""
    remove_stale_temporaries(run_dir, recursive=True)
    if holds_files(run_dir):
        return False  # weights or a training state: keep everything
    (run_dir / CONFIG_NAME).unlink(missing_ok=True)
    for path in _logger_paths(run_dir):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    for folder in sorted(run_dir.rglob("*"), reverse=True) + [run_dir]:
        with contextlib.suppress(OSError):  # not a folder, or not empty: leave it
            folder.rmdir()
    return True


def holds_files(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a file besides config.json and the loggers' files."""
    logs = _logger_paths(run_dir)
    return any(p.is_file() and p.name != CONFIG_NAME and not any(p.is_relative_to(q) for q in logs)
               for p in run_dir.rglob("*"))  # fmt: skip


def _logger_paths(run_dir: Path) -> list[Path]:
    return [run_dir / name for name in LOGGER_FILES]


def clear_left_over_run(run_dir: Path) -> bool:
    """Make way for a new run in ``run_dir`` where it holds only what a run that never saved
    left there (config.json, its loggers' files: the run was killed before its first epoch
    ended); never while another process writes it (``RunLock``). Whether it did."""
    try:
        read_run_config(run_dir)
    except TorchVaeError:
        return False  # not a run of ours: the caller's checks say what is in the way
    if holds_files(run_dir):
        return False  # a run that saved (or is saving) something: never cleared
    lock = RunLock(run_dir)
    try:
        return remove_unused_run(run_dir)
    finally:
        lock.release()


def write_run_config(
    run_dir: Path,
    model_config: ModelConfig,
    train_config: TrainConfig,
    split: dict[str, Any] | None = None,
    images: str | None = None,
    data_dir: Path | None = None,
    names: str | None = None,
) -> None:
    """config.json: the model and training config, the validation split (its size, and the
    SHA-256 of its rows: ``data.splits``), for a folder dataset ``images``: the digest of
    its images' names and sizes (``plan.folder_contents``) and ``names``: of their names alone
    (``plan.folder_names``), and ``data_dir``: the data folder (downloads, caches) the run
    reads, absolute, which a resume from elsewhere reads again."""
    config = {
        "torch_vae_version": __version__,
        "model": model_config.to_dict(),
        "train": train_config.to_dict(),
    }
    if split:
        config["split"] = split
    if images:
        config["images_sha256"] = images
    if names:
        config["image_names_sha256"] = names
    if data_dir is not None:
        config["data_dir"] = str(Path(data_dir).absolute())
    write_text_atomic(run_dir / CONFIG_NAME, json.dumps(config, indent=2))


def read_run_config(run_dir: Path) -> tuple[ModelConfig, TrainConfig]:
    """The model and training config of a run folder, with a one-line error if unusable."""
    data, path = read_run_record(run_dir), run_dir / CONFIG_NAME
    try:
        return ModelConfig.from_dict(data["model"]), TrainConfig.from_dict(data["train"])
    except TorchVaeError as exc:
        raise TorchVaeError(f"{path}: {exc}") from None


def read_run_record(run_dir: Path) -> dict[str, Any]:
    """A run folder's config.json as it is (with "model" and "train"), or a one-line error."""
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        raise TorchVaeError(
            f"{run_dir} has no {CONFIG_NAME}; --resume takes a run folder written by "
            "'torch-vae train'"
        )
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON or UTF-8
        raise TorchVaeError(f"{path} is unreadable or corrupt ({exc})") from None
    if not isinstance(data, dict) or not {"model", "train"} <= set(data):
        raise TorchVaeError(f"{path} is not a torch-vae run config (no 'model' and 'train')")
    return data


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    """Add an epoch's ``record`` to the run's metrics.jsonl; where the file holds a line of that
    epoch already (one that --max_steps cut short, now ended), the file is written again
    without it, atomically."""
    path, epoch = run_dir / METRICS_NAME, record.get("epoch")
    if path.exists() and _is_count(epoch):
        earlier = read_metrics(run_dir)
        if any(_is_count(r.get("epoch")) and r["epoch"] >= epoch for r in earlier):
            kept = [r for r in earlier if _is_count(r.get("epoch")) and r["epoch"] < epoch]
            write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in [*kept, record]))
            return
    with open(path, "a") as f:  # a torn last line is dropped on resume
        f.write(json.dumps(record) + "\n")


def trim_metrics(run_dir: Path, epochs_done: int) -> None:
    """Keep the metrics of the first ``epochs_done`` epochs, dropping a torn last line and the
    lines of epochs that were not checkpointed (they are trained again)."""
    if not (run_dir / METRICS_NAME).exists():
        return
    keep = [
        json.dumps(r) + "\n"
        for r in read_metrics(run_dir)
        if _is_count(r.get("epoch")) and r["epoch"] <= epochs_done
    ]
    write_text_atomic(run_dir / METRICS_NAME, "".join(keep))


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_metrics(run: Path) -> list[dict[str, Any]]:
    """The records of ``run``'s metrics.jsonl (``run``: the run folder or the file itself), as
    written, skipping a torn or damaged line; a one-line error if it cannot be read."""
    path = run / METRICS_NAME if run.is_dir() else run
    records = []
    try:
        lines = path.read_bytes().splitlines() if path.exists() else []
    except OSError as exc:
        raise TorchVaeError(f"cannot read {path} ({exc.strerror}); is {run} a run?") from None
    for line in lines:
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(record, dict):
            records.append(record)
    return records
