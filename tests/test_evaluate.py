import json
import logging
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from torch_vae import VAE, ModelConfig
from torch_vae.cli import evaluate as evaluate_cli
from torch_vae.cli import main
from torch_vae.evaluation.likelihood import (
    _stderr,
    discretized_gaussian_log_prob,
    evaluate_model,
    iwae_log_likelihood,
    refine_posterior,
)


def reference_log_prob(x, mean, sigma):
    """Float64 log_ndtr evaluation of the binned Gaussian, pixel by pixel."""
    x, mean = x.double(), mean.double()
    hb = 0.5 / 255
    hi, lo = (x - mean + hb) / sigma, (x - mean - hb) / sigma
    ln = torch.special.log_ndtr
    out = torch.empty_like(x)
    for i, (v, h, low) in enumerate(zip(x.flatten(), hi.flatten(), lo.flatten(), strict=True)):
        if v <= hb:
            out.view(-1)[i] = ln(h)
        elif v >= 1 - hb:
            out.view(-1)[i] = ln(-low)
        else:
            a, b = (ln(-low), ln(-h)) if low > 0 else (ln(h), ln(low))
            out.view(-1)[i] = a + torch.log1p(-torch.exp(b - a))
    return out


@pytest.mark.parametrize("sigma", [0.3, 0.05, 0.003])
def test_discretized_gaussian_matches_float64_reference(sigma):
    g = torch.Generator().manual_seed(0)
    mean = torch.rand(3, 1, 6, 6, generator=g)
    x = torch.randint(0, 256, (3, 1, 6, 6), generator=g).float() / 255
    x[0, 0, 0] = 0
    x[0, 0, 1] = 1
    ref = reference_log_prob(x, mean, sigma).flatten(1).sum(1)
    got = discretized_gaussian_log_prob(x, mean, sigma).double()
    assert torch.allclose(got, ref, rtol=1e-5)


def test_discretized_gaussian_is_a_distribution():
    """Probabilities of all 256 values of one pixel sum to 1."""
    x = (torch.arange(256).float() / 255).view(256, 1, 1, 1)
    for mean in (0.0, 0.37, 1.0):
        for sigma in (0.01, 0.2):
            logp = discretized_gaussian_log_prob(x, torch.full_like(x, mean), sigma)
            assert math.isclose(logp.double().exp().sum().item(), 1.0, rel_tol=1e-4)


def test_iwae_bounds_and_determinism():
    torch.manual_seed(0)
    model = VAE(ModelConfig(image_size=16, depth=2, max_filters=8, latent_dims=2)).eval()
    x = (torch.rand(4, 1, 16, 16) * 255).round() / 255

    def ll(k, seed=0):
        eps = torch.randn(4, k, 2, generator=torch.Generator().manual_seed(seed))
        return iwae_log_likelihood(model, x, 0.2, eps)

    assert torch.equal(ll(16), ll(16))
    # more importance samples -> a tighter (higher) bound on average
    one = torch.stack([ll(1, s) for s in range(20)]).mean(0)
    many = torch.stack([ll(64, s) for s in range(5)]).mean(0)
    assert (many >= one - 1e-3).all()


def test_evaluate_report_is_deterministic_and_self_consistent():
    torch.manual_seed(0)
    model = VAE(ModelConfig(image_size=16, depth=2, max_filters=8, latent_dims=3))
    imgs = torch.from_numpy(
        np.random.default_rng(0).integers(0, 256, (12, 16, 16, 1), dtype=np.uint8)
    )
    a = evaluate_model(
        model, imgs, torch.device("cpu"), 0.2, iw_samples=8, batch_size=5, progress=False
    )
    b = evaluate_model(
        model, imgs, torch.device("cpu"), 0.2, iw_samples=8, batch_size=5, progress=False
    )
    assert a == b
    assert math.isclose(a["objective"], a["sse"] + a["kl"])
    assert math.isclose(a["bits_per_dim"], a["nll"] / (256 * math.log(2)))
    assert math.isclose(
        a["psnr"], float(np.mean(-10 * np.log10(_per_image_mse(model, imgs)))), rel_tol=1e-4
    )
    assert 0 <= a["active_units"] <= 3


def _per_image_mse(model, imgs):
    x = imgs.permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        return ((model.reconstruct(x) - x) ** 2).flatten(1).mean(1).numpy()


def test_evaluate_writes_a_deterministic_report_and_others_settings_beside_it(
    mnist_dir, tmp_path, capsys
):
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--dataset",
                "mnist",
                "--data_dir",
                str(mnist_dir),
                "--run_dir",
                str(run),
                "--epochs",
                "1",
                "--batchsize",
                "8",
                "--max_filters",
                "8",
                "--image_size",
                "16",
                "--depth",
                "2",
                "--quiet",
            ]
        )
        == 0
    )
    args = [
        "evaluate",
        "--model",
        str(run),
        "--data_dir",
        str(mnist_dir),
        "--iw_samples",
        "4",
        "--quiet",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "objective" in out and "bits per dimension" in out
    report = json.loads((run / "eval-mnist-test-iw4.json").read_text())
    assert report["n_images"] == 20 and report["dataset"] == "mnist"
    assert main(args) == 0
    assert json.loads((run / "eval-mnist-test-iw4.json").read_text()) == report  # deterministic
    # a subset's report, or one with other settings, is written beside it, never over it
    assert main([*args, "--nimages", "5"]) == 0
    assert json.loads((run / "eval-mnist-test-first5-iw4.json").read_text())["n_images"] == 5
    assert main([*args[:-3], "--iw_samples", "0", "--seed", "2", "--quiet"]) == 0
    assert "nll" not in json.loads((run / "eval-mnist-test-iw0-seed2.json").read_text())
    assert json.loads((run / "eval-mnist-test-iw4.json").read_text()) == report


def _expected_objective(model, x, post, samples=64):
    """SSE + KL per image, the SSE averaged over many posterior samples."""
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        sse = sum(
            (model.decode(post.sample(g)) - x).pow(2).flatten(1).sum(1) for _ in range(samples)
        )
    return sse / samples + post.kl()


def test_refine_posterior_lowers_each_objective_and_leaves_the_model(trained, mnist_dir):
    from torch_vae.data import load_split
    from torch_vae.models import load_model

    model = load_model(trained).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.from_numpy(load_split("mnist", "test", 32, mnist_dir, False)).permute(0, 3, 1, 2)
    x = x.float() / 255
    with torch.no_grad():
        post = model.encode(x)
    noise = torch.randn(len(x), 40, model.config.latent_dims, generator=torch.manual_seed(0))
    refined = refine_posterior(model, x, post, 40, 0.02, noise)
    gain = _expected_objective(model, x, post) - _expected_objective(model, x, refined)
    assert (gain > 0).all(), gain  # the same noise for both, so this is no chance result
    assert not torch.equal(refined.mu, post.mu)
    assert refine_posterior(model, x, post, 0, 0.02, None) is post
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in before.items())
    assert all(p.grad is None for p in model.parameters())


def test_evaluate_cli_refine_lowers_the_objective_and_checks_its_flags(
    trained, mnist_dir, tmp_path, capsys
):
    base = ["evaluate", "--model", str(trained), "--data_dir", str(mnist_dir), "--quiet"]
    base += ["--iw_samples", "4"]
    reports = {}
    for steps in (0, 30):
        path = tmp_path / f"r{steps}.json"
        assert (
            main(
                [*base, "--refine_steps", str(steps), "--refine_lr", "0.02", "--report", str(path)]
            )
            == 0
        )
        reports[steps] = json.loads(path.read_text())
    assert "refined with 30 steps" in capsys.readouterr().out
    assert reports[0]["refine_steps"] == 0 and "refine_lr" not in reports[0]
    assert reports[30]["refine_steps"] == 30 and reports[30]["refine_lr"] == 0.02
    assert reports[30]["objective"] < reports[0]["objective"]
    for flag, value, message in [
        ("--refine_steps", "-1", "--refine_steps must be an integer >= 0"),
        ("--refine_lr", "0", "--refine_lr must be a finite number > 0"),
        ("--refine_lr", "nan", "--refine_lr must be a finite number > 0"),
        ("--refine_lr", "inf", "--refine_lr must be a finite number > 0"),
    ]:
        report = tmp_path / "bad.json"
        assert main([*base, flag, value, "--report", str(report)]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
        assert not report.exists()


@pytest.mark.parametrize("command", ["evaluate", "sample-quality"])
def test_a_report_that_cannot_be_written_is_refused_before_the_work(
    trained, mnist_dir, tmp_path, capsys, monkeypatch, command
):
    from torch_vae.cli import evaluate, sample_quality

    def no_work(*a, **k):
        raise AssertionError("the work started")

    monkeypatch.setattr(evaluate, "calibrate_sigma", no_work)
    monkeypatch.setattr(sample_quality, "quality_report", no_work)
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    flags = ["--model", str(trained), "--data_dir", str(mnist_dir), "--quiet"]
    assert main([command, *flags, "--report", str(blocker / "r.json")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"torch-vae: error: --report {blocker / 'r.json'} cannot be written: "
                   f"{blocker} is a file, not a folder"]  # fmt: skip
    # the default report's folder (the run's) read-only: the same before any work
    monkeypatch.setattr("os.access", lambda path, mode: Path(path) != trained)
    assert main([command, *flags]) == 1
    err = capsys.readouterr().err.strip()
    assert "cannot be written: the folder" in err and str(trained) in err
    assert "--report" in err and not err.startswith("torch-vae: error: --report")  # not given
    # an existing report that is read-only or immutable: the same, and it is left as it was
    kept = tmp_path / "kept.json"
    kept.write_text("{}")
    monkeypatch.setattr("os.access", lambda path, mode: Path(path) != kept)
    assert main([command, *flags, "--report", str(kept)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"torch-vae: error: --report {kept} cannot be written: the file is "
                   "read-only or immutable; make it writable or choose another path"]  # fmt: skip
    assert kept.read_text() == "{}"


def test_evaluate_split_val_measures_the_images_the_run_held_out(
    train_tiny, mnist_dir, tmp_path, capsys
):
    from fakedata import write_folder
    from torch_vae import load_model
    from torch_vae.data import load_split
    from torch_vae.data.splits import recorded_rows

    run = train_tiny(tmp_path / "run", "--val_images", "6")
    args = ["evaluate", "--model", str(run), "--data_dir", str(mnist_dir), "--quiet",
            "--iw_samples", "0", "--split", "val"]  # fmt: skip
    assert main(args) == 0
    report = json.loads((run / "eval-mnist-val-iw0.json").read_text())
    config = json.loads((run / "config.json").read_text())  # 4 of the 40: at most a tenth
    assert report["split"] == "val" and report["n_images"] == 4
    # the per-pixel error of the posterior means of exactly the held-out training images
    train = load_split("mnist", "train", 32, mnist_dir, progress=False)
    _, val = recorded_rows(len(train), config)
    assert len(val) == config["split"]["validation_images"] == 4
    x = torch.from_numpy(train[val.numpy()]).permute(0, 3, 1, 2).float() / 255
    model = load_model(run)
    with torch.no_grad():
        mse = (model.decode(model.encode(x).mode()) - x).pow(2).mean().item()
    assert report["mse"] == pytest.approx(mse, rel=1e-4)
    # a run that held none out, or another dataset than the model's: one line each
    none = train_tiny(tmp_path / "none", "--val_images", "0")
    capsys.readouterr()

    def read(*a, **k):
        raise AssertionError("the images were read before the refusal")

    with pytest.MonkeyPatch.context() as patch:  # said from config.json, before any image
        patch.setattr("torch_vae.cli.evaluate.split_images", read)
        assert main([*args[:2], str(none), *args[3:]]) == 1
    assert f"--split val: the run of {none} held out no validation images" in (
        capsys.readouterr().err
    )
    folder = write_folder(tmp_path / "mine", n=20, gray=True)
    assert main([*args, "--dataset", f"folder:{folder}"]) == 1
    assert f"not of folder:{folder}; use --split test" in capsys.readouterr().err


def test_evaluate_split_val_says_the_folder_changed_since_the_run_trained(tmp_path, capsys):
    from PIL import Image

    from fakedata import write_folder

    folder = write_folder(tmp_path / "imgs", n=40, gray=True)
    run = tmp_path / "run"
    assert main(["train", "--dataset", f"folder:{folder}", "--image_size", "16", "--depth", "2",
                 "--max_filters", "8", "--max_steps", "2", "--run_dir", str(run),
                 "--quiet"]) == 0  # fmt: skip
    train = next(p for p in sorted(folder.rglob("*.png")) if "test" not in p.parts)
    Image.open(train).save(train.with_name("added.png"))  # one more training image
    capsys.readouterr()
    assert main(["evaluate", "--model", str(run), "--split", "val", "--iw_samples", "0",
                 "--quiet"]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert f"--split val: the run of {run} drew its validation split from " in err
    assert "the dataset changed since it trained; use --split test" in err


def test_evaluate_split_train_says_it_measures_the_held_out_images_too(
    train_tiny, mnist_dir, tmp_path, caplog
):
    run = train_tiny(tmp_path / "run", "--val_images", "6")
    args = ["evaluate", "--model", str(run), "--data_dir", str(mnist_dir), "--quiet",
            "--iw_samples", "0", "--nimages", "4"]  # fmt: skip
    with caplog.at_level(logging.INFO, logger="torch_vae"):
        assert main([*args, "--split", "train"]) == 0
    assert ("--split train is the whole training split: the 4 validation images the run held "
            "out are measured with the images it trained on") in caplog.text  # fmt: skip
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="torch_vae"):
        assert main([*args, "--split", "test"]) == 0
    assert "the whole training split" not in caplog.text


def test_stderr_is_the_standard_error_of_the_mean_over_images():
    values = torch.tensor([50.0, 61.0, 47.5, 58.25, 49.0])
    expected = float(np.std(values.numpy().astype(np.float64), ddof=1) / math.sqrt(5))
    assert math.isclose(_stderr(values), expected, rel_tol=1e-12)
    assert _stderr(torch.tensor([3.0])) is None and _stderr(torch.tensor([])) is None


def test_evaluate_of_few_images_warns_with_the_objectives_standard_error(
    train_tiny, mnist_dir, tmp_path, caplog, monkeypatch, capsys
):
    run = train_tiny(tmp_path / "run")
    args = ["evaluate", "--model", str(run), "--data_dir", str(mnist_dir), "--quiet",
            "--iw_samples", "4", "--nimages", "6"]  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="torch_vae"):
        assert main(args) == 0
    report = json.loads((run / "eval-mnist-test-first6-iw4.json").read_text())
    assert report["objective_stderr"] > 0 and report["nll_stderr"] > 0
    assert (f"measured on 6 images, whose means are rough: the objective's standard error is "
            f"{report['objective_stderr']:.2f}, the NLL's {report['nll_stderr']:.2f} nats"
            ) in caplog.text  # fmt: skip
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="torch_vae"):  # one image: no spread to tell
        assert main([*args[:-1], "1", "--report", str(tmp_path / "one.json")]) == 0
    one = json.loads((tmp_path / "one.json").read_text())
    assert one["objective_stderr"] is None and one["nll_stderr"] is None
    assert one["active_units"] is None  # a variance over one image's code: not 0 of 4 units
    assert "measured on 1 image: its numbers say nothing of the model's mean" in caplog.text
    out = capsys.readouterr().out
    assert "mnist test, 1 image at 32x32, per image:" in out
    assert re.search(r"active units +n/a \(1 image\)", out)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="torch_vae"):  # more than the split holds: said
        assert main([*args[:-1], "50", "--report", str(tmp_path / "all.json")]) == 0
    assert "--nimages 50: the test split holds 20 images, all measured" in caplog.text
    caplog.clear()
    monkeypatch.setattr(evaluate_cli, "FEW_IMAGES", 6)  # as many as measured: no warning
    with caplog.at_level(logging.WARNING, logger="torch_vae"):
        assert main([*args, "--report", str(tmp_path / "r.json")]) == 0
    assert "whose means are rough" not in caplog.text


def test_split_val_of_a_run_from_before_validation_splits_says_so(
    train_tiny, mnist_dir, tmp_path, capsys
):
    run = train_tiny(tmp_path / "run", "--val_images", "0")
    config = json.loads((run / "config.json").read_text())
    del config["train"]["val_images"]  # as runs of an earlier version wrote it
    (run / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert main(["evaluate", "--model", str(run), "--data_dir", str(mnist_dir), "--quiet",
                 "--split", "val"]) == 1  # fmt: skip
    assert capsys.readouterr().err.strip().splitlines() == [
        f"torch-vae: error: --split val: the run of {run} holds out no validation images (it "
        "trained before runs held any out); use --split test"
    ]


def test_a_report_inside_the_image_folder_read_is_refused(tmp_path, capsys):
    """A report named .png there became an unreadable 'image' of the folder."""
    from PIL import Image

    from torch_vae import VAE, ModelConfig

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(20):
        Image.new("L", (28, 28), 10 * i).save(folder / f"g{i:02d}.png")
    config = ModelConfig(arch="dcgan", image_size=16, depth=2, max_filters=8, latent_dims=2)
    model = VAE(config).save_pretrained(tmp_path / "m", dataset=f"folder:{folder}")
    before = sorted(folder.rglob("*"))
    for command, flag, extra in (("evaluate", "--report", ["--iw_samples", "0"]),
                                 ("sample-quality", "--report", ["--features", "encoder"]),
                                 ("score", "--out", [])):  # fmt: skip
        inside = folder / "r.png" if command == "evaluate" else folder / "r.json"
        args = [command, "--model", str(model), "--cpu", "--quiet", flag, str(inside), *extra]
        assert main(args) == 1, command
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{flag} {inside} is inside the image folder" in err[0], err
    assert sorted(folder.rglob("*")) == before
