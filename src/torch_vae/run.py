"""A run folder's life outside the training loop: planning a run (new, ``--resume`` or
``--init_from``), naming its folder, and its config.json and metrics.jsonl files.

``plan_run`` turns the train command's options into a ``RunPlan``: the folder, the model and
training configs and, for ``--resume``, the saved training state. Every check that can fail on
the user's input happens here, before the training loop starts and before anything is written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .checkpoint import CONFIG_NAME, read_metadata
from .config import ModelConfig, TrainConfig, default_depth
from .data import check_channels, get_dataset, load_split, read_only
from .distributed import Distributed
from .errors import TorchVaeError
from .fileio import file_sha256, remove_stale_temporaries, write_text_atomic
from .model import load_model
from .trainstate import is_count, load_train_state
from .version import __version__

log = logging.getLogger(__name__)

METRICS_NAME = "metrics.jsonl"
# Options of train that --resume accepts: they extend the run or choose how it runs. Every
# other option describes the run itself, which config.json already fixes.
RESUME_OPTIONS = {"resume", "epochs", "max_steps", "cpu", "device", "threads", "quiet", "data_dir"}
MODEL_OPTIONS = {f.name for f in dataclasses.fields(ModelConfig) if f.metadata.get("flag", True)}
DRY_RUN_TEST_IMAGES = 64


@dataclass(frozen=True)
class RunPlan:
    """What a training run will do, decided before it starts."""

    run_dir: Path
    model: ModelConfig
    train: TrainConfig
    data_dir: Path | None = None
    resume: dict[str, Any] | None = None  # the training state to continue from (ckpt.pt)
    test_limit: int | None = None  # evaluate on the first N test images only (--dry_run)


def plan_run(values: dict[str, Any], given: set[str], dist: Distributed | None = None) -> RunPlan:
    """The plan for the train command's option ``values``, of which ``given`` were typed on the
    command line; a one-line ``TorchVaeError`` for anything that contradicts itself."""
    dist = dist or Distributed()
    if values["resume"] is not None:
        return _plan_resume(values, given)
    if values["dry_run"]:
        values = {**values, "epochs": 1, "max_steps": 2}
    init_from, init_sha256 = "", ""
    if values["init_from"] is not None:
        model_cfg, init_from, init_sha256 = _initial_model(values, given)
        check_channels(
            values["dataset"],
            model_cfg.in_channels,
            f"--init_from {values['init_from']} is a model of",
            "start from a model trained on images with as many channels",
        )
    else:
        channels = get_dataset(values["dataset"]).channels
        depth = values["depth"]
        if depth is None:
            depth = default_depth(values["arch"], values["image_size"])
        model_cfg = ModelConfig(**{**_fields(ModelConfig, values), "depth": depth,
                                   "in_channels": channels})  # fmt: skip
    train_cfg = TrainConfig(
        **_fields(TrainConfig, values), init_from=init_from, init_sha256=init_sha256
    )
    run_dir = dist.decide(lambda: _choose_run_dir(values["run_dir"], train_cfg, model_cfg))
    test_limit = DRY_RUN_TEST_IMAGES if values["dry_run"] else None
    return RunPlan(run_dir, model_cfg, train_cfg, values["data_dir"], None, test_limit)


def _fields(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """The values of ``cls``'s command-line fields."""
    return {f.name: values[f.name] for f in dataclasses.fields(cls) if f.metadata.get("flag", True)}


def _choose_run_dir(run_dir: Path | None, train_cfg: TrainConfig, model: ModelConfig) -> Path:
    """``--run_dir`` if it is free, else a new numbered folder under runs/ (rank 0 decides).
    The folder is made here, so that two runs started at once never take the same one."""
    if run_dir is not None:
        check_new_run_dir(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        return run_dir
    dataset = train_cfg.dataset
    stem = "mnist" if dataset == "mnist" else get_dataset(dataset).source_id(Path())
    name = f"{stem}_filters_{model.max_filters:04d}_dims_{model.latent_dims:04d}"
    if model.arch != "original":
        name += f"_{model.arch}"
    return new_run_dir(Path("runs"), name)


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


@contextlib.contextmanager
def removed_if_unused(plan: RunPlan, dist: Distributed | None = None) -> Iterator[None]:
    """If a new run fails before it saved any training state, remove the files it wrote and
    its folder: a folder with only config.json blocks its name and cannot be resumed."""
    try:
        yield
    except BaseException:
        if plan.resume is None and (dist is None or dist.is_main):
            _remove_unused_run(plan.run_dir)
        raise


def _remove_unused_run(run_dir: Path) -> None:
    """Remove ``run_dir`` if it holds nothing of value: no training state and no weights,
    only config.json (and temporaries or empty folders)."""
    remove_stale_temporaries(run_dir)
    if any(p.is_file() and p.name != CONFIG_NAME for p in run_dir.rglob("*")):
        return  # weights or a training state: keep everything
    (run_dir / CONFIG_NAME).unlink(missing_ok=True)
    for folder in sorted(run_dir.rglob("*"), reverse=True) + [run_dir]:
        with contextlib.suppress(OSError):  # not a folder, or not empty: leave it
            folder.rmdir()


def check_new_run_dir(path: Path) -> None:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise TorchVaeError(
            f"run folder {path} already exists and is not empty; choose another --run_dir "
            "(nothing was overwritten)"
        )


def _check_given(values, names, config_of, where: str, why: str) -> None:
    """A one-line error for the first option in ``names`` whose value differs from the one
    stored in ``config_of(name)`` (a model or training config)."""
    for name in sorted(names):
        value, stored = values[name], getattr(config_of(name), name, None)
        if value != stored:
            raise TorchVaeError(
                f"--{name} {value} does not match {where}, which has {name}={stored}; "
                f"drop the flag ({why})"
            )


def _initial_model(values: dict[str, Any], given: set[str]) -> tuple[ModelConfig, str, str]:
    """The model config of --init_from, its weights file and their SHA-256; architecture
    flags given beside it must agree with it, except --native_size, which has no weights."""
    meta = read_metadata(values["init_from"])
    config = meta["config"]
    _check_given(
        values,
        given & MODEL_OPTIONS - {"native_size"},
        lambda _: config,
        f"--init_from {values['init_from']}",
        "the architecture is the initial model's",
    )
    if "native_size" in given:
        config = dataclasses.replace(config, native_size=values["native_size"])
    weights = meta["path"].resolve()
    return config, str(weights), file_sha256(weights)


def _plan_resume(values: dict[str, Any], given: set[str]) -> RunPlan:
    """The plan that continues the run in ``--resume RUN`` (epochs and max_steps possibly
    extended); one-line errors for flags that contradict the run or a finished run."""
    run_dir = values["resume"]
    if not run_dir.is_dir():
        raise TorchVaeError(f"--resume {run_dir}: no such run folder")
    for flag in ("config", "dry_run", "run_dir", "init_from"):
        if flag in given:
            raise TorchVaeError(
                f"--{flag} cannot be combined with --resume, which continues the run in "
                f"{run_dir} with the config stored there"
            )
    model_cfg, train_cfg = read_run_config(run_dir)
    _check_given(
        values,
        given - RESUME_OPTIONS,
        lambda name: model_cfg if name in MODEL_OPTIONS else train_cfg,
        f"the run in {run_dir}",
        "--resume continues the run with its own config; only --epochs and --max_steps may change",
    )
    changes = {k: values[k] for k in ("epochs", "max_steps") if k in given}
    train_cfg = dataclasses.replace(train_cfg, **changes)
    state = load_train_state(run_dir)
    # a run stopped after its last step but before that step's evaluation and weights were
    # saved (a signal during the evaluation) is not finished: a resume saves them
    steps_left = not train_cfg.max_steps or state["step"] < train_cfg.max_steps
    finished = state["epoch"] >= train_cfg.epochs or (
        not steps_left and state.get("evaluated", True)
    )
    if finished:
        raise TorchVaeError(
            f"the run in {run_dir} is already finished ({state['epoch']} epochs, "
            f"{state['step']} steps); pass a larger --epochs (or --max_steps) to train it further"
        )
    check_channels(
        train_cfg.dataset,
        model_cfg.in_channels,
        "the run's model expects",
        "the images changed since the run began",
    )
    return RunPlan(run_dir, model_cfg, train_cfg, values["data_dir"], state)


def load_run_data(
    plan: RunPlan, progress: bool, dist: Distributed | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The training and test images (uint8, (N, H, W, C)) of the plan's dataset. The cache is
    built once, by rank 0; the other processes then read it."""
    dist = dist or Distributed()
    size = plan.model.image_size

    def load() -> tuple[torch.Tensor, torch.Tensor]:
        arrays = [load_split(plan.train.dataset, s, size, plan.data_dir, progress)
                  for s in ("train", "test")]  # fmt: skip
        with warnings.catch_warnings():  # the training set's map is read-only, and only read
            warnings.filterwarnings("ignore", "The given NumPy array is not writable")
            return torch.from_numpy(read_only(arrays[0])), torch.from_numpy(arrays[1])

    train_images, test_images = dist.first_then_others(load)
    return train_images, test_images[: plan.test_limit]


def initial_weights(plan: RunPlan) -> dict[str, torch.Tensor]:
    """The weights of ``--init_from``, if they are still the same file and fit the model."""
    path = Path(plan.train.init_from)
    try:
        digest = file_sha256(path)
    except OSError as exc:
        raise TorchVaeError(f"cannot read the initial weights {path}: {exc.strerror}") from None
    if digest != plan.train.init_sha256:
        raise TorchVaeError(
            f"the initial weights {path} changed since the run was set up (SHA-256 {digest[:12]}, "
            f"expected {plan.train.init_sha256[:12]}); restore that file or start a new run"
        )
    init = load_model(path)
    # native_size has no weights: a model may be fine-tuned with another one
    if dataclasses.replace(init.config, native_size=plan.model.native_size) != plan.model:
        raise TorchVaeError(f"the initial weights {path} are for another model: {init.config}")
    return init.state_dict()


def write_run_config(run_dir: Path, model_config: ModelConfig, train_config: TrainConfig) -> None:
    text = json.dumps(
        {
            "torch_vae_version": __version__,
            "model": model_config.to_dict(),
            "train": train_config.to_dict(),
        },
        indent=2,
    )
    write_text_atomic(run_dir / CONFIG_NAME, text)


def read_run_config(run_dir: Path) -> tuple[ModelConfig, TrainConfig]:
    """The model and training config of a run folder, with a one-line error if unusable."""
    path = run_dir / CONFIG_NAME
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
    try:
        return ModelConfig.from_dict(data["model"]), TrainConfig.from_dict(data["train"])
    except TorchVaeError as exc:
        raise TorchVaeError(f"{path}: {exc}") from None


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    with open(run_dir / METRICS_NAME, "a") as f:  # a torn last line is dropped on resume
        f.write(json.dumps(record) + "\n")


def trim_metrics(run_dir: Path, epochs_done: int) -> None:
    """Keep the metrics of the first ``epochs_done`` epochs, dropping a torn last line and the
    lines of epochs that were not checkpointed (they are trained again)."""
    if not (run_dir / METRICS_NAME).exists():
        return
    keep = [
        json.dumps(r) + "\n"
        for r in read_metrics(run_dir)
        if is_count(r.get("epoch")) and r["epoch"] <= epochs_done
    ]
    write_text_atomic(run_dir / METRICS_NAME, "".join(keep))


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The records of metrics.jsonl, skipping a torn or damaged line."""
    path = run_dir / METRICS_NAME
    records = []
    if path.exists():
        for line in path.read_bytes().splitlines():
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):
                continue
            if isinstance(record, dict):
                records.append(record)
    return records
