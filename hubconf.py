"""torch.hub entry points: the pretrained Fashion-MNIST models in models/fashion-mnist/.

    import torch

    model = torch.hub.load("/path/to/torch-vae", "fashion_mnist_dcgan_d8", source="local")
    images = model.decode(torch.randn(16, model.config.latent_dims))  # (16, 1, 64, 64) in [0, 1]

    model = torch.hub.load("/path/to/torch-vae", "vae", "runs/mine", source="local")

    # a VQ-VAE decodes code grids; its samples come from the prior fitted beside it
    import torch_vae.priors
    model = torch.hub.load("/path/to/torch-vae", "fashion_mnist_vqvae_28_cond", source="local")
    prior = torch_vae.priors.load_sampler("/path/to/torch-vae/models/fashion-mnist/vqvae-28-cond")
    prior.use_model(model)  # each drawn grid then makes a round trip through it, as generate's
    sneakers = torch.full((16,), 7)  # class 7, "Sneaker"
    prior.guidance = 2.0
    grids = prior.sample(16, torch.Generator().manual_seed(0), labels=sneakers)  # (16, 7, 7)
    images = model.decode(grids, "sneaker")  # (16, 1, 28, 28) in [0, 1]

Every entry returns a ``torch_vae.VAE`` in eval mode (``torch_vae.load_model``). The models
are described in models/fashion-mnist/README.md. torch_vae is imported from the environment
if it is installed, otherwise from this clone's ``src/``.
"""

import sys as _sys
from pathlib import Path as _Path

dependencies = ["torch", "safetensors"]

_ROOT = _Path(__file__).resolve().parent
_MODELS = _ROOT / "models" / "fashion-mnist"


def _load_model(path, device):
    try:
        import torch_vae
    except ModuleNotFoundError as exc:
        if exc.name != "torch_vae":
            raise
        _sys.path.insert(0, str(_ROOT / "src"))
        import torch_vae
    return torch_vae.load_model(path, device)


def vae(path, device="cpu"):
    """Any torch-vae model: ``path`` is a run folder (written by ``torch-vae train`` or
    ``torch-vae average``) or a ``.safetensors`` weights file; relative paths are relative to
    the working directory. ``device``: where to put the model."""
    return _load_model(path, device)


def _shipped(folder, summary):
    def entry(device="cpu"):
        return _load_model(_MODELS / folder, device)

    entry.__name__ = entry.__qualname__ = "fashion_mnist_" + folder.replace("-", "_")
    entry.__doc__ = (
        f"models/fashion-mnist/{folder}: {summary}. A VAE for grayscale Fashion-MNIST images "
        "(DCGAN-style at 64x64 unless the summary says otherwise; a VQ-VAE's samples: the "
        "module docstring). ``device``: where to put the model."
    )
    return entry


fashion_mnist_dcgan_d2 = _shipped("dcgan-d2", "latent 2, test objective 85.25")
fashion_mnist_dcgan_d8 = _shipped("dcgan-d8", "latent 8, test objective 51.05")
fashion_mnist_dcgan_d64 = _shipped("dcgan-d64", "latent 64, test objective 50.83")
fashion_mnist_dcgan_f192_d8 = _shipped(
    "dcgan-f192-d8", "latent 8, 192 filters, test objective 50.26"
)
fashion_mnist_dcgan_f192_d8_swa = _shipped(
    "dcgan-f192-d8-swa", "latent 8, 192 filters, weights averaged, test objective 50.05"
)
fashion_mnist_dcgan_f192_d8_p28 = _shipped(
    "dcgan-f192-d8-p28",
    "latent 8, 192 filters, output projected onto what upsampling from 28x28 can produce "
    "(native_size 28), test objective 49.77 (the best)",
)
fashion_mnist_dcgan_g32 = _shipped(
    "dcgan-g32",
    "32x32 images, latent 32, trained with the Gaussian likelihood at its optimal variance "
    "(--recon_loss gaussian) for samples, with fitted priors (gmm, flow, diffusion, twostage)",
)
fashion_mnist_vqvae_28 = _shipped(
    "vqvae-28",
    "a VQ-VAE at Fashion-MNIST's own 28x28 pixels: a 7x7 grid of codes from a codebook of 512, "
    "with a fitted transformer prior over the grid (sampler-transformer) for samples",
)
fashion_mnist_vqvae_28_sharp = _shipped(
    "vqvae-28-sharp",
    "vqvae-28 with its decoder fine-tuned with an adversarial term (torch-vae sharpen): the same "
    "code grids and transformer prior (sampler-transformer), sharper samples",
)
fashion_mnist_vqvae_28_cond = _shipped(
    "vqvae-28-cond",
    "the class-conditional VQ-VAE at 28x28 (classes: the Fashion-MNIST names), with a transformer "
    "prior that draws the code grids of a class (sampler-transformer): decode(grids, 'sneaker')",
)
