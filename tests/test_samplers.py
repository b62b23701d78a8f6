"""Ex-post latent samplers (samplers.py): fitting, the file round trip, and generate --sampler."""

import logging

import numpy as np
import pytest
import torch

from runs import TINY
from torch_vae import VAE, ModelConfig, TorchVaeError
from torch_vae.cli import main
from torch_vae.priors import (
    fit_gaussian,
    fit_gmm,
    load_sampler,
    read_sampler,
    sampler_path,
    save_sampler,
)


def clusters(n=1500, seed=0):
    """Three well-separated 2-d Gaussian clusters with weights 1/2, 1/4, 1/4."""
    rng = np.random.default_rng(seed)
    centers = np.array([[-6.0, 0.0], [6.0, 0.0], [0.0, 8.0]])
    which = rng.choice(3, n, p=[0.5, 0.25, 0.25])
    return centers[which] + rng.normal(size=(n, 2)) * [0.5, 1.0], centers


def test_gmm_finds_the_clusters_and_survives_a_round_trip(tmp_path):
    z, centers = clusters()
    sampler = fit_gmm(z, 3, seed=0, info={"model_sha256": "x"})
    order = np.argsort(sampler.means[:, 0].numpy() + 0.1 * sampler.means[:, 1].numpy())
    assert np.allclose(sampler.means[order].numpy(), centers[[0, 2, 1]], atol=0.1)
    assert np.allclose(sorted(sampler.weights.tolist()), [0.25, 0.25, 0.5], atol=0.03)
    path = save_sampler(sampler, tmp_path / "sampler-gmm.safetensors")
    assert path.with_suffix(".json").is_file()
    again = read_sampler(path)
    assert again.info == sampler.info and again.kind == "gmm"
    a = sampler.sample(500, torch.Generator().manual_seed(1))
    b = again.sample(500, torch.Generator().manual_seed(1))
    assert a.shape == (500, 2) and torch.equal(a, b)
    assert not torch.equal(a, again.sample(500, torch.Generator().manual_seed(2)))
    # the samples follow the mixture: a quarter near the third centre
    near = (torch.from_numpy(centers[2]).float() - sampler.sample(4000)).norm(dim=1) < 3
    assert 0.2 < near.float().mean() < 0.3


def test_the_default_mixture_fits_fewer_components_to_fewer_images(caplog):
    from torch_vae.priors.mixture import MixtureSampler

    z, _ = clusters()
    info = {"model_sha256": "x"}
    with caplog.at_level(logging.INFO, logger="torch_vae"):
        few = MixtureSampler.fit(z[:40], {"kind": "gmm"}, info, progress=False)
    assert few.info["components"] == 10 and "40 training images: a mixture of 10" in caplog.text
    assert MixtureSampler.fit(z[:300], {"kind": "gmm"}, info).info["components"] == 50
    asked = MixtureSampler.fit(z[:40], {"kind": "gmm", "components": 3}, info)
    assert asked.info["components"] == 3


def test_gaussian_is_the_mean_and_covariance():
    rng = np.random.default_rng(0)
    z = rng.multivariate_normal([1.0, -2.0, 0.5], [[2, 0.5, 0], [0.5, 1, 0.3], [0, 0.3, 0.5]], 500)
    sampler = fit_gaussian(z)
    assert np.allclose(sampler.means[0].numpy(), z.mean(0), atol=1e-6)
    cov = sampler.scale_tril[0].double() @ sampler.scale_tril[0].double().T
    assert np.allclose(cov.numpy(), np.cov(z, rowvar=False, bias=True), atol=1e-5)


def test_a_gaussian_fitted_to_fewer_images_than_dimensions_is_warned_about(caplog):
    z = np.random.default_rng(0).normal(size=(3, 8))
    with caplog.at_level("WARNING"):
        fit_gaussian(z)
    assert "8 latent dimensions fitted to 3 image(s): its samples vary in at most 2" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        fit_gaussian(np.random.default_rng(0).normal(size=(9, 8)))
    assert "fitted to" not in caplog.text


def test_damaged_sampler_file_is_refused(tmp_path):
    path = tmp_path / "sampler-gmm.safetensors"
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(TorchVaeError, match="cannot read sampler"):
        read_sampler(path)


@pytest.fixture
def model_dir(tmp_path):
    """An untrained tiny model that says it is an MNIST model."""
    torch.manual_seed(0)
    config = ModelConfig(image_size=16, depth=2, max_filters=8, latent_dims=3, arch="dcgan")
    model = VAE(config)
    with torch.no_grad():  # latents that differ a little give images that differ
        model.decoder.convs[0].weight.mul_(30)
    return model.save_pretrained(tmp_path / "model", dataset="mnist")


def test_fit_sampler_and_generate_with_it(model_dir, data, tmp_path, caplog, capsys):
    def generate(name, *flags):
        out = tmp_path / name
        assert main(["generate", "--model", str(model_dir), "--outdir", str(out),
                     "--nsamples", "6", "--cpu", *flags]) == 0  # fmt: skip
        return [(out / f"sample_{i:05d}.png").read_bytes() for i in range(6)]

    caplog.set_level(logging.INFO, logger="torch_vae")
    prior = generate("prior", "--sampler", "prior")
    assert generate("auto-before") == prior  # nothing fitted: the prior
    assert "no fitted sampler" in caplog.text
    # asked for by name, a missing sampler is a one-line error
    rc = main(["generate", "--model", str(model_dir), "--outdir", str(tmp_path / "x"),
               "--sampler", "gmm", "--quiet"])  # fmt: skip
    assert rc == 1
    fit = ["fit-sampler", "--model", str(model_dir), "--data_dir", str(data), "--quiet"]
    assert main([*fit, "--components", "2"]) == 0
    assert main([*fit, "--sampler", "gaussian"]) == 0
    gmm = load_sampler(model_dir)
    assert gmm.kind == "gmm" and len(gmm.weights) == 2 and gmm.info["n_images"] == 40
    assert load_sampler(model_dir, "gaussian").kind == "gaussian"
    with_gmm = generate("gmm", "--sampler", "gmm")
    assert with_gmm != prior and generate("gmm-again", "--sampler", "gmm") == with_gmm
    # a transformer's drawing flag off its default, for a Gaussian latent's sampler: one
    # line, nothing written (its default, as --temperature 1, passes)
    capsys.readouterr()
    rc = main(["generate", "--model", str(model_dir), "--outdir", str(tmp_path / "y"),
               "--sampler", "gmm", "--round_trips", "0", "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and not (tmp_path / "y").exists()
    assert "--round_trips applies to a transformer sampler, not to the gmm sampler" in err
    assert generate("gmm-trips", "--sampler", "gmm", "--round_trips", "1") == with_gmm
    with_gaussian = generate("gaussian", "--sampler", "gaussian")
    assert with_gaussian not in (prior, with_gmm)
    # auto: the one fit-sampler scored best on held-out images
    scores = {k: load_sampler(model_dir, k).info["validation"]["fd"] for k in ("gmm", "gaussian")}
    best = min(scores, key=scores.get)
    with caplog.at_level("INFO", logger="torch_vae"):
        assert generate("auto") == {"gmm": with_gmm, "gaussian": with_gaussian}[best]
    assert f"the {best} sampler has the best validation score of the 2 fitted" in caplog.text
    assert "different numbers of images" not in caplog.text  # both scored alike
    # one scored on fewer images: the choice is said to compare unlike scores
    assert main([*fit, "--sampler", "gaussian", "--nscore", "4", "--overwrite"]) == 0
    caplog.clear()
    generate("auto-unlike")
    n = load_sampler(model_dir, "gmm").info["validation"]["n_images"]
    assert f"measured on different numbers of images (gmm {n}, gaussian 4)" in caplog.text
    assert main([*fit, "--sampler", "gaussian", "--overwrite"]) == 0  # as it was
    # weights changed after the fit: auto leaves the samplers out, naming both, and draws from
    # the model's own prior; one asked for by name is refused
    VAE(ModelConfig.from_dict(load_sampler_config(model_dir))).save_pretrained(model_dir, "mnist")
    caplog.clear()
    assert load_sampler(model_dir) is None
    assert ("the gmm and gaussian samplers were fitted to other weights than these (the model "
            "was trained since): left out; fit them again with torch-vae fit-sampler --model "
            f"{model_dir} --sampler KIND, for each of gmm and gaussian; latents from the "
            "model's own prior meanwhile") in caplog.text  # fmt: skip
    with pytest.raises(TorchVaeError, match="other weights") as refused:
        load_sampler(model_dir, "gmm")
    message = str(refused.value)
    assert "sampler-gmm" in message
    assert message.endswith("or draw from the model's own prior with --sampler prior")
    # ... but one fitted again since is taken by auto, the others named in a warning
    caplog.clear()
    assert main([*fit, "--sampler", "gaussian"]) == 0
    assert load_sampler(model_dir).kind == "gaussian"
    assert "the gmm sampler was fitted to other weights than these" in caplog.text
    assert f"fit it again with torch-vae fit-sampler --model {model_dir} --sampler gmm" in (
        caplog.text)  # fmt: skip
    with pytest.raises(TorchVaeError, match="other weights"):
        load_sampler(model_dir, "gmm")  # asked for by name: refused
    assert (
        sampler_path(model_dir / "model.safetensors", "gmm")
        == model_dir / "sampler-gmm.safetensors"
    )


def load_sampler_config(model_dir):
    import json

    return json.loads((model_dir / "config.json").read_text())["model"]


def test_auto_leaves_out_a_damaged_or_misnamed_sampler_and_says_so(model_dir, data, caplog):
    fit = ["fit-sampler", "--model", str(model_dir), "--data_dir", str(data), "--quiet"]
    assert main([*fit, "--sampler", "gaussian"]) == 0
    gaussian = sampler_path(model_dir, "gaussian")
    sampler_path(model_dir, "gmm").write_bytes(b"garbage")
    sampler_path(model_dir, "flow").write_bytes(gaussian.read_bytes())  # another kind's file
    caplog.set_level(logging.WARNING, logger="torch_vae")
    assert load_sampler(model_dir).kind == "gaussian"  # the one that can be read
    assert "left out: cannot read sampler" in caplog.text
    assert "holds a gaussian sampler, not a flow one" in caplog.text
    with pytest.raises(TorchVaeError, match="cannot read sampler"):
        load_sampler(model_dir, "gmm")  # asked for by name: refused
    with pytest.raises(TorchVaeError, match="holds a gaussian sampler, not a flow one"):
        load_sampler(model_dir, "flow")
    gaussian.unlink()  # nothing left to take: the first reason, as one error
    with pytest.raises(TorchVaeError, match="holds a gaussian sampler, not a flow one"):
        load_sampler(model_dir)


def test_training_ends_saying_to_fit_again_a_sampler_fitted_while_it_ran(
    mnist_dir, tmp_path, caplog, monkeypatch
):
    from torch_vae.training import loop

    run, data = tmp_path / "run", ["--data_dir", str(mnist_dir), "--quiet"]
    real = loop.save_checkpoint

    def and_fit(lp, epoch, *args, **kwargs):  # a user's fit-sampler after the first epoch
        real(lp, epoch, *args, **kwargs)
        if epoch == 1:
            assert main(["fit-sampler", "--model", str(run), "--sampler", "gaussian", *data]) == 0

    monkeypatch.setattr(loop, "save_checkpoint", and_fit)
    with caplog.at_level(logging.INFO, logger="torch_vae"):
        assert main(["train", *TINY, "--epochs", "2", "--run_dir", str(run), *data]) == 0
    done = [r.getMessage() for r in caplog.records if r.getMessage().startswith("done.")]
    assert done == [
        f"done. The gaussian sampler of this run was fitted to weights it had before the end "
        f"of this training; fit again with torch-vae fit-sampler --model {run} --sampler "
        f"gaussian, then torch-vae generate --model {run} --outdir samples"
    ]
    # generate before that: from the model's own prior, saying why
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="torch_vae"):
        assert main(["generate", "--model", str(run), "--outdir", str(tmp_path / "g"),
                     "--nsamples", "2", "--quiet"]) == 0  # fmt: skip
    assert "latents from the model's own prior meanwhile" in caplog.text


def test_training_ends_saying_to_fit_again_the_samplers_a_resume_made_stale(
    trained, mnist_dir, caplog
):
    data = ["--data_dir", str(mnist_dir), "--quiet"]
    assert main(["fit-sampler", "--model", str(trained), "--sampler", "gaussian", *data]) == 0
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="torch_vae"):
        assert main(["train", "--resume", str(trained), "--epochs", "3", "--data_dir",
                     str(mnist_dir)]) == 0  # fmt: skip
    done = [r.getMessage() for r in caplog.records if r.getMessage().startswith("done.")]
    assert done == [
        f"done. The gaussian sampler of this run was fitted to weights it had before the end "
        f"of this training; fit again with torch-vae fit-sampler --model {trained} --sampler "
        f"gaussian, then torch-vae generate --model {trained} --outdir samples"
    ]
    assert load_sampler(trained) is None  # generate draws from the prior, with a warning
    with pytest.raises(TorchVaeError, match="other weights"):  # asked for by name: refused
        load_sampler(trained, "gaussian")


def test_fit_sampler_on_an_epoch_checkpoint_keeps_the_run_s_validation_split(
    train_tiny, mnist_dir, tmp_path
):
    run = train_tiny(tmp_path / "run", "--val_images", "4")
    checkpoint = run / "checkpoints" / "epoch_001.safetensors"
    assert main(["fit-sampler", "--model", str(checkpoint), "--sampler", "gaussian",
                 "--nscore", "4", "--data_dir", str(mnist_dir), "--quiet"]) == 0  # fmt: skip
    info = load_sampler(checkpoint, "gaussian").info
    assert info["split"] == "train - validation"  # fitted without the images the run held out
    assert info["validation"]["images"] == "validation images"
