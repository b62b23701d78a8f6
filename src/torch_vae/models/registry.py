"""The model registry: architecture name -> model class. It feeds ``--arch``'s choices, the
config's validation and every loader, so a family is known everywhere once it registers.

A family registers itself with the ``register_model`` decorator in its own module (imported by
``torch_vae.models``); a family from another package registers itself the same way when that
package is imported, or through the entry point group ``torch_vae.models`` (a module to import),
which is read the first time an unknown architecture is asked for.
"""

from __future__ import annotations

import importlib.metadata
from typing import TYPE_CHECKING

from ..errors import TorchVaeError

if TYPE_CHECKING:
    from .base import VAE
    from .config import ModelConfig

MODELS: dict[str, type[VAE]] = {}
ENTRY_POINTS = "torch_vae.models"
_loaded_entry_points: list[bool] = []


def _where(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _same_definition(old: type, new: type) -> bool:
    """Whether ``new`` is ``old`` defined again (a notebook cell run twice, a module
    reloaded): the same module and name, which then replaces it."""
    return _where(old) == _where(new)


def register_model(cls: type[VAE]) -> type[VAE]:
    """Register a model class under its config's ``arch`` default: ``@register_model`` above
    ``class MyVAE(VAE): config_class = MyConfig``."""
    from .base import VAE
    from .config import ModelConfig

    config = getattr(cls, "config_class", None)
    if not (isinstance(cls, type) and issubclass(cls, VAE)) or not (
        isinstance(config, type) and issubclass(config, ModelConfig) and config is not ModelConfig
    ):
        raise TypeError(f"{cls!r} must subclass VAE and name its own config_class")
    name = config.__dataclass_fields__["arch"].default
    old = MODELS.get(name)
    if old is not None and old is not cls and not _same_definition(old, cls):
        raise TorchVaeError(
            f"architecture {name!r} is registered twice ({_where(old)} and {_where(cls)}); give "
            "the new config's arch field a default of its own"
        )
    MODELS[name] = cls
    return cls


def model_class(arch: str) -> type[VAE]:
    """The class registered for ``arch``, or a one-line error naming the registered ones."""
    if not isinstance(arch, str):
        raise TorchVaeError(f"the architecture must be a name such as 'original', got {arch!r}")
    if arch not in MODELS and not _loaded_entry_points:
        _load_entry_points()
    if arch not in MODELS:
        raise TorchVaeError(
            f"unknown architecture {arch!r}; choose one of {architectures()} (or install the "
            "package that provides it)"
        )
    return MODELS[arch]


def config_class(arch: str) -> type[ModelConfig]:
    return model_class(arch).config_class


def architectures() -> tuple[str, ...]:
    """The registered names, the original's first (the default), then by name."""
    if not _loaded_entry_points:
        _load_entry_points()
    return tuple(sorted(MODELS, key=lambda name: (name != "original", name)))


def _load_entry_points() -> None:
    _loaded_entry_points.append(True)
    for ep in importlib.metadata.entry_points(group=ENTRY_POINTS):
        try:
            ep.load()
        except Exception as exc:  # noqa: BLE001 - a broken plug-in must not break the rest
            raise TorchVaeError(
                f"the model plug-in {ep.name} ({ep.value}) failed to load: {exc}"
            ) from None
