"""Planning a run before it starts: a new run (``plan_new``, also from ``init_from`` weights)
or one continued from its saved state (``plan_resume``). Every check that can fail on the
user's input happens here, before the training loop starts and before anything is written,
except the run folder itself, which ``plan_new`` makes (so that two runs started at once never
take the same one).
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data import check_channels, get_dataset, load_split, read_only
from ..data.cache import CacheRows, gather_for, run_data_dir
from ..data.datasets import FolderDataset, absolute_name, gone_folder
from ..data.labels import check_every_image_labelled, class_names, load_labels, rows_without
from ..data.splits import rows_digest, validation_rows, validation_size
from ..errors import TorchVaeError
from ..io.files import file_sha256
from ..io.weights import WEIGHTS_NAME
from ..models import ModelConfig, load_model, read_config
from ..models.conditions import class_index
from .config import TrainConfig
from .distributed import Distributed
from .rundir import (
    RunLock,
    check_new_run_dir,
    clear_left_over_run,
    new_run_dir,
    read_run_config,
    read_run_record,
)
from .state import load_train_state, new_run_command

log = logging.getLogger(__name__)

DRY_RUN_TEST_IMAGES = 64


@dataclass(frozen=True)
class RunPlan:
    """What a training run will do, decided before it starts."""

    run_dir: Path
    model: ModelConfig
    train: TrainConfig
    data_dir: Path | None = None
    resume: dict[str, Any] | None = None  # the training state to continue from (ckpt.pt)
    test_limit: int | None = None  # evaluate on the first N test images only (dry_run)
    # held by the process that writes the folder (rank 0 under torchrun) until the run ends
    lock: RunLock | None = field(default=None, compare=False, repr=False)
    temporary: bool = False  # a dry run's own folder, removed when it ends


def initial_config(init_from: Path, native_size: int | None = None) -> tuple[ModelConfig, str]:
    """The model config of the weights ``init_from`` (with another ``native_size``, which has
    no weights, if given) and the path of their file."""
    config, _, weights = read_config(init_from)
    if config.network_size and native_size not in (None, config.native_size):
        raise TorchVaeError(
            f"--native_size {native_size}: the networks of --init_from {init_from} work on "
            f"its --native_size {config.native_size} images (--network_size "
            f"{config.network_size}), so it cannot change; leave --native_size out"
        )
    if native_size is not None:
        config = dataclasses.replace(config, native_size=native_size)
    return config, str(Path(weights).resolve())


def weights_fit(config: ModelConfig, start: ModelConfig) -> bool:
    """Whether the weights of a model ``start`` fit a model ``config``: the same model up to
    ``native_size``, which has no weights (a model may be fine-tuned with another one), unless
    ``start``'s networks work on its native size (``network_size``)."""
    if start.network_size:
        return config == start
    return dataclasses.replace(config, native_size=start.native_size) == start


def config_difference(wanted: ModelConfig, have: ModelConfig) -> str:
    """What differs between the model to train and the weights' (``have``), field by field;
    with a hint where the class conditioning is what differs."""
    a, b = wanted.to_dict(), have.to_dict()

    def shown(key: str, value: Any) -> str:
        return f"{len(value)} classes" if key == "classes" and value else repr(value)

    keys = [k for k in sorted({*a, *b}) if a.get(k) != b.get(k)]
    parts = [f"{k} {shown(k, b.get(k, ()))} there, {shown(k, a.get(k, ()))} here" for k in keys]
    text = "; ".join(parts) or str(have)
    if "classes" in keys:
        text += (" (a conditional model's networks take the class too: it cannot start from an "
                 "unconditional model's weights, nor the reverse)")  # fmt: skip
    return text


def plan_new(
    model: ModelConfig | None,
    train: TrainConfig,
    run_dir: Path | None = None,
    data_dir: Path | None = None,
    init_from: Path | None = None,
    dry_run: bool = False,
    dist: Distributed | None = None,
) -> RunPlan:
    """The plan of a new run of ``model`` with ``train``: in ``run_dir`` (it must be free or
    empty; default: a new numbered folder under runs/), started from the weights of
    ``init_from`` if given (``model`` None: theirs; else it must be theirs up to
    ``native_size``), ``dry_run``: 1 epoch of 2 steps, evaluated on 64 held-out images."""
    dist = dist or Distributed()
    if dry_run:
        train = dataclasses.replace(train, epochs=1, max_steps=2)
    train = dataclasses.replace(train, dataset=absolute_dataset(train.dataset))
    if init_from is not None:
        start, weights = initial_config(Path(init_from))
        if model is None:
            model = start
        elif not weights_fit(model, start):
            raise TorchVaeError(f"init_from {init_from} is another model: "
                                f"{config_difference(model, start)}")  # fmt: skip
        what = f"--init_from {init_from} is a model of"
        fix = "start from a model trained on images with as many channels"
        train = dataclasses.replace(train, init_from=weights, init_sha256=file_sha256(weights))
    elif model is None:
        raise TorchVaeError("pass the model's config (or init_from weights to start from)")
    else:
        what = "the model config has"
        fix = f"pass in_channels={get_dataset(train.dataset).channels} for this dataset"
    check_channels(train.dataset, model.in_channels, what, fix)
    if train.exclude_class:
        classes = excluded_classes(train.dataset, train.exclude_class, data_dir)
        train = dataclasses.replace(train, exclude_class=classes)
    if train.conditional and not model.classes:
        model = dataclasses.replace(model, classes=tuple(dataset_classes(train.dataset, data_dir)))
    locks: list[RunLock] = []
    temporary = dry_run and run_dir is None  # a quick check leaves no folder behind
    if temporary:
        folder = dist.decide(lambda: Path(tempfile.mkdtemp(prefix="torch-vae-dry-run-")))
    else:
        folder = dist.decide(lambda: _choose_run_dir(run_dir, train, model, locks))
    limit = DRY_RUN_TEST_IMAGES if dry_run else None
    lock = locks[0] if locks else None
    return RunPlan(folder, model, train, data_dir, None, limit, lock, temporary)


def absolute_dataset(name: str) -> str:
    """``name`` as the run records it: a folder of images as ``folder:ABSOLUTE_PATH``, so that
    the run's commands find it from any working folder; a named dataset as it is."""
    found = get_dataset(name)  # a one-line error for an unknown name or a folder without images
    if isinstance(found, FolderDataset):
        _warn_of_other_split_names(found.root)
    return absolute_name(name)


def _warn_of_other_split_names(root: Path) -> None:
    """A warning for a folder split as train/ and val/ (no test/): those are read as two
    classes, and every tenth image is the test split."""
    held = [n for n in ("val", "valid", "validation") if (root / n).is_dir()]
    if (root / "train").is_dir() and held and not (root / "test").is_dir():
        log.warning("%s has train/ and %s/ but no test/: a folder's splits are train/ and "
                    "test/, so train/ and %s/ are read as classes here and every tenth image "
                    "is the test split; rename %s/ to test/ to make it the test split", root,
                    held[0], held[0], held[0])  # fmt: skip


def _choose_run_dir(
    run_dir: Path | None, train: TrainConfig, model: ModelConfig, locks: list[RunLock]
) -> Path:
    """``run_dir`` if it is free, else a new numbered folder under runs/ (rank 0 decides).
    The folder is made and locked here, so that two runs started at once never share one."""
    if run_dir is not None:
        if run_dir.is_dir() and clear_left_over_run(run_dir):
            log.info("%s held only the config.json of a run that saved nothing (stopped before "
                     "its first epoch ended): starting anew there", run_dir)  # fmt: skip
        check_new_run_dir(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        locks.append(RunLock(run_dir))
        check_new_run_dir(run_dir)  # another run may have written it before the lock
        return run_dir
    dataset = train.dataset
    stem = "mnist" if dataset == "mnist" else get_dataset(dataset).source_id(Path())
    folder = new_run_dir(Path("runs"), model.run_name(stem))
    locks.append(RunLock(folder))
    return folder


def plan_resume(
    run_dir: Path,
    epochs: int | None = None,
    max_steps: int | None = None,
    data_dir: Path | None = None,
    lock_folder: bool = True,
    moved_to: str | None = None,
) -> RunPlan:
    """The plan that continues the run in ``run_dir`` with its own config, ``epochs`` and
    ``max_steps`` possibly extended; a one-line error for a finished run. ``moved_to``: the
    folder of images the run's folder dataset was moved to (its names and sizes checked)."""
    if not Path(run_dir).is_dir():
        raise TorchVaeError(f"--resume {run_dir}: no such run folder")
    lock = RunLock(run_dir, resuming=True) if lock_folder else None
    model, train = read_run_config(run_dir)
    if epochs is not None and epochs < train.epochs:  # the schedule spans the run's epochs
        raise TorchVaeError(
            f"--epochs {epochs} is fewer than the run's own {train.epochs}: a resume may raise "
            f"--epochs, not lower it (its learning-rate schedule spans them); "
            + _last_weights(Path(run_dir))
        )
    changes = {k: v for k, v in (("epochs", epochs), ("max_steps", max_steps)) if v is not None}
    if moved_to is not None:
        changes["dataset"] = moved_folder(run_dir, train.dataset, moved_to)
    train = dataclasses.replace(train, **changes)
    state = load_train_state(run_dir)
    if max_steps and max_steps < state["step"]:  # else it would end at once, as if finished
        raise TorchVaeError(
            f"the run in {run_dir} is at step {state['step']}, past --max_steps {max_steps}; "
            "pass a larger --max_steps to train it further, or leave it out"
        )
    # a run stopped after its last step but before that step's evaluation and weights were
    # saved (a signal during the evaluation) is not finished: a resume saves them
    steps_left = not train.max_steps or state["step"] < train.max_steps
    finished = state["epoch"] >= train.epochs or (not steps_left and state.get("evaluated", True))
    if finished:
        if state["epoch"] < train.epochs:  # stopped by --max_steps before its last epoch
            fix = f"a larger --max_steps, or --max_steps 0 to train to --epochs {train.epochs}"
        else:
            fix = "a larger --epochs" + ("" if steps_left else " and a larger --max_steps "
                                         "(or --max_steps 0)")  # fmt: skip
        raise TorchVaeError(
            f"the run in {run_dir} is already finished ({_progress(state, train)}); to train "
            f"it further, pass {fix}"
        )
    _check_folder_there(run_dir, train.dataset)
    # from elsewhere, the data folder the run read: no second download or cache of the dataset
    data_dir = data_dir or run_data_dir(read_run_record(run_dir).get("data_dir"))
    check_channels(
        train.dataset, model.in_channels, "the run's model expects",
        "the images changed since the run began",
    )  # fmt: skip
    return RunPlan(Path(run_dir), model, train, data_dir, state, lock=lock)


def _last_weights(run_dir: Path) -> str:
    """Where the weights of the run's last finished epoch are, or that it finished none."""
    if (run_dir / WEIGHTS_NAME).is_file():
        return f"the weights of its last finished epoch are in {run_dir / WEIGHTS_NAME}"
    return "it has finished no epoch yet, so no weights are saved"


def _check_folder_there(run_dir: Path, dataset: str) -> None:
    """A one-line error with the ways on for a run whose folder of images is gone (moved)."""
    folder, weights = gone_folder(dataset), Path(run_dir) / WEIGHTS_NAME
    if folder is not None:
        command = new_run_command(run_dir, weights, " --dataset folder:NEWPATH")
        new = f", or start a new run from its weights: {command}" if weights.is_file() else ""
        raise TorchVaeError(
            f"the run in {run_dir} trains on the image folder {folder}, which does not exist "
            f"any more; if it moved, continue it there with --resume {run_dir} --dataset "
            f"folder:NEWPATH, or move it back{new}"
        )


def folder_contents(dataset: str) -> str | None:
    """What config.json records of a folder dataset's images (``FolderDataset.contents``:
    their names and sizes), None for a registered dataset; no image is opened."""
    if not dataset.startswith("folder:"):
        return None
    root = Path(dataset.removeprefix("folder:"))
    return FolderDataset(name=dataset, channels=3, root=root).contents()


def folder_names(dataset: str) -> str | None:
    """What config.json records of a folder dataset's file names alone
    (``FolderDataset.names``), None for a registered dataset."""
    if not dataset.startswith("folder:"):
        return None
    root = Path(dataset.removeprefix("folder:"))
    return FolderDataset(name=dataset, channels=3, root=root).names()


def moved_folder(run_dir: Path, recorded: str, given: str) -> str:
    """The dataset a run whose folder moved continues on: ``given`` (--dataset), once it holds
    the images the run recorded (their names and sizes); a one-line error otherwise."""
    new = absolute_name(given)
    if not recorded.startswith("folder:"):
        raise TorchVaeError(f"--dataset {given}: the run in {run_dir} trains on {recorded}, "
                            "not a folder of images; drop the flag")  # fmt: skip
    if gone_folder(recorded) is None:
        raise TorchVaeError(f"the run in {run_dir} trains on {recorded.removeprefix('folder:')}, "
                            "which is still there; drop --dataset to continue on it")  # fmt: skip
    if not new.startswith("folder:"):
        raise TorchVaeError(f"--dataset {given}: the run in {run_dir} trains on a folder of "
                            "images; pass the folder it moved to as folder:NEWPATH")  # fmt: skip
    want = read_run_record(run_dir).get("images_sha256")
    if not isinstance(want, str):
        raise TorchVaeError(
            f"the run in {run_dir} did not record its images' names and sizes, so --dataset "
            f"{given} cannot be checked against them; move the folder back to "
            f"{recorded.removeprefix('folder:')} to continue the run"
        )
    if folder_contents(new) != want:
        raise TorchVaeError(
            f"{new.removeprefix('folder:')} does not hold the images the run in {run_dir} "
            "trained on (their names or sizes differ); pass the folder it moved to"
        )
    return new


@dataclass(frozen=True)
class RunData:
    """A run's images: the training split (uint8 (N, H, W, C)), the rows of it trained on
    (None: all), and what every epoch is measured on, the validation split (``prefix``
    "val") or, for a run without one, the test split ("test"). ``eval`` is a tensor, or the
    validation rows of a cache's map read from its file when indexed (``CacheRows``)."""

    train: torch.Tensor
    rows: torch.Tensor | None
    eval: torch.Tensor | CacheRows
    prefix: str
    split: dict[str, Any] | None = None  # what config.json records of the validation split
    # a conditional model's: the class of every training image (N,), and of every eval image
    train_labels: torch.Tensor | None = None
    eval_labels: torch.Tensor | None = None


def load_run_data(plan: RunPlan, progress: bool, dist: Distributed | None = None) -> RunData:
    """The images of the plan's dataset (``RunData``). The cache is built once, by rank 0; the
    other processes then read it."""
    dist = dist or Distributed()
    size = plan.model.image_size

    def load() -> tuple[torch.Tensor, torch.Tensor]:
        arrays = [load_split(plan.train.dataset, s, size, plan.data_dir, progress)
                  for s in ("train", "test")]  # fmt: skip
        with warnings.catch_warnings():  # the training set's map is read-only, and only read
            warnings.filterwarnings("ignore", "The given NumPy array is not writable")
            return torch.from_numpy(read_only(arrays[0])), torch.from_numpy(arrays[1])

    train_images, test_images = dist.first_then_others(load)
    train_labels, test_labels = run_labels(plan, len(train_images), len(test_images))
    limit = plan.test_limit
    kept = kept_rows(plan, "train", len(train_images))
    if validation_size(len(train_images), plan.train.val_images):
        _warn_capped(plan.train.val_images, len(train_images), dist)
        rows, val = validation_rows(
            len(train_images), plan.train.val_images, plan.train.validation_seed
        )
        digest = rows_digest(val)  # of the rows drawn, before any class is left out
        if kept is not None:
            keep = torch.zeros(len(train_images), dtype=torch.bool)
            keep[kept] = True
            drawn, (rows, val) = len(val), (rows[keep[rows]], val[keep[val]])
            if len(val) < drawn and dist.is_main:
                log.info("%d of the %d validation images drawn are of the classes "
                         "--exclude_class leaves out: %d remain", drawn - len(val), drawn,
                         len(val))  # fmt: skip
        if len(val):
            split = {"validation_images": len(val), "training_images": len(rows),
                     "validation_rows_sha256": digest}  # fmt: skip
            # Where the set is a cache's map, the validation images are read from its file
            # batch by batch as each evaluation needs them (CacheRows): indexing the map would
            # map the page-cache folios around every image (up to 2 MB each: 4 GB of resident
            # set for 5,000 images of a 128x128 CelebA split), and a copy would be held by
            # every torchrun process (245 MB each there), though each evaluates only its
            # share. Else a copy.
            gather = gather_for(train_images)
            val_images = CacheRows(gather, val[:limit]) if gather else train_images[val[:limit]]
            val_labels = train_labels[val[:limit]] if train_labels is not None else None
            return RunData(train_images, rows, val_images, "val", split, train_labels,
                           val_labels)  # fmt: skip
        if dist.is_main:
            log.warning("the validation images drawn from the training split are all "
                        "of the classes --exclude_class leaves out; each epoch is measured on "
                        "the test split instead")  # fmt: skip
    elif plan.train.val_images and dist.is_main:  # asked for, but a tenth is not one image
        log.warning("the %d training images are too few to hold out validation "
                    "images (at most a tenth of them); each epoch is measured on the test "
                    "split instead", len(train_images))  # fmt: skip
    test_images, test_labels = _test_rows(plan, test_images, test_labels)
    return RunData(train_images, kept, test_images, "test", None, train_labels, test_labels)


def _test_rows(plan: RunPlan, images: torch.Tensor, labels: torch.Tensor | None):
    """The test split's images and labels a run measures its epochs on where it holds out no
    validation images: outside ``exclude_class``, the first ``test_limit``; a one-line error
    where none is left."""
    rows = kept_rows(plan, "test", len(images))
    if rows is not None:
        images, labels = images[rows], labels[rows] if labels is not None else None
    if not len(images):
        raise TorchVaeError(
            f"--exclude_class {','.join(map(str, plan.train.exclude_class))} leaves no image "
            f"of {plan.train.dataset}'s test split to measure the epochs on (and none of the "
            "validation images drawn from its training split); add test images of the other "
            "classes, or pass another --seed"
        )
    limit = plan.test_limit
    return images[:limit], labels[:limit] if labels is not None else None


def _warn_capped(requested: int, n: int, dist: Distributed) -> None:
    """A --val_images given above a tenth of the split is held out as a tenth: say so (the
    default's cap on a small split is what its help says)."""
    held_out = validation_size(n, requested)
    default = TrainConfig.__dataclass_fields__["val_images"].default
    if held_out < requested != default and dist.is_main:
        log.warning("--val_images %d is more than a tenth of the %d training images: %d are "
                    "held out", requested, n, held_out)  # fmt: skip


def excluded_classes(dataset: str, classes, data_dir: Path | None) -> tuple[int, ...]:
    """The sorted indices of the classes ``classes`` (indices or names) of ``dataset``, for
    ``--exclude_class``; a one-line error for a dataset without classes, an unknown class,
    or every class."""
    names = class_names(dataset, data_dir)
    if not names:
        raise TorchVaeError(
            f"--exclude_class needs a dataset with classes; {dataset} has none (MNIST, "
            "Fashion-MNIST, CIFAR-10/100, or a folder with a subfolder per class)"
        )
    try:
        out = tuple(sorted({class_index(names, c) for c in classes}))
    except TorchVaeError as exc:
        raise TorchVaeError(f"--exclude_class: {exc}") from None
    if len(out) == len(names):
        raise TorchVaeError(f"--exclude_class leaves none of the {len(names)} classes to train on")
    return out


def kept_rows(plan: RunPlan, split: str, n: int) -> torch.Tensor | None:
    """The rows of ``split`` (``n`` images) outside the run's ``exclude_class`` (None: no class
    is left out)."""
    classes = plan.train.exclude_class
    if not classes:
        return None
    rows = rows_without(plan.train.dataset, split, n, classes, plan.data_dir, "--exclude_class")
    return torch.from_numpy(rows)


def dataset_classes(dataset: str, data_dir: Path | None) -> list[str]:
    """The class names a conditional model of ``dataset`` is trained on."""
    names = class_names(dataset, data_dir)
    if names and len(names) == 1:
        raise TorchVaeError(
            f"--conditional needs two classes or more; {dataset} has one, its subfolder "
            f"{names[0]!r} (a folder's classes are its subfolders: add one per class)"
        )
    if not names:
        raise TorchVaeError(
            f"--conditional needs a dataset with classes; {dataset} has none (MNIST, "
            "Fashion-MNIST, CIFAR-10/100, or a folder with a subfolder per class)"
        )
    return names


def run_labels(
    plan: RunPlan, n_train: int, n_test: int
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """A conditional run's labels of the training and test images (None, None otherwise),
    checked against the model's classes."""
    classes = plan.model.classes
    if not classes:
        return None, None
    dataset = plan.train.dataset
    if list(classes) != dataset_classes(dataset, plan.data_dir):
        raise TorchVaeError(
            f"the model's classes ({', '.join(classes[:5])}...) are not those of {dataset} now"
        )
    out = []
    for split, n in (("train", n_train), ("test", n_test)):
        labels = load_labels(dataset, split, plan.data_dir)
        check_every_image_labelled(labels, n, dataset, split, "--conditional needs one")
        out.append(torch.from_numpy(labels.astype("int64")))
    _warn_untrained_classes(classes, out[0], plan.train.exclude_class)
    return out[0], out[1]


def _warn_untrained_classes(classes, train_labels: torch.Tensor, excluded) -> None:
    """A warning for each class with no training image that --exclude_class did not leave out
    (a folder's class subfolder only in test/): the model would draw it untrained."""
    seen = set(train_labels.unique().tolist())
    missing = [c for i, c in enumerate(classes) if i not in seen and i not in set(excluded or ())]
    if missing:
        log.warning("class(es) %s have no training images, only test images: the model "
                    "cannot learn them; add training images or remove their folders",
                    ", ".join(missing))  # fmt: skip


def initial_weights(plan: RunPlan) -> dict[str, torch.Tensor]:
    """The weights of ``init_from``, if they are still the same file and fit the model."""
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
    if not weights_fit(plan.model, init.config):
        raise TorchVaeError(f"the initial weights {path} are for another model: "
                            f"{config_difference(plan.model, init.config)}")  # fmt: skip
    return init.state_dict()


def _progress(state: dict[str, Any], train: TrainConfig) -> str:
    """How far a finished run went, in the words of the flag that stopped it."""
    if state["epoch"] > train.epochs:  # a resume asked for fewer epochs than it has
        return f"{state['epoch']} epochs, more than --epochs {train.epochs}; {state['step']} steps"
    if state["epoch"] >= train.epochs:
        return f"{state['epoch']} of --epochs {train.epochs}, {state['step']} steps"
    return f"{state['step']} of --max_steps {train.max_steps}, in epoch {state['epoch'] + 1}"
