"""The shipped models and an old run folder decode as they did before models became plug-ins:
their samples and reconstructions against the pixels the torch-vae of e909fc0 wrote, through
its Python API (shipped-outputs.npz) and its command line (old-code/), within one grey level
(the CPU's float rounding may differ by machine)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from torch_vae import load_model
from torch_vae.cli import main
from torch_vae.io.png import to_uint8

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = np.load(Path(__file__).parent / "data" / "shipped-outputs.npz")


def _ramp() -> torch.Tensor:
    """Two 64x64 test images that need no dataset: a ramp and its mirrored transpose."""
    x = torch.linspace(0, 1, 64 * 64).reshape(1, 1, 64, 64).repeat(2, 1, 1, 1)
    x[1] = x[1].flip(-1).transpose(-1, -2)
    return x


@pytest.mark.parametrize("name", ["dcgan-d2", "dcgan-d8", "dcgan-f192-d8-p28"])
def test_shipped_model_gives_the_pixels_it_gave_when_shipped(name):
    model = load_model(ROOT / "models" / "fashion-mnist" / name)
    z = torch.randn(8, model.config.latent_dims, generator=torch.Generator().manual_seed(0))
    key = name.replace("-", "_")
    with torch.no_grad():
        samples = to_uint8(model.sample(8, torch.Generator().manual_seed(0))).astype(int)
        decoded = to_uint8(model.decode(z)).astype(int)
        rec = to_uint8(model.reconstruct(_ramp())).astype(int)
    assert np.abs(samples - REFERENCE[key]).max() <= 1
    assert np.abs(decoded - REFERENCE[key]).max() <= 1
    assert np.abs(rec - REFERENCE[key + "_rec"]).max() <= 1


# What the torch-vae of e909fc0 wrote through its command line (tests/data/old-code/make.sh):
# the first 16 images of `generate` and `reconstruct` per model, and a run folder it trained.
OLD = Path(__file__).parent / "data" / "old-code"
OLD_OUTPUTS = np.load(OLD / "outputs.npz")
FASHION = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
needs_fashion = pytest.mark.skipif(
    not FASHION.exists(), reason="install the Debian package dataset-fashion-mnist"
)


def _model_path(name: str, tmp_path: Path) -> Path:
    """A shipped model's folder, or a copy of the old run folder (a command may write into a
    run folder; the tracked one stays as the old code wrote it)."""
    if name != "run":
        return ROOT / "models" / "fashion-mnist" / name
    copy = tmp_path / "old-run"
    shutil.copytree(OLD / "run", copy)
    return copy


def _written(outdir: Path) -> np.ndarray:
    files = sorted(outdir.glob("*_*.png"))
    return np.stack([np.asarray(Image.open(f)) for f in files[:16]]).astype(int)


def _generate_matches_old_code(name: str, tmp_path: Path) -> None:
    out = tmp_path / "gen"
    args = ["generate", "--model", str(_model_path(name, tmp_path)), "--precision", "fp32"]
    args += ["--sampler", "prior", "--seed", "0", "--outdir", str(out), "--quiet"]
    assert main(args) == 0
    assert np.abs(_written(out) - OLD_OUTPUTS[f"gen-{name}"]).max() <= 1


@pytest.mark.parametrize("name", ["dcgan-d2", "dcgan-d8", "run"])
def test_generate_gives_the_old_code_s_pixels_for_latent_2_8_and_an_old_run(name, tmp_path):
    _generate_matches_old_code(name, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["dcgan-d64", "dcgan-f192-d8", "dcgan-f192-d8-p28", "dcgan-f192-d8-swa"]
)
def test_generate_gives_the_old_code_s_pixels_for_the_other_shipped_models(name, tmp_path):
    _generate_matches_old_code(name, tmp_path)


@pytest.mark.slow
@needs_fashion
@pytest.mark.parametrize("name", ["dcgan-d2", "dcgan-d8", "run"])
def test_reconstruct_gives_the_old_code_s_pixels_on_fashion_mnist(name, tmp_path):
    out = tmp_path / "rec"
    args = ["reconstruct", "--model", str(_model_path(name, tmp_path)), "--precision", "fp32"]
    args += ["--rec_testdata", "--nimages", "64", "--outdir", str(out), "--quiet"]
    assert main(args + ["--data_dir", str(tmp_path / "data")]) == 0
    assert np.abs(_written(out) - OLD_OUTPUTS[f"rec-{name}"]).max() <= 1


@pytest.mark.slow
@needs_fashion
def test_a_run_folder_written_by_the_old_code_resumes(tmp_path):
    run = _model_path("run", tmp_path)
    args = ["train", "--resume", str(run), "--max_steps", "50", "--threads", "1", "--quiet"]
    assert main(args + ["--data_dir", str(tmp_path / "data")]) == 0
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == 50 and metrics[-1]["epoch"] == 1
    assert "test_loss" in metrics[-1]  # the old run had no validation split; it keeps none
