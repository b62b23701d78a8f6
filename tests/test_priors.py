"""The neural latent priors (flow, diffusion, two-stage VAE) and what every prior kind keeps:
a fit that finds the data's clusters, seeded sampling, the file round trip, damaged or forged
files refused with one line, and --sampler auto choosing by the score fit-sampler records."""

import json
import logging

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from torch_vae import TorchVaeError
from torch_vae.cli import main
from torch_vae.priors import PRIORS, fit_prior, load_sampler, read_sampler, save_sampler

# tiny networks and few steps: the defaults are sized for real latents
TINY = {"hidden": 64, "layers": 2, "steps": 400, "timesteps": 100, "transforms": 2, "seed": 0}
SIZES = {"diffusion": {"steps": 1500}, "twostage": {"steps": 1000}}
QUICK = {**TINY, "steps": 5}  # for what needs a fitted network, not a good one
# a two-stage VAE's decoder is continuous in u, so some samples fall between the clusters
IN_CLUSTERS = {"flow": 0.8, "diffusion": 0.8, "twostage": 0.6}
NEURAL = ("flow", "diffusion", "twostage")


def two_clusters(n=1000, seed=0):
    """Latents at (+-3, 0) with standard deviation 0.3: a density N(0, I) misses."""
    g = torch.Generator().manual_seed(seed)
    sign = torch.randint(2, (n, 1), generator=g) * 2 - 1.0
    return (torch.randn(n, 2, generator=g) * 0.3 + sign * torch.tensor([3.0, 0.0])).numpy()


def in_clusters(z: torch.Tensor) -> float:
    """The fraction of latents within 1 (about 3 standard deviations) of a cluster centre."""
    centres = torch.tensor([[3.0, 0.0], [-3.0, 0.0]])
    return float((torch.cdist(z, centres).min(1).values < 1).float().mean())


@pytest.fixture(scope="module")
def fitted():
    z = two_clusters(200)
    return {k: fit_prior(z, k, QUICK, {"note": "test"}, progress=False) for k in NEURAL}


def test_every_kind_is_registered():
    assert set(PRIORS) >= {"gaussian", "gmm", *NEURAL}


@pytest.mark.slow
@pytest.mark.parametrize("kind", NEURAL)
def test_neural_prior_samples_land_in_the_clusters(kind):
    """N(0, I) would put about 0.2% of its samples there (in standardised units the clusters
    are at +-1 with standard deviation 0.1); a collapsed fit puts none."""
    prior = fit_prior(two_clusters(), kind, {**TINY, **SIZES.get(kind, {})}, {}, progress=False)
    z = prior.sample(1000, torch.Generator().manual_seed(1))
    assert z.shape == (1000, 2) and z.dtype == torch.float32
    assert in_clusters(z) > IN_CLUSTERS[kind], in_clusters(z)
    # both clusters, about half each
    assert 0.3 < float((z[:, 0] > 0).float().mean()) < 0.7


@pytest.mark.parametrize("kind", NEURAL)
def test_seeded_sampling_is_deterministic_and_survives_the_file_round_trip(fitted, kind, tmp_path):
    prior = fitted[kind]
    a = prior.sample(50, torch.Generator().manual_seed(3))
    assert torch.equal(a, prior.sample(50, torch.Generator().manual_seed(3)))
    assert not torch.equal(a, prior.sample(50, torch.Generator().manual_seed(4)))
    path = save_sampler(prior, tmp_path / f"sampler-{kind}.safetensors")
    back = read_sampler(path)
    assert back.kind == kind and back.info["note"] == "test"
    assert torch.equal(back.sample(50, torch.Generator().manual_seed(3)), a)
    assert json.loads(path.with_suffix(".json").read_text())["hparams"] == prior.info["hparams"]


@pytest.mark.parametrize("kind", NEURAL)
def test_the_same_seed_fits_the_same_prior(kind):
    z = two_clusters(200)
    tiny = {**TINY, "steps": 20}
    a, b = (fit_prior(z, kind, tiny, {}, progress=False) for _ in range(2))
    assert a.info["final_loss"] == b.info["final_loss"]
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert torch.equal(a.sample(20, g()), b.sample(20, g()))


@pytest.mark.parametrize("kind", NEURAL)
def test_forged_sampler_files_are_refused_with_one_line(fitted, kind, tmp_path):
    path = save_sampler(fitted[kind], tmp_path / "s.safetensors")
    meta = {"format": "torch-vae-sampler", "info": json.dumps(fitted[kind].info)}
    tensors = load_file(str(path))

    def forged(name, t, info=None):
        p = tmp_path / f"{name}.safetensors"
        m = meta if info is None else {**meta, "info": json.dumps(info)}
        save_file(t, str(p), metadata=m)
        return p

    some = next(k for k in tensors if k.startswith("net.") and tensors[k].dim() == 2)
    cases = {
        "nan": {**tensors, some: torch.full_like(tensors[some], float("nan"))},
        "shape": {**tensors, some: torch.zeros(3, 3)},
        "missing": {k: v for k, v in tensors.items() if k != some},
        "extra": {**tensors, "other": torch.zeros(1)},
    }
    for name, t in cases.items():
        with pytest.raises(TorchVaeError) as err:
            read_sampler(forged(name, t))
        assert "\n" not in str(err.value) and "fit it again" in str(err.value), name
    huge = {**fitted[kind].info, "hparams": {**fitted[kind].info["hparams"], "hidden": 10**9}}
    with pytest.raises(TorchVaeError, match="hidden must be an integer"):
        read_sampler(forged("huge", tensors, huge))
    (tmp_path / "cut.safetensors").write_bytes(path.read_bytes()[:100])
    with pytest.raises(TorchVaeError, match="cannot read sampler"):
        read_sampler(tmp_path / "cut.safetensors")


@pytest.mark.parametrize("kind", NEURAL)
def test_latents_that_are_not_finite_are_refused(kind):
    z = two_clusters(100)
    z[3, 1] = np.nan
    with pytest.raises(TorchVaeError, match="not finite"):
        fit_prior(z, kind, QUICK, {}, progress=False)


@pytest.fixture
def small_run(train_tiny, tmp_path):
    return train_tiny(tmp_path / "run", "--val_images", "4")


def test_fit_sampler_scores_each_kind_and_auto_takes_the_best(small_run, mnist_dir, caplog):
    caplog.set_level(logging.INFO, logger="torch_vae")
    fit = ["fit-sampler", "--model", str(small_run), "--data_dir", str(mnist_dir), "--quiet"]
    steps = ["--steps", "30"]
    for kind, extra in (("flow", steps), ("twostage", steps), ("gmm", ["--components", "2"])):
        assert main([*fit, "--sampler", kind, *extra]) == 0
    scores = {}
    for kind in ("flow", "twostage", "gmm"):
        prior = load_sampler(small_run, kind)
        v = prior.info["validation"]
        # fitted to the images the run trained on, scored on the 4 it held out
        assert prior.info["n_images"] == 36 and v["n_images"] == 4
        assert v["images"] == "validation images" and v["fd"] >= 0
        scores[kind] = v["fd"]
    assert load_sampler(small_run).kind == min(scores, key=scores.get)
    assert "scored on 4 validation images" in caplog.text
    # 4 images give a score, but a rough one: said, as sample-quality says it of its reference
    assert ("the sampler is scored on 4 validation images, too few for more than a rough "
            "score") in caplog.text  # fmt: skip


def test_too_few_validation_images_fit_the_sampler_without_a_score(train_tiny, mnist_dir,
                                                                   tmp_path, caplog):  # fmt: skip
    """A run holding out 3 images (a small folder's split) cannot score a sampler: precision
    and recall need each image's 3rd nearest other one. The fit is kept, with a warning (it
    failed with "3 points have no 3th nearest neighbours" and saved nothing)."""
    caplog.set_level(logging.INFO, logger="torch_vae")
    run = train_tiny(tmp_path / "run3", "--val_images", "3")
    fit = ["fit-sampler", "--model", str(run), "--data_dir", str(mnist_dir), "--quiet"]
    assert main([*fit, "--sampler", "gmm", "--components", "2"]) == 0
    assert "validation" not in load_sampler(run, "gmm").info
    assert "the 3 validation images are too few to score the sampler (it takes more than 3)" in (
        caplog.text)  # fmt: skip


def test_fit_sampler_says_what_it_does_before_each_long_part(small_run, mnist_dir, caplog):
    # the fit (a mixture's EM: minutes on a large split) and the score were silent
    caplog.set_level(logging.INFO, logger="torch_vae")
    fit = ["fit-sampler", "--model", str(small_run), "--data_dir", str(mnist_dir), "--quiet"]
    assert main([*fit, "--sampler", "gmm", "--components", "2"]) == 0
    said = [r.getMessage() for r in caplog.records]
    start = next(i for i, m in enumerate(said) if m.startswith("fitting a gmm sampler to "))
    scoring = next(i for i, m in enumerate(said) if m.endswith("scoring it on held-out images"))
    done = next(i for i, m in enumerate(said) if m.startswith("fitted a 2-component"))
    assert start < scoring < done, said


def test_auto_ranks_by_kind_where_a_sampler_has_no_score(small_run, mnist_dir, caplog):
    # a mixture fitted without a score (as the shipped ones were) and a Gaussian scored
    # afterwards: the score cannot rank one against the other, the kinds' order does, and
    # the log says why
    fit = ["fit-sampler", "--model", str(small_run), "--data_dir", str(mnist_dir), "--quiet"]
    assert main([*fit, "--sampler", "gmm", "--components", "2", "--nscore", "0"]) == 0
    assert main([*fit, "--sampler", "gaussian"]) == 0
    assert "validation" in load_sampler(small_run, "gaussian").info
    with caplog.at_level(logging.INFO, logger="torch_vae"):
        assert load_sampler(small_run).kind == "gmm"
    assert "the gmm sampler has no validation score (fitted with --nscore 0" in caplog.text
    with pytest.raises(TorchVaeError, match="unknown sampler kind 'gmn'; choose one of"):
        load_sampler(small_run, "gmn")  # not None, which means "none fitted"


def test_generate_draws_from_a_neural_prior(small_run, mnist_dir, tmp_path):
    fit = ["fit-sampler", "--model", str(small_run), "--data_dir", str(mnist_dir), "--quiet"]
    assert main([*fit, "--sampler", "diffusion", "--steps", "20", "--nscore", "0"]) == 0
    assert "validation" not in load_sampler(small_run, "diffusion").info

    def generate(name, sampler):
        out = tmp_path / name
        assert main(["generate", "--model", str(small_run), "--outdir", str(out), "--nsamples",
                     "4", "--sampler", sampler, "--quiet"]) == 0  # fmt: skip
        return [p.read_bytes() for p in sorted(out.glob("sample_*.png"))]

    diffusion = generate("d", "diffusion")
    assert len(diffusion) == 4 and diffusion == generate("d2", "diffusion")
    assert diffusion != generate("p", "prior")


def test_fit_sampler_refuses_bad_step_counts(small_run):
    rc = main(["fit-sampler", "--model", str(small_run), "--sampler", "flow", "--steps", "-1"])
    assert rc == 1


def test_gaussian_reconstruction_loss_is_the_nll_at_the_optimal_variance():
    from torch_vae.models.losses import reconstruction_error

    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 8, 8, generator=g)
    recon = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    sigma = (recon - x).pow(2).flatten(1).mean(1).sqrt()
    nll = -torch.distributions.Normal(recon.flatten(1), sigma[:, None]).log_prob(x.flatten(1))
    assert torch.allclose(reconstruction_error(recon, x, "gaussian"), nll.sum(1), rtol=1e-5)
    # an exact reconstruction is bounded, not infinite
    assert torch.isfinite(reconstruction_error(x, x, "gaussian")).all()


def test_training_with_the_gaussian_loss(train_tiny, tmp_path):
    run = train_tiny(tmp_path / "g", "--recon_loss", "gaussian")
    lines = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(m["train_loss"]) for m in lines)
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]
    assert json.loads((run / "config.json").read_text())["train"]["recon_loss"] == "gaussian"


def test_fit_sampler_sizes_the_network_and_replaces_a_fitted_one_only_when_asked(
    small_run, mnist_dir, capsys
):
    fit = ["fit-sampler", "--model", str(small_run), "--data_dir", str(mnist_dir), "--quiet"]
    assert main([*fit, "--sampler", "flow", "--steps", "5", "--nscore", "0", "--hidden", "16",
                 "--layers", "1"]) == 0  # fmt: skip
    small = load_sampler(small_run, "flow")
    assert small.info["hparams"]["hidden"] == 16 and small.info["hparams"]["layers"] == 1
    path = small_run / "sampler-flow.safetensors"
    before = path.read_bytes()
    capsys.readouterr()
    assert main([*fit, "--sampler", "flow", "--steps", "5", "--nscore", "0"]) == 1
    err = capsys.readouterr().err.strip()
    assert "already holds a flow sampler fitted to these weights" in err and "\n" not in err
    assert "pass --overwrite to replace it" in err and path.read_bytes() == before
    assert main([*fit, "--sampler", "flow", "--steps", "5", "--nscore", "0", "--overwrite"]) == 0
    default = load_sampler(small_run, "flow")
    assert default.info["hparams"]["hidden"] == 128 and default.info["hparams"]["layers"] == 2
    count = lambda p: sum(t.numel() for t in p.net.parameters())  # noqa: E731
    assert count(small) < count(default)


def test_fit_sampler_refuses_network_flags_for_a_mixture_and_components_for_a_network(
    small_run, capsys
):
    fit = ["fit-sampler", "--model", str(small_run), "--sampler", "gmm"]
    assert main([*fit, "--hidden", "64"]) == 1
    err = capsys.readouterr().err.strip()
    assert "--hidden sizes the network" in err and "\n" not in err
    assert main([*fit, "--layers", "-1"]) == 1
    assert "--layers must be an integer >= 0" in capsys.readouterr().err
    assert main([*fit, "--steps", "10"]) == 1  # a mixture is fitted by EM, not trained in steps
    err = capsys.readouterr().err.strip()
    assert "--steps sets the training of the network of a " in err
    assert "a gmm sampler takes no --steps (leave it out)" in err and "\n" not in err
    assert load_sampler(small_run, "gmm") is None
    flow = ["fit-sampler", "--model", str(small_run), "--sampler", "flow", "--components", "5"]
    assert main(flow) == 1  # and the other way round: a mixture's size for a flow
    err = capsys.readouterr().err.strip()
    assert "--components sizes a gmm sampler's mixture; a flow sampler takes none" in err
    assert "\n" not in err and load_sampler(small_run, "flow") is None


def test_fit_sampler_shows_a_bar_while_it_encodes_the_training_images(small_run, mnist_dir, capsys):
    fit = ["fit-sampler", "--model", str(small_run), "--data_dir", str(mnist_dir)]
    assert main([*fit, "--sampler", "gaussian", "--nscore", "0"]) == 0
    err = capsys.readouterr().err
    assert "encoding" in err and "img" in err  # the images' encoding is not silent


def test_more_components_than_images_are_refused_before_the_images_are_encoded(
    small_run, mnist_dir, capsys, monkeypatch
):
    from torch_vae.cli import fit_sampler as cli

    monkeypatch.setattr(cli, "scorer", lambda *a, **k: pytest.fail("images encoded"))
    monkeypatch.setattr(cli, "fit_sampler", lambda *a, **k: pytest.fail("fitted"))
    fit = ["fit-sampler", "--model", str(small_run), "--data_dir", str(mnist_dir), "--quiet",
           "--sampler", "gmm", "--components", "37"]  # fmt: skip
    assert main(fit) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "torch-vae: error: --components must be between 1 and 36 (the number of training "
        "images), got 37"]  # fmt: skip


def test_components_above_the_mixture_limit_name_the_limit_not_the_images():
    from torch_vae.priors.mixture import MAX_COMPONENTS, check_components

    limit = rf"between 1 and {MAX_COMPONENTS} \(the most it fits\)"
    with pytest.raises(TorchVaeError, match=limit):
        check_components(MAX_COMPONENTS + 1, 55000)
    check_components(MAX_COMPONENTS, 55000)  # the limit itself is taken
