"""Weight averaging after training (stochastic weight averaging, Izmailov et al., 2018).

Train with a constant learning rate for a few epochs (for example a fine-tuning run started with
``--init_from``), then average the weights saved at the end of the last K epochs and recompute
the batch-norm statistics with one pass over the training split: the running statistics of the
single epochs do not belong to the averaged weights. Averaging points that a constant learning
rate keeps apart usually generalises better than any one of them; at the end of a decaying
schedule the weights hardly move and there is little to gain. Several runs of one model (for
example fine-tuned from it with different seeds) can be averaged together: their weights are
further apart, and the mean of all their last epochs gains more than each run's own.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..analysis.pictures import N_PICTURE, epoch_picture, picture_rows
from ..data import load_split
from ..data.labels import labels_as
from ..errors import TorchVaeError
from ..io.files import current_umask, file_sha256
from ..io.png import save_png
from ..io.weights import (
    CHECKPOINTS_DIR,
    CONFIG_NAME,
    WEIGHTS_NAME,
    epoch_checkpoint_files,
    resolve_weights,
)
from ..models import VAE, load_model, read_config, save_model
from ..runtime.device import to_float
from .plan import RunPlan, load_run_data
from .rundir import read_run_config, read_run_record

log = logging.getLogger(__name__)
# A temporary output folder untouched for this long belongs to an average that was killed (one
# that is running writes its files within seconds of making the folder).
STALE_SECONDS = 600


def epoch_checkpoints(run_dir: Path) -> list[Path]:
    """The run's per-epoch weight files, oldest first."""
    if not run_dir.is_dir():
        raise TorchVaeError(
            f"{run_dir}: no such run folder; pass a folder written by 'torch-vae train'"
        )
    paths = epoch_checkpoint_files(run_dir)
    if not paths:
        if (run_dir / CONFIG_NAME).is_file():  # a run before the end of its first epoch
            resolve_weights(run_dir)  # says so (and how to go on)
        raise TorchVaeError(
            f"{run_dir} has no {CHECKPOINTS_DIR}/epoch_NNN.safetensors; pass a run folder "
            "written by 'torch-vae train'"
        )
    return paths


def average_weights(paths: list[Path]) -> dict[str, torch.Tensor]:
    """The element-wise mean (computed in float64) of the floating-point tensors of ``paths``;
    integer tensors (batch-norm counters) are taken from the last file."""
    total: dict[str, torch.Tensor] = {}
    last: dict[str, torch.Tensor] = {}
    for path in paths:
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise TorchVaeError(f"{path} is corrupt or truncated ({exc})") from None
        if total and set(state) != set(total):
            raise TorchVaeError(f"{path} holds other tensors than {paths[0]}; not one model")
        for name, tensor in state.items():
            if name in total and tensor.shape != total[name].shape:
                raise TorchVaeError(f"{path}: {name} has another shape than in {paths[0]}")
            if tensor.is_floating_point():
                total[name] = total.get(name, 0) + tensor.double()
            else:
                total.setdefault(name, tensor)
        last = state
    out = {}
    for name, t in total.items():
        out[name] = (t / len(paths)).to(last[name].dtype) if t.is_floating_point() else last[name]
    return out


@torch.no_grad()
def recompute_batch_norm(
    model: VAE,
    images: torch.Tensor,
    device: torch.device,
    batchsize: int = 500,
    seed: int = 0,
    labels: torch.Tensor | None = None,
    progress: bool = False,
) -> None:
    """Replace the batch-norm running statistics of ``model`` by their plain average over
    ``images`` (uint8; of the classes ``labels``, for a conditional model), seen as in
    training: the decoder gets posterior samples, drawn for ``seed`` by a CPU generator (the
    same seed gives the same samples on every device; the global random state is left alone).
    ``model`` ends in eval mode. ``progress``: a progress bar over the batches."""
    from torch.optim.swa_utils import update_bn
    from tqdm import tqdm

    device = torch.device(device)
    starts = range(0, len(images), batchsize)
    shown = tqdm(starts, desc="batch norm", unit="batch", disable=not progress)
    batches = (to_float(images[i : i + batchsize], device) for i in shown)
    classes = iter(labels[i : i + batchsize] for i in starts) if labels is not None else None
    try:
        # resets the running statistics, averages them cumulatively (momentum None) over
        # one pass in train mode, then restores the momenta
        update_bn(batches, _Sampling(model, torch.Generator().manual_seed(seed), classes))
    finally:
        model.eval()


class _Sampling(torch.nn.Module):
    """``model`` decoding posterior samples drawn by ``generator`` (update_bn calls ``m(x)``),
    each batch of the classes ``classes`` yields next (None: an unconditional model)."""

    def __init__(self, model: VAE, generator: torch.Generator, classes=None):
        super().__init__()
        self.model, self.generator, self.classes = model, generator, classes

    def forward(self, x: torch.Tensor):
        y = next(self.classes).to(x.device) if self.classes is not None else None
        return self.model(x, sample=True, generator=self.generator, condition=y)


def average_runs(
    run_dirs: list[Path],
    last: int,
    out: Path,
    data_dir: Path | None = None,
    device: torch.device | str = "cpu",
    batchsize: int = 500,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Average the last ``last`` epochs of each run in ``run_dirs`` (runs of one architecture,
    for example fine-tuned from one model with different seeds) into a new model folder ``out``:
    its weights, the first run's config.json with an ``average`` record, and
    images/average.png (samples and test reconstructions, as a run's epoch pictures). ``out``
    must not exist; it appears complete or not at all. Returns the ``average`` record."""
    if out.exists():
        raise TorchVaeError(f"{out} already exists; pass another --out (nothing was overwritten)")
    paths = _checkpoints_to_average(run_dirs, last)
    model = _check_one_model(paths, device)
    model.load_state_dict(average_weights([p for run in paths.values() for p in run]))
    size = model.config.image_size
    _warn_other_splits(run_dirs)
    _warn_other_starts(run_dirs)
    images, labels, which = _training_images(run_dirs[0], model, data_dir, progress)
    log.info("averaging the last %s of %d run(s)", "epoch" if last == 1 else f"{last} epochs",
             len(run_dirs))  # fmt: skip
    recompute_batch_norm(model, images, torch.device(device), batchsize, seed, labels, progress)
    record = {
        "runs": {str(r): {p.name: file_sha256(p) for p in run} for r, run in paths.items()},
        "batch_norm": f"recomputed on {which}, seed {seed}",
    }
    config_path = run_dirs[0] / CONFIG_NAME
    try:
        config = json.loads(config_path.read_bytes()) if config_path.is_file() else {}
    except (OSError, ValueError, RecursionError) as exc:
        raise TorchVaeError(f"{config_path} is unreadable or corrupt ({exc})") from None
    config["average"] = record
    test = torch.from_numpy(load_split(model.dataset, "test", size, data_dir, progress))
    # as a training run's images/epoch_NNN.png: latents drawn as train draws them for this seed
    z = model.prior_sample(N_PICTURE, torch.Generator().manual_seed(seed), device, torch.float32)
    test_labels = _labels(model, "test", len(test), data_dir)
    shown = picture_rows(len(test))
    test_labels = test_labels[shown] if test_labels is not None else None
    picture = epoch_picture(model, z, test[shown], device, test_labels)
    write_model_folder(out, model, config, {"average.png": picture})
    log.info("wrote %s", out)
    return record


def _training_images(run_dir: Path, model: VAE, data_dir: Path | None, progress: bool):
    """The images the run in ``run_dir`` trained on (its training split without its validation
    images and left-out classes), their labels for a conditional model, and what they are: the
    batch norms' statistics are recomputed on them, so that the averaged model's validation
    numbers (it records the first run's split) stay held out. The whole training split where
    the folder holds no run config."""
    try:
        model_config, train = read_run_config(run_dir)
    except TorchVaeError:
        images = torch.from_numpy(load_split(model.dataset, "train", model.config.image_size,
                                             data_dir, progress))  # fmt: skip
        labels = _labels(model, "train", len(images), data_dir)
        return images, labels, f"the {len(images)} images of the training split"
    # what the run's plan said when it trained (its split, its left-out classes) is not said again
    plan_log = logging.getLogger(load_run_data.__module__)
    level = plan_log.level
    plan_log.setLevel(logging.ERROR)
    try:
        data = load_run_data(RunPlan(run_dir, model_config, train, data_dir), progress)
    finally:
        plan_log.setLevel(level)
    rows = data.rows if data.rows is not None else torch.arange(len(data.train))
    labels = data.train_labels[rows] if data.train_labels is not None else None
    which = f"the {len(rows)} images {run_dir} trained on (its validation images left out)"
    return data.train[rows], labels, which


def _warn_other_splits(run_dirs: list[Path]) -> None:
    """A warning where the runs held out other validation images (each --seed draws its
    own): images one trained on are validation images of the average, which records the
    first run's."""
    digests = {}
    for run_dir in run_dirs:
        try:
            split = read_run_record(run_dir).get("split") or {}
        except TorchVaeError:
            continue
        digests[run_dir] = split.get("validation_rows_sha256") if isinstance(split, dict) else None
    first = digests.get(run_dirs[0])
    other = [str(r) for r, d in digests.items() if d != first]
    if other:
        log.warning("%s held out other validation images than %s (each --seed draws its own, "
                    "unless --split_seed is given): some of the averaged model's validation "
                    "images were trained on by another run, so its validation numbers are "
                    "optimistic; compare it on the test split, or train the runs with one "
                    "--split_seed", ", ".join(other), run_dirs[0])  # fmt: skip


def _warn_other_starts(run_dirs: list[Path]) -> None:
    """A warning where the runs began from other weights (random initialisations of other
    seeds, or other --init_from models): their units do not correspond, so the average of
    their weights is a worse network than each, not a better one."""
    starts: dict[str, list[str]] = {}
    for run_dir in run_dirs:
        try:
            _, train = read_run_config(run_dir)
        except TorchVaeError:
            continue
        start = (f"--init_from {train.init_from}" if train.init_from
                 else f"a random initialisation of seed {train.seed}")  # fmt: skip
        key = train.init_sha256 if train.init_from else start
        starts.setdefault(key, []).append(f"{run_dir} from {start}")
    if len(starts) > 1:
        said = "; ".join(runs[0] for runs in starts.values())
        log.warning("the runs began from other weights (%s): networks trained apart do not "
                    "match unit for unit, so the average of their weights is worse than each; "
                    "average the epochs of one run, or runs fine-tuned from one model (train "
                    "--init_from MODEL)", said)  # fmt: skip


def _labels(model: VAE, split: str, n: int, data_dir: Path | None) -> torch.Tensor | None:
    """A conditional model's classes of the ``n`` images of its dataset's ``split``."""
    if not model.conditional:
        return None
    return torch.from_numpy(labels_as(model.config.classes, model.dataset, split, n, data_dir))


def _checkpoints_to_average(run_dirs: list[Path], last: int) -> dict[Path, list[Path]]:
    """The last ``last`` epoch checkpoints of each run."""
    if len(set(run_dirs)) != len(run_dirs):
        raise TorchVaeError("a run is given twice; pass each run folder once")
    if last < 1:
        raise TorchVaeError(f"--last {last}: average at least the last epoch of each run (--last "
                            "1 or more)")  # fmt: skip
    paths: dict[Path, list[Path]] = {}
    for run_dir in run_dirs:
        found = epoch_checkpoints(run_dir)
        if not 1 <= last <= len(found):
            raise TorchVaeError(
                f"--last {last}: {run_dir} has {len(found)} epoch checkpoint"
                + (f"s; pass 1 to {len(found)}" if len(found) > 1 else "; pass 1")
            )
        paths[run_dir] = found[-last:]
    return paths


def _check_one_model(paths: dict[Path, list[Path]], device) -> VAE:
    """The first run's last model, after checking that every run trained the same model."""
    first, *others = paths
    model = load_model(paths[first][-1], device)
    if model.latent_kind != "gaussian":
        raise TorchVaeError(
            f"average takes models with a Gaussian latent; {first} holds a {model.config.arch} "
            "model, whose codebook entries an average of epochs would mix (a restarted code is "
            "another code at each epoch)"
        )
    if model.dataset is None:
        raise TorchVaeError(f"{paths[first][-1]} does not say which dataset it was trained on")
    for run_dir in others:
        config, dataset, _ = read_config(paths[run_dir][-1])
        if config != model.config or dataset != model.dataset:
            raise TorchVaeError(
                f"{run_dir} is not a run of the same model as {first} (another architecture or "
                "dataset); average runs of one model only"
            )
    return model


def write_model_folder(
    out: Path,
    model: VAE,
    config: dict,
    pictures: dict,
    extra: Callable[[Path], object] | None = None,
) -> None:
    """Write a model folder ``out``: the weights, ``config`` as config.json, ``pictures``
    (file name -> uint8 image) in images/, and whatever ``extra`` writes given the weights'
    path. Written under a temporary name and renamed: it appears whole or not at all.
    Temporary folders of earlier attempts at ``out`` that were killed are removed first."""
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.*"):
        if stale.is_dir() and time.time() - stale.stat().st_mtime > STALE_SECONDS:
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        tmp.chmod(0o777 & ~current_umask())  # mkdtemp's folder is private (0700); a model is not
        save_model(model, tmp / WEIGHTS_NAME, model.dataset)
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        (tmp / "images").mkdir()
        for name, picture in pictures.items():
            save_png(picture, tmp / "images" / name)
        if extra is not None:
            extra(tmp / WEIGHTS_NAME)
        try:
            os.rename(tmp, out)  # fails if out appeared meanwhile: never merged into
        except OSError as exc:
            raise TorchVaeError(f"cannot create {out} ({exc.strerror}); nothing written") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
