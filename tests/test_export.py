"""torch-vae export: the encoder and decoder of tiny models of every registered family as ONNX
files run in onnxruntime (and as TorchScript) against PyTorch on the same inputs, at two batch
sizes; a native-size model; the JSON beside the files; and the one-line errors."""

import json
import logging
import sys

import numpy as np
import pytest
import torch

from torch_vae import VAE
from torch_vae.cli import main
from torch_vae.models import architectures, model_class
from torch_vae.models.upsampling import native_residual

TOLERANCE = 1e-4


def tiny_model(folder, arch="dcgan", **fields):
    """A tiny model whose batch norms hold non-trivial running statistics, saved in ``folder``."""
    torch.manual_seed(0)
    model = VAE(model_class(arch).config_class.tiny(image_size=32, **fields)).train()
    labels = torch.arange(8) % model.config.num_classes if model.conditional else None
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(8, 1, 32, 32) * 0.8 + 0.1, condition=labels)
    model.eval().save_pretrained(folder, "mnist")
    return model


def export(model_dir, out, *more):
    return main(["export", "--model", str(model_dir), "--out", str(out), "--quiet", *more])


def _error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("torch-vae: error: "), lines
    return lines[0]


def run_onnx(path, inputs: dict) -> list:
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {k: v.numpy() for k, v in inputs.items()})


def codes_and_encoding(model, x, z, y=None):
    """The decoder's input name and the encoder's outputs in PyTorch: the posterior's mean and
    log-variance, or a discrete model's code indices."""
    with torch.no_grad():
        post = model.encode(x, y)
    if model.latent_kind == "discrete":
        return "codes", (post.mode(),)
    return "latents", (post.mu, post.logvar)


def check_against_pytorch(model, out, batches=(1, 5)):
    """The exported files' outputs against the model's own (not its inference copy)."""
    for batch in batches:
        x = torch.rand(batch, 1, 32, 32)
        z = model.prior_sample(batch, torch.Generator().manual_seed(batch), "cpu", torch.float32)
        name, encoded = codes_and_encoding(model, x, z)
        got_encoded = run_onnx(out / "encoder.onnx", {"images": x})
        (images,) = run_onnx(out / "decoder.onnx", {name: z})
        with torch.no_grad():
            want = model.decode(z)
        assert [g.shape for g in got_encoded] == [(batch, *model.latent_shape)] * len(encoded)
        assert images.shape == (batch, 1, 32, 32)
        for got, ref in zip((*got_encoded, images), (*encoded, want), strict=True):
            assert np.abs(got - ref.numpy()).max() <= TOLERANCE
    return images


@pytest.mark.parametrize("arch", architectures())
def test_every_family_exports_to_onnx_that_matches_pytorch(arch, tmp_path):
    pytest.importorskip("onnxruntime")
    model = tiny_model(tmp_path / "model", arch)
    assert export(tmp_path / "model", tmp_path / "out") == 0
    check_against_pytorch(model, tmp_path / "out")
    info = json.loads((tmp_path / "out" / "export-onnx.json").read_text())
    assert info["opset"] == 17 and info["arch"] == arch and info["latent_dims"] == 3
    assert info["image_size"] == 32 and info["dataset"] == "mnist" and info["torch_vae_version"]
    assert info["files"]["encoder.onnx"]["inputs"] == {"images": ["batch", 1, 32, 32]}
    assert info["files"]["decoder.onnx"]["outputs"] == {"images": ["batch", 1, 32, 32]}
    assert 0 <= info["max_abs_difference"] <= TOLERANCE


@pytest.mark.parametrize("arch", architectures())
def test_a_conditional_model_exports_with_labels_and_the_class_changes_the_images(arch, tmp_path):
    pytest.importorskip("onnxruntime")
    model = tiny_model(tmp_path / "model", arch, classes=("zero", "one", "two"))
    assert export(tmp_path / "model", tmp_path / "out") == 0
    info = json.loads((tmp_path / "out" / "export-onnx.json").read_text())
    assert info["classes"] == ["zero", "one", "two"]
    x, z = torch.rand(4, 1, 32, 32), model.prior_sample(4, torch.Generator().manual_seed(0), "cpu")
    y = torch.tensor([0, 1, 2, 1])
    name, encoded = codes_and_encoding(model, x, z, y)
    shape = ["batch", *model.latent_shape]
    assert info["files"]["decoder.onnx"]["inputs"] == {name: shape, "labels": ["batch"]}
    got_encoded = run_onnx(tmp_path / "out" / "encoder.onnx", {"images": x, "labels": y})
    (images,) = run_onnx(tmp_path / "out" / "decoder.onnx", {name: z, "labels": y})
    (other,) = run_onnx(tmp_path / "out" / "decoder.onnx", {name: z, "labels": (y + 1) % 3})
    with torch.no_grad():
        want = model.decode(z, y)
    for got, ref in zip((*got_encoded, images), (*encoded, want), strict=True):
        assert np.abs(got - ref.numpy()).max() <= TOLERANCE
    assert np.abs(images - other).max() > 1e-3  # the labels reach the decoder


@pytest.mark.parametrize("networks", [0, 30], ids=["projected", "network-size-30"])
def test_a_native_size_model_exports_its_projection(tmp_path, networks):
    pytest.importorskip("onnxruntime")
    model = tiny_model(tmp_path / "model", native_size=28, network_size=networks, depth=1)
    assert export(tmp_path / "model", tmp_path / "out", "--opset", "13") == 0
    images = check_against_pytorch(model, tmp_path / "out")
    assert native_residual(torch.from_numpy(images), 28) < 1e-10  # projected, not raw
    info = json.loads((tmp_path / "out" / "export-onnx.json").read_text())
    assert info["native_size"] == 28 and info["network_size"] == networks
    assert info["opset"] == 13


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_torchscript_and_the_default_folder(tmp_path, monkeypatch, caplog):
    model = tiny_model(tmp_path / "m")
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO):
        assert main(["export", "--model", "m", "--format", "torchscript"]) == 0
    assert "torch.jit.load vs PyTorch" in caplog.text and "max abs difference" in caplog.text
    out = tmp_path / "exports" / "m"
    encoder, decoder = (torch.jit.load(out / f"{n}.pt") for n in ("encoder", "decoder"))
    x, z = torch.rand(5, 1, 32, 32), torch.randn(1, 3)
    with torch.no_grad():
        assert torch.allclose(encoder(x)[0], model.encode(x).mu, atol=TOLERANCE)
        assert torch.allclose(decoder(z), model.decode(z), atol=TOLERANCE)
    assert json.loads((out / "export-torchscript.json").read_text())["opset"] is None
    assert main(["export", "--model", "m", "--format", "torchscript", "--quiet"]) == 0  # again


def test_a_run_s_weights_file_exports_under_the_run_s_name(tmp_path, monkeypatch):
    for run in ("mine", "other"):
        tiny_model(tmp_path / "runs" / run)
    monkeypatch.chdir(tmp_path)
    for run in ("mine", "other"):
        args = ["export", "--model", f"runs/{run}/model.safetensors", "--format", "torchscript"]
        assert main([*args, "--quiet"]) == 0
    assert sorted(p.name for p in (tmp_path / "exports").iterdir()) == ["mine", "other"]
    for run in ("mine", "other"):  # a run's epoch checkpoint: the run's name and the epoch's
        epoch = tmp_path / "runs" / run / "checkpoints" / "epoch_001.safetensors"
        epoch.parent.mkdir()
        epoch.write_bytes((tmp_path / "runs" / run / "model.safetensors").read_bytes())
        args = ["export", "--model", str(epoch.relative_to(tmp_path)), "--format", "torchscript"]
        assert main([*args, "--quiet"]) == 0
    names = sorted(p.name for p in (tmp_path / "exports").iterdir())
    assert names == ["mine", "mine-epoch_001", "other", "other-epoch_001"], names


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    from torch_vae.cli import common
    from torch_vae.cli import export as command

    tiny_model(tmp_path / "model")
    ts = ("--format", "torchscript")  # these need no onnx package
    assert export(tmp_path / "nope", tmp_path / "out", *ts) == 1
    assert "does not exist" in _error(capsys)
    (tmp_path / "file").write_text("x")
    assert export(tmp_path / "model", tmp_path / "file", *ts) == 1
    assert "is a file, not a folder" in _error(capsys)
    monkeypatch.chdir(tmp_path)  # no --out: exports/model, where a file is in the way
    (tmp_path / "exports").mkdir()
    (tmp_path / "exports" / "model").write_text("x")
    assert main(["export", "--model", str(tmp_path / "model"), "--quiet", *ts]) == 1
    said = _error(capsys)
    assert (
        "exports/model (where the export goes: --out, by default exports/MODEL) is a file" in said
    )
    assert export(tmp_path / "model", tmp_path / "out", "--opset", "99") == 1
    assert "--opset must be an integer from" in _error(capsys)
    monkeypatch.setattr(command, "max_difference", lambda *a: float("nan"))
    assert export(tmp_path / "model", tmp_path / "out", *ts) == 1
    assert "nothing was written" in _error(capsys) and not (tmp_path / "out").exists()
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # not installed
    assert export(tmp_path / "model", tmp_path / "out") == 1
    assert "pip install 'torch-vae[onnx]'" in _error(capsys)
    (tmp_path / "model" / "encoder.pt").write_bytes(b"an earlier export")  # in a run folder
    assert export(tmp_path / "model", tmp_path / "model", *ts) == 1
    assert "will not write over" in _error(capsys)
    shipped = tmp_path / "shipped"
    monkeypatch.setattr(common, "shipped_models", lambda: shipped)
    (shipped / "model" / "onnx").mkdir(parents=True)
    (shipped / "model" / "onnx" / "decoder.pt").write_bytes(b"an earlier export")
    assert export(tmp_path / "model", shipped / "model" / "onnx", *ts) == 1
    assert "will not write over" in _error(capsys)
    assert (shipped / "model" / "onnx" / "decoder.pt").read_bytes() == b"an earlier export"
    assert (tmp_path / "model" / "encoder.pt").read_bytes() == b"an earlier export"


def test_an_export_replaces_its_own_model_s_only_not_another_s_nor_a_user_s_file(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    a, b, out = tmp_path / "a", tmp_path / "b", tmp_path / "out"
    tiny_model(a)
    tiny_model(b, latent_dims=4)
    assert export(a, out) == 0
    assert json.loads((out / "export-onnx.json").read_text())["model"] == str(a)
    assert export(a, out) == 0  # the same model again: replaced
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert export(b, out, "--format", "torchscript") == 1  # another model's beside it: refused
    assert "holds an export of other weights (export-onnx.json: another model's" in _error(capsys)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "encoder.onnx").write_text("my own model")
    assert export(a, mine) == 1
    assert "holds encoder.onnx, which no export-onnx.json there describes" in _error(capsys)
    assert (mine / "encoder.onnx").read_text() == "my own model"
