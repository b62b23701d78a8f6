"""``torch-vae sharpen`` (training/sharpen.py): the decoder fine-tuned with an adversarial term,
the encoder and codebook left as they were, the fitted samplers carried over to the new folder,
and the refusals."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from torch_vae import load_model
from torch_vae.cli import main
from torch_vae.priors import load_sampler
from torch_vae.training.sharpen import Discriminator, adaptive_weight


def umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def sharpen(model, out, mnist_dir, *flags):
    return main(["sharpen", "--model", str(model), "--out", str(out), "--epochs", "2",
                 "--batchsize", "8", "--warmup", "1", "--data_dir", str(mnist_dir), "--quiet",
                 "--cpu", *flags])  # fmt: skip


def test_sharpen_changes_the_decoder_only_and_the_transformer_sampler_draws_the_same_grids(
    vq_run, mnist_dir, tmp_path
):
    assert main(["fit-sampler", "--model", str(vq_run), "--sampler", "transformer",
                 "--steps", "5", "--nscore", "0", "--data_dir", str(mnist_dir),
                 "--quiet"]) == 0  # fmt: skip
    out = tmp_path / "models" / "sharp"
    assert sharpen(vq_run, out, mnist_dir) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["sharp"]  # no temporary left
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask()  # not mkdtemp's private 0700
    before = load_file(str(vq_run / "model.safetensors"))
    after = load_file(str(out / "model.safetensors"))
    assert before.keys() == after.keys()
    for name in before:
        same = torch.equal(before[name], after[name])
        assert same != name.startswith("decoder."), name  # every decoder tensor moved, no other
    record = json.loads((out / "config.json").read_text())["sharpen"]
    assert [r["epoch"] for r in record["epochs"]] == [1, 2]
    assert record["n_images"] == 36  # the 40 training images less the 4 held out
    assert record["epochs"][-1]["adversarial_weight"] > 0
    with Image.open(out / "images" / "sharpen.png") as img:  # 3 grids of 2 rows, each titled
        tall, first = img.size[1], np.asarray(img.convert("L"))[:10]
    assert tall > 3 * (2 * 34 + 2) + 2 * 6 and first.min() < 100  # the first title's text
    # the sampler came along, bound to the new weights: the same grids for the same seed
    old, new = load_sampler(vq_run), load_sampler(out)
    assert new.info["carried_over"]["model_sha256"] == old.info["model_sha256"]
    assert new.info["model_sha256"] != old.info["model_sha256"]
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    assert torch.equal(old.sample(5, gen()), new.sample(5, gen()))
    assert main(["generate", "--model", str(out), "--nsamples", "3", "--outdir",
                 str(tmp_path / "gen"), "--quiet"]) == 0  # fmt: skip
    assert len(list((tmp_path / "gen").glob("sample_*.png"))) == 3


def test_sharpen_keeps_a_gaussian_model_s_posterior_and_carries_its_gmm(
    trained, mnist_dir, tmp_path
):
    assert main(["fit-sampler", "--model", str(trained), "--sampler", "gmm", "--components", "2",
                 "--nscore", "0", "--data_dir", str(mnist_dir), "--quiet"]) == 0  # fmt: skip
    out = tmp_path / "sharp"
    assert sharpen(trained, out, mnist_dir) == 0
    a, b = load_model(trained), load_model(out)
    x = torch.rand(4, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(a.encode(x).mu, b.encode(x).mu)
        assert not torch.equal(a.decode(a.encode(x).mu), b.decode(b.encode(x).mu))
    assert load_sampler(out).kind == "gmm"


def test_sharpen_max_steps_stops_early_and_records_the_steps_taken(trained, mnist_dir, tmp_path):
    out = tmp_path / "quick"
    # the run's 32 training images in batches of 8: 4 steps an epoch; 7 of the 2 epochs' 8
    assert sharpen(trained, out, mnist_dir, "--max_steps", "7") == 0
    epochs = json.loads((out / "config.json").read_text())["sharpen"]["epochs"]
    assert [(e["epoch"], e["steps"]) for e in epochs] == [(1, 4), (2, 3)]
    assert sharpen(trained, tmp_path / "one", mnist_dir, "--max_steps", "3") == 0
    epochs = json.loads((tmp_path / "one" / "config.json").read_text())["sharpen"]["epochs"]
    assert [(e["epoch"], e["steps"]) for e in epochs] == [(1, 3)]


def test_a_sampler_fitted_to_other_weights_is_left_behind_with_a_warning(
    vq_run, mnist_dir, tmp_path, caplog
):
    assert main(["fit-sampler", "--model", str(vq_run), "--sampler", "transformer",
                 "--steps", "2", "--nscore", "0", "--data_dir", str(mnist_dir),
                 "--quiet"]) == 0  # fmt: skip
    weights = vq_run / "model.safetensors"
    weights.write_bytes(weights.read_bytes())  # the same bytes: still bound
    state = load_file(str(weights))
    state["decoder.inp.bias"] += 1  # other weights than the sampler was fitted to
    from torch_vae.io.weights import write_weights

    config = json.loads((vq_run / "config.json").read_text())
    write_weights(state, config["model"], weights, "mnist")
    out = tmp_path / "sharp"
    with caplog.at_level("WARNING", logger="torch_vae"):
        assert sharpen(vq_run, out, mnist_dir, "--epochs", "1") == 0
    assert "left behind" in caplog.text and "fitted to other weights" in caplog.text
    assert not list(out.glob("sampler-*"))


def test_the_adaptive_weight_makes_the_adversarial_gradient_the_asked_multiple():
    last = torch.nn.Parameter(torch.randn(3, 4))
    recon = (last * torch.randn(3, 4)).pow(2).sum()
    adv = (last * torch.randn(3, 4)).sum() * 7
    w = adaptive_weight(recon, adv, last, 0.5)
    g_recon = torch.autograd.grad(recon, last, retain_graph=True)[0].norm()
    g_adv = torch.autograd.grad(w * adv, last)[0].norm()
    assert float(g_adv / g_recon) == pytest.approx(0.5, rel=1e-3)


def test_the_discriminator_gives_a_logit_per_patch_under_spectral_norm():
    d = Discriminator(1, 8)
    assert d(torch.rand(2, 1, 28, 28)).shape == (2, 1, 7, 7)
    assert d(torch.rand(2, 1, 64, 64)).shape == (2, 1, 16, 16)
    d3 = Discriminator(3, 8)
    assert d3(torch.rand(2, 3, 32, 32)).shape == (2, 1, 8, 8)
    with torch.no_grad():
        for _ in range(30):  # power iterations converge in training mode
            d(torch.rand(2, 1, 28, 28))
    d.eval()
    with torch.no_grad():
        sigmas = [torch.linalg.matrix_norm(c.weight.flatten(1), ord=2) for c in d.convs]
    assert [float(s) for s in sigmas] == pytest.approx([1.0] * 4, abs=0.05)


def test_sharpen_refuses_bad_flags_and_an_existing_out_in_one_line(
    vq_run, mnist_dir, tmp_path, capsys
):
    out = tmp_path / "exists"
    out.mkdir()
    assert sharpen(vq_run, out, mnist_dir) != 0
    assert "already exists; pass another --out" in capsys.readouterr().err
    for flags, message in (
        (["--epochs", "0"], "--epochs must be a positive integer"),
        (["--max_steps", "-1"], "--max_steps must be"),
        (["--adversarial", "-1"], "--adversarial must be a number >= 0"),
        (["--lr", "0"], "--lr must be a number > 0"),
        (["--batchsize", "100"], "fewer than --batchsize 100"),
    ):
        assert sharpen(vq_run, tmp_path / "new", mnist_dir, *flags) != 0
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, flags
        assert not (tmp_path / "new").exists()


def test_sharpen_in_bf16_on_a_cpu_that_emulates_it_is_warned_of(monkeypatch, caplog):
    from torch_vae import VAE, ModelConfig
    from torch_vae.runtime import precision
    from torch_vae.training.sharpen import SharpenSettings, _Trainer

    monkeypatch.setattr(precision, "bf16_emulated", lambda device: True)
    model = VAE(ModelConfig(image_size=16, max_filters=8, depth=2, latent_dims=2))
    with caplog.at_level("WARNING"):
        _Trainer(model, SharpenSettings(precision="bf16"), torch.device("cpu"))
    assert "emulates bf16 and --precision bf16 trains 2-9x slower than fp32 here" in caplog.text


def test_sharpen_takes_a_conditional_model_with_each_image_s_class(train_tiny, labelled, tmp_path):
    run = train_tiny(tmp_path / "cond", "--conditional")
    out = tmp_path / "sharp"
    assert sharpen(run, out, labelled) == 0  # refused before: the picture's 16 test images
    # were given to the labels of a test split holding more
    model = load_model(out)
    assert model.conditional and model.config.classes == load_model(run).config.classes
    assert (out / "images" / "sharpen.png").is_file()
