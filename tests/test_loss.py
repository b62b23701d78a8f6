import json

import numpy as np
import torch

from torch_vae import VAE, ModelConfig
from torch_vae.models import VAEOutput
from torch_vae.models.losses import vae_loss


def test_loss_matches_hand_computation():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 4, 4, generator=g)
    recon = torch.rand(3, 1, 4, 4, generator=g)
    mu, logvar = torch.randn(3, 2, generator=g), torch.randn(3, 2, generator=g)
    out = vae_loss(VAEOutput(recon, mu, logvar), x, beta=0.5)
    sse = [((recon[i] - x[i]) ** 2).sum().item() for i in range(3)]
    kl = [
        sum(
            -0.5 * (1 + logvar[i, j].item() - mu[i, j].item() ** 2 - np.exp(logvar[i, j].item()))
            for j in range(2)
        )
        for i in range(3)
    ]
    assert np.isclose(out["recon"].item(), np.mean(sse), rtol=1e-5)
    assert np.isclose(out["kl"].item(), np.mean(kl), rtol=1e-5)
    assert np.isclose(out["loss"].item(), np.mean(sse) + 0.5 * np.mean(kl), rtol=1e-5)


def test_bce_loss_matches_hand_computation():
    x = torch.tensor([[[[0.0, 1.0]]]])
    recon = torch.tensor([[[[0.25, 0.5]]]])
    zeros = torch.zeros(1, 1)
    out = vae_loss(VAEOutput(recon, zeros, zeros), x, recon_loss="bce")
    assert np.isclose(out["recon"].item(), -np.log(0.75) - np.log(0.5), rtol=1e-5)
    assert out["kl"].item() == 0


def test_logged_epoch_loss_is_per_image(tmp_path):
    """The train loss in metrics.jsonl equals the mean per-image loss over the epoch's batches
    (the original multiplied it by the batch size a second time)."""
    from torch_vae.training import TrainConfig
    from torch_vae.training.loop import run_plan as train
    from torch_vae.training.plan import RunPlan

    rng = np.random.default_rng(0)
    imgs = torch.from_numpy(rng.integers(0, 256, (10, 16, 16, 1), dtype=np.uint8))
    mcfg = ModelConfig(image_size=16, max_filters=8, depth=2, latent_dims=2)
    tcfg = TrainConfig(epochs=1, batchsize=4, lr=1e-12, seed=3)
    run = tmp_path / "run"
    model = train(RunPlan(run, mcfg, tcfg), imgs, imgs[:4], torch.device("cpu"), progress=False)
    rec = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])

    # Recompute by hand: same seed -> same init, batch order and noise; lr ~ 0 keeps weights.
    torch.manual_seed(3)
    fresh = VAE(mcfg).to(memory_format=torch.channels_last)
    fresh.load_state_dict({k: v for k, v in model.state_dict().items()})
    gen = torch.Generator().manual_seed(3)
    torch.randn(32, 2, generator=gen)  # the fixed picture latents are drawn first
    perm = torch.randperm(10, generator=gen)
    torch.manual_seed(3)
    VAE(mcfg)  # consume the init draws so the reparameterisation noise lines up
    total = 0.0
    fresh.train()
    for i in range(0, 10, 4):
        x = imgs[perm[i : i + 4]].permute(0, 3, 1, 2).float() / 255
        out = fresh(x)
        per = ((out.recon - x) ** 2).flatten(1).sum(1) - 0.5 * (
            1 + out.logvar - out.mu**2 - out.logvar.exp()
        ).sum(1)
        total += per.sum().item()
    assert np.isclose(rec["train_loss"], total / 10, rtol=2e-3)
