"""The contract every registered model family keeps (models/base.py), checked for each family
in the registry, unconditional and class-conditional, whatever its latent (``latent_kind``:
Gaussian codes or a discrete code grid): a family that registers itself is covered here without
editing this file. Tiny configs (``ModelConfig.tiny``) on the CPU."""

import dataclasses
import json
import re
import warnings

import numpy as np
import pytest
import torch

from torch_vae import MODELS, VAE, ModelConfig, TorchVaeError, load_model
from torch_vae.cli import main
from torch_vae.cli.flags import model_options
from torch_vae.models import architectures, model_class

with warnings.catch_warnings():  # Starlette suggests another HTTP client; httpx works
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

ARCHS = architectures()
CLASSES = ("zero", "one", "two")  # a conditional model's
# every family, and every family conditioned on a class
CASES = [
    pytest.param(arch, classes, id=arch + ("-conditional" if classes else ""))
    for arch in ARCHS
    for classes in ((), CLASSES)
]


def tiny(arch: str, channels: int = 1, classes=(), **fields) -> ModelConfig:
    return model_class(arch).config_class.tiny(
        in_channels=channels, image_size=32, classes=classes, **fields
    )


def labels(model: VAE, n: int, seed: int = 9):
    """Classes for ``n`` images of a conditional model (None for another)."""
    return model.labels(None, n, torch.Generator().manual_seed(seed))


def codes(model: VAE, n: int, seed: int = 7) -> torch.Tensor:
    """``n`` codes from the model's prior, drawn on the CPU (float32 where they are numbers)."""
    return model.prior_sample(n, torch.Generator().manual_seed(seed), "cpu", torch.float32)


def _fields(arch: str) -> set[str]:
    return {f.name for f in dataclasses.fields(model_class(arch).config_class)}


def trained_like(arch: str, channels: int = 1, classes=(), **fields) -> VAE:
    """A tiny model whose batch norms hold non-trivial running statistics."""
    torch.manual_seed(0)
    model = VAE(tiny(arch, channels, classes, **fields)).train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(8, channels, 32, 32) * 0.8 + 0.1, condition=labels(model, 8))
    return model.eval()


def test_the_registry_holds_the_built_in_families_and_feeds_the_config():
    assert {"original", "dcgan"} <= set(MODELS) and ARCHS[0] == "original"
    for arch in ARCHS:
        config = ModelConfig(arch=arch)  # the family's config class, its default depth
        assert type(config) is model_class(arch).config_class and config.arch == arch
        assert type(VAE(config)) is model_class(arch)
    with pytest.raises(TorchVaeError, match="unknown architecture 'nope'; choose one of"):
        ModelConfig(arch="nope")


@pytest.mark.parametrize(("arch", "classes"), CASES)
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_and_pixel_range(arch, classes, channels):
    model = trained_like(arch, channels, classes)
    x, y = torch.rand(5, channels, 32, 32), labels(model, 5)
    post = model.encode(x, y)
    assert post.mode().shape == (5, *model.latent_shape) and post.kl().shape == (5,)
    assert codes(model, 2).shape == (2, *model.latent_shape)
    if model.latent_kind == "gaussian":
        assert post.mu.shape == post.logvar.shape == (5, model.config.latent_dims)
    with torch.no_grad():
        for images in (model(x, condition=y).recon, model.decode(post.mode(), y),
                       model.reconstruct(x, y),
                       model.sample(4, torch.Generator().manual_seed(0))):  # fmt: skip
            assert images.shape[1:] == (channels, 32, 32)
            assert 0 <= images.min() and images.max() <= 1


@pytest.mark.parametrize(("arch", "classes"), CASES)
def test_training_steps_lower_the_loss(arch, classes):
    torch.manual_seed(0)
    model = VAE(tiny(arch, classes=classes)).train()
    x, y = torch.rand(16, 1, 32, 32).round(), labels(model, 16)  # binary images: easy to fit
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def loss() -> torch.Tensor:
        return model.loss(x, generator=torch.Generator().manual_seed(1), condition=y)["loss"]

    parts = model.loss(x, condition=y)
    assert set(parts) == {"loss", *model.objective_terms}
    assert all(parts[k] >= 0 for k in model.objective_terms)  # squared errors, KL, commitment
    before = loss().item()
    for _ in range(10):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert loss().item() < before


@pytest.mark.parametrize(("arch", "classes"), CASES)
def test_save_and_load_give_identical_outputs(arch, classes, tmp_path):
    model = trained_like(arch, classes=classes)
    model.save_pretrained(tmp_path / "m", dataset="mnist")
    assert {p.name for p in (tmp_path / "m").iterdir()} == {"model.safetensors", "config.json"}
    again = load_model(tmp_path / "m")
    assert type(again) is type(model) and again.config == model.config
    assert again.dataset == "mnist" and not again.training
    x, y = torch.rand(3, 1, 32, 32), labels(model, 3)
    assert torch.equal(again.reconstruct(x, y), model.reconstruct(x, y))
    gen = [torch.Generator().manual_seed(4) for _ in range(2)]
    assert torch.equal(again.sample(3, gen[0]), model.sample(3, gen[1]))
    assert model_class(arch).from_pretrained(tmp_path / "m").config == model.config
    other = next(a for a in ARCHS if a != arch)
    with pytest.raises(TorchVaeError, match=f"holds a {arch} model, not a"):
        model_class(other).from_pretrained(tmp_path / "m")


@pytest.mark.parametrize(("arch", "classes"), CASES)
def test_inference_copy_equals_eval_mode_and_leaves_the_model(arch, classes):
    model = trained_like(arch, classes=classes)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = model.inference_copy()
    assert not fast.training and not any(
        isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules()
    )  # every batch norm folded
    x, z = torch.rand(4, 1, 32, 32), codes(model, 4)
    y = labels(model, 4)
    with torch.no_grad():
        assert torch.allclose(fast.reconstruct(x, y), model.reconstruct(x, y), atol=1e-5)
        assert torch.allclose(fast.decode(z, y), model.decode(z, y), atol=1e-5)
        code, want = fast.encode(x, y).mode(), model.encode(x, y).mode()
        torch.testing.assert_close(code, want, atol=1e-4, rtol=0)  # indices: equal
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(("arch", "classes"), CASES)
@pytest.mark.parametrize("native", [0, 28])
def test_bfloat16_model_samples_decodes_and_encodes_float32_inputs(arch, classes, native):
    model = trained_like(arch, classes=classes, native_size=native).to(torch.bfloat16)
    y = labels(model, 3)
    with torch.no_grad():
        samples = model.sample(3, torch.Generator().manual_seed(0))
        decoded = model.decode(codes(model, 3), y)  # float32 codes into bfloat16 weights
        post = model.encode(torch.rand(3, 1, 32, 32), y)  # float32 images
        code = post.reparameterize(torch.zeros(3, *post.noise_shape))
    assert samples.dtype == decoded.dtype == torch.bfloat16
    assert code.dtype == torch.bfloat16 and code.isfinite().all()
    assert samples.isfinite().all() and 0 <= samples.min() and samples.max() <= 1
    reference = trained_like(arch, classes=classes, native_size=native)
    with torch.no_grad():
        ref = reference.sample(3, torch.Generator().manual_seed(0))
    assert (samples.float() - ref).abs().mean() < 0.05  # the same codes, rounded weights


@pytest.mark.parametrize(("arch", "classes"), CASES)
@pytest.mark.parametrize("size", [28, 30])
def test_network_size_networks_work_on_the_originals_and_give_upsampled_images(
    arch, classes, size, tmp_path
):
    from torch_vae.models.upsampling import native_residual

    ladder = {"depth": 1} if "depth" in _fields(arch) else {}  # not every family has one
    model = trained_like(arch, classes=classes, native_size=28, network_size=size, **ladder)
    seen = []
    model.encoder.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[2:]))
    x, y = torch.rand(4, 1, 32, 32), labels(model, 4)
    with torch.no_grad():
        outputs = model(x, condition=y).recon, model.sample(3, torch.Generator().manual_seed(1))
    assert [tuple(t) for t in seen] == [(size, size)]  # the encoder took network_size images
    for images in outputs:  # 32x32 upsamplings of 28x28 images, in [0, 1]
        assert images.shape[1:] == (1, 32, 32) and 0 <= images.min() and images.max() <= 1
        assert native_residual(images, 28) < 1e-10
    model.save_pretrained(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.config.network_size == loaded.config.work_size == size
    z = codes(model, 3)
    with torch.no_grad():
        assert torch.equal(loaded.decode(z, labels(model, 3)), model.decode(z, labels(model, 3)))


@pytest.mark.parametrize(("arch", "classes"), CASES)
def test_seeded_sampling_draws_the_generator_s_codes_on_its_own_device(arch, classes):
    model = trained_like(arch, classes=classes)
    a = model.sample(6, torch.Generator().manual_seed(3))
    b = model.sample(6, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    # the codes (then a conditional model's classes) are those of the CPU generator, whatever
    # the model's device: a seeded CPU generator gives the same samples on a GPU
    # (tests/test_gpu.py runs it there)
    gen = torch.Generator().manual_seed(3)
    drawn = model.prior_sample(6, gen, "cpu")
    assert torch.equal(a, model.decode(drawn, model.labels(None, 6, gen)))
    if model.latent_kind == "gaussian":  # N(0, I): torch.randn's numbers
        d = model.config.latent_dims
        assert torch.equal(drawn, torch.randn(6, d, generator=torch.Generator().manual_seed(3)))
    if torch.cuda.is_available():
        on_gpu = model.to("cuda").sample(6, torch.Generator().manual_seed(3)).cpu()
        assert (on_gpu - a).abs().max() < 1e-3


@pytest.mark.parametrize(("arch", "classes"), CASES)
def test_memory_estimate_grows_with_the_batch_and_leaves_the_random_state_alone(arch, classes):
    config = tiny(arch, classes=classes)
    torch.manual_seed(5)
    small, large = (model_class(arch).estimate_memory(config, b) for b in (8, 64))
    assert torch.equal(torch.rand(3), torch.rand(3, generator=torch.Generator().manual_seed(5)))
    assert 0 < small < large and VAE(config).memory_estimate(8) == small
    shapes = model_class(arch).expected_shapes(config)
    assert shapes == {k: tuple(v.shape) for k, v in VAE(config).state_dict().items()}


def _flags(arch: str) -> dict:
    """The tiny config as train's --config file (its in_channels comes from the dataset)."""
    return {k: v for k, v in tiny(arch).to_dict().items() if k != "in_channels"}


@pytest.mark.parametrize("arch", ARCHS)
def test_command_line_round_trip(arch, mnist_dir, tmp_path, labelled):
    """train --dry_run -> generate -> reconstruct -> evaluate -> the explorer's decode."""
    from torch_vae.explorer.app import create_app
    from torch_vae.explorer.state import load_explorer

    config, run = tmp_path / "flags.json", tmp_path / "run"
    config.write_text(json.dumps(_flags(arch)))
    common = ["--data_dir", str(mnist_dir), "--quiet"]
    assert main(["train", "--dataset", "mnist", "--config", str(config), "--dry_run",
                 "--run_dir", str(run), *common]) == 0  # fmt: skip
    model = load_model(run)
    assert model.config == tiny(arch) and type(model) is model_class(arch)
    out = tmp_path / "out"
    assert main(["generate", "--model", str(run), "--nsamples", "5", "--outdir",
                 str(out / "gen"), "--quiet"]) == 0  # fmt: skip
    assert len(list((out / "gen").glob("sample_*.png"))) == 5
    assert main(["reconstruct", "--model", str(run), "--nimages", "4", "--rec_testdata",
                 "--outdir", str(out / "rec"), *common]) == 0  # fmt: skip
    assert len(list((out / "rec").glob("rec_*.png"))) == 4
    report = out / "eval.json"
    assert main(["evaluate", "--model", str(run), "--nimages", "8", "--iw_samples", "2",
                 "--report", str(report), *common]) == 0  # fmt: skip
    assert json.loads(report.read_text())["latent_dims"] == model.config.latent_dims
    ex = load_explorer(model, run, "mnist", mnist_dir, 8, progress=False)
    with TestClient(create_app(ex)) as client:
        got = client.post("/api/decode", json={"z": codes(model, 1).flatten().tolist()})
    assert got.status_code == 200 and got.json()["image"].startswith("data:image/png")


@pytest.mark.parametrize("arch", ARCHS)
def test_train_conditional_learns_the_dataset_s_classes_and_the_class_changes_the_output(
    arch, mnist_dir, tmp_path, labelled
):
    """train --conditional records the dataset's class names in the model, trains on each
    image's label, and decoding one code with two classes gives two images."""
    config, run = tmp_path / "flags.json", tmp_path / "run"
    config.write_text(json.dumps(_flags(arch)))
    assert main(["train", "--dataset", "mnist", "--conditional", "--config", str(config),
                 "--max_steps", "3", "--val_images", "8", "--run_dir", str(run),
                 "--data_dir", str(mnist_dir), "--quiet"]) == 0  # fmt: skip
    model = load_model(run)
    assert model.config.classes == tuple(str(i) for i in range(10))
    z = codes(model, 1)
    assert not torch.equal(model.decode(z, "3"), model.decode(z, "7"))
    with pytest.raises(TorchVaeError, match="unknown class 'x'; choose one of 0 '0'"):
        model.sample(2, condition="x")
    gen = ["generate", "--model", str(run), "--nsamples", "16", "--quiet", "--outdir"]
    assert main([*gen, str(tmp_path / "seven"), "--class", "7"]) == 0
    assert main([*gen, str(tmp_path / "rows"), "--class", "all"]) == 0
    rows = sorted((tmp_path / "rows").glob("sample_*.png"))
    assert len(rows) == 16 and len(list((tmp_path / "seven").glob("sample_*.png"))) == 16
    assert main([*gen, str(tmp_path / "bad"), "--class", "x"]) == 1
    assert not (tmp_path / "bad").exists()
    with pytest.raises(TorchVaeError, match="this model is conditional: pass each image's"):
        model.encode(torch.rand(2, 1, 32, 32))


def test_each_model_option_s_help_names_its_families_once_and_each_one_s_default():
    # a family's own help carries no "--arch": the union of the families' options adds it
    # once, or gives each family's own words where they describe the option differently
    helps = {f.name: f.metadata for f in dataclasses.fields(model_options()) if f.name != "arch"}
    for name, meta in helps.items():
        said = meta["help"].split(" (default: ")[0]
        for arch in ARCHS:
            named = len(re.findall(rf"--arch [a-z, ]*\b{arch}\b", said))
            assert named == (arch in meta["families"] and "--arch" in said), (name, said)
    assert (
        helps["codebook_size"]["help"] == "codes in the codebook, K (--arch vqvae) (default: 512)"
    )
    # where the families' defaults differ, each is given
    assert helps["blocks"]["help"] == (
        "--arch resnet: residual blocks at every resolution; "
        "--arch vqvae: residual blocks at the code grid (default: resnet: 1; vqvae: 2)"
    )
    assert helps["latent_dims"]["help"].endswith("(default: original, dcgan, resnet: 8; vqvae: 16)")


@pytest.mark.parametrize(("arch", "classes"), CASES)
def test_images_of_another_shape_are_refused_in_one_line_naming_the_model_s(arch, classes):
    model = trained_like(arch, classes=classes)
    y = labels(model, 2)
    for wrong in (torch.rand(2, 1, 16, 16), torch.rand(2, 3, 32, 32), torch.rand(1, 32, 32)):
        with pytest.raises(TorchVaeError) as refused:
            model.encode(wrong, y)
        said = str(refused.value)
        assert said.startswith("this model encodes images of shape (N, 1, 32, 32), got (")
        assert "resize them to its --image_size 32" in said and "\n" not in said


@pytest.mark.parametrize(("arch", "classes"), CASES)
def test_codes_and_images_of_the_wrong_kind_are_refused_in_one_line(arch, classes):
    model = trained_like(arch, classes=classes)
    y = labels(model, 2)
    with pytest.raises(TypeError, match="encode takes images as a torch.Tensor, not a ndarray"):
        model.encode(np.zeros((2, 1, 32, 32), np.float32), y)
    with pytest.raises(TorchVaeError, match="encode takes float images in"):
        model.encode(torch.zeros(2, 1, 32, 32, dtype=torch.uint8), y)
    with pytest.raises(TypeError, match="decode takes codes as a torch.Tensor, not a list"):
        model.decode(codes(model, 2).tolist(), y)
    z = codes(model, 2)
    wrong = [z[:, :-1] if z.is_floating_point() else z.float(), z.flatten()[:2].view(2, 1)]
    for bad in wrong:
        with pytest.raises(
            TorchVaeError, match="this model decodes|code indices must be"
        ) as refused:
            model.decode(bad, y)
        assert "\n" not in str(refused.value)
    assert model.decode(z, y).shape == (2, 1, 32, 32)  # the right codes still decode


def _family(name: str | None):
    """A plug-in family, defined afresh on each call (as a notebook cell run again does)."""
    from torch_vae.models.dcgan import DCGANVAE, DCGANConfig

    @dataclasses.dataclass(frozen=True)
    class NotebookConfig(DCGANConfig):
        if name:  # else the arch field's default is DCGANConfig's
            arch: str = dataclasses.field(default=name)

    class NotebookVAE(DCGANVAE):
        config_class = NotebookConfig

    return NotebookVAE


def test_a_family_defined_again_replaces_itself_and_a_clash_names_both(monkeypatch):
    from torch_vae.models import registry

    monkeypatch.setattr(registry, "MODELS", dict(registry.MODELS))
    first = registry.register_model(_family("notebook-vae"))
    again = registry.register_model(_family("notebook-vae"))  # the cell run a second time
    assert again is not first and registry.model_class("notebook-vae") is again
    with pytest.raises(TorchVaeError) as clash:  # arch left at the inherited default
        registry.register_model(_family(None))
    said = str(clash.value)
    assert "architecture 'dcgan' is registered twice" in said
    assert "torch_vae.models.dcgan.DCGANVAE" in said and "a default of its own" in said


def test_a_family_whose_networks_ignore_work_size_is_refused_in_one_line(monkeypatch, mnist_dir):
    """A plug-in built for --image_size: under --network_size its encoder is given smaller
    images, which its first layer cannot take; train says so before any work."""
    from flat_family import flat_family

    from torch_vae.models import registry

    FlatVAE = flat_family("flat-test", size="image_size")
    FlatConfig = FlatVAE.config_class
    monkeypatch.setattr(registry, "MODELS", dict(registry.MODELS))
    registry.register_model(FlatVAE)
    fine = FlatConfig(image_size=32, latent_dims=2)
    assert VAE.estimate_memory(fine, 8) > 0  # at its image size it works
    misbuilt = FlatConfig(image_size=32, native_size=28, network_size=28, latent_dims=2)
    with pytest.raises(TorchVaeError) as refused:
        VAE.estimate_memory(misbuilt, 8)
    said = str(refused.value)
    assert said.startswith("the flat-test model cannot encode and decode images of its config")
    took = "its encoder takes images (B, 1, 28, 28) and its decoder gives images (B, 1, 28, 28)"
    assert took in said
    assert "28 being config.work_size" in said
    assert "\n" not in said
    import torch_vae

    with pytest.raises(TorchVaeError, match="cannot encode and decode images of its config"):
        torch_vae.train(misbuilt, torch_vae.TrainConfig(dataset="mnist"), data_dir=mnist_dir,
                        dry_run=True, progress=False, device="cpu")  # fmt: skip


def test_a_family_of_another_package_is_found_through_its_entry_point(tmp_path):
    """A package's ``torch_vae.models`` entry point (as its pyproject.toml declares it, here
    an installed package's metadata written by hand) gives the command line its --arch."""
    import textwrap

    from flat_family import train_help_with_plugin

    (tmp_path / "my_family.py").write_text(textwrap.dedent("""
        import dataclasses
        from torch_vae.models import register_model
        from torch_vae.models.dcgan import DCGANConfig, DCGANVAE

        @dataclasses.dataclass(frozen=True)
        class WideConfig(DCGANConfig):
            arch: str = "wide-test"
            widen: int = 2

        @register_model
        class WideVAE(DCGANVAE):
            config_class = WideConfig
    """))  # fmt: skip
    said = train_help_with_plugin(tmp_path, "my-family", "wide = my_family")
    assert said.returncode == 0, said.stderr
    assert "wide-test" in said.stdout and "--widen" in said.stdout
