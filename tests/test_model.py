import numpy as np
import pytest
import torch
from torch import nn

from torch_vae import VAE, ModelConfig, TorchVaeError


@pytest.mark.parametrize(
    "size,depth,channels,latent",
    [(28, 2, 1, 2), (32, 3, 3, 4), (64, 3, 1, 8), (128, 4, 3, 16)],
)
def test_forward_keeps_image_shape_and_pixel_range(size, depth, channels, latent):
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
def test_invalid_model_config_is_refused_with_a_hint(kwargs, match):
    with pytest.raises(TorchVaeError, match=match):
        ModelConfig(**kwargs)


def test_one_step_lowers_loss_on_fixed_data():
    from torch_vae.models.losses import vae_loss

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
    torch.manual_seed(0)
    model = VAE(ModelConfig(latent_dims=4, max_filters=32, arch="dcgan", depth=4))
    model.train()
    for _ in range(3):  # give the running statistics non-trivial values
        model(torch.rand(8, 1, 64, 64))
    model.eval()
    fused = model.inference_copy()
    x = torch.rand(4, 1, 64, 64)
    with torch.no_grad():
        a, b = model.reconstruct(x), fused.reconstruct(x)
    assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("n_in,n_out", [(28, 64), (32, 64), (5, 12), (64, 28), (7, 7)])
def test_bilinear_matrix_is_pillows_resize(n_in, n_out):
    import numpy as np
    from PIL import Image

    from torch_vae.models.upsampling import bilinear_matrix

    x = np.random.default_rng(n_in).random((n_in, n_in)).astype(np.float32)
    pillow = Image.fromarray(x, mode="F").resize((n_out, n_out), Image.BILINEAR)
    m = bilinear_matrix(n_in, n_out)
    ours = m @ torch.from_numpy(x).double() @ m.T
    assert torch.allclose(ours, torch.tensor(np.asarray(pillow), dtype=torch.float64), atol=1e-6)


def test_upsampling_projector_keeps_upsampled_images_and_nothing_else():
    from torch_vae.models.upsampling import bilinear_matrix, native_residual, upsampling_projector

    p = upsampling_projector(28, 64)
    assert torch.allclose(p @ p, p, atol=1e-5) and torch.allclose(p, p.T)
    assert round(torch.trace(p).item()) == 28  # rank 28 along each axis: 784 of 4096 pixels
    m = bilinear_matrix(28, 64).float()
    small = torch.rand(5, 1, 28, 28)
    up = m @ small @ m.T
    assert torch.allclose(p @ up @ p, up, atol=1e-5)
    assert native_residual(up, 28) < 1e-10
    assert native_residual(torch.rand(5, 1, 64, 64), 28) > 1e-2


def test_native_size_only_lowers_the_error_to_upsampled_images():
    from torch_vae.models.upsampling import bilinear_matrix

    torch.manual_seed(0)
    plain = VAE(ModelConfig(image_size=32, max_filters=16, arch="dcgan", depth=3)).eval()
    cfg = ModelConfig(image_size=32, max_filters=16, arch="dcgan", depth=3, native_size=28)
    projected = VAE(cfg).eval()
    # the projection has no weights: any model's weights load into it, and back
    assert set(plain.state_dict()) == set(projected.state_dict())
    projected.load_state_dict(plain.state_dict())
    m = bilinear_matrix(28, 32).float()
    target = (m @ torch.rand(6, 1, 28, 28) @ m.T).clamp(0, 1)
    z = torch.randn(6, cfg.latent_dims)
    before, after = plain.decode(z), projected.decode(z)
    assert 0 <= after.min() and after.max() <= 1
    err_before = (before - target).pow(2).flatten(1).sum(1)
    err_after = (after - target).pow(2).flatten(1).sum(1)
    assert torch.all(err_after <= err_before + 1e-5)
    assert err_after.sum() < err_before.sum()
    with pytest.raises(TorchVaeError, match="--native_size 32 must be 0"):
        ModelConfig(image_size=32, native_size=32)
    with pytest.raises(TorchVaeError, match="--native_size -1 must be 0"):
        ModelConfig(native_size=-1)


def test_an_image_size_no_depth_fits_names_the_sizes_that_do():
    """--image_size 33 said "use an even --image_size", and 34 then failed at depth 4 too."""
    with pytest.raises(TorchVaeError, match="use --image_size 32 or 48 .multiples of 16.$"):
        ModelConfig(arch="dcgan", image_size=33)
    with pytest.raises(TorchVaeError, match=r"use --image_size 32 or 48 \(multiples of 16\), "
                       "or --depth 1 or less$"):  # fmt: skip
        ModelConfig(arch="dcgan", image_size=34)
    with pytest.raises(TorchVaeError, match=r"use --image_size 16 \(multiples of 16\), or "):
        ModelConfig(arch="dcgan", image_size=12)


def test_native_maps_invert_the_pipeline_s_upsampling_and_the_config_checks_them():
    from torch_vae.models.upsampling import native_maps, upsampling_projector

    small = torch.rand(3, 1, 28, 28)
    for size, start in ((28, 0), (32, 2)):
        up, down = native_maps(28, 64, size)
        padded = torch.nn.functional.pad(small, (start, size - 28 - start) * 2)
        assert torch.allclose(down @ (up @ padded @ up.T) @ down.T, padded, atol=1e-4)
        assert torch.allclose(up @ down, upsampling_projector(28, 64), atol=1e-5)
    config = ModelConfig(arch="dcgan", native_size=28, network_size=32)
    assert config.work_size == 32 and config.depth == 3 and config.bottleneck_size == 4
    assert ModelConfig(arch="dcgan", native_size=28, network_size=28, depth=2).bottleneck_size == 7
    with pytest.raises(TorchVaeError, match="--network_size 28 is not divisible by 2..depth = 16 "
                       ".depth 4.; use --depth 2 or less, or --network_size 32$"):  # fmt: skip
        ModelConfig(arch="dcgan", native_size=28, network_size=28)
    with pytest.raises(TorchVaeError, match="depth = 16 .depth 4.; use --network_size 32$"):
        ModelConfig(arch="dcgan", native_size=28, network_size=33)
    # an odd size with no multiple of 16 below 64: a size for a smaller depth, or none
    with pytest.raises(
        TorchVaeError, match="depth = 16 .depth 4.; use --network_size 60 --depth 2$"
    ):
        ModelConfig(arch="dcgan", native_size=60, network_size=61)
    with pytest.raises(TorchVaeError, match="depth = 16 .depth 4.; leave out --network_size$"):
        ModelConfig(arch="dcgan", native_size=63, network_size=63)
    with pytest.raises(TorchVaeError, match="pass the size they were upsampled from too"):
        ModelConfig(network_size=32)
    with pytest.raises(TorchVaeError, match="--network_size 28 is not divisible by 2..depth = 8"):
        ModelConfig(native_size=28, network_size=28, depth=3)
    for wrong in (24, 64):
        with pytest.raises(TorchVaeError, match=f"--network_size {wrong} must be from"):
            ModelConfig(native_size=28, network_size=wrong)
    with pytest.raises(TorchVaeError, match="--network_size must be an integer >= 0, got -1"):
        ModelConfig(native_size=28, network_size=-1)


def test_native_projection_runs_in_float32_under_autocast():
    torch.manual_seed(0)
    model = VAE(ModelConfig(image_size=32, max_filters=16, arch="dcgan", depth=3, native_size=28))
    model.eval()
    z = torch.randn(4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        raw = model.decoder(z)
        out = model.decode(z)
    assert raw.dtype == out.dtype == torch.bfloat16
    from torch_vae.models.upsampling import upsampling_projector

    p = upsampling_projector(28, 32)
    expected = (p @ raw.float() @ p).clamp(0, 1).to(torch.bfloat16)
    assert torch.equal(out, expected)
    in_bf16 = (p.bfloat16() @ raw @ p.bfloat16()).clamp(0, 1)
    assert not torch.equal(out, in_bf16)  # the check above can tell the two apart


def test_load_model_refuses_a_swapped_or_wrong_dtype_and_device_in_one_line(tmp_path):
    import torch_vae

    VAE(
        ModelConfig(in_channels=1, image_size=16, latent_dims=3, max_filters=8, depth=2)
    ).save_pretrained(tmp_path / "m")
    path = tmp_path / "m"
    with pytest.raises(TypeError, match=r"torch.bfloat16 is a dtype, given as the device"):
        torch_vae.load_model(path, torch.bfloat16)  # load_model's order: device, then dtype
    with pytest.raises(TypeError, match=r"'cpu' is a device, given as the dtype"):
        VAE.from_pretrained(path, "cpu")  # from_pretrained's: dtype, then device
    with pytest.raises(TypeError, match="floating torch.dtype"):
        torch_vae.load_model(path, dtype="bfloat16")
    with pytest.raises(TorchVaeError, match="unknown device 'bogus'"):
        torch_vae.load_model(path, "bogus")
    if not torch.cuda.is_available():
        with pytest.raises(TorchVaeError, match="no CUDA GPU"):
            torch_vae.load_model(path, "cuda")
    model = torch_vae.load_model(path, "cpu", torch.bfloat16)
    assert model.dtype == torch.bfloat16 and model.device.type == "cpu"
    assert VAE.from_pretrained(path, torch.bfloat16, torch.device("cpu")).dtype == torch.bfloat16


def test_config_from_dict_names_a_misspelt_field_a_whole_config_json_or_a_newer_version():
    from torch_vae import TrainConfig

    with pytest.raises(
        TorchVaeError, match=r"\['latnet_dims'\] \(misspelt\? 'latnet_dims' -> 'latent_dims'\)"
    ):
        ModelConfig.from_dict({"latnet_dims": 3})
    with pytest.raises(TorchVaeError, match="'lrr' -> 'lr'"):
        TrainConfig.from_dict({"lrr": 0.1})
    with pytest.raises(TorchVaeError, match=r'under "model" and the training config under "train"'):
        ModelConfig.from_dict({"model": {}, "train": {}})
    with pytest.raises(TorchVaeError, match="written by a newer torch-vae needs pip install -U"):
        ModelConfig.from_dict({"zzz_future_field": 1})


def test_save_pretrained_refuses_a_file_name_and_names_save_model(tmp_path):
    model = VAE(ModelConfig(in_channels=1, image_size=16, latent_dims=3, max_filters=8, depth=2))
    with pytest.raises(TorchVaeError, match=r"writes a folder .*torch_vae.save_model"):
        model.save_pretrained(tmp_path / "m.safetensors")
    assert not (tmp_path / "m.safetensors").exists()


def test_save_pretrained_refuses_a_training_run_s_folder(trained):
    """A run's config.json (its training config and split, which --resume reads) was replaced
    by a model folder's, and the run could not resume."""
    import torch_vae

    config, state = (trained / "config.json").read_bytes(), (trained / "ckpt.pt").read_bytes()
    model = torch_vae.load_model(trained)
    with pytest.raises(TorchVaeError, match="holds a training run's record: its config.json"):
        model.save_pretrained(trained)
    (trained / "ckpt.pt").unlink()  # a finished run's config.json alone says so too
    with pytest.raises(TorchVaeError, match="save into another folder"):
        model.save_pretrained(trained)
    assert (trained / "config.json").read_bytes() == config
    (trained / "ckpt.pt").write_bytes(state)
    out = model.save_pretrained(trained.parent / "mine")  # a model folder: written, and again
    assert model.save_pretrained(out) == out


def test_the_python_api_names_a_wrong_type_of_path_or_generator():
    import torch_vae

    with pytest.raises(TypeError, match="the model's path must be a str or a pathlib.Path"):
        torch_vae.load_model(None)
    post = VAE(ModelConfig(image_size=16, latent_dims=3, max_filters=8, depth=2)).encode(
        torch.rand(2, 1, 16, 16)
    )
    with pytest.raises(TypeError, match=r"generator must be a torch.Generator .* not 0"):
        post.sample(0)


@pytest.mark.parametrize("arch", ["original", "dcgan", "resnet", "vqvae"])
def test_model_config_tiny_of_an_arch_is_that_family_s_tiny_config(arch):
    from torch_vae.models.registry import config_class

    config = ModelConfig.tiny(arch=arch)
    assert config == config_class(arch).tiny()
    assert VAE(config).num_parameters() < 25_000


def test_sample_refuses_a_count_or_generator_of_the_wrong_kind_in_one_line():
    model = VAE(ModelConfig.tiny()).eval()
    for bad in (-1, 0, 2.5, "4", True):
        with pytest.raises(TypeError, match="number of images as a positive int"):
            model.sample(bad)
    with pytest.raises(TypeError, match=r"generator must be a torch.Generator"):
        model.sample(2, generator=0)
    assert model.sample(np.int64(2)).shape == (2, 1, 32, 32)  # numpy's integers count
