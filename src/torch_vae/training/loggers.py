"""Experiment loggers: what a training run reports as it goes, through one seam (``Logger``), to
every logger that ``--logger`` names:

- its config when it starts (``params``), the losses per image, the learning rate and the KL
  weight every ``loop.LOG_EVERY`` steps (``step/...``), each epoch's metrics as metrics.jsonl
  records them (``epoch/...``) and its picture (``image``), and the final weights (``artifact``);
- ``jsonl`` (always on): metrics.jsonl, which the checkpoint writes itself (it is part of what
  a resume trims, rundir.py), so this logger has nothing more to do;
- ``tensorboard``: event files in RUN/tensorboard (PyTorch's writer, torch.utils.tensorboard);
- ``mlflow``: a run in an MLflow tracking store, RUN/mlruns by default, whose id RUN/mlflow.json
  keeps.

A resumed run continues the same TensorBoard folder and the same MLflow run, without logging a
step twice. Only the process that writes the run folder (rank 0 under torchrun) logs. The
packages are imported when the run starts (``check_installed``), so a missing one is told
before any training, with the extra that installs it.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..errors import TorchVaeError, TrainingInterrupted, first_line
from ..io.files import write_text_atomic

log = logging.getLogger(__name__)

TENSORBOARD_DIR = "tensorboard"
MLFLOW_DIR = "mlruns"  # the default tracking store: a file store in the run folder
MLFLOW_RUN_NAME = "mlflow.json"  # the tracking URI and run id, for a resume to reopen the run
LOGGER_FILES = (TENSORBOARD_DIR, MLFLOW_DIR, MLFLOW_RUN_NAME)  # no value without a checkpoint
EPOCH_PICTURE = "epoch/samples_and_reconstructions"


class Logger(Protocol):
    """Where a training run reports; every method is called on the main process only."""

    def params(self, values: dict[str, str]) -> None: ...

    def scalars(self, step: int, values: dict[str, float]) -> None: ...

    def image(self, tag: str, step: int, image: Any) -> None: ...  # uint8 (H, W, C) array

    def artifact(self, path: Path) -> None: ...

    def close(self, status: str = "FINISHED") -> None: ...  # or FAILED, KILLED


class TensorBoardLogger:
    """Event files in RUN/tensorboard. A resumed run adds a file to the same folder whose first
    event tells TensorBoard to drop what the stopped run logged after its last checkpoint (the
    steps that are trained again: ``purge_step``), so the curves go on without a step twice."""

    def __init__(self, run_dir: Path, mlflow_uri: str, step: int):
        from torch.utils.tensorboard import SummaryWriter

        self.step = step
        self.writer = SummaryWriter(str(run_dir / TENSORBOARD_DIR), flush_secs=10,
                                    purge_step=step + 1 if step else None)  # fmt: skip

    def params(self, values: dict[str, str]) -> None:
        rows = "".join(f"| {k} | {v} |\n" for k, v in values.items())
        self.writer.add_text("config", "| parameter | value |\n|---|---|\n" + rows, self.step)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.step = step

    def image(self, tag: str, step: int, image: Any) -> None:
        self.writer.add_image(tag, image, step, dataformats="HWC")
        self.writer.flush()  # once an epoch: its metrics and picture show at once

    def artifact(self, path: Path) -> None:
        self.writer.add_text("model", f"final weights: `{path}`", self.step)

    def close(self, status: str = "FINISHED") -> None:
        self.writer.close()


# MLflow's HTTP retries, at most a few seconds in all (its defaults retry for minutes); a
# value in the environment wins
HTTP_PATIENCE = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}  # fmt: skip


class MlflowLogger:
    """A run in the MLflow tracking store ``mlflow_uri`` (default: RUN/mlruns), named after the
    run folder, in the experiment $MLFLOW_EXPERIMENT_NAME (default torch-vae). RUN/mlflow.json
    keeps its id: a resumed run reopens it and skips the steps it had logged already (the
    stopped run's steps after its last checkpoint: trained again, to the same numbers with as
    many threads). MLflow params cannot change: a resume's new values (--epochs) are tags
    ``resumed/<param>``."""

    def __init__(self, run_dir: Path, mlflow_uri: str, step: int):
        from mlflow.tracking import MlflowClient

        saved = _read_json(run_dir / MLFLOW_RUN_NAME)
        uri = saved["tracking_uri"] if saved and mlflow_uri else tracking_uri(mlflow_uri, run_dir)
        _check_database_store(uri)
        if uri.startswith("file:"):  # MLflow 3 refuses its file store unless told it is meant
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        for name, value in HTTP_PATIENCE.items():  # a server that is not there: seconds, not
            os.environ.setdefault(name, value)  # MLflow's minutes of retries
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)  # each retry's line
        self.client = MlflowClient(tracking_uri=uri)
        if saved:
            try:
                self.done = _reopen(self.client, saved["run_id"])
            except Exception as exc:
                raise TorchVaeError(
                    f"cannot reopen this run's MLflow run {saved['run_id']} in {uri} "
                    f"({first_line(exc)}); restore that store, or delete "
                    f"{run_dir / MLFLOW_RUN_NAME} to log the rest of the run as a new MLflow run"
                ) from None
            self.run_id = saved["run_id"]
        else:
            self.run_id, self.done = _create_run(self.client, run_dir, uri), {}

    def params(self, values: dict[str, str]) -> None:
        from mlflow.entities import Param

        old = self.client.get_run(self.run_id).data.params
        new = [Param(k, v) for k, v in values.items() if k not in old]
        if new:
            self.client.log_batch(self.run_id, params=new)
        for key, value in values.items():
            if key in old and old[key] != value:
                self.client.set_tag(self.run_id, f"resumed/{key}", value)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in values.items()
                   if step > self.done.get(k, -1)]  # fmt: skip
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def image(self, tag: str, step: int, image: Any) -> None:
        # one file per step: a step logged again (after a resume) replaces its file
        self.client.log_image(self.run_id, image, artifact_file=f"{tag}/step_{step:08d}.png")

    def artifact(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path), "model")

    def close(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)


DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")  # MLflow's SQLAlchemy stores


def _check_database_store(uri: str) -> None:
    """A database store (``sqlite:///mlflow.db``) needs SQLAlchemy, which the client alone
    (``mlflow-skinny``, the [mlflow] extra) has not: say so, before MLflow's cut-off message."""
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower()
    if scheme in DATABASE_SCHEMES and not _installed("sqlalchemy"):
        raise TorchVaeError(
            f"--mlflow_uri {uri} is a database store, which needs the full MLflow package "
            "(pip install mlflow; the [mlflow] extra installs the client alone); or give a "
            "folder or an http(s) tracking server"
        )


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def tracking_uri(uri: str, run_dir: Path) -> str:
    """The MLflow tracking URI of ``--mlflow_uri``: "" is the file store RUN/mlruns; a folder
    is that file store (as an absolute file: URI, so a resume from elsewhere finds it)."""
    if not uri:
        return (run_dir / MLFLOW_DIR).resolve().as_uri()
    if uri == "databricks" or re.match(r"[A-Za-z][A-Za-z0-9+.-]+:", uri):
        return uri
    return Path(uri).expanduser().resolve().as_uri()


def _create_run(client, run_dir: Path, uri: str) -> str:
    """A new MLflow run for ``run_dir``; its id, also written to RUN/mlflow.json."""
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "torch-vae"
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        experiment_id = experiment.experiment_id
    else:
        experiment_id = client.create_experiment(name)
    run = client.create_run(experiment_id, run_name=run_dir.name,
                            tags={"torch_vae.run_dir": str(run_dir.resolve())})  # fmt: skip
    record = {"tracking_uri": uri, "run_id": run.info.run_id}
    write_text_atomic(run_dir / MLFLOW_RUN_NAME, json.dumps(record, indent=2))
    return run.info.run_id


def _reopen(client, run_id: str) -> dict[str, int]:
    """Mark the run running again; the last step logged of each of its metrics."""
    client.update_run(run_id, status="RUNNING")
    keys = client.get_run(run_id).data.metrics
    return {k: max(m.step for m in client.get_metric_history(run_id, k)) for k in keys}


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_bytes())
        if isinstance(data, dict) and isinstance(data.get("run_id"), str):
            return data
    except (OSError, ValueError) as exc:
        raise TorchVaeError(f"{path} is unreadable ({first_line(exc)})") from None
    raise TorchVaeError(f"{path} is not a torch-vae MLflow record (no run_id)")


@dataclass(frozen=True)
class Backend:
    """A logger ``--logger`` may name: what it writes, the module it needs and the extra that
    installs it, and what opens it (``start(run_dir, mlflow_uri, step)``; None: nothing to)."""

    help: str
    module: str | None = None
    start: Callable[[Path, str, int], Logger] | None = None


LOGGERS: dict[str, Backend] = {
    "jsonl": Backend("metrics.jsonl, one line per epoch (always on)"),
    "tensorboard": Backend("event files in RUN/tensorboard", "tensorboard", TensorBoardLogger),
    "mlflow": Backend("a run in --mlflow_uri (default RUN/mlruns)", "mlflow", MlflowLogger),
}


def logger_names(value: Any) -> tuple[str, ...]:
    """The loggers of ``--logger`` (comma-separated names), once each, jsonl first (always)."""
    valid = ", ".join(LOGGERS)
    if not isinstance(value, str):
        raise TorchVaeError(f"--logger must be comma-separated names ({valid}), got {value!r}")
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in LOGGERS]
    if unknown:
        raise TorchVaeError(
            f"--logger: unknown logger {unknown[0]!r}; the loggers are {valid} "
            "(comma-separated, e.g. --logger tensorboard,mlflow)"
        )
    return tuple(dict.fromkeys(["jsonl", *names]))


def check_logger_options(logger: Any, mlflow_uri: Any) -> None:
    names = logger_names(logger)
    if not isinstance(mlflow_uri, str):
        raise TorchVaeError(f"--mlflow_uri must be a URI or folder, got {mlflow_uri!r}")
    if mlflow_uri and "mlflow" not in names:
        raise TorchVaeError("--mlflow_uri is where --logger mlflow writes; add --logger mlflow")


def check_installed(names: tuple[str, ...]) -> None:
    """Import the package of every logger in ``names``: a one-line error naming the extra that
    installs a missing one, before any training."""
    for name in names:
        module = LOGGERS[name].module
        if module is None:
            continue
        try:
            importlib.import_module(module)
        except ImportError:
            raise TorchVaeError(
                f"--logger {name} needs the {module} package: pip install 'torch-vae[{name}]'"
            ) from None
        except Exception as exc:  # installed, but broken (a protobuf of another major...)
            raise TorchVaeError(f"--logger {name}: importing {module} failed "
                                f"({first_line(exc)})") from None  # fmt: skip


class Loggers:
    """The loggers of a run as one (the fan-out). A logger that fails while training runs is
    warned about once and dropped: a curve is not worth the run."""

    def __init__(self, loggers: dict[str, Logger] | None = None):
        self.active = dict(loggers or {})

    def __bool__(self) -> bool:
        return bool(self.active)

    def params(self, values: dict[str, str]) -> None:
        self._each("params", values)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self._each("scalars", step, values)

    def image(self, tag: str, step: int, image: Any) -> None:
        self._each("image", tag, step, image)

    def artifact(self, path: Path) -> None:
        self._each("artifact", path)

    def close(self, status: str = "FINISHED") -> None:
        self._each("close", status)
        self.active.clear()

    def _each(self, method: str, *args: Any) -> None:
        for name, logger in list(self.active.items()):
            try:
                getattr(logger, method)(*args)
            except Exception as exc:
                log.warning("the %s logger failed (%s); training goes on without it",
                            name, first_line(exc))  # fmt: skip
                del self.active[name]


def open_all(names: tuple[str, ...], run_dir: Path, mlflow_uri: str, step: int) -> Loggers:
    """The loggers ``names`` opened for the run in ``run_dir`` at ``step`` (0: a new run); a
    one-line error if one cannot be (after closing those already open)."""
    opened: dict[str, Logger] = {}
    for name in names:
        backend = LOGGERS[name]
        if backend.start is None:
            continue
        try:
            opened[name] = backend.start(run_dir, mlflow_uri, step)
        except Exception as exc:
            Loggers(opened).close("FAILED")
            if isinstance(exc, TorchVaeError):
                raise
            raise TorchVaeError(f"cannot start the {name} logger ({first_line(exc)})") from None
    return Loggers(opened)


@contextlib.contextmanager
def open_loggers(names: tuple[str, ...], run_dir: Path, mlflow_uri: str,
                 step: int) -> Iterator[Loggers]:  # fmt: skip
    """``open_all`` for the duration of the block; closed as FINISHED, KILLED (a signal) or
    FAILED, as the block ends."""
    loggers, status = open_all(names, run_dir, mlflow_uri, step), "FAILED"
    try:
        yield loggers
        status = "FINISHED"
    except (TrainingInterrupted, KeyboardInterrupt):
        status = "KILLED"
        raise
    finally:
        loggers.close(status)


def run_params(model: Any, train: Any) -> dict[str, str]:
    """A run's config as logger params: ``model.<field>`` and ``train.<field>``, as text."""
    return {f"{section}.{k}": str(v) for section, config in (("model", model), ("train", train))
            for k, v in config.to_dict().items()}  # fmt: skip


def epoch_scalars(record: dict[str, Any]) -> dict[str, float]:
    """An epoch's metrics.jsonl record as scalars ``epoch/<key>`` (its step is the x-axis)."""
    return {f"epoch/{k}": float(v) for k, v in record.items()
            if k not in ("epoch", "step") and isinstance(v, int | float)
            and not isinstance(v, bool)}  # fmt: skip
