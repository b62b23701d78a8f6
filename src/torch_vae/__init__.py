"""torch-vae: convolutional variational autoencoders in PyTorch.

The public API: ``load_model`` / ``VAE.from_pretrained`` (any model family), ``VAE`` (the base
class every family keeps), ``ModelConfig`` (``ModelConfig(arch=...)`` builds the family's
config), ``create_model``, ``register_model`` (new families), ``Posterior``, ``TrainConfig``
and ``train`` (a run from Python, as ``torch-vae train`` does it).
"""

import importlib
from typing import Any

from .errors import TorchVaeError
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
from .version import __version__

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


SUBPACKAGES = ("analysis", "cli", "data", "evaluation", "explorer", "io", "models", "priors",
               "runtime", "training")  # fmt: skip


def __getattr__(name: str) -> Any:
    # training pulls in the data, evaluation and figure modules: imported when first asked for,
    # so that loading a model (torch.hub) stays light
    if name in ("train", "TrainConfig"):
        from . import training

        return getattr(training, name)
    if name in SUBPACKAGES:  # torch_vae.data.CachedImages after a bare ``import torch_vae``
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'torch_vae' has no attribute {name!r}")
