"""Bad input and a hostile environment get one-line errors and never silently wrong results."""

import math

import pytest
import torch
from test_reliability import assert_same_run, data, resume, train_args  # noqa: F401

from torch_vae import VAE, ModelConfig, TorchVaeError, load_model, save_model
from torch_vae.cli import main


def test_raising_max_steps_on_resume_continues_the_cut_epoch(data, tmp_path):  # noqa: F811
    """5 steps per epoch: a run stopped by --max_steps 2 and resumed with --max_steps 4 ends
    bitwise equal to a run started with --max_steps 4 (the rest of epoch 1 is not skipped)."""
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert main(train_args(ref, data, 2, "--max_steps", "4")) == 0
    assert main(train_args(run, data, 2, "--max_steps", "2")) == 0
    assert resume(run, data, "--max_steps", "4") == 0
    assert_same_run(run, ref)


def test_resume_past_max_steps_is_refused(data, tmp_path, capsys):  # noqa: F811
    run = tmp_path / "run"
    assert main(train_args(run, data, 2, "--max_steps", "2")) == 0
    assert resume(run, data) == 1
    assert "already finished" in capsys.readouterr().err


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_weights_with_non_finite_values_are_refused_at_load(tmp_path, bad, capsys):
    model = VAE(ModelConfig(image_size=16, latent_dims=2, max_filters=8, depth=2))
    with torch.no_grad():
        model.decoder.lin.weight[0, 0] = bad
    path = save_model(model, tmp_path / "m.safetensors", "mnist")
    with pytest.raises(TorchVaeError, match="holds NaN or infinite weights"):
        load_model(path)
    out = tmp_path / "samples"
    assert main(["generate", "--model", str(path), "--outdir", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "NaN or infinite weights" in err[0]
    assert not out.exists()
