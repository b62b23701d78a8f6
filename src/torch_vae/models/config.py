"""Model configs: ``ModelConfig``, the fields every model family has, and ``ConvConfig``, those
of the families built as a ladder of stride-2 convolutions. Each family's config subclasses one
of them with its own fields (a field of one family is not an option of every family) and is
registered with its model (registry.py).

``ModelConfig(arch="dcgan", latent_dims=8)`` builds the config class registered for ``arch``
(here ``DCGANConfig``), so code that names the architecture as a string keeps working; each
config is a frozen dataclass, validated when it is made, and stored as JSON with its weights.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import TorchVaeError
from ..fields import JsonConfig, from_dict, is_int, option, positive

# The upper bounds are far beyond any practical model; they keep a damaged or hostile config
# from asking for absurd amounts of memory or time.
MAX_SIZE = 2**16
MAX_CLASSES = 1000  # a conditional model's classes (CIFAR-100 has 100)
MAX_NATIVE_IMAGE = 1024  # the native-size projection: an image_size x image_size matrix


@dataclass(frozen=True)
class ModelConfig(JsonConfig):
    """What every model family's config has; ``arch`` names the family."""

    SECTION: ClassVar[str] = "model"

    arch: str = option("original", "the model family (see docs/model.md)")
    in_channels: int = option(1, "image channels (the dataset's)", flag=False)
    image_size: int = option(64, "images are resized to this square size")
    latent_dims: int = option(8, "latent dimensions")
    # > 0: the images are bilinear upsamplings of native_size x native_size images, and the
    # decoder's output is projected onto those (models.base.VAE.decode); 0: no projection.
    native_size: int = option(
        0,
        "the size the images were upsampled from (28 for MNIST and Fashion-MNIST, 32 for "
        "CIFAR): the decoder's output is projected onto such images (0: off); with "
        "--init_from it may differ from MODEL's (unless MODEL has a --network_size)",
    )
    # > 0: the encoder and decoder work at this size, between native_size and image_size: on
    # the images' native_size originals, zero-padded to it (models.base.VAE.encode and decode
    # map between the sizes); 0: at image_size
    network_size: int = option(
        0,
        "with --native_size N: the encoder and decoder work at this size, from N up to below "
        "--image_size, on the images' NxN originals (zero-padded to it), the decoder's output "
        "upsampled back: less work a step (e.g. 32 for Fashion-MNIST at 64; docs/model.md); "
        "0: off, they work at --image_size",
    )
    # a class-conditional model: the names of its classes, in label order (train
    # --conditional sets them from the dataset's labels); () for an unconditional model
    classes: tuple[str, ...] = option((), "class names of a conditional model", flag=False)
    # the family's default fields for a tiny model (tests and examples): see ``tiny``
    TINY: ClassVar[dict[str, Any]] = {}

    def __new__(cls, *args: Any, **kwargs: Any):
        if cls is ModelConfig:  # dispatch to the family's config class
            from .registry import config_class

            cls = config_class(kwargs.get("arch", "original"))
            _check_fields(cls, kwargs)
        return object.__new__(cls)

    def __post_init__(self) -> None:
        from .registry import config_class

        if not isinstance(self.arch, str) or config_class(self.arch) is not type(self):
            raise TorchVaeError(
                f"arch {self.arch!r} is not the family of {type(self).__name__}; build it with "
                "ModelConfig(arch=...) or the family's own config class"
            )
        positive("--latent_dims", self.latent_dims, 2**16, "--latent_dims 8")
        _check_classes(self)
        positive("--image_size", self.image_size, MAX_SIZE, "--image_size 64")
        if not is_int(self.in_channels) or self.in_channels not in (1, 3):
            raise TorchVaeError(
                f"images must have 1 (grayscale) or 3 (RGB) channels, got {self.in_channels}"
            )
        if not is_int(self.native_size) or not 0 <= self.native_size < self.image_size:
            raise TorchVaeError(
                f"--native_size {self.native_size} must be 0 (off) or the size, smaller than "
                f"--image_size {self.image_size}, that the images were upsampled from "
                "(28 for MNIST and Fashion-MNIST, 32 for CIFAR)"
            )
        _check_network_size(self)
        if self.native_size and self.image_size > MAX_NATIVE_IMAGE:
            raise TorchVaeError(
                f"--native_size works up to --image_size {MAX_NATIVE_IMAGE} (its projection is "
                f"a dense matrix per side), not {self.image_size}; pass --native_size 0"
            )

    @property
    def work_size(self) -> int:
        """The size of the images the encoder takes and the decoder gives: ``network_size``
        where set, else ``image_size``."""
        return self.network_size or self.image_size

    @property
    def num_classes(self) -> int:
        """The number of classes of a conditional model; 0 for an unconditional one."""
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if not self.classes:  # an unconditional model's files stay as they were
            del data["classes"]
        else:
            data["classes"] = list(self.classes)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """A config from its JSON form: the class registered for its ``arch`` (``original``
        where a file written before architectures had names has none)."""
        from .registry import config_class

        if not isinstance(data, dict):
            raise TorchVaeError(f"model config must be a JSON object, got {type(data).__name__}")
        family = config_class(data.get("arch", "original")) if cls is ModelConfig else cls
        return from_dict(family, data, cls.SECTION)

    @classmethod
    def tiny(cls, in_channels: int = 1, image_size: int = 32, **fields: Any) -> ModelConfig:
        """A small config of this family (on ``ModelConfig``: of ``arch``, default original)
        for tests and examples (a few thousand parameters)."""
        from .registry import config_class

        family = config_class(fields.get("arch", "original")) if cls is ModelConfig else cls
        return cls(**{"in_channels": in_channels, "image_size": image_size, "latent_dims": 3,
                      **family.TINY, **fields})  # fmt: skip

    def run_name(self, dataset_stem: str) -> str:
        """The default run folder name of a run of this model on a dataset (``_cond`` at the
        end for a class-conditional one)."""
        name = f"{dataset_stem}_{self.arch}_dims_{self.latent_dims:04d}"
        return f"{name}_cond" if self.classes else name


def _check_classes(config: ModelConfig) -> None:
    """``classes``: a tuple (a JSON list is turned into one) of 2 to MAX_CLASSES distinct,
    non-empty names."""
    names = config.classes
    if isinstance(names, list):
        object.__setattr__(config, "classes", names := tuple(names))
    if not isinstance(names, tuple) or not all(isinstance(n, str) and n for n in names):
        raise TorchVaeError(f"classes must be a list of class names, got {names!r}")
    if names and not 2 <= len(names) <= MAX_CLASSES or len(set(names)) != len(names):
        raise TorchVaeError(
            f"a conditional model needs 2 to {MAX_CLASSES} distinct class names, got "
            f"{len(names)} ({len(set(names))} distinct)"
        )


def _check_network_size(config: ModelConfig) -> None:
    """``network_size``: 0, or from ``native_size`` (which it needs) up to below ``image_size``."""
    size, native = config.network_size, config.native_size
    if not is_int(size) or size < 0:
        raise TorchVaeError(f"--network_size must be an integer >= 0, got {size!r}")
    if size and not native:
        raise TorchVaeError(
            f"--network_size {size} works on the images' originals: pass the size they were "
            "upsampled from too (--native_size 28 for MNIST and Fashion-MNIST, 32 for CIFAR)"
        )
    if size and not native <= size < config.image_size:
        raise TorchVaeError(
            f"--network_size {size} must be from --native_size {native} up to below "
            f"--image_size {config.image_size} (e.g. --network_size {native}), or 0 (off)"
        )


def _depth_advice(config: ConvConfig, size: int, step: int) -> str:
    """The error for a work size that 2**depth does not divide: a --depth that fits, or a size
    that fits this depth."""
    fits = [d for d in range(1, 8) if size % 2**d == 0]
    depth = [f"--depth {max(fits)} or less"] if fits else []
    if config.network_size:
        flag, options = "--network_size", depth + _network_sizes(config)
    else:
        flag = "--image_size"
        below, above = size // step * step, (size // step + 1) * step
        near = f"{below} or {above}" if below else f"{above}"
        options = [f"--image_size {near} (multiples of {step})", *depth]
    hint = "use " + ", or ".join(options) if options else "leave out --network_size"
    return f"{flag} {size} is not divisible by 2**depth = {step} (depth {config.depth}); {hint}"


def _network_sizes(config: ConvConfig) -> list[str]:
    """The --network_size that fits: the smallest multiple of 2**depth from --native_size
    below --image_size; where none is, one for the deepest smaller depth that has one (none:
    no depth has one)."""
    for depth in range(config.depth, 0, -1):
        size = -(-config.native_size // 2**depth) * 2**depth  # >= native_size
        if size < config.image_size:
            with_depth = "" if depth == config.depth else f" --depth {depth}"
            return [f"--network_size {size}{with_depth}"]
    return []


def _check_fields(cls: type, kwargs: dict[str, Any]) -> None:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise TorchVaeError(
            f"{unknown[0]} is not an option of arch {kwargs.get('arch', 'original')!r} "
            f"(its options: {', '.join(sorted(names))})"
        )


@dataclass(frozen=True)
class ConvConfig(ModelConfig):
    """A ladder of ``depth`` stride-2 convolutions whose widths double up to ``max_filters``
    (depth 3: F/4, F/2, F); the decoder mirrors it. ``depth`` None means as many as bring the
    image down to the family's ``BOTTLENECK`` size (``default_depth``)."""

    max_filters: int = option(
        128, "filters of the widest convolution, F (the encoder uses ..., F/4, F/2, F)"
    )
    depth: int | None = option(
        None,
        "stride-2 convolutions in the encoder and decoder (default: down to the family's "
        "smallest feature map, e.g. 8x8 for original and 4x4 for dcgan: 3 and 4 at 64 pixels; "
        "docs/model.md)",
    )
    BOTTLENECK: ClassVar[int] = 8  # the last feature map's size the family was designed for
    FALLBACK_DEPTH: ClassVar[int] = 3  # for sizes that halve to no such size
    TINY: ClassVar[dict[str, Any]] = {"max_filters": 16}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.depth is None:
            object.__setattr__(self, "depth", self.default_depth(self.work_size))
        positive("--max_filters", self.max_filters, 2**16, "--max_filters 128")
        positive("--depth", self.depth, 16, "--depth 3")
        step, size = 2**self.depth, self.work_size
        if size % step:
            raise TorchVaeError(_depth_advice(self, size, step))
        if self.max_filters % 2 ** (self.depth - 1):
            raise TorchVaeError(
                f"--max_filters {self.max_filters} must be divisible by 2**(depth-1) = "
                f"{2 ** (self.depth - 1)} so that every layer has a whole number of filters; "
                "pass a smaller --depth or a larger --max_filters"
            )

    @classmethod
    def default_depth(cls, image_size: int) -> int:
        """As many stride-2 convolutions as bring ``image_size`` down to ``BOTTLENECK`` (for
        a bottleneck of 4: 4 at 64 pixels, 5 at 128, 6 at 256), or ``FALLBACK_DEPTH`` for sizes
        that halve to no such size."""
        depth, size = 0, image_size
        while is_int(size) and size > cls.BOTTLENECK and size % 2 == 0:
            depth, size = depth + 1, size // 2
        return depth if size == cls.BOTTLENECK and depth > 0 else cls.FALLBACK_DEPTH

    @property
    def channels(self) -> tuple[int, ...]:
        """Encoder widths from the first convolution to the last, e.g. (32, 64, 128)."""
        return tuple(self.max_filters // 2 ** (self.depth - 1 - i) for i in range(self.depth))

    @property
    def bottleneck_size(self) -> int:
        """Spatial size of the last encoder feature map."""
        return self.work_size // 2**self.depth

    def run_name(self, dataset_stem: str) -> str:
        """The original's naming, ``<dataset>_filters_0128_dims_0008``, plus ``_<arch>`` for
        every family but the original's and ``_cond`` for a class-conditional model."""
        name = f"{dataset_stem}_filters_{self.max_filters:04d}_dims_{self.latent_dims:04d}"
        name = name if self.arch == "original" else f"{name}_{self.arch}"
        return f"{name}_cond" if self.classes else name
