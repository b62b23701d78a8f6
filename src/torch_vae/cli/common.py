"""What the commands share: loading the model a command works on with its dataset, the
original's architecture flags checked against it, and the output folder checked before work."""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..analysis.pictures import numbered
from ..data import check_channels, get_dataset, load_split
from ..data.cache import run_data_dir
from ..data.datasets import DECODE_ERRORS, Dataset, FolderDataset, absolute_name, gone_folder
from ..data.imaging import IMAGE_FORMATS, UnsupportedImage, open_image, to_array, with_channels
from ..data.labels import labels_as, rows_without
from ..data.splits import recorded_rows
from ..errors import TorchVaeError
from ..evaluation.reports import report_path
from ..io.files import file_sha256, not_a_file, unwritable
from ..io.png import SOFTWARE
from ..io.weights import CHECKPOINTS_DIR, CONFIG_NAME, WEIGHTS_NAME, resolve_weights
from ..models import VAE, ModelConfig, load_model
from ..runtime.device import pick_device
from ..training.plan import folder_contents, folder_names
from ..training.rundir import RunLock, read_metrics
from .options import Runtime

log = logging.getLogger(__name__)
FEW_IMAGES = 1000  # images below which a measure over them gets a warning that it is rough


def load(model_path: Path, runtime: Runtime, digest: bool = False) -> VAE:
    """The model at ``model_path`` (run folder or weights file) on the runtime's device; with
    ``digest``, with ``weights_sha256``: its weights file's digest, hashed as it is read, for
    the reports measured on it (a run that trains on replaces the file)."""
    device = pick_device(runtime.device, runtime.cpu)  # a bad --device is told first
    sha = file_sha256(resolve_weights(model_path)) if digest else None
    model = load_model(model_path, device)
    if digest:
        model.weights_sha256 = sha
    return model


def resolve_dataset(
    model: VAE,
    dataset: str | None,
    model_path: Path,
    convert: bool = False,
    writes: Path | None = None,
) -> str:
    """``dataset``, by default the one the model was trained on, checked against the model's
    channels; with ``convert``, an image folder's images may have others (``split_images``
    converts them, as any image given to the model is). ``writes``: the folder the command
    writes its pictures to, which must not be inside an image folder it reads."""
    if dataset is None and model.dataset is None:
        raise TorchVaeError(
            f"{model_path} does not say which dataset it was trained on; pass --dataset"
        )
    folder = gone_folder(model.dataset) if dataset is None else None
    if folder is not None:
        raise TorchVaeError(f"{model_path} was trained on the image folder {folder}, which "
                            "does not exist any more; if it moved, pass --dataset "
                            "folder:NEWPATH")  # fmt: skip
    dataset = absolute_name(dataset or model.dataset)  # reports say which folder, from anywhere
    if model.dataset is not None and not is_models_dataset(model, dataset):
        log.info("the images are of %s; the model was trained on %s", dataset, model.dataset)
    if convert and dataset.startswith("folder:"):
        note_conversion(get_dataset(dataset), model.config.in_channels)
    else:
        check_channels(dataset, model.config.in_channels, "the model expects",
                       "pass the dataset the model was trained on")  # fmt: skip
    if writes is not None:
        check_outside_dataset(writes, dataset, model.dataset)
    _say_if_changed(model_path, model, dataset)
    return dataset


def _say_if_changed(model_path: Path, model: VAE, dataset: str) -> None:
    """A warning where ``dataset`` is the image folder (without train/ and test/ subfolders)
    the model's run trained on, and its file names changed since: its splits, drawn from the
    sorted names, then mix images the model trained on into the test split. Runs before the
    names were recorded have their names' and sizes' digest, which a re-encoded file also
    changes: said as a possibility."""
    if not dataset.startswith("folder:") or not is_models_dataset(model, dataset):
        return
    config = run_config(model_path)
    names, both = config.get("image_names_sha256"), config.get("images_sha256")
    try:
        if FolderDataset(
            name=dataset, channels=3, root=Path(dataset.removeprefix("folder:"))
        ).split_folders():
            return  # its splits are its subfolders: no image moves between them
        if isinstance(names, str):
            changed, how = folder_names(dataset) != names, "images were added or removed"
        elif isinstance(both, str):
            changed, how = folder_contents(dataset) != both, "images (or their file sizes) changed"
        else:
            return
    except TorchVaeError:  # a folder the command's own reading will say what is wrong with
        return
    if changed:
        log.warning("%s: %s since the run of %s trained on it; its splits come from the sorted "
                    "file names (every tenth is a test image), so an image added or removed "
                    "mixes images the model trained on into the test split: measure on the "
                    "folder as it was, or a copy of it", dataset.removeprefix("folder:"), how,
                    model_path)  # fmt: skip


def check_outside_dataset(outdir: Path, *datasets: str | None, flag: str = "--outdir") -> None:
    """A one-line error where ``outdir`` (the folder given as ``flag``, or the one a picture
    goes to) is inside the image folder of one of ``datasets`` (what a command reads, its
    model's training folder): its pictures would be read as that folder's images by the next
    command, and a run on it could not resume (its images changed)."""
    out = outdir.expanduser().resolve()
    for dataset in datasets:
        if dataset is None or not dataset.startswith("folder:"):
            continue
        folder = Path(dataset.removeprefix("folder:")).expanduser().resolve()
        if out == folder or folder in out.parents:
            raise TorchVaeError(
                f"{flag} {outdir} is inside the image folder {folder}, whose images the model "
                "reads or was trained on: its pictures would become images of it; pass a place "
                "outside it"
            )


def note_conversion(folder: Dataset, channels: int) -> None:
    """Say that an image folder's images are converted to the model's ``channels``, if theirs
    differ (a folder's images are any images; a dataset's channels are its own)."""
    if folder.channels != channels:
        log.info("the folder's images are converted to %s, as the model takes them",
                 "grey" if channels == 1 else "RGB")  # fmt: skip


def model_and_dataset(
    model_path: Path,
    dataset: str | None,
    runtime: Runtime,
    convert: bool = False,
    writes: Path | None = None,
    digest: bool = False,
) -> tuple[VAE, str]:
    """``load`` and ``resolve_dataset`` in one."""
    model = load(model_path, runtime, digest)
    return model, resolve_dataset(model, dataset, model_path, convert, writes)


def split_images(
    model: VAE, dataset: str, split: str, data_dir: Path | None, runtime: Runtime
) -> np.ndarray:
    """The model-sized uint8 images (N, H, W, C) of ``split``, with the model's channels (an
    image folder's converted, ``resolve_dataset``)."""
    images = load_split(dataset, split, model.config.image_size, data_dir, not runtime.quiet)
    return with_channels(images, model.config.in_channels)


def first_images(images, nimages: int, split: str, verb: str):
    """The first ``nimages`` of a split's ``images`` (0: all), with a log line where the split
    holds fewer (``verb``: what the command does to them, "measured")."""
    if nimages > len(images):
        log.info("--nimages %d: the %s split holds %d images, all %s", nimages, split,
                 len(images), verb)  # fmt: skip
    return images[: nimages or None]


def split_files(dataset: str, split: str) -> list[str] | None:
    """An image folder's split's files (paths in the folder, '/'-separated), in the order its
    images are decoded; None for a registered dataset."""
    if not dataset.startswith("folder:"):
        return None
    folder = FolderDataset(name=dataset, channels=3, root=Path(dataset.removeprefix("folder:")))
    return ["/".join(rel) for rel, _, _ in folder.listing(split)]


def trained_without(model_path: Path) -> tuple[int, ...]:
    """The classes the model's run left out (``train --exclude_class``)."""
    train = run_config(model_path).get("train")
    found = train.get("exclude_class") if isinstance(train, dict) else None
    return tuple(int(c) for c in found) if isinstance(found, list) else ()


def is_models_dataset(model: VAE, dataset: str) -> bool:
    """Whether ``dataset`` (as ``resolve_dataset`` gives it) is the one the model trained on."""
    return dataset == absolute_name(model.dataset or "")


def say_left_out(model_path: Path, model: VAE, dataset: str, split: str, used: str) -> None:
    """A log line where the model's run left classes out (``train --exclude_class``) and the
    command's images (``split`` of ``dataset``, ``used`` as it says) hold them: images of
    classes the model never saw."""
    left_out = trained_without(model_path)
    if left_out and is_models_dataset(model, dataset):
        log.info("the model's run left out class(es) %s (--exclude_class): the %s split %s "
                 "holds them too, images of classes it never saw (score --ood_class measures "
                 "them apart)", ", ".join(map(str, left_out)), split, used)  # fmt: skip


def say_held_out_among(model_path: Path, model: VAE, dataset: str, split: str, verb: str):
    """A log line for ``--split train`` of a run that held validation images out of it: they
    are measured (``verb`` "measure") or scored ("score") too, beside the images it trained
    on."""
    held = run_config(model_path).get("split") if split == "train" else None
    held = held.get("validation_images") if isinstance(held, dict) else None
    if held and is_models_dataset(model, dataset):
        log.info("--split train is the whole training split: the %s validation images the run "
                 "held out are %sd with the images it trained on (--split val %ss them alone)",
                 held, verb, verb)  # fmt: skip


def split_labels(
    model: VAE, dataset: str, split: str, data_dir: Path | None, n: int
) -> torch.Tensor | None:
    """A conditional model's class of each of the ``n`` images of ``split`` (int64 (n,), indices
    into its classes; ``data.labels.labels_as``), or None for an unconditional model."""
    if not model.conditional:
        return None
    return torch.from_numpy(labels_as(model.config.classes, dataset, split, n, data_dir))


def given_class(model: VAE, given: str | None) -> int | None:
    """The index of the class ``given`` (--class; None: none), or a one-line error for a class
    the model does not have, or any class for an unconditional model."""
    return None if given is None else int(model.labels(given, 1)[0])


def decoded_class(model: VAE, given: str | None, own=(), what: str = "the picture") -> int | None:
    """The class a conditional model decodes a picture as: ``given`` (--class), else the class
    of the images it is drawn from (``own``, their labels) where they have one; None for an
    unconditional model, which refuses --class. A one-line error where neither says."""
    if given is not None or not model.conditional:
        return given_class(model, given)
    names = model.config.classes
    found = sorted({int(c) for c in own})
    if len(found) == 1:
        log.info("decoding %s as class %r, that of its images (--class for another)", what,
                 names[found[0]])  # fmt: skip
        return found[0]
    listing = ", ".join(f"{i} {n!r}" for i, n in enumerate(names[:20]))
    more = f" ... ({len(names)} classes)" if len(names) > 20 else ""
    why = "this model is conditional"
    if found:
        why = f"{what} starts from images of different classes"
    raise TorchVaeError(
        f"{why}: pass --class, the class to decode {what} as (one of {listing}{more})"
    )


def check_flags(config: ModelConfig, **flags: int | None) -> None:
    """Architecture flags given on the command line (the original's scripts took them), checked
    against a model's config."""
    for name, value in flags.items():
        if value is None:
            continue
        have = getattr(config, name, None)
        flag = {"in_channels": "nimg_channels"}.get(name, name)
        if value != have:
            raise TorchVaeError(
                f"--{flag} {value} does not match the checkpoint, which has {flag}={have}; "
                "drop the flag (the checkpoint knows its architecture)"
            )


# the folder an --outdir refused as a run's own is suggested under, by the images' prefix
OUTDIR_EXAMPLE = {"sample": "samples", "rec": "reconstructions"}


def check_outdir(outdir: Path, flag: str = "--outdir", images: str | None = None) -> None:
    """Before any work: the output folder (``flag``'s value) can be made, and written. With
    ``images``, the prefix of the numbered images generate and reconstruct write there
    (``sample``, ``rec``), which replace the earlier ones and ``all.png``: the folder is not
    a run's own (the run folder, its checkpoints or images), and every such file there is
    torch-vae's own picture, not a user's."""
    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise TorchVaeError(f"{flag} {outdir} is a file, not a folder; choose another {flag}")
    problem = unwritable(outdir)
    if problem:
        raise TorchVaeError(f"{flag} {outdir} cannot be written: {problem}")
    if images is not None:
        _check_image_outdir(outdir, flag, images)


def _check_image_outdir(outdir: Path, flag: str, prefix: str) -> None:
    """``check_outdir``'s refusals for the folder of generate's or reconstruct's images."""
    # a run's own folders (a subfolder of one of its own, e.g. RUN/samples, is fine)
    own = outdir.name in (CHECKPOINTS_DIR, "images") and is_model_folder(outdir.parent)
    if is_model_folder(outdir) or own:
        what = f"the {outdir.name} folder of a model's run" if own else "a model's run folder"
        run = (outdir.parent if own else outdir).resolve().name
        raise TorchVaeError(f"{flag} {outdir} is {what}, which holds the run's own files; "
                            f"choose another {flag}, e.g. {OUTDIR_EXAMPLE[prefix]}/{run} "
                            "(nothing was written)")  # fmt: skip
    picture = outdir / "all.png"
    if picture.is_file() and not written_by_torch_vae(picture):
        raise TorchVaeError(f"{picture} is not a picture this torch-vae wrote (a user's, or an "
                            f"older version's), and {flag} would replace it; move it or choose "
                            f"another {flag} (nothing was written)")  # fmt: skip
    theirs = [p for p in numbered(outdir, prefix) if not written_by_torch_vae(p)]
    if theirs:
        more = f" and {len(theirs) - 1} more" if len(theirs) > 1 else ""
        raise TorchVaeError(f"{theirs[0]}{more} in {flag} {outdir}: not pictures this torch-vae "
                            f"wrote (a user's, or an older version's), and the {prefix}_*.png "
                            "files there make way for the new ones; move them or choose another "
                            f"{flag} (nothing was written)")  # fmt: skip


def model_name(model_path: Path) -> str:
    """How a title (and a default output folder) names the model: its folder's name, or its
    weights file's (``model.safetensors``, the name every run gives them: its folder's; a
    run's ``checkpoints/epoch_NNN.safetensors``: the run's name and the epoch's)."""
    path = Path(model_path).resolve()
    if path.suffix == ".safetensors" and path.name != WEIGHTS_NAME:
        run = path.parent.parent
        if path.parent.name == CHECKPOINTS_DIR and is_model_folder(run):
            return f"{run.name}-{path.stem}"
        return path.stem
    return path.parent.name if path.name == WEIGHTS_NAME else path.name


def read_image(path: Path, channels: int, size: int) -> np.ndarray:
    """An image file as the dataset pipeline makes it: 8 bits, grayscale or RGB to ``channels``,
    centre-cropped to a square, resized bilinearly to ``size``: uint8 (size, size, C)."""
    if not Path(path).is_file():  # a folder, a FIFO (which would block), nothing at all
        raise TorchVaeError(f"cannot read image {path}: {not_a_file(path)}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with open_image(path) as img:
                return to_array(img, channels, size, crop=True)
    except UnidentifiedImageError:  # an OSError too
        raise TorchVaeError(
            f"{path} is not an image in a format torch-vae reads ({', '.join(IMAGE_FORMATS)})"
        ) from None
    except OSError as exc:
        raise TorchVaeError(f"cannot read image {path} ({exc.strerror or exc})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise TorchVaeError(
            f"cannot read image {path}: it has more than {Image.MAX_IMAGE_PIXELS:,} pixels, "
            "Pillow's limit against decompression bombs; pass a smaller image"
        ) from None
    except (UnsupportedImage, *DECODE_ERRORS) as exc:
        raise TorchVaeError(f"cannot read image {path} ({exc}); pass a PNG or JPEG") from None


def check_index(i: int, n: int, what: str) -> None:
    if not 0 <= i < n:
        raise TorchVaeError(f"--index {i} is out of range: {what} has {n} images (0..{n - 1})")


# What a model or run folder holds (besides reports), and the kinds of file no output flag may
# write over: weights, training states, caches, metrics
RUN_FILES = {"model.safetensors", "config.json", "ckpt.pt", "metrics.jsonl"}
PRECIOUS_SUFFIXES = {".safetensors", ".pt", ".pth", ".ckpt", ".npy", ".npz", ".jsonl"}
REPORT_NAMES = ("eval-*.json", "*.eval-*.json", "sample-quality-*.json", "*.sample-quality-*.json",
                "score-*.json", "*.score-*.json", "score-*.png", "*.score-*.png", "score-*.csv",
                "*.score-*.csv")  # fmt: skip


def is_model_folder(folder: Path) -> bool:
    return (folder / "model.safetensors").is_file() or (folder / "ckpt.pt").is_file()


def shipped_models() -> Path | None:
    """The source tree's models/ folder of shipped models (none in an installed wheel)."""
    root = Path(__file__).resolve().parents[3] / "models"
    return root if root.is_dir() else None


def is_shipped(path: Path) -> bool:
    """Whether ``path`` lies in a shipped model's folder: models/ of this source tree, or of
    any other checkout of torch-vae (a models/ folder beside src/torch_vae), such as a
    second clone used with this installed package."""
    path = Path(path).resolve()
    root = shipped_models()
    if root is not None and path.is_relative_to(root.resolve()):
        return True
    return any(a.name == "models" and (a.parent / "src" / "torch_vae").is_dir()
               for a in path.parents)  # fmt: skip


def check_report_folder(folder: Path) -> None:
    """Before any work: the folder a report goes to by default may be written."""
    problem = unwritable(folder)
    if problem:
        raise TorchVaeError(f"the report goes to {folder} by default, which cannot be written: "
                            f"{problem}; pass --report with a path elsewhere")  # fmt: skip


def check_output_file(path: Path, flag: str, report: bool = False) -> None:
    """Before any work: ``path`` (an output file flag's value) may be written. Never over a
    folder, a weights file, a training state or any other file of a model or run folder (a
    report of ours, with ``report``, may be written again); its folder must be writable."""
    path = Path(path)
    if path.is_dir():
        raise TorchVaeError(f"{flag} {path} is a folder; give a file name")
    check_writable(path, flag)
    if not path.exists():
        return
    if is_shipped(path):
        raise TorchVaeError(f"{flag} {path} is a file of a shipped model, which torch-vae "
                            "will not write over; choose another path (nothing was "
                            "written)")  # fmt: skip
    ours = report and any(path.match(p) for p in REPORT_NAMES)
    in_run = any(is_model_folder(p) for p in (path.parent, path.parent.parent))
    if path.suffix in PRECIOUS_SUFFIXES or path.name in RUN_FILES or (in_run and not ours):
        raise TorchVaeError(
            f"{flag} {path} is a file torch-vae will not write over (weights, a training state "
            "or a file of a model's folder); choose another path (nothing was written)"
        )
    if not ours and not written_by_torch_vae(path):
        raise TorchVaeError(
            f"{flag} {path} exists and is not one of torch-vae's reports, tables or figures; "
            "remove it or choose another path (nothing was written)"
        )


def written_by_torch_vae(path: Path) -> bool:
    """Whether the file at ``path`` is an output torch-vae may replace: a JSON report (an
    object naming its "model"), a scores table (its header starts with "source,") or a
    figure (a PNG whose "Software" is torch-vae's)."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            report = json.loads(path.read_text(encoding="utf-8"))
            return isinstance(report, dict) and "model" in report
        if suffix == ".csv":
            with open(path, encoding="utf-8") as f:
                return f.readline().startswith("source,")
        if suffix == ".png":
            with Image.open(path) as img:
                return img.info.get("Software") == SOFTWARE
    except (OSError, UnicodeDecodeError, ValueError, UnidentifiedImageError):
        return False
    return False


def check_writable(path: Path, flag: str) -> None:
    """A one-line error now, not after the work, for a file that cannot be written there
    (its folder, or the file itself: read-only or immutable)."""
    problem = unwritable(Path(path).parent)
    if problem is None and Path(path).is_file() and not os.access(path, os.W_OK):
        problem = "the file is read-only or immutable; make it writable or choose another path"
    if problem:
        raise TorchVaeError(f"{flag} {path} cannot be written: {problem}")


def default_report(model_path: Path, name: str) -> Path:
    """Where a report goes when no --report is given: beside the model, except for a shipped
    model, whose folder holds its own reference reports: reports/<model>/ in the working
    folder then."""
    if is_shipped(model_path):
        return Path("reports") / model_name(model_path) / f"{name}.json"
    return report_path(model_path, name)


def held_out_rows(model_path: Path, n: int, data_dir: Path | None = None):
    """(rows fitted to, held-out rows, what the held-out images are): the run's recorded
    validation split, or (None, None, "training images") for a model trained on every
    training image (its score is then measured on images it saw). The classes the run left
    out (``train --exclude_class``) are in neither."""
    config = run_config(model_path)
    rows = recorded_rows(n, config)
    train = config.get("train") if isinstance(config.get("train"), dict) else {}
    excluded = train.get("exclude_class") or ()
    kept = None
    if excluded:
        kept = torch.from_numpy(rows_without(train.get("dataset"), "train", n, excluded, data_dir))
    if rows is None:
        split = config.get("split") if isinstance(config.get("split"), dict) else {}
        if split.get("validation_images"):  # recorded, but not found among these images
            return kept, None, ("training images (the run's validation split is not among "
                                "them: another dataset, or one changed since the run)")  # fmt: skip
        return kept, None, "training images (the model held out no validation split)"
    if kept is None:
        return rows[0], rows[1], "validation images"
    keep = torch.zeros(n, dtype=torch.bool)
    keep[kept] = True
    return rows[0][keep[rows[0]]], rows[1][keep[rows[1]]], "validation images"


def use_run_data_dir(values: dict) -> None:
    """A command on a run's model (``values["model"]``) without --data_dir or $TORCH_VAE_DATA
    reads datasets from the data folder the run read (its config.json), where that is still
    there and not the default (``data`` here): no second download or cache of the dataset."""
    if values.get("data_dir") is not None:
        return
    try:
        recorded = run_config(Path(values["model"])).get("data_dir")
    except (TorchVaeError, OSError, TypeError, ValueError):  # --model is checked later
        return
    found = run_data_dir(recorded)
    if found is not None:
        values["data_dir"] = found


def warn_if_training(model_path: Path) -> None:
    """A warning where ``model_path`` is the weights of a run that is training now: what the
    command measures, fits or draws is of the epoch saved last, not of the run's end."""
    try:
        weights = resolve_weights(model_path)
    except (TorchVaeError, OSError):
        return  # the command says what is wrong with --model
    run = weights.parent
    if weights.name != WEIGHTS_NAME or not RunLock.held(run):
        return
    rows = read_metrics(run)
    epochs = run_config(run).get("train", {}).get("epochs")
    which = f"epoch {rows[-1].get('epoch')}'s" if rows else "its last saved"
    of = f" of {epochs}" if rows and isinstance(epochs, int) else ""
    log.warning("the run in %s is training now: its model.safetensors holds %s weights%s, and "
                "what this command measures, fits or draws is of those, not of the run's end",
                run, which, of)  # fmt: skip


def run_config(model_path: Path) -> dict:
    """The config.json beside a model's weights, as written by training, or the run's for an
    epoch checkpoint in its ``checkpoints/`` ({} if none)."""
    weights = resolve_weights(model_path)
    config_file = weights.with_name(CONFIG_NAME)
    if weights.parent.name == CHECKPOINTS_DIR and not config_file.is_file():
        config_file = weights.parent.parent / CONFIG_NAME
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError):
        config = {}
    return config if isinstance(config, dict) else {}


def recorded_split(o, model, dataset: str, flag: str = "--split") -> dict:
    """The validation split the model's run recorded (``--split val`` of ``o``, a command's
    options with ``model``; ``flag``: the flag that asked for it), from its config.json alone,
    or a one-line error where there is none to measure (another dataset, no record)."""
    if not is_models_dataset(model, dataset):
        raise TorchVaeError(f"{flag} val is the validation split of the model's own dataset "
                            f"({model.dataset}), not of {dataset}; use {flag} test")  # fmt: skip
    config = run_config(o.model)
    split = config.get("split") if isinstance(config.get("split"), dict) else {}
    if not config:
        why = f"{o.model} has no config.json of its run beside it (which records the split)"
    elif "val_images" not in (config.get("train") or {}):  # a run of an earlier version
        why = (f"the run of {o.model} holds out no validation images (it trained before runs "
               "held any out)")  # fmt: skip
    elif not split.get("validation_images"):
        why = (f"the run of {o.model} held out no validation images (--val_images 0, or too "
               "few images)")  # fmt: skip
    else:
        return split
    raise TorchVaeError(f"{flag} val: {why}; use {flag} test")


def validation_rows_of(
    o, n: int, split: dict, flag: str = "--split"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows of the ``n`` training images that the model's run trained on and held out
    (``--split val``; ``split``: its record, as ``recorded_split`` gives it), or a one-line
    error where the dataset changed since."""
    fit, rows, _ = held_out_rows(o.model, n, o.data_dir)
    if rows is None:
        total = int(split["validation_images"]) + int(split.get("training_images") or 0)
        run = f"the run of {o.model}"
        why = (f"{run} drew its validation split from {total} training images, and the "
               f"training split has {n} now" if total != n else f"{run} drew its "
               "validation split from other training images than these")  # fmt: skip
        raise TorchVaeError(f"{flag} val: {why}: the dataset changed since it trained; use "
                            f"{flag} test")  # fmt: skip
    if not len(rows):
        raise TorchVaeError(f"{flag} val: the validation split of {o.model} holds no image of "
                            f"the classes it trained on; use {flag} test")  # fmt: skip
    return fit, rows
