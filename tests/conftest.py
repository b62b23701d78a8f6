import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

import fakedata  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def default_data_dir(tmp_path_factory):
    """Where a test that names no --data_dir reads and caches datasets: a folder of its own,
    never the checkout's (or the machine's) data/."""
    import os

    folder = tmp_path_factory.mktemp("default-data")
    before = os.environ.get("TORCH_VAE_DATA")
    os.environ["TORCH_VAE_DATA"] = str(folder)
    yield folder
    if before is None:
        os.environ.pop("TORCH_VAE_DATA", None)
    else:
        os.environ["TORCH_VAE_DATA"] = before


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        reason = "gpu: needs a CUDA GPU; torch.cuda.is_available() is false"
        no_gpu = pytest.mark.skip(reason=reason)
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(no_gpu)
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def mnist_dir(tmp_path, monkeypatch):
    """A data dir holding a tiny MNIST in its real gzipped IDX format; no system copies."""
    from torch_vae.data import datasets

    monkeypatch.setattr(datasets, "SYSTEM_DIRS", {})
    data_dir = tmp_path / "data"
    fakedata.write_mnist(data_dir / "mnist")
    # the fake files do not match the official MD5s; register theirs instead
    _register_md5s(monkeypatch, "mnist", data_dir / "mnist")
    return data_dir


def _register_md5s(monkeypatch, name, folder):
    import dataclasses

    from torch_vae.data import datasets
    from torch_vae.data.download import md5sum

    ds = datasets.DATASETS[name]
    files = tuple(dataclasses.replace(f, md5=md5sum(folder / f.name)) for f in ds.files)
    monkeypatch.setitem(datasets.DATASETS, name, dataclasses.replace(ds, files=files))


@pytest.fixture
def register_md5s(monkeypatch):
    return lambda name, folder: _register_md5s(monkeypatch, name, folder)


@pytest.fixture
def train_tiny(mnist_dir):
    """Train a tiny model (latent 3, 16 filters, 32x32, 2 epochs) on the tiny MNIST into
    ``run``; extra flags are appended (later flags win)."""
    from torch_vae.cli import main

    def train(run, *flags):
        args = ["train", "--dataset", "mnist", "--data_dir", str(mnist_dir), "--run_dir", str(run)]
        shape = ["--latent_dims", "3", "--max_filters", "16", "--image_size", "32", "--depth", "3"]
        assert main([*args, "--epochs", "2", "--batchsize", "16", *shape, "--quiet", *flags]) == 0
        return run

    return train


@pytest.fixture
def trained(train_tiny, tmp_path):
    return train_tiny(tmp_path / "run")


@pytest.fixture
def vq_run(mnist_dir, tmp_path):
    """A tiny VQ-VAE (16 codes of 4 numbers, an 8x8 grid) trained 6 steps on the tiny MNIST,
    holding out 4 validation images."""
    import json

    from torch_vae.cli import main

    config = tmp_path / "flags.json"
    flags = {"arch": "vqvae", "image_size": 32, "max_filters": 16, "latent_dims": 4,
             "codebook_size": 16, "blocks": 1}  # fmt: skip
    config.write_text(json.dumps(flags))
    run = tmp_path / "run"
    assert main(["train", "--dataset", "mnist", "--config", str(config), "--max_steps", "6",
                 "--batchsize", "8", "--val_images", "4", "--run_dir", str(run),
                 "--data_dir", str(mnist_dir), "--quiet", "--cpu"]) == 0  # fmt: skip
    return run


@pytest.fixture
def data(mnist_dir):
    """The tiny MNIST with its size-16 cache built, so that subprocesses (which do not see the
    test's registered checksums) read the cache."""
    from torch_vae.data import load_split

    for split in ("train", "test"):
        load_split("mnist", split, 16, mnist_dir, progress=False)
    return mnist_dir


@pytest.fixture(autouse=True)
def quick_download_retries(monkeypatch):
    """A download that failed is tried again at once here (seconds later for users)."""
    from torch_vae.data import download

    monkeypatch.setattr(download, "RETRY_WAIT", 0.0)


@pytest.fixture(autouse=True)
def keep_threads():
    """--threads (set by the command for the whole process) must not leak into other tests."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture
def labelled(mnist_dir, monkeypatch):
    """The tiny MNIST with label files whose MD5s are registered."""
    import dataclasses

    from torch_vae.data import labels
    from torch_vae.data.download import md5sum

    fakedata.write_mnist_labels(mnist_dir / "mnist")
    files = tuple(
        dataclasses.replace(f, md5=md5sum(mnist_dir / "mnist" / f.name))
        for f in labels.LABEL_FILES["mnist"]
    )
    monkeypatch.setitem(labels.LABEL_FILES, "mnist", files)
    return mnist_dir
