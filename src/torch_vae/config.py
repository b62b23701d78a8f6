"""Model and training configuration as frozen, validated dataclasses."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, Literal, get_args

from .errors import TorchVaeError

Arch = Literal["original", "dcgan"]
ReconLoss = Literal["mse", "bce"]
LrSchedule = Literal["constant", "cosine"]
PrecisionName = Literal["auto", "fp32", "bf16", "fp16"]
ARCHS: tuple[str, ...] = get_args(Arch)
RECON_LOSSES: tuple[str, ...] = get_args(ReconLoss)
LR_SCHEDULES: tuple[str, ...] = get_args(LrSchedule)
PRECISIONS: tuple[str, ...] = get_args(PrecisionName)
# The size of the last feature map each architecture was designed for: 8x8 for the original
# (depth 3 at 64 pixels), 4x4 for dcgan (depth 4 at 64 pixels).
BOTTLENECK = {"original": 8, "dcgan": 4}


def default_depth(arch: str, image_size: int) -> int:
    """--depth when it is not given: as many stride-2 convolutions as bring the image down to
    the architecture's bottleneck size (64 pixels: 3 for original, 4 for dcgan; 128: 4 and 5;
    256: 5 and 6), or the 64-pixel depth for sizes that halve to no such size."""
    depth, size = 0, image_size
    while size > BOTTLENECK.get(arch, 8) and size % 2 == 0:
        depth, size = depth + 1, size // 2
    fallback = {"original": 3, "dcgan": 4}.get(arch, 3)
    return depth if size == BOTTLENECK.get(arch, 8) and depth > 0 else fallback


def option(default: Any, help: str, **cli: Any) -> Any:
    """A dataclass field that is also a command-line option: ``help`` is its help text; ``cli``
    may hold ``flag=False`` (not an option), ``required``, ``positional``, ``nargs``,
    ``metavar``, ``type`` (the parser's type) or ``cli_default`` (the default on the command
    line when it differs from the field's). The parser is built from these (cli.py)."""
    return dataclasses.field(default=default, metadata={"help": help, **cli})


DATASET_HELP = (
    "mnist, fashion-mnist, cifar-10, cifar-100, celeb-a, or a folder of images as folder:PATH"
)


def _positive(name: str, value: int, flag: str, maximum: int | None = None) -> None:
    if not _is_int(value) or value <= 0:
        raise TorchVaeError(f"{name} must be a positive integer, got {value!r}; pass e.g. {flag}")
    if maximum is not None and value > maximum:
        raise TorchVaeError(f"{name} {value} is too large (at most {maximum}); pass e.g. {flag}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_number(name: str, value: Any, minimum: float, strict: bool, example: str) -> None:
    """A finite real number above (``strict``) or at least ``minimum``."""
    ok = _is_int(value) or (isinstance(value, float) and math.isfinite(value))
    if not ok or value < minimum or (strict and value == minimum):
        bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
        raise TorchVaeError(f"{name} must be a number {bound}, got {value!r}; pass e.g. {example}")


def _from_dict(cls, data: Any, what: str):
    """Build a config dataclass from a JSON object, with one-line errors for anything odd."""
    if not isinstance(data, dict):
        raise TorchVaeError(f"{what} config must be a JSON object, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise TorchVaeError(
            f"{what} config has unknown fields {sorted(map(str, unknown))}; "
            "it was written by a newer torch-vae, upgrade with pip install -U torch-vae"
        )
    try:
        return cls(**data)
    except TypeError as exc:
        raise TorchVaeError(f"invalid {what} config: {exc}") from None


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model: stored next to its weights.

    The encoder has ``depth`` stride-2 convolutions whose widths double up to ``max_filters``
    (the original: depth 3, widths F/4, F/2, F); the decoder mirrors it.
    """

    in_channels: int = option(1, "image channels (the dataset's)", flag=False)
    image_size: int = option(64, "images are resized to this square size")
    latent_dims: int = option(8, "latent dimensions")
    max_filters: int = option(
        128, "filters of the widest convolution, F (the encoder uses ..., F/4, F/2, F)"
    )
    depth: int = option(
        3,
        "stride-2 convolutions in the encoder and decoder (default: down to 8x8 for original, "
        "4x4 for dcgan: 3 and 4 at 64 pixels, 4 and 5 at 128)",
        cli_default=None,
    )
    arch: Arch = option(
        "original",
        "original: the original torch-vae network; dcgan: fully convolutional DCGAN-style "
        "variant (4x4 strided convolutions, batch norm in both networks)",
    )
    # > 0: the images are bilinear upsamplings of native_size x native_size images, and the
    # decoder's output is projected onto those (model.VAE.decode); 0: no projection.
    native_size: int = option(
        0,
        "the size the images were upsampled from (28 for MNIST and Fashion-MNIST, 32 for "
        "CIFAR): the decoder's output is projected onto such images (0: off); with "
        "--init_from it may differ from MODEL's",
    )

    def __post_init__(self) -> None:
        # The upper bounds are far beyond any practical model; they keep a damaged or hostile
        # config from asking for absurd amounts of memory or time.
        _positive("--latent_dims", self.latent_dims, "--latent_dims 8", 2**16)
        _positive("--max_filters", self.max_filters, "--max_filters 128", 2**16)
        _positive("--depth", self.depth, "--depth 3", 16)
        _positive("--image_size", self.image_size, "--image_size 64", 2**16)
        if not _is_int(self.in_channels) or self.in_channels not in (1, 3):
            raise TorchVaeError(
                f"images must have 1 (grayscale) or 3 (RGB) channels, got {self.in_channels}"
            )
        if not isinstance(self.arch, str) or self.arch not in ARCHS:
            raise TorchVaeError(f"unknown architecture {self.arch!r}; choose one of {ARCHS}")
        if not _is_int(self.native_size) or not 0 <= self.native_size < self.image_size:
            raise TorchVaeError(
                f"--native_size {self.native_size} must be 0 (off) or the size, smaller than "
                f"--image_size {self.image_size}, that the images were upsampled from "
                "(28 for MNIST and Fashion-MNIST, 32 for CIFAR)"
            )
        step = 2**self.depth
        if self.image_size % step:
            fits = [d for d in range(1, 8) if self.image_size % 2**d == 0]
            hint = f"use --depth {max(fits)} or less" if fits else "use an even --image_size"
            raise TorchVaeError(
                f"--image_size {self.image_size} is not divisible by 2**depth = {step} "
                f"(depth {self.depth}); {hint}, or an image size that is a multiple of {step}"
            )
        if self.max_filters % 2 ** (self.depth - 1):
            raise TorchVaeError(
                f"--max_filters {self.max_filters} must be divisible by 2**(depth-1) = "
                f"{2 ** (self.depth - 1)} so that every layer has a whole number of filters"
            )

    @property
    def channels(self) -> tuple[int, ...]:
        """Encoder widths from the first convolution to the last, e.g. (32, 64, 128)."""
        return tuple(self.max_filters // 2 ** (self.depth - 1 - i) for i in range(self.depth))

    @property
    def bottleneck_size(self) -> int:
        """Spatial size of the last encoder feature map."""
        return self.image_size // 2**self.depth

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return _from_dict(cls, data, "model")


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters, recorded in every run folder."""

    dataset: str = option("fashion-mnist", DATASET_HELP)
    epochs: int = option(100, "training epochs")
    batchsize: int = option(32, "batch size (the global batch under torchrun)")
    lr: float = option(3e-4, "AdamW learning rate")
    weight_decay: float = option(0.01, "AdamW weight decay")
    beta: float = option(1.0, "weight of the KL term")
    recon_loss: ReconLoss = option(
        "mse", "mse: sum of squared errors (the original); bce: Bernoulli likelihood"
    )
    lr_schedule: LrSchedule = option(
        "constant", "constant (the original) or cosine decay to 0 over the run"
    )
    kl_warmup_epochs: float = option(
        0.0, "raise the KL weight linearly from 0 to --beta over this many epochs"
    )
    seed: int = option(0, "random seed")
    max_steps: int = option(0, "stop after this many optimizer steps (0: no limit)")
    precision: PrecisionName = option(
        "auto",
        "auto: bf16 mixed precision where the hardware computes bf16 natively (CPUs with AMX or "
        "AVX-512 BF16, GPUs from Ampere on), else fp32; or fp32, bf16, fp16 (autocast). The "
        "run records the precision auto chose, so a resumed run keeps it; see "
        "docs/benchmarks.md",
    )
    compile: bool = option(False, "torch.compile the model")
    # weights the run started from ("": random initialisation), set from --init_from
    init_from: str = option("", "", flag=False)
    init_sha256: str = option("", "", flag=False)  # their SHA-256, checked when the run starts

    def __post_init__(self) -> None:
        if not isinstance(self.dataset, str) or not self.dataset:
            raise TorchVaeError(f"--dataset must be a name or folder:PATH, got {self.dataset!r}")
        _positive("--epochs", self.epochs, "--epochs 10")
        _positive("--batchsize", self.batchsize, "--batchsize 128")
        check_number("--lr", self.lr, 0, True, "--lr 3e-4")
        check_number("--weight_decay", self.weight_decay, 0, False, "--weight_decay 0.01")
        check_number("--beta", self.beta, 0, False, "--beta 1")
        if not isinstance(self.recon_loss, str) or self.recon_loss not in RECON_LOSSES:
            raise TorchVaeError(
                f"unknown --recon_loss {self.recon_loss!r}; choose one of {RECON_LOSSES}"
            )
        if not _is_int(self.seed) or not -(2**63) <= self.seed < 2**64:
            raise TorchVaeError(f"--seed must be an integer, got {self.seed!r}")
        if not _is_int(self.max_steps) or self.max_steps < 0:
            raise TorchVaeError(f"--max_steps must be an integer >= 0, got {self.max_steps!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise TorchVaeError(
                f"unknown --lr_schedule {self.lr_schedule!r}; choose one of {LR_SCHEDULES}"
            )
        check_number("--kl_warmup_epochs", self.kl_warmup_epochs, 0, False, "--kl_warmup_epochs 1")
        if self.precision not in PRECISIONS:
            raise TorchVaeError(
                f"unknown --precision {self.precision!r}; choose one of {PRECISIONS}"
            )
        if not isinstance(self.init_from, str) or not isinstance(self.init_sha256, str):
            raise TorchVaeError("init_from and init_sha256 must be strings")
        if self.init_from and not re.fullmatch(r"[0-9a-f]{64}", self.init_sha256):
            raise TorchVaeError(
                f"init_sha256 must be the 64-digit SHA-256 of {self.init_from}, "
                f"got {self.init_sha256!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return _from_dict(cls, data, "training")

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
