"""``torch-vae train``: the flags become a model config, a training config and a plan
(training.plan), and ``training.execute`` runs it, as ``torch_vae.train`` does from Python.
``--resume`` and ``--init_from`` take their architecture from the run or the weights: flags
given beside them must agree with it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..data import get_dataset
from ..data.datasets import absolute_name, gone_folder
from ..errors import TorchVaeError
from ..io.weights import CONFIG_NAME
from ..models import read_config
from ..training import TrainConfig, execute
from ..training.distributed import Distributed
from ..training.plan import RunPlan, initial_config, plan_new, plan_resume
from ..training.rundir import read_run_config
from .flags import model_config, model_options, pick
from .options import RunOptions, Runtime

# Options of train that --resume accepts: they extend the run or choose how it runs. Every
# other option describes the run itself, which config.json already fixes.
RESUME_OPTIONS = {"resume", "epochs", "max_steps", "cpu", "device", "threads", "quiet", "data_dir",
                  "nproc_per_node"}  # fmt: skip


def model_option_names() -> set[str]:
    return {f.name for f in model_options().__dataclass_fields__.values()}


def run(values: dict[str, Any], given: set[str]) -> None:
    runtime = pick(Runtime, values)
    execute(planner(values, given), runtime.device, not runtime.quiet, runtime.cpu)


def planner(values: dict[str, Any], given: set[str]) -> Callable[[Distributed], RunPlan]:
    """The plan of the train command's option ``values``, of which ``given`` were typed on
    the command line; a one-line ``TorchVaeError`` for anything that contradicts itself."""
    o = pick(RunOptions, values)

    def make(dist: Distributed) -> RunPlan:
        if o.resume is not None:
            return _resume(o.resume, values, given, dist.is_main)
        if o.init_from is not None:
            config, _, _ = read_config(o.init_from)
            _check_given(values, given & model_option_names() - {"native_size"},
                         lambda _: config, f"--init_from {o.init_from}",
                         "the architecture is the initial model's")  # fmt: skip
            native = values["native_size"] if "native_size" in given else None
            model, _ = initial_config(o.init_from, native)
        else:
            model = model_config(values, get_dataset(values["dataset"]).channels)
        train = pick(TrainConfig, values)
        return plan_new(model, train, o.run_dir, o.data_dir, o.init_from, o.dry_run, dist)

    return make


def _resume(run_dir: Path, values: dict[str, Any], given: set[str], lock: bool) -> RunPlan:
    if run_dir.is_file():
        folder = run_dir.resolve().parent
        if (folder / CONFIG_NAME).is_file():  # a file of a run: its folder is meant
            raise TorchVaeError(f"--resume {run_dir} is a file; --resume takes the run's folder "
                                f"(the one holding it: {folder})")  # fmt: skip
        raise TorchVaeError(f"--resume {run_dir} is a file, not a run folder; --resume takes the "
                            "folder of a run of torch-vae train (the one holding its "
                            "config.json and ckpt.pt)")  # fmt: skip
    if not run_dir.is_dir():
        raise TorchVaeError(f"--resume {run_dir}: no such run folder")
    for flag in ("config", "dry_run", "run_dir", "init_from"):
        if flag in given:
            raise TorchVaeError(
                f"--{flag} cannot be combined with --resume, which continues the run in "
                f"{run_dir} with the config stored there"
            )
    model, train = read_run_config(run_dir)
    names = model_option_names()
    # a run whose folder of images is gone continues on the one --dataset names (checked)
    moved = "dataset" in given and gone_folder(train.dataset) is not None
    if "dataset" in given:
        values = {**values, "dataset": absolute_name(values["dataset"])}
    _check_given(
        values, given - RESUME_OPTIONS - ({"dataset"} if moved else set()),
        lambda name: model if name in names else train, f"the run in {run_dir}",
        "--resume continues the run with its own config; only --epochs and --max_steps may "
        "change (and --dataset where its folder of images moved)",
    )  # fmt: skip
    extend = {k: values[k] if k in given else None for k in ("epochs", "max_steps")}
    return plan_resume(run_dir, extend["epochs"], extend["max_steps"], values["data_dir"], lock,
                       values["dataset"] if moved else None)  # fmt: skip


def _check_given(values, names, config_of, where: str, why: str) -> None:
    """A one-line error for the first option in ``names`` whose value differs from the one
    stored in ``config_of(name)`` (a model or training config)."""
    for name in sorted(names):
        value, stored = values[name], getattr(config_of(name), name, None)
        if value != stored:
            has = f"no {name}" if stored is None else f"{name}={stored}"
            raise TorchVaeError(
                f"--{name} {value} does not match {where}, which has {has}; drop the flag ({why})"
            )
