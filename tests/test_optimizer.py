"""The CPU optimizer (training.compile.CpuAdamW): torch's fused AdamW, without torch.optim's
import of torch._dynamo."""

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import torch_vae
from runs import train_args
from torch_vae import VAE, ModelConfig
from torch_vae.training.compile import CpuAdamW, make_optimizer

TINY = ModelConfig(in_channels=1, image_size=16, latent_dims=3, max_filters=8, depth=2)


def _steps(model, opt, n, seed, lr0=1e-2):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the posterior samples' noise
    for i in range(n):
        x = torch.rand(4, 1, 16, 16, generator=gen)
        opt.param_groups[0]["lr"] = lr0 / (i + 1)  # as the loop sets its schedule's rate
        opt.zero_grad(set_to_none=True)
        model.objective(model(x), x)["loss"].backward()
        opt.step()


def _pair():
    torch.manual_seed(0)
    model = VAE(TINY).train()
    twin = copy.deepcopy(model)
    torch_opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01, fused=True)
    ours = CpuAdamW(twin.parameters(), lr=1e-2, weight_decay=0.01)
    return model, torch_opt, twin, ours


def _assert_same(a, b):
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q), name


def test_cpu_adamw_updates_equal_torch_fused_adamw_bit_for_bit():
    model, torch_opt, twin, ours = _pair()
    _steps(model, torch_opt, 6, seed=1)
    _steps(twin, ours, 6, seed=1)
    _assert_same(model, twin)
    assert not torch.equal(model.encoder.convs[0].weight, VAE(TINY).encoder.convs[0].weight)


@pytest.mark.parametrize("direction", ["torch-to-ours", "ours-to-torch"])
def test_cpu_adamw_state_dict_moves_to_and_from_torch_adamw(direction):
    model, torch_opt, twin, ours = _pair()
    _steps(model, torch_opt, 3, seed=1)
    _steps(twin, ours, 3, seed=1)
    saved = (torch_opt if direction == "torch-to-ours" else ours).state_dict()
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    resumed_torch = torch.optim.AdamW(a.parameters(), lr=1.0, weight_decay=0.01, fused=True)
    resumed_ours = CpuAdamW(b.parameters(), lr=1.0, weight_decay=0.01)
    resumed_torch.load_state_dict(copy.deepcopy(saved))
    resumed_ours.load_state_dict(copy.deepcopy(saved))
    # the same keys and values in both layouts, and the same steps afterwards
    ref, got = resumed_torch.state_dict(), resumed_ours.state_dict()
    assert ref["param_groups"] == got["param_groups"]
    for i, entry in ref["state"].items():
        assert entry.keys() == got["state"][i].keys()
        assert all(torch.equal(v, got["state"][i][k]) for k, v in entry.items())
    _steps(a, resumed_torch, 3, seed=2)
    _steps(b, resumed_ours, 3, seed=2)
    _assert_same(a, b)


def test_cpu_adamw_refuses_a_state_of_another_model():
    model, torch_opt, _, _ = _pair()
    _steps(model, torch_opt, 1, seed=0)
    other = VAE(ModelConfig(in_channels=1, image_size=16, latent_dims=5, max_filters=8, depth=2))
    with pytest.raises(ValueError, match="misshapen"):
        CpuAdamW(other.parameters()).load_state_dict(torch_opt.state_dict())
    with pytest.raises(ValueError, match="other parameter groups"):
        CpuAdamW(list(other.parameters())[:-1]).load_state_dict(torch_opt.state_dict())


def test_make_optimizer_uses_cpu_adamw_for_float32_cpu_weights_only():
    model = VAE(TINY)
    assert isinstance(make_optimizer(model, 1e-3, 0.0, torch.device("cpu")), CpuAdamW)
    assert isinstance(
        make_optimizer(model.to(torch.float64), 1e-3, 0.0, torch.device("cpu")),
        torch.optim.AdamW,
    )


def test_training_command_does_not_import_torch_dynamo(data, tmp_path):
    """torch.optim and meta-device forward passes import torch._dynamo, 1-2 s a run; the
    training command needs neither."""
    code = (
        "import sys\nfrom torch_vae.cli.main import main\n"
        f"rc = main({train_args(tmp_path / 'run', data, 1, '--max_steps', '3')!r})\n"
        "print(rc, 'torch._dynamo' in sys.modules)\n"
    )
    src = str(Path(torch_vae.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)  # fmt: skip
    assert out.stdout.split()[-2:] == ["0", "False"], out.stderr[-2000:]
    assert (tmp_path / "run" / "model.safetensors").exists()
