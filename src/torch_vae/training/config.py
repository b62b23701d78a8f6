"""The training configuration: hyper-parameters recorded in every run folder's config.json."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, get_args

from ..data.datasets import DATASET_HELP
from ..errors import TorchVaeError
from ..fields import (
    JsonConfig,
    check_choice,
    check_number,
    check_seed,
    non_negative,
    option,
    positive,
)
from ..models.losses import RECON_LOSSES
from ..runtime.precision import PRECISIONS, PrecisionName
from .loggers import check_logger_options

ReconLoss = Literal["mse", "bce", "gaussian"]
LrSchedule = Literal["constant", "cosine"]
LR_SCHEDULES: tuple[str, ...] = get_args(LrSchedule)


@dataclass(frozen=True)
class TrainConfig(JsonConfig):
    """Training hyper-parameters, recorded in every run folder."""

    SECTION: ClassVar[str] = "training"

    dataset: str = option("fashion-mnist", DATASET_HELP)
    epochs: int = option(100, "training epochs")
    batchsize: int = option(32, "batch size (the global batch under torchrun)")
    lr: float = option(3e-4, "AdamW learning rate")
    weight_decay: float = option(0.01, "AdamW weight decay")
    beta: float = option(1.0, "weight of the KL term")
    recon_loss: ReconLoss = option(
        "mse",
        "mse: sum of squared errors (the original); bce: Bernoulli likelihood; gaussian: "
        "Gaussian likelihood with each image's optimal decoder variance (sharper samples)",
    )
    lr_schedule: LrSchedule = option(
        "constant", "constant (the original) or cosine decay to 0 over the run"
    )
    kl_warmup_epochs: float = option(
        0.0, "raise the KL weight linearly from 0 to --beta over this many epochs"
    )
    seed: int = option(0, "random seed")
    split_seed: int | None = option(
        None,
        "seed that draws the validation images (default: --seed): give runs that are fine-tuned "
        "from one model or averaged together the one their model was trained with, so that "
        "they hold out the same images",
    )
    conditional: bool = option(
        False,
        "a class-conditional VAE: encoder and decoder take each image's class (the "
        "dataset's labels; a folder's class subfolders), and generate takes --class",
    )
    exclude_class: tuple[int | str, ...] = option(
        (),
        "classes left out of training and validation, by index or name, repeatable or "
        "comma-separated (--exclude_class 7 --exclude_class sandal, or 5,7): a model that "
        "has never seen them, for out-of-distribution tests (torch-vae score --ood_class); "
        "the run records them as indices",
        action="append",
        type=str,
        metavar="CLASS",
    )
    val_images: int = option(
        5000,
        "training images held out as the validation split (chosen by --split_seed, by default "
        "--seed; at most 10%% of "
        "the split), on which every epoch is measured; 0: none, measure on the test split",
    )
    max_steps: int = option(0, "stop after this many optimizer steps (0: no limit)")
    precision: PrecisionName = option(
        "auto",
        "auto: bf16 mixed precision where the hardware computes bf16 natively (CPUs with AMX or "
        "AVX-512 BF16, GPUs from Ampere on), else fp32; or fp32, bf16, fp16 (autocast). The "
        "run records the precision auto chose, so a resumed run keeps it; see "
        "docs/benchmarks.md",
    )
    compile: bool = option(False, "torch.compile the model")
    logger: str = option(
        "jsonl",
        "experiment loggers, comma-separated: jsonl (metrics.jsonl, always on), tensorboard "
        "(event files in RUN/tensorboard), mlflow (a run in --mlflow_uri); e.g. --logger "
        "tensorboard,mlflow. A resume continues the same TensorBoard and MLflow runs",
        metavar="NAMES",
    )
    mlflow_uri: str = option(
        "",
        "MLflow tracking URI or folder for --logger mlflow (default: RUN/mlruns, a file store)",
        metavar="URI",
    )
    # weights the run started from ("": random initialisation), set from --init_from
    init_from: str = option("", "", flag=False)
    init_sha256: str = option("", "", flag=False)  # their SHA-256, checked when the run starts

    def __post_init__(self) -> None:
        if not isinstance(self.dataset, str) or not self.dataset:
            raise TorchVaeError(f"--dataset must be a name or folder:PATH, got {self.dataset!r}")
        positive("--epochs", self.epochs, 10**6, "--epochs 10")
        positive("--batchsize", self.batchsize, 2**24, "--batchsize 128")
        check_number("--lr", self.lr, 0, True, "--lr 3e-4")
        check_number("--weight_decay", self.weight_decay, 0, False, "--weight_decay 0.01")
        check_number("--beta", self.beta, 0, False, "--beta 1")
        check_choice("--recon_loss", self.recon_loss, RECON_LOSSES)
        check_seed("--seed", self.seed)
        if self.split_seed is not None:
            check_seed("--split_seed", self.split_seed)
        non_negative("--val_images", self.val_images, 2**31)
        non_negative("--max_steps", self.max_steps)
        check_choice("--lr_schedule", self.lr_schedule, LR_SCHEDULES)
        check_number("--kl_warmup_epochs", self.kl_warmup_epochs, 0, False, "--kl_warmup_epochs 1")
        check_choice("--precision", self.precision, PRECISIONS)
        if not isinstance(self.compile, bool):
            raise TorchVaeError(f"--compile must be true or false, got {self.compile!r}")
        check_logger_options(self.logger, self.mlflow_uri)
        object.__setattr__(self, "exclude_class", class_list(self.exclude_class))
        if not isinstance(self.init_from, str) or not isinstance(self.init_sha256, str):
            raise TorchVaeError("init_from and init_sha256 must be strings")
        if self.init_from and not re.fullmatch(r"[0-9a-f]{64}", self.init_sha256):
            raise TorchVaeError(
                f"init_sha256 must be the 64-digit SHA-256 of {self.init_from}, "
                f"got {self.init_sha256!r}"
            )

    @property
    def validation_seed(self) -> int:
        """The seed that draws the validation images: --split_seed, else --seed."""
        return self.seed if self.split_seed is None else self.split_seed

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "exclude_class": list(self.exclude_class)}  # as in JSON

    @staticmethod
    def upgrade(data: dict[str, Any]) -> dict[str, Any]:
        # a run begun before validation splits had none, or before conditional models or
        # excluded classes
        return {"val_images": 0, "conditional": False, "exclude_class": (), **data}

    def lr_at(self, step: int, total_steps: int) -> float:
        """Learning rate for optimizer step ``step`` (0-based) of ``total_steps``."""
        if self.lr_schedule == "cosine" and total_steps > 0:
            return 0.5 * self.lr * (1 + math.cos(math.pi * min(step / total_steps, 1.0)))
        return self.lr

    def beta_at(self, step: int, steps_per_epoch: int) -> float:
        """KL weight for step ``step``: ``beta``, ramped up linearly during the KL warm-up."""
        if self.kl_warmup_epochs > 0:
            return self.beta * min(1.0, step / (self.kl_warmup_epochs * steps_per_epoch))
        return self.beta


def class_list(value: Any) -> tuple[int | str, ...]:
    """``--exclude_class`` values as a tuple of classes: indices as ints, names as given; a
    string (or each string of a list) may hold several, comma-separated."""
    items = [value] if isinstance(value, str | int) else value
    if isinstance(items, bool) or not isinstance(items, list | tuple):
        raise TorchVaeError(f"--exclude_class must be classes (indices or names), got {value!r}")
    out: list[int | str] = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int | str):
            raise TorchVaeError(f"--exclude_class takes indices or names, got {item!r}")
        parts = [item] if isinstance(item, int) else [p.strip() for p in item.split(",")]
        if any(p == "" for p in parts):
            raise TorchVaeError(f"--exclude_class {item!r} has an empty class; pass e.g. 5,7")
        out += [int(p) if isinstance(p, str) and p.isdigit() else p for p in parts]
    return tuple(out)
