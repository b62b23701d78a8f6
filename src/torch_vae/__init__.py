"""torch-vae: convolutional variational autoencoders in PyTorch.

The public API: ``load_model`` / ``VAE.from_pretrained`` (any model family), ``VAE`` (the base
class every family keeps), ``ModelConfig`` (``ModelConfig(arch=...)`` builds the family's
config), ``create_model``, ``register_model`` (new families), ``Posterior``, ``TrainConfig``
and ``train`` (a run from Python, as ``torch-vae train`` does it).
"""

import importlib
from typing import TYPE_CHECKING, Any

from .errors import TorchVaeError

if TYPE_CHECKING:
    from .models import (
        MODELS,
        VAE,
        ModelConfig,
        Posterior,
        VAEOutput,
        create_model,
        load_model,
        register_model,
        save_model,
    )
    from .training import TrainConfig, train
    from .version import __version__

# Each name, the module it comes from, imported when first asked for: importing the package
# imports neither PyTorch nor importlib.metadata (the version), so that the command can say
# "interrupted" for a Ctrl-C while PyTorch loads, and training (which pulls in the data,
# evaluation and figure modules) stays out of a model's loading (torch.hub).
LAZY = {
    **dict.fromkeys(("MODELS", "VAE", "ModelConfig", "Posterior", "VAEOutput", "create_model",
                     "load_model", "register_model", "save_model"), "models"),
    **dict.fromkeys(("TrainConfig", "train"), "training"),
    "__version__": "version",
}  # fmt: skip

__all__ = [
    "MODELS",
    "VAE",
    "ModelConfig",
    "Posterior",
    "TorchVaeError",
    "TrainConfig",
    "VAEOutput",
    "__version__",
    "create_model",
    "load_model",
    "register_model",
    "save_model",
    "train",
]


# torch_vae.data.CachedImages after a bare ``import torch_vae``: the packages and modules
SUBPACKAGES = ("analysis", "cli", "data", "evaluation", "explorer", "fields", "io", "models",
               "priors", "runtime", "training", "version")  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in LAZY:
        value = getattr(importlib.import_module(f".{LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    if name in SUBPACKAGES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'torch_vae' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
