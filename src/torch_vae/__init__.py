"""torch-vae: convolutional variational autoencoders in PyTorch."""

__version__ = "0.1.0"

from .checkpoint import load_model, save_model  # noqa: E402
from .config import ModelConfig, TrainConfig  # noqa: E402
from .errors import TorchVaeError  # noqa: E402
from .model import VAE, Posterior, VAEOutput  # noqa: E402

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
