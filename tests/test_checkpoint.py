import json

import pytest
import torch
from safetensors.torch import save_file

from torch_vae import VAE, ModelConfig, TorchVaeError, load_model, save_model
from torch_vae.cli.common import check_flags


def _model(**kw):
    torch.manual_seed(0)
    return VAE(ModelConfig(image_size=32, max_filters=16, **kw))


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    model = _model(in_channels=3, latent_dims=5).eval()
    with torch.no_grad():  # make running stats non-trivial
        for bn in model.modules():
            if isinstance(bn, torch.nn.BatchNorm2d):
                bn.running_mean.uniform_(-1, 1)
                bn.running_var.uniform_(0.5, 2)
    path = save_model(model, tmp_path / "m.safetensors", dataset="cifar-10")
    loaded = load_model(path)
    assert loaded.config == model.config
    assert loaded.dataset == "cifar-10"
    x = torch.rand(2, 3, 32, 32)
    z = torch.randn(2, 5)
    assert torch.equal(loaded(x).recon, model(x).recon)
    assert torch.equal(loaded.decode(z), model.decode(z))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]  # no temp files left


def test_load_from_run_folder(tmp_path):
    model = _model()
    save_model(model, tmp_path / "model.safetensors")
    assert load_model(tmp_path).config == model.config


@pytest.mark.parametrize(
    "setup,match",
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.write_bytes(b"garbage" * 10), "not a readable safetensors file"),
        (lambda p: torch.save({"w": torch.zeros(1)}, p), "PyTorch pickle checkpoint.*import"),
        (lambda p: save_file({"w": torch.zeros(1)}, str(p)), "without a torch-vae model config"),
    ],
)
def test_bad_checkpoint_is_refused_with_its_reason(tmp_path, setup, match):
    path = tmp_path / "m.safetensors"
    setup(path)
    with pytest.raises(TorchVaeError, match=match):
        load_model(path)


def test_a_runs_training_state_is_refused_naming_the_run_and_its_weights(tmp_path):
    path = tmp_path / "run" / "ckpt.pt"  # what a run folder holds beside model.safetensors
    path.parent.mkdir()
    torch.save({"format": "torch-vae-train-state", "model": {}}, path)
    match = r"training state .*run folder .*run/model\.safetensors"
    with pytest.raises(TorchVaeError, match=match):
        load_model(path)


def test_truncated_checkpoint_is_refused_as_unreadable(tmp_path):
    path = save_model(_model(), tmp_path / "m.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(TorchVaeError, match=r"m\.safetensors is not a readable safetensors file"):
        load_model(path)


def test_weights_not_fitting_their_stored_config_are_refused(tmp_path):
    path = save_model(_model(latent_dims=4), tmp_path / "m.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        state = {k: f.get_tensor(k) for k in f.keys()}
    cfg = json.loads(meta["model_config"])
    cfg["latent_dims"] = 6
    meta["model_config"] = json.dumps(cfg)
    save_file(state, str(path), metadata=meta)
    with pytest.raises(TorchVaeError, match="do not fit the stored model config"):
        load_model(path)


def test_flag_not_matching_the_checkpoint_is_reported():
    cfg = ModelConfig(latent_dims=8)
    check_flags(cfg, latent_dims=8, max_filters=128, in_channels=None)
    with pytest.raises(TorchVaeError, match="--latent_dims 2 does not match.*latent_dims=8"):
        check_flags(cfg, latent_dims=2)
    with pytest.raises(TorchVaeError, match="--nimg_channels 3 does not match"):
        check_flags(cfg, in_channels=3)


def test_the_same_weights_and_metadata_give_the_same_bytes_every_time(tmp_path):
    from safetensors import safe_open

    from torch_vae.io.weights import save_file

    tensors = {"b": torch.arange(6.0).view(2, 3), "a": torch.ones(4, dtype=torch.int64)}
    meta = {f"key{i}": f"value {i} é ✓" for i in range(12)}  # the library shuffles these
    files = [tmp_path / f"{i}.safetensors" for i in range(6)]
    for path in files:
        save_file(tensors, path, meta)
    assert len({p.read_bytes() for p in files}) == 1
    with safe_open(str(files[0]), "pt") as f:  # still a valid file, read as written
        assert f.metadata() == meta
        assert all(torch.equal(f.get_tensor(k), v) for k, v in tensors.items())
