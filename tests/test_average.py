import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file

from torch_vae import VAE, ModelConfig, load_model
from torch_vae.cli import main
from torch_vae.data import load_split
from torch_vae.data.splits import validation_rows
from torch_vae.runtime.device import to_float
from torch_vae.training.averaging import recompute_batch_norm


def _training_rows(run, n):
    """The rows of the training split (``n`` images) the run trained on, from its config."""
    train = json.loads((run / "config.json").read_text())["train"]
    rows, _ = validation_rows(n, train["val_images"], train["seed"])
    return rows


def _trained_on(run, dataset, size, data_dir):
    images = torch.from_numpy(load_split(dataset, "train", size, data_dir, False))
    return images[_training_rows(run, len(images))]


def test_average_is_the_mean_with_batch_norm_recomputed(trained, mnist_dir, tmp_path):
    out = tmp_path / "models" / "avg"
    args = ["average", str(trained), "--last", "2", "--out", str(out), "--quiet"]
    # one batch holding the whole (tiny) training split: the statistics are its exact moments
    assert main([*args, "--data_dir", str(mnist_dir), "--batchsize", "1000"]) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["avg"]  # no temporary left
    avg = load_model(out)
    epochs = [load_file(str(trained / "checkpoints" / f"epoch_00{i}.safetensors")) for i in (1, 2)]
    state = avg.state_dict()
    for name, tensor in state.items():
        if "running" in name or "num_batches" in name:
            continue
        assert torch.allclose(tensor, (epochs[0][name] + epochs[1][name]) / 2, atol=1e-6), name
    first = "encoder.convs.0.weight"
    assert not torch.equal(epochs[0][first], epochs[1][first])  # so the mean is neither of them

    # the encoder's first batch norm (the run has the original's architecture: right after the
    # first convolution) sees no sampled latent: recompute its statistics by hand, on the
    # images the run trained on (its validation images left out)
    images = to_float(_trained_on(trained, "mnist", 32, mnist_dir), "cpu")
    assert avg.config.arch == "original"
    with torch.no_grad():
        h = avg.encoder.convs[0](images)
    norm = avg.encoder.norms[0]
    assert torch.allclose(norm.running_mean, h.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(norm.running_var, h.var(dim=(0, 2, 3), unbiased=True), atol=1e-5)
    assert not torch.allclose(norm.running_mean, epochs[1]["encoder.norms.0.running_mean"])

    config = json.loads((out / "config.json").read_text())
    run_config = json.loads((trained / "config.json").read_text())
    assert config["model"] == run_config["model"] and config["train"] == run_config["train"]
    names = sorted(config["average"]["runs"][str(trained)])
    assert names == [f"epoch_00{i}.safetensors" for i in (1, 2)]
    assert avg.dataset == "mnist"
    # the averaged folder is a model like any other
    evaluate = ["evaluate", "--model", str(out), "--iw_samples", "0", "--quiet"]
    assert main([*evaluate, "--data_dir", str(mnist_dir)]) == 0
    assert (out / "eval-mnist-test-iw0.json").is_file()


def test_average_shows_the_batch_norm_pass_s_progress(trained, mnist_dir, tmp_path, capsys):
    # a sampler fitted to an epoch's checkpoint lies beside it: not an epoch of the run
    sampler = trained / "checkpoints" / "epoch_002.sampler-gaussian.safetensors"
    sampler.write_bytes(b"not weights")
    args = ["average", str(trained), "--last", "1", "--out", str(tmp_path / "avg"), "--batchsize",
            "8", "--data_dir", str(mnist_dir)]  # fmt: skip
    assert main(args) == 0
    assert "batch norm: 100%" in capsys.readouterr().err


def test_average_refuses_bad_input_without_writing(trained, mnist_dir, tmp_path, capsys):
    data = ["--data_dir", str(mnist_dir), "--quiet"]
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "mine.txt").write_text("keep")
    run, out = str(trained), [str(tmp_path / f"x{i}") for i in range(5)]
    cases = {
        "already exists; pass another --out": [run, "--last", "1", "--out", str(taken)],
        "has 2 epoch checkpoints; pass 1 to 2": [run, "--last", "3", "--out", out[1]],
        "--last 0": [run, "--last", "0", "--out", out[2]],
        "no such run folder": [str(tmp_path / "nope"), "--last", "1", "--out", out[3]],
        "has no checkpoints/epoch_NNN.safetensors": [str(taken), "--last", "1", "--out", out[4]],
        "its run stopped before the end of its first epoch; continue it with torch-vae train "
        f"--resume {tmp_path / 'early'}": [str(tmp_path / "early"), "--last", "1", "--out", out[0]],
    }
    (tmp_path / "early").mkdir()  # a run stopped in its first epoch: a state, no weights yet
    for name in ("config.json", "ckpt.pt"):
        (tmp_path / "early" / name).write_bytes((trained / name).read_bytes())
    for message, args in cases.items():
        capsys.readouterr()
        assert main(["average", *args, *data]) == 1, message
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (message, err)
    assert [p.name for p in taken.iterdir()] == ["mine.txt"]
    assert (taken / "mine.txt").read_text() == "keep"
    assert not any(Path(p).exists() for p in out)


def test_average_of_several_runs_and_runs_of_other_models(
    trained, train_tiny, mnist_dir, tmp_path, capsys, caplog
):
    seed1 = tmp_path / "seed1"
    train_tiny(seed1, "--seed", "1")
    out = tmp_path / "soup"
    data = ["--data_dir", str(mnist_dir), "--quiet"]
    assert main(["average", str(trained), str(seed1), "--last", "1", "--out", str(out), *data]) == 0
    # each seed held out its own validation images: the average's are not all held out
    assert f"{seed1} held out other validation images than {trained}" in caplog.text
    assert "optimistic; compare it on the test split, or train the runs with one --split_seed" in (
        caplog.text)  # fmt: skip
    # --split_seed: another seed's run that holds out the same images (its training differs)
    same = tmp_path / "same-split"
    train_tiny(same, "--seed", "1", "--split_seed", "0")
    split = {r: json.loads((r / "config.json").read_text())["split"] for r in (trained, same)}
    assert split[trained] == split[same]
    first = "encoder.convs.0.weight"
    assert not torch.equal(
        load_model(same).state_dict()[first], load_model(trained).state_dict()[first]
    )
    caplog.clear()
    together = ["average", str(trained), str(same), "--last", "1", "--out", str(tmp_path / "s2")]
    assert main([*together, *data]) == 0
    assert "held out other validation images" not in caplog.text
    a = load_file(str(trained / "checkpoints" / "epoch_002.safetensors"))
    b = load_file(str(seed1 / "checkpoints" / "epoch_002.safetensors"))
    soup = load_model(out).state_dict()
    name = "encoder.convs.0.weight"
    assert not torch.equal(a[name], b[name])
    assert torch.allclose(soup[name], (a[name] + b[name]) / 2, atol=1e-6)
    assert sorted(json.loads((out / "config.json").read_text())["average"]["runs"]) == sorted(
        [str(trained), str(seed1)]
    )

    wider = tmp_path / "wider"
    train_tiny(wider, "--max_filters", "32")
    capsys.readouterr()
    bad = ["average", str(trained), str(wider), "--last", "1", "--out", str(tmp_path / "x")]
    assert main([*bad, *data]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a run of the same model" in err[0], err
    twice = ["average", str(trained), str(trained), "--last", "1", "--out", str(tmp_path / "x")]
    assert main([*twice, *data]) == 1
    assert "a run is given twice" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def _batch_norm_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "batches" in k}


def test_recompute_batch_norm_is_seeded_and_leaves_the_callers_rng_alone():
    torch.manual_seed(0)
    model = VAE(ModelConfig(arch="dcgan", image_size=16, latent_dims=3, max_filters=16, depth=2))
    images = torch.randint(0, 256, (50, 16, 16, 1), dtype=torch.uint8)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in norms:
        m.momentum = 0.3
    runs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        model.train()
        torch.manual_seed(99)
        expected = torch.rand(4)
        torch.manual_seed(99)
        recompute_batch_norm(model, images, torch.device("cpu"), batchsize=16, seed=seed)
        assert torch.equal(torch.rand(4), expected)  # the caller's random state is untouched
        assert not model.training and all(m.momentum == 0.3 for m in norms)
        runs[name] = _batch_norm_state(model)
    # 50 images in batches of 16: 4 batches, whatever the statistics were before
    assert all(int(runs["a"][k]) == 4 for k in runs["a"] if "batches" in k)
    assert all(torch.equal(runs["a"][k], runs["b"][k]) for k in runs["a"])  # same seed
    # the decoder's statistics depend on the sampled latents, the encoder's do not
    name = "decoder.norms.0.running_mean"
    assert not torch.equal(runs["a"][name], runs["c"][name])
    name = "encoder.norms.1.running_mean"
    assert torch.equal(runs["a"][name], runs["c"][name])


def test_average_of_a_conditional_run_recomputes_batch_norm_with_each_image_s_class(
    mnist_dir, labelled, tmp_path
):
    run, out = tmp_path / "run", tmp_path / "avg"
    assert main(["train", "--dataset", "mnist", "--conditional", "--arch", "dcgan",
                 "--image_size", "16", "--depth", "2", "--max_filters", "8", "--latent_dims",
                 "2", "--epochs", "2", "--batchsize", "8", "--val_images", "4", "--run_dir",
                 str(run), "--data_dir", str(mnist_dir), "--quiet", "--cpu"]) == 0  # fmt: skip
    assert main(["average", str(run), "--last", "2", "--out", str(out), "--batchsize", "1000",
                 "--data_dir", str(mnist_dir), "--quiet"]) == 0  # fmt: skip
    avg = load_model(out)
    assert avg.config.classes == tuple(str(i) for i in range(10))
    # the encoder's first batch norm sees the images beside their one-hot class planes:
    # recompute its statistics by hand with each image's class (image i: class i % 10)
    rows = _training_rows(run, len(load_split("mnist", "train", 16, mnist_dir, False)))
    images = to_float(_trained_on(run, "mnist", 16, mnist_dir), "cpu")
    labels = rows % 10
    planes = torch.nn.functional.one_hot(labels, 10).float()[:, :, None, None]
    x = torch.cat([images, planes.expand(-1, -1, 16, 16)], 1)
    with torch.no_grad():
        h = avg.encoder.convs[1](torch.nn.functional.leaky_relu(avg.encoder.convs[0](x), 0.2))
    norm = avg.encoder.norms[1]
    assert torch.allclose(norm.running_mean, h.mean(dim=(0, 2, 3)), atol=1e-5)


def test_average_does_not_repeat_what_the_run_s_training_said(train_tiny, mnist_dir, tmp_path,
                                                               caplog):  # fmt: skip
    # 40 training images: --val_images 8 is more than a tenth, which training warned of
    with caplog.at_level("WARNING", logger="torch_vae"):
        run = train_tiny(tmp_path / "run", "--val_images", "8")
    assert "more than a tenth" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="torch_vae"):
        assert main(["average", str(run), "--last", "2", "--out", str(tmp_path / "avg"),
                     "--data_dir", str(mnist_dir), "--quiet"]) == 0  # fmt: skip
    assert "more than a tenth" not in caplog.text
    assert (tmp_path / "avg" / "model.safetensors").is_file()


def test_average_warns_of_runs_that_began_from_other_weights(
    trained, train_tiny, mnist_dir, tmp_path, caplog
):
    data = ["--data_dir", str(mnist_dir), "--quiet", "--last", "1"]
    seed1 = train_tiny(tmp_path / "seed1", "--seed", "1", "--split_seed", "0")
    with caplog.at_level(logging.WARNING, logger="torch_vae"):
        assert main(["average", str(trained), str(seed1), "--out", str(tmp_path / "a"), *data]) == 0
    assert (f"the runs began from other weights ({trained} from a random initialisation of seed "
            f"0; {seed1} from a random initialisation of seed 1)") in caplog.text  # fmt: skip
    # two fine-tunings of one model, with other seeds: one start, nothing to warn of
    start = trained / "model.safetensors"
    tuned = [train_tiny(tmp_path / f"ft{s}", "--init_from", str(start), "--seed", str(s),
                        "--split_seed", "0") for s in (1, 2)]  # fmt: skip
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="torch_vae"):
        assert main(["average", *map(str, tuned), "--out", str(tmp_path / "b"), *data]) == 0
    assert "began from other weights" not in caplog.text


def test_average_last_zero_asks_for_one_or_more(trained, mnist_dir, tmp_path, capsys):
    args = ["average", str(trained), "--last", "0", "--out", str(tmp_path / "a"), "--quiet",
            "--data_dir", str(mnist_dir)]  # fmt: skip
    assert main(args) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "torch-vae: error: --last 0: average at least the last epoch of each run (--last 1 or more)"
    ]
