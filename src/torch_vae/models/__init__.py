"""Model families as plug-ins: the ``VAE`` base class every family keeps (base.py), the
registry that maps ``--arch`` names to classes (registry.py), the posterior (posterior.py), and
one module per family. A family registers itself with ``@register_model``; importing this
package registers the built-in ones (the lines below). See docs/model.md, "Adding a model".
"""

from . import dcgan, original, resnet, vqvae  # noqa: F401  (the built-in families register here)
from .base import VAE, create_model, load_model, read_config, save_model, training_memory
from .config import ConvConfig, ModelConfig
from .losses import VAEOutput, vae_loss
from .posterior import Posterior
from .registry import MODELS, architectures, model_class, register_model

__all__ = [
    "MODELS",
    "VAE",
    "ConvConfig",
    "ModelConfig",
    "Posterior",
    "VAEOutput",
    "architectures",
    "create_model",
    "load_model",
    "model_class",
    "read_config",
    "register_model",
    "save_model",
    "training_memory",
    "vae_loss",
]
