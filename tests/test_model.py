import pytest
import torch
from torch import nn

from torch_vae import VAE, ModelConfig, TorchVaeError


@pytest.mark.parametrize(
    "size,depth,channels,latent",
    [(28, 2, 1, 2), (32, 3, 3, 4), (64, 3, 1, 8), (128, 4, 3, 16)],
)
def test_shapes(size, depth, channels, latent):
    cfg = ModelConfig(
        in_channels=channels, image_size=size, latent_dims=latent, max_filters=16, depth=depth
    )
    model = VAE(cfg)
    x = torch.rand(3, channels, size, size)
    out = model(x)
    assert out.recon.shape == x.shape
    assert out.mu.shape == out.logvar.shape == (3, latent)
    assert 0 <= out.recon.min() and out.recon.max() <= 1


def test_original_parameter_count():
    # The original (C=1, F=128, d=8) has 411,441 trainable parameters, 20,768 of them in
    # four shortcut convolutions that its forward never uses; ours has none of those.
    assert VAE(ModelConfig(latent_dims=8)).num_parameters() == 411_441 - 20_768
    assert VAE(ModelConfig(latent_dims=2)).num_parameters() == 264_618 - 645 - 20_768


def test_eval_reconstruction_is_deterministic_and_uses_mean():
    torch.manual_seed(0)
    model = VAE(ModelConfig(image_size=32, max_filters=16)).eval()
    x = torch.rand(4, 1, 32, 32)
    a, b = model(x).recon, model(x).recon
    assert torch.equal(a, b)
    assert torch.allclose(a, model.decode(model.encode(x).mu))


def test_training_forward_samples_and_keeps_no_state():
    torch.manual_seed(0)
    model = VAE(ModelConfig(image_size=32, max_filters=16)).train()
    x = torch.rand(4, 1, 32, 32)
    before = set(vars(model))
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert torch.equal(model(x, generator=g1).recon, model(x, generator=g2).recon)
    assert not torch.equal(model(x).recon, model(x).recon)
    assert set(vars(model)) == before


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"latent_dims": 0}, "latent_dims must be a positive integer"),
        ({"max_filters": -4}, "max_filters must be a positive integer"),
        ({"image_size": 28, "depth": 3}, "not divisible by 2\\*\\*depth = 8.*--depth 2"),
        ({"max_filters": 6, "depth": 3}, "divisible by 2\\*\\*\\(depth-1\\)"),
        ({"in_channels": 2}, "1 \\(grayscale\\) or 3 \\(RGB\\)"),
    ],
)
def test_config_errors(kwargs, match):
    with pytest.raises(TorchVaeError, match=match):
        ModelConfig(**kwargs)


def test_one_step_lowers_loss_on_fixed_data():
    from torch_vae.losses import vae_loss

    torch.manual_seed(0)
    model = VAE(ModelConfig(image_size=32, max_filters=16))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(8, 1, 32, 32)

    def loss():
        return vae_loss(model(x, generator=torch.Generator().manual_seed(0)), x)["loss"]

    first = loss()
    first.backward()
    opt.step()
    assert loss().item() < first.item()


def test_lr_schedule_and_kl_warmup():
    import math

    from torch_vae import TrainConfig

    const = TrainConfig(lr=1e-3)
    assert const.lr_at(0, 100) == const.lr_at(99, 100) == 1e-3
    cos = TrainConfig(lr=1e-3, lr_schedule="cosine")
    assert cos.lr_at(0, 100) == 1e-3
    assert math.isclose(cos.lr_at(50, 100), 5e-4)
    assert cos.lr_at(100, 100) < 1e-12
    warm = TrainConfig(beta=2.0, kl_warmup_epochs=2)
    assert warm.beta_at(0, 10) == 0 and math.isclose(warm.beta_at(10, 10), 1.0)
    assert warm.beta_at(20, 10) == warm.beta_at(500, 10) == 2.0
    with pytest.raises(TorchVaeError, match="lr_schedule"):
        TrainConfig(lr_schedule="step")


@pytest.mark.parametrize("size,depth", [(64, 4), (32, 3), (28, 2), (128, 5)])
def test_dcgan_variant_shapes_and_structure(size, depth):
    cfg = ModelConfig(in_channels=3, image_size=size, latent_dims=5, max_filters=64, depth=depth,
                      arch="dcgan")  # fmt: skip
    model = VAE(cfg).eval()
    x = torch.rand(2, 3, size, size)
    out = model(x)
    assert out.recon.shape == x.shape and out.mu.shape == out.logvar.shape == (2, 5)
    assert 0 <= out.recon.min() and out.recon.max() <= 1
    kinds = {type(m) for m in model.modules()}
    assert nn.Linear not in kinds  # no fully connected layers at all
    assert nn.BatchNorm2d in kinds
    enc_norms = [type(n) for n in model.encoder.norms]
    assert enc_norms[0] is nn.Identity and set(enc_norms[1:]) == {nn.BatchNorm2d}
    assert all(m.kernel_size == (4, 4) for m in model.encoder.convs)


def test_dcgan_batch_norm_folding_keeps_outputs():
    from torch_vae.speed import inference_model

    torch.manual_seed(0)
    model = VAE(ModelConfig(latent_dims=4, max_filters=32, arch="dcgan", depth=4))
    model.train()
    for _ in range(3):  # give the running statistics non-trivial values
        model(torch.rand(8, 1, 64, 64))
    model.eval()
    fused = inference_model(model)
    x = torch.rand(4, 1, 64, 64)
    with torch.no_grad():
        a, b = model.reconstruct(x), fused.reconstruct(x)
    assert torch.allclose(a, b, atol=1e-5)
