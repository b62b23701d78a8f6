"""The model registry: architecture name -> model class. It feeds ``--arch``'s choices, the
config's validation and every loader, so a family is known everywhere once it registers.

A family registers itself with the ``register_model`` decorator in its own module (imported by
``torch_vae.models``); a family from another package registers itself the same way when that
package is imported, or through the entry point group ``torch_vae.models`` (a module to import),
which is read the first time an unknown architecture is asked for.
"""

from __future__ import annotations

import importlib.metadata
import logging
from typing import TYPE_CHECKING

from ..errors import TorchVaeError

if TYPE_CHECKING:
    from .base import VAE
    from .config import ModelConfig

log = logging.getLogger(__name__)

MODELS: dict[str, type[VAE]] = {}
ENTRY_POINTS = "torch_vae.models"
_loaded_entry_points: list[bool] = []
# the entry points whose module failed to load: name -> what went wrong, said once as a
# warning; the other families stay available
FAILED_PLUGINS: dict[str, str] = {}


class UnknownArchitecture(TorchVaeError):
    """No family of this name is registered (``arch``: the name asked for)."""

    def __init__(self, arch: str, message: str, installed: bool = False):
        super().__init__(message)
        self.arch, self.installed = arch, installed  # installed: a plug-in that failed to load


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
    _check_networks(cls, VAE)
    name = config.__dataclass_fields__["arch"].default
    old = MODELS.get(name)
    if old is not None and old is not cls and not _same_definition(old, cls):
        raise TorchVaeError(
            f"architecture {name!r} is registered twice ({_where(old)} and {_where(cls)}); give "
            "the new config's arch field a default of its own"
        )
    MODELS[name] = cls
    return cls


def _check_networks(cls: type, base: type) -> None:
    """A family builds an encoder and a decoder: from its ``encoder_class`` and
    ``decoder_class`` (modules), unless its own ``__init__`` builds them."""
    for part in ("encoder_class", "decoder_class"):
        net = getattr(cls, part, None)
        if net is None and cls.__init__ is base.__init__:
            raise TypeError(f"{_where(cls)} names no {part}, the network it builds from its "
                            "config (docs/model.md, Adding a model)")  # fmt: skip
        if net is not None and not callable(net):  # a Module class, or a partial of one
            raise TypeError(f"{_where(cls)}.{part} must be a torch.nn.Module class (or a "
                            f"function of the config that makes one), got {net!r}")  # fmt: skip


def model_class(arch: str) -> type[VAE]:
    """The class registered for ``arch``, or a one-line error naming the registered ones (and
    why a plug-in of that name is missing, where it failed to load)."""
    if not isinstance(arch, str):
        raise TorchVaeError(f"the architecture must be a name such as 'original', got {arch!r}")
    if arch not in MODELS and not _loaded_entry_points:
        _load_entry_points()
    if arch in MODELS:
        return MODELS[arch]
    if arch in FAILED_PLUGINS:  # no "install the package" advice after this (read_config)
        raise UnknownArchitecture(arch, f"{FAILED_PLUGINS[arch]}; fix or reinstall its package",
                                  installed=True)  # fmt: skip
    failed = "".join(f"; {why}" for why in FAILED_PLUGINS.values())
    raise UnknownArchitecture(arch, f"unknown architecture {arch!r}; choose one of "
                              f"{architectures()} (or install the package that provides it)"
                              f"{failed}")  # fmt: skip


def config_class(arch: str) -> type[ModelConfig]:
    return model_class(arch).config_class


def architectures() -> tuple[str, ...]:
    """The registered names, the original's first (the default), then by name."""
    if not _loaded_entry_points:
        _load_entry_points()
    return tuple(sorted(MODELS, key=lambda name: (name != "original", name)))


def _load_entry_points() -> None:
    """Import every plug-in module of the entry point group, once; one that fails is said in
    a warning and remembered (``FAILED_PLUGINS``), and the others load all the same."""
    _loaded_entry_points.append(True)  # first: a plug-in that asks for the families meanwhile
    for ep in importlib.metadata.entry_points(group=ENTRY_POINTS):
        try:
            ep.load()
        except Exception as exc:  # noqa: BLE001 - a broken plug-in must not break the rest
            lines = str(exc).strip().splitlines()
            why = f"{type(exc).__name__}: {lines[0][:300]}" if lines else type(exc).__name__
            FAILED_PLUGINS[ep.name] = (f"the model plug-in {ep.name} ({ep.value}) failed to "
                                       f"load ({why})")  # fmt: skip
            # "warning: " here: the command line reads the plug-ins before it sets up logging
            log.warning("warning: %s; the other model families work (fix or uninstall its "
                        "package)", FAILED_PLUGINS[ep.name])  # fmt: skip
