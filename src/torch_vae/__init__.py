"""torch-vae: convolutional variational autoencoders in PyTorch."""

from .config import ModelConfig, TrainConfig
from .errors import TorchVaeError
from .model import VAE, Posterior, VAEOutput, load_model, save_model
from .version import __version__

__all__ = [
    "VAE",
    "ModelConfig",
    "Posterior",
    "TorchVaeError",
    "TrainConfig",
    "VAEOutput",
    "__version__",
    "load_model",
    "save_model",
]
