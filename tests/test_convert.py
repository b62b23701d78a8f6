"""Importing the original torch-vae's checkpoints (bare state_dicts, layout in its docs)."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from torch_vae import VAE, ModelConfig, TorchVaeError, load_model
from torch_vae.cli import main
from torch_vae.models.original import import_original

REAL = Path(__file__).resolve().parents[2] / "shared" / "torch-vae-checkpoints"


def original_state_dict(c=1, f=128, d=8, seed=0):
    """A state_dict with the original's 51 entries and shapes, random values."""
    g = torch.Generator().manual_seed(seed)
    shapes = {
        "encoder.conv1.weight": (f // 4, c, 3, 3),
        "encoder.conv1.bias": (f // 4,),
        "encoder.conv2.weight": (f // 2, f // 4, 3, 3),
        "encoder.conv2.bias": (f // 2,),
        "encoder.conv3.weight": (f, f // 2, 3, 3),
        "encoder.conv3.bias": (f,),
        "encoder.shortcut2.weight": (f // 2, f // 4, 1, 1),
        "encoder.shortcut2.bias": (f // 2,),
        "encoder.shortcut3.weight": (f, f // 2, 1, 1),
        "encoder.shortcut3.bias": (f,),
        "encoder.proj_mu.weight": (d, f * 64),
        "encoder.proj_mu.bias": (d,),
        "encoder.proj_log_var.weight": (d, f * 64),
        "encoder.proj_log_var.bias": (d,),
        "decoder.lin1.weight": (f * 64, d),
        "decoder.lin1.bias": (f * 64,),
        "decoder.conv1.weight": (f, f // 2, 3, 3),
        "decoder.conv1.bias": (f // 2,),
        "decoder.conv2.weight": (f // 2, f // 4, 3, 3),
        "decoder.conv2.bias": (f // 4,),
        "decoder.conv3.weight": (f // 4, c, 3, 3),
        "decoder.conv3.bias": (c,),
        "decoder.shortcut1.weight": (f, f // 2, 1, 1),
        "decoder.shortcut1.bias": (f // 2,),
        "decoder.shortcut2.weight": (f // 2, f // 4, 1, 1),
        "decoder.shortcut2.bias": (f // 4,),
    }
    state = {k: torch.randn(s, generator=g) * 0.05 for k, s in shapes.items()}
    for net, widths in (("encoder", (f // 4, f // 2, f)), ("decoder", (f // 2, f // 4))):
        for i, w in enumerate(widths, 1):
            state[f"{net}.bn{i}.weight"] = 1 + 0.1 * torch.randn(w, generator=g)
            state[f"{net}.bn{i}.bias"] = 0.1 * torch.randn(w, generator=g)
            state[f"{net}.bn{i}.running_mean"] = 0.1 * torch.randn(w, generator=g)
            state[f"{net}.bn{i}.running_var"] = 1 + torch.rand(w, generator=g)
            state[f"{net}.bn{i}.num_batches_tracked"] = torch.tensor(100)
    return state


def original_forward(s, x, eps):
    """The original's eval-mode computation, written from its documented layout: encoder with
    z = mu + exp(0.5 logvar) * eps, decoder from z."""
    h = x
    for i in (1, 2, 3):
        h = F.conv2d(h, s[f"encoder.conv{i}.weight"], s[f"encoder.conv{i}.bias"], 2, 1)
        h = F.leaky_relu(_bn(s, h, f"encoder.bn{i}"))
    h = h.flatten(1)
    mu = F.linear(h, s["encoder.proj_mu.weight"], s["encoder.proj_mu.bias"])
    logvar = F.linear(h, s["encoder.proj_log_var.weight"], s["encoder.proj_log_var.bias"])
    z = mu + torch.exp(0.5 * logvar) * eps
    return original_decode(s, z), mu, logvar


def original_decode(s, z):
    """The original's eval-mode decoder from z, written from its documented layout."""
    f = s["decoder.lin1.weight"].shape[0] // 64
    h = F.linear(z, s["decoder.lin1.weight"], s["decoder.lin1.bias"]).view(-1, f, 8, 8)
    for i in (1, 2, 3):
        h = F.conv_transpose2d(h, s[f"decoder.conv{i}.weight"], s[f"decoder.conv{i}.bias"], 2, 1, 1)
        h = torch.sigmoid(h) if i == 3 else F.leaky_relu(_bn(s, h, f"decoder.bn{i}"))
    return h


def _bn(s, h, p):
    return F.batch_norm(h, s[p + ".running_mean"], s[p + ".running_var"], s[p + ".weight"],
                        s[p + ".bias"], False, 0.0, 1e-5)  # fmt: skip


def check_equal(state, model, c):
    """The converted model computes what the original's layout does: the encoder on noise
    images, the decoder on codes of the prior's scale (as generate draws them) to 1e-5, and on
    the noise images' posterior samples to 1e-3: those lie far outside the prior (the MNIST
    latent-2 checkpoint encodes noise to codes of 40,000), where float32 rounding in another
    order of sums (AVX2 against AVX-512 kernels) moves the outputs by about 1e-4."""
    torch.manual_seed(1)
    x = torch.rand(5, c, 64, 64)
    eps = torch.randn(5, model.config.latent_dims)
    ref, mu_ref, logvar_ref = original_forward(state, x, eps)
    post = model.encode(x)
    z = post.mu + torch.exp(0.5 * post.logvar) * eps
    assert torch.allclose(post.mu, mu_ref, atol=1e-5)
    assert torch.allclose(post.logvar, logvar_ref, atol=1e-5)
    assert torch.allclose(model.decode(z), ref, atol=1e-3)
    prior = 3 * torch.randn(16, model.config.latent_dims)  # codes of the prior's scale
    assert torch.allclose(model.decode(prior), original_decode(state, prior), atol=1e-5)


@pytest.mark.parametrize("c,f,d", [(1, 128, 8), (3, 64, 16), (1, 32, 2)])
def test_import_built_state_dict(tmp_path, c, f, d):
    state = original_state_dict(c, f, d)
    assert len(state) == 51
    path = tmp_path / f"vae_filters_{f:04d}_dims_{d:04d}.pth"
    torch.save(state, path)
    model = import_original(path)
    cfg = model.config
    assert (cfg.in_channels, cfg.max_filters, cfg.latent_dims, cfg.image_size) == (c, f, d, 64)
    with torch.no_grad():
        check_equal(state, model, c)


def test_import_cli_round_trip(tmp_path, capsys):
    torch.save(original_state_dict(), tmp_path / "orig.pth")
    out = tmp_path / "imported.safetensors"
    assert (
        main(
            [
                "import-torch-vae",
                str(tmp_path / "orig.pth"),
                "--dataset",
                "fashion-mnist",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    model = load_model(out)
    assert model.dataset == "fashion-mnist" and model.config.latent_dims == 8
    # never overwrites, and refuses a dataset with the wrong number of channels
    before = out.read_bytes()
    capsys.readouterr()
    assert (
        main(
            [
                "import-torch-vae",
                str(tmp_path / "orig.pth"),
                "--dataset",
                "fashion-mnist",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 1
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{out} already exists; pass another --out" in err[0], err
    assert out.read_bytes() == before
    assert (
        main(
            [
                "import-torch-vae",
                str(tmp_path / "orig.pth"),
                "--dataset",
                "cifar-10",
                "--out",
                str(tmp_path / "x.safetensors"),
                "--quiet",
            ]
        )
        == 1
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dataset cifar-10 has 3" in err[0], err
    assert "; pass the dataset it was trained on" in err[0], err
    assert not (tmp_path / "x.safetensors").exists()


def test_import_refuses_non_checkpoints(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"foo.weight": torch.zeros(2)}, bad)
    with pytest.raises(TorchVaeError, match="not an original torch-vae checkpoint"):
        import_original(bad)
    bad.write_bytes(b"junk")
    with pytest.raises(TorchVaeError, match="not a readable PyTorch checkpoint"):
        import_original(bad)

    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    torch.save({"x": Evil()}, bad)
    with pytest.raises(TorchVaeError, match="refusing to load"):
        import_original(bad)
    torch.save(torch.nn.Linear(2, 2), bad)  # a whole module pickled, as torch.save(model) does
    with pytest.raises(TorchVaeError) as refused:
        import_original(bad)
    assert str(refused.value) == (
        f"{bad} holds a Python object (torch.nn.modules.linear.Linear) besides tensors; refusing "
        "to load it, since that could run code from the file (the original's train.py saves a "
        "state_dict of tensors)"
    )


def test_import_unwraps_training_checkpoints_and_refuses_what_would_not_load(tmp_path, capsys):
    state = original_state_dict()
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    with torch.no_grad():
        check_equal(state, import_original(path), 1)  # as from the bare state_dict
    broken = dict(state)
    broken["encoder.conv1.weight"] = broken["encoder.conv1.weight"].clone()
    broken["encoder.conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(broken, path)
    with pytest.raises(TorchVaeError, match="holds NaN or infinite weights"):
        import_original(path)
    folder = VAE(ModelConfig(image_size=16, max_filters=8, depth=2)).save_pretrained(
        tmp_path / "ours", "mnist"
    )
    safe = tmp_path / "model.pth"  # a safetensors file given another name
    safe.write_bytes((folder / "model.safetensors").read_bytes())
    with pytest.raises(TorchVaeError, match="is a safetensors file, not the original's .pth"):
        import_original(safe)
    torch.save(state, tmp_path / "orig.pth")
    args = [
        "import-torch-vae",
        str(tmp_path / "orig.pth"),
        "--dataset",
        "mnist",
        "--quiet",
        "--out",
    ]
    assert main([*args, str(tmp_path / "noext")]) == 1
    assert "give a file name ending in .safetensors" in capsys.readouterr().err
    assert not (tmp_path / "noext").exists()


@pytest.mark.skipif(not REAL.is_dir(), reason="the original's checkpoints are not available")
@pytest.mark.parametrize("dataset", ["fashion-mnist", "mnist"])
@pytest.mark.parametrize("dims", [2, 8])
def test_import_real_checkpoints(dataset, dims):
    path = REAL / dataset / f"vae_filters_0128_dims_{dims:04d}.pth"
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = import_original(path)
    assert model.config.latent_dims == dims and model.config.max_filters == 128
    assert model.config.in_channels == 1 and model.config.image_size == 64
    # every tensor but the 8 dead shortcut ones is used
    assert model.num_parameters() == sum(
        v.numel()
        for k, v in state.items()
        if "shortcut" not in k and "running" not in k and "num_batches" not in k
    )
    with torch.no_grad():
        check_equal(state, model, 1)
    assert math.isfinite(model.sample(2).sum().item())
