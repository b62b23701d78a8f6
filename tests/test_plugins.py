"""Model families of other packages (plug-ins) that are broken in the usual ways: a plug-in that
fails to import leaves the other families and the command line working; a family without its
networks, an encoder that returns a tuple, a decoder that fixes the batch size in an export and
a model whose family is not installed each get one line that says what to do."""

import importlib.metadata
import textwrap

import pytest
import torch
from flat_family import flat_family, train_help_with_plugin

from torch_vae import VAE
from torch_vae.cli import main
from torch_vae.errors import TorchVaeError
from torch_vae.models import registry

FlatVAE = flat_family("flat-plugin-test", fixed_batch=True)  # len(z): an export keeps it
FlatConfig, FlatEncoder = FlatVAE.config_class, FlatVAE.encoder_class


@pytest.fixture
def own_registry(monkeypatch):
    """The registry's tables, restored after the test; the entry points counted as read."""
    monkeypatch.setattr(registry, "MODELS", dict(registry.MODELS))
    monkeypatch.setattr(registry, "FAILED_PLUGINS", {}, raising=False)
    monkeypatch.setattr(registry, "_loaded_entry_points", [True])
    return registry


def test_a_plugin_that_fails_to_import_is_one_warning_and_the_others_load(
    own_registry, monkeypatch, tmp_path, caplog
):
    (tmp_path / "good_family.py").write_text(textwrap.dedent("""
        import dataclasses
        from torch_vae.models import register_model
        from torch_vae.models.dcgan import DCGANConfig, DCGANVAE

        @dataclasses.dataclass(frozen=True)
        class GoodConfig(DCGANConfig):
            arch: str = "good-plugin-test"

        @register_model
        class GoodVAE(DCGANVAE):
            config_class = GoodConfig
    """))  # fmt: skip
    monkeypatch.syspath_prepend(str(tmp_path))
    points = [
        importlib.metadata.EntryPoint("broken", "no_such_module_xyz", registry.ENTRY_POINTS),
        importlib.metadata.EntryPoint("good", "good_family", registry.ENTRY_POINTS),
    ]
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: points)
    monkeypatch.setattr(registry, "_loaded_entry_points", [])
    assert "good-plugin-test" in registry.architectures()  # the one after the broken one too
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warned == ["warning: the model plug-in broken (no_such_module_xyz) failed to load "
                      "(ModuleNotFoundError: No module named 'no_such_module_xyz'); the other "
                      "model families work (fix or uninstall its package)"]  # fmt: skip
    for _ in range(2):  # asked again, the same answer (not "unknown architecture")
        with pytest.raises(TorchVaeError) as refused:
            registry.model_class("broken")
        assert str(refused.value) == (
            "the model plug-in broken (no_such_module_xyz) failed to load (ModuleNotFoundError: "
            "No module named 'no_such_module_xyz'); fix or reinstall its package"
        )
    with pytest.raises(TorchVaeError, match="unknown architecture 'nope'.*plug-in broken"):
        registry.model_class("nope")


def test_the_command_line_works_beside_a_broken_plugin(tmp_path):
    """An installed package's entry point (its metadata written by hand) naming a module that
    is not there: every command still runs, with one warning line."""
    said = train_help_with_plugin(tmp_path, "broken-family", "broken = brokenvae.modle")
    assert said.returncode == 0, said.stderr
    assert "--arch {original,dcgan," in said.stdout
    assert said.stderr.strip().splitlines() == [
        "warning: the model plug-in broken (brokenvae.modle) failed to load "
        "(ModuleNotFoundError: No module named 'brokenvae'); the other model families work "
        "(fix or uninstall its package)"
    ]


def test_a_family_without_its_networks_is_refused_when_it_registers(own_registry):
    class NoDecoder(VAE):
        config_class, encoder_class = FlatConfig, FlatEncoder

    with pytest.raises(TypeError, match="NoDecoder names no decoder_class, the network it builds"):
        registry.register_model(NoDecoder)

    class NotAModule(VAE):
        config_class, encoder_class, decoder_class = FlatConfig, FlatEncoder, "FlatDecoder"

    with pytest.raises(TypeError, match="decoder_class must be a torch.nn.Module class"):
        registry.register_model(NotAModule)
    assert "flat-plugin-test" not in registry.MODELS


def test_an_encoder_that_returns_a_tuple_is_refused_in_one_line(own_registry):
    class TupleEncoder(FlatEncoder):
        def forward(self, x):
            return tuple(super().forward(x)[:2])  # (mu, logvar)

    class TupleVAE(FlatVAE):
        encoder_class = TupleEncoder

    registry.register_model(TupleVAE)
    model = VAE(FlatConfig(image_size=16, latent_dims=2))
    with pytest.raises(TorchVaeError) as refused:
        model.encode(torch.rand(2, 1, 16, 16))
    assert str(refused.value) == (
        "the flat-plugin-test family's encoder returned a tuple, not a Posterior: return "
        "Posterior.clamped(mu, logvar) (docs/model.md, Adding a model)"
    )


def test_an_export_whose_decoder_fixes_the_batch_size_is_one_line(own_registry, tmp_path, capsys):
    registry.register_model(FlatVAE)
    VAE(FlatConfig(image_size=16, latent_dims=2)).eval().save_pretrained(tmp_path / "m", "mnist")
    out = tmp_path / "out"
    args = ["export", "--model", str(tmp_path / "m"), "--out", str(out), "--format",
            "torchscript", "--quiet"]  # fmt: skip
    assert main(args) == 1
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 1 and said[0].startswith("torch-vae: error: the exported decoder fails "
                                                 "on a batch of 1 (")  # fmt: skip
    assert "use reshape(-1, ...) or flatten(1); nothing was written" in said[0]
    assert not out.exists()


def test_a_model_whose_family_is_not_installed_names_the_module_it_came_from(
    own_registry, tmp_path
):
    registry.register_model(FlatVAE)
    VAE(FlatConfig(image_size=16, latent_dims=2)).save_pretrained(tmp_path / "m")
    del registry.MODELS["flat-plugin-test"]  # its package uninstalled
    with pytest.raises(TorchVaeError) as refused:
        VAE.from_pretrained(tmp_path / "m")
    said = str(refused.value)
    assert "unknown architecture 'flat-plugin-test'" in said
    assert said.endswith("its family came from the Python module 'flat_family': install the "
                         "package that provides it")  # fmt: skip


def test_a_model_of_a_family_defined_in_a_script_says_to_run_that_definition(
    own_registry, tmp_path
):
    family = flat_family("script-test")
    family.__module__ = "__main__"  # as a class defined in a script or a notebook cell is
    registry.register_model(family)
    VAE(family.config_class(image_size=16, latent_dims=2)).save_pretrained(tmp_path / "m")
    del registry.MODELS["script-test"]
    with pytest.raises(TorchVaeError) as refused:
        VAE.from_pretrained(tmp_path / "m")
    assert str(refused.value).endswith("its family was defined in the script or notebook that "
                                       "saved it: run that definition (its @register_model "
                                       "class) first")  # fmt: skip
