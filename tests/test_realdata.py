"""Slow tests on the real Fashion-MNIST files (Debian's dataset-fashion-mnist) and the original's
real checkpoints; they skip where either is absent. Run with --runslow."""

from pathlib import Path

import numpy as np
import pytest
import torch

from torch_vae.cli import main
from torch_vae.data import load_split
from torch_vae.evaluation.likelihood import evaluate_model

SYSTEM = Path("/usr/share/datasets/fashion-mnist")
REAL = Path(__file__).resolve().parents[2] / "shared" / "torch-vae-checkpoints"

needs_data = pytest.mark.skipif(
    not (SYSTEM / "t10k-images-idx3-ubyte.gz").exists(),
    reason="install the Debian package dataset-fashion-mnist",
)


@pytest.mark.slow
@needs_data
def test_real_fashion_mnist_splits(tmp_path):
    train = load_split("fashion-mnist", "train", 28, tmp_path, progress=False)
    test = load_split("fashion-mnist", "test", 64, tmp_path, progress=False)
    assert train.shape == (60000, 28, 28, 1) and test.shape == (10000, 64, 64, 1)
    assert train.dtype == test.dtype == np.uint8
    # Fashion-MNIST's published pixel mean is 0.2860 (of 255) over the training set
    assert abs(train.mean() / 255 - 0.2860) < 5e-4
    assert train.max() == 255 and train.min() == 0


@pytest.mark.slow
@needs_data
@pytest.mark.skipif(not REAL.is_dir(), reason="the original's checkpoints are not available")
def test_imported_original_reproduces_its_reference_objective(tmp_path):
    """The original's latent-8 Fashion-MNIST model, imported, scores its reference objective
    (54.88 per image on the test split, ../shared/docs/reference-numbers.md)."""
    out = tmp_path / "d8.safetensors"
    pth = REAL / "fashion-mnist" / "vae_filters_0128_dims_0008.pth"
    args = ["import-torch-vae", str(pth), "--dataset", "fashion-mnist", "--out", str(out)]
    assert main([*args, "--quiet"]) == 0
    from torch_vae import load_model

    model = load_model(out)
    test = torch.from_numpy(load_split("fashion-mnist", "test", 64, tmp_path, progress=False))
    report = evaluate_model(model, test, torch.device("cpu"), 0.1, 0, 500, 0, False)
    assert abs(report["objective"] - 54.88) < 0.3, report


@pytest.mark.slow
@needs_data
def test_real_images_are_upsampled_from_28_and_the_shipped_model_meets_the_bar(tmp_path):
    """The 64x64 test images are bilinear upsamplings of 28x28 ones (what --native_size 28
    assumes), and the shipped latent-8 model scores at most 50.0 (issue's bar) on them."""
    from torch_vae import TorchVaeError, load_model
    from torch_vae.models.upsampling import check_native_size

    test = torch.from_numpy(load_split("fashion-mnist", "test", 64, tmp_path, progress=False))
    check_native_size(test, 28)
    for wrong in (27, 32):
        with pytest.raises(TorchVaeError, match="not bilinear upsamplings"):
            check_native_size(test, wrong)
    models = Path(__file__).resolve().parents[1] / "models" / "fashion-mnist"
    model = load_model(models / "dcgan-f192-d8-p28")
    assert model.config.native_size == 28
    report = evaluate_model(model, test, torch.device("cpu"), 0.1, 0, 500, 0, False)
    assert report["objective"] <= 50.0, report


def _snapshot(folder: Path) -> dict:
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))
            if p.is_file()}  # fmt: skip


@pytest.mark.slow
@needs_data
def test_every_command_on_a_shipped_model_leaves_its_folder_as_it_was(tmp_path, monkeypatch):
    """Run from a working folder outside the clone, every command that takes a model writes
    where its flags say, or beside itself, never into the shipped model's folder."""
    from fastapi.testclient import TestClient

    from torch_vae import load_model
    from torch_vae.explorer.app import create_app
    from torch_vae.explorer.state import load_explorer

    shipped = Path(__file__).resolve().parents[1] / "models" / "fashion-mnist" / "dcgan-d8"
    before = _snapshot(shipped)
    monkeypatch.chdir(tmp_path)
    data = ["--data_dir", str(tmp_path / "data"), "--quiet"]
    m = ["--model", str(shipped)]
    for args in (
        ["evaluate", *m, "--nimages", "20", "--iw_samples", "2"],
        ["sample-quality", *m, "--nsamples", "50", "--features", "encoder"],
        ["generate", *m, "--nsamples", "4", "--outdir", "g"],
        ["reconstruct", *m, "--nimages", "4", "--outdir", "r"],
        ["interpolate", *m], ["traverse", *m, "--nimages", "50"],
        ["manifold", *m, "--nimages", "50"], ["embed", *m, "--nimages", "50"],
        ["plot", str(shipped), "--out", "curves.png"],
        ["train", "--init_from", str(shipped), "--max_steps", "1", "--epochs", "1",
         "--run_dir", "run"],
    ):  # fmt: skip
        extra = data if args[0] not in ("plot", "generate") else ["--quiet"]
        assert main([*args, *extra]) == 0, args
    assert main(["fit-sampler", *m, *data]) == 1  # refused: it would write beside the model
    reports = tmp_path / "reports" / "dcgan-d8"
    assert (reports / "eval-fashion-mnist-test-first20-iw2.json").is_file()
    model = load_model(shipped)
    ex = load_explorer(model, shipped, "fashion-mnist", tmp_path / "data", 50, progress=False)
    with TestClient(create_app(ex)) as client:
        assert client.post("/api/sample", json={"seed": 1}).status_code == 200
    assert _snapshot(shipped) == before
