"""Helpers for tests that train tiny runs through the command line and compare them."""

import torch

from torch_vae import load_model
from torch_vae.cli import main
from torch_vae.training.rundir import read_metrics
from torch_vae.training.state import load_train_state

TINY = [
    "--dataset", "mnist", "--batchsize", "8", "--latent_dims", "3", "--max_filters", "8",
    "--image_size", "16", "--depth", "2", "--threads", "1", "--cpu", "--quiet",
]  # fmt: skip


def train_args(run, data_dir, epochs, *extra):
    return [
        "train", *TINY, "--data_dir", str(data_dir), "--run_dir", str(run),
        "--epochs", str(epochs), *extra,
    ]  # fmt: skip


def resume(run, data_dir, *extra):
    return main(
        ["train", "--resume", str(run), "--data_dir", str(data_dir), "--threads", "1"]
        + ["--cpu", "--quiet", *extra]
    )


def weights(run):
    return load_model(run).state_dict()


def assert_same_run(run, ref):
    """Bitwise-equal final weights, and the same per-epoch losses (so the same batches and
    samples were drawn in every epoch), each epoch recorded once."""
    a, b = weights(run), weights(ref)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ma, mb = read_metrics(run), read_metrics(ref)
    assert [r["epoch"] for r in ma] == [r["epoch"] for r in mb] == list(range(1, len(mb) + 1))
    for ra, rb in zip(ma, mb, strict=True):
        for key in ("step", "train_loss", "train_kl", "val_loss", "val_mse"):
            assert ra[key] == rb[key], (ra["epoch"], key)
    sa, sb = load_train_state(run), load_train_state(ref)
    assert (sa["epoch"], sa["step"]) == (sb["epoch"], sb["step"])
    assert torch.equal(sa["rng"]["gen"], sb["rng"]["gen"])
    assert torch.equal(sa["rng"]["torch"], sb["rng"]["torch"])
