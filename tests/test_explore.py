"""explore.py: the Python API that shows what a model learned, and data.labels."""

import numpy as np
import pytest
import torch

import fakedata
from torch_vae import VAE, ModelConfig, TorchVaeError
from torch_vae.analysis import latent as E
from torch_vae.data import labels as L
from torch_vae.data import load_split


def small(latent=2, channels=1, size=16):
    torch.manual_seed(0)
    cfg = ModelConfig(
        in_channels=channels, image_size=size, latent_dims=latent, max_filters=16, depth=2,
        arch="dcgan",
    )  # fmt: skip
    return VAE(cfg).eval()


def images(n=10, channels=1, size=16):
    return torch.from_numpy(fakedata.blobs(n, size, channels, 0))  # uint8 (n, H, W, C)


def test_encode_mean_takes_uint8_and_float_and_batches(monkeypatch):
    model, x = small(latent=4, channels=3), images(7, channels=3)
    mu = E.encode_mean(model, x)
    assert mu.shape == (7, 4) and mu.dtype == torch.float32
    as_float = x.permute(0, 3, 1, 2).float() / 255
    assert torch.allclose(E.encode_mean(model, as_float), mu)
    assert torch.allclose(E.encode_mean(model, x.numpy()), mu)
    assert torch.allclose(mu, model.encode(as_float).mu.detach(), atol=1e-6)
    monkeypatch.setattr(E, "BATCH", 3)  # batched: the same numbers
    assert torch.allclose(E.encode_mean(model, x), mu, atol=1e-6)
    model.train()
    E.encode_mean(model, x)
    assert model.training  # the mode is restored
    with pytest.raises(TorchVaeError, match=r"images must be"):
        E.encode_mean(model, images(2, channels=1))


def test_interpolate_endpoints_and_methods():
    model, x = small(), images(2)
    za, zb = torch.tensor([-1.0, 0.5]), torch.tensor([2.0, 1.0])
    for method in ("linear", "slerp"):
        out = E.interpolate(model, za, zb, steps=5, method=method)
        assert out.shape == (5, 1, 16, 16)
        ends = model.decode(torch.stack([za, zb])).detach()
        assert torch.allclose(out[[0, -1]], ends, atol=1e-5)
    linear = E.interpolate(model, za, zb, steps=3)
    assert torch.allclose(linear[1], model.decode(((za + zb) / 2)[None])[0].detach(), atol=1e-5)
    # images are encoded to their posterior means
    from_images = E.interpolate(model, x[0], x[1], steps=2)
    assert torch.allclose(from_images[0], model.reconstruct(x[:1].permute(0, 3, 1, 2) / 255)[0])
    with pytest.raises(TorchVaeError, match="method"):
        E.interpolate(model, za, zb, method="cubic")
    with pytest.raises(TorchVaeError, match="latent code"):
        E.interpolate(model, torch.zeros(3), zb)


def test_slerp_keeps_the_angle_moving_evenly_and_the_norm_linear():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 3.0])
    path = E.slerp(a, b, torch.linspace(0, 1, 5)[:, None])
    angles = torch.atan2(path[:, 1], path[:, 0])
    assert torch.allclose(angles, torch.linspace(0, torch.pi / 2, 5), atol=1e-5)
    assert torch.allclose(path.norm(dim=1), torch.linspace(1, 3, 5), atol=1e-5)
    same = E.slerp(a, 2 * a, torch.tensor([[0.5]]))  # parallel: linear
    assert torch.allclose(same, torch.tensor([[1.5, 0.0]]))


def test_kl_per_dim_sums_to_the_kl_term_and_active_dims():
    model, x = small(latent=3), images(6)
    kl = E.kl_per_dim(model, x)
    post = model.encode(x.permute(0, 3, 1, 2).float() / 255)
    assert kl.shape == (3,)
    assert torch.allclose(kl.sum(), post.kl().mean().detach(), rtol=1e-4)
    assert E.active_dims(torch.tensor([0.5, 0.001, 0.02])).tolist() == [True, False, True]
    assert E.active_dims(torch.tensor([0.5, 0.2]), threshold=0.3).tolist() == [True, False]


def test_traverse_sets_one_dimension_at_a_time():
    model = small(latent=3)
    z = torch.tensor([0.1, -0.2, 0.3])
    out = E.traverse(model, z, dims=[2, 0], steps=3, span=2.0)
    assert out.shape == (2, 3, 1, 16, 16)
    expect = z.clone()
    expect[0] = -2.0  # second row (dim 0), first column
    assert torch.allclose(out[1, 0], model.decode(expect[None])[0].detach(), atol=1e-5)
    with pytest.raises(TorchVaeError, match="dimensions"):
        E.traverse(model, z, dims=[3])


def test_manifold_of_a_latent_2_model_covers_the_prior():
    model = small(latent=2)
    codes = E.manifold_codes(model, n=5)
    assert codes.shape == (5, 5, 2)
    # columns: first coordinate increasing; rows: second decreasing (top = high)
    assert (codes[0, 1:, 0] > codes[0, :-1, 0]).all() and (codes[1:, 0, 1] < codes[:-1, 0, 1]).all()
    assert torch.allclose(codes[2, 2], torch.zeros(2), atol=1e-6)  # the median in the middle
    q = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(0.1))  # (0 + 0.5) / 5
    assert torch.isclose(codes[0, 0, 0], q) and torch.isclose(codes[0, 0, 1], -q)
    grid = E.manifold(model, n=5)
    assert grid.shape == (5, 5, 1, 16, 16)
    assert torch.allclose(grid[0, 4], model.decode(codes[0, 4][None])[0].detach(), atol=1e-5)


def test_manifold_of_a_larger_model_spans_the_data_plane():
    model, x = small(latent=5), images(12)
    with pytest.raises(TorchVaeError, match="needs images"):
        E.manifold(model, n=3)
    center, directions, scales = E.pca_basis(E.encode_mean(model, x))
    codes = E.manifold_codes(model, n=3, images=x)
    assert torch.allclose(codes[1, 1], center, atol=1e-5)
    corner = center - 2 * scales[0] * directions[0] + 2 * scales[1] * directions[1]
    assert torch.allclose(codes[0, 0], corner, atol=1e-5)
    assert E.manifold(model, n=3, images=x).shape == (3, 3, 1, 16, 16)


def test_pca_basis_embed_and_from_map():
    model, x = small(latent=5), images(12)
    means = E.encode_mean(model, x)
    center, directions, scales = E.pca_basis(means)
    assert torch.allclose(directions @ directions.T, torch.eye(2), atol=1e-5)
    assert (scales[0] >= scales[1]).all() and (directions.abs().argmax(1) >= 0).all()
    xy = E.embed(model, x)
    assert xy.shape == (12, 2)
    assert torch.allclose(xy.std(0), scales, rtol=1e-4)
    back = E.from_map(center, directions, xy)  # the codes projected on the plane
    assert torch.allclose(E.embed(model, x, "pca"), (back - center) @ directions.T, atol=1e-5)
    assert torch.equal(E.embed(model, x), E.embed(model, x))  # deterministic
    two = small(latent=2)
    assert torch.equal(E.embed(two, x), E.encode_mean(two, x))  # the code itself
    with pytest.raises(TorchVaeError, match="B >= 2"):
        E.pca_basis(means[:1])


def test_class_names():
    assert L.class_names("fashion-mnist")[0] == "T-shirt/top"
    assert L.class_names("fashion-mnist")[9] == "Ankle boot"
    assert L.class_names("mnist") == [str(i) for i in range(10)]
    assert len(L.class_names("cifar-10")) == 10
    names = L.class_names("cifar-100")
    assert len(names) == len(set(names)) == 100 and names == sorted(names)
    assert L.class_names("celeb-a") is None
    assert E.class_names is L.class_names


def test_load_labels_of_mnist_from_its_idx_files(labelled):
    mnist_dir = labelled
    test = L.load_labels("mnist", "test", mnist_dir)
    assert test.tolist() == [i % 10 for i in range(20)] and test.dtype == np.int64
    assert len(L.load_labels("mnist", "train", mnist_dir)) == 40
    assert len(load_split("mnist", "train", 28, mnist_dir, progress=False)) == 40
    with pytest.raises(TorchVaeError, match="split"):
        L.load_labels("mnist", "valid", mnist_dir)


def test_labels_are_checked_against_their_md5(mnist_dir):
    fakedata.write_mnist_labels(mnist_dir / "mnist")  # not the official files
    with pytest.raises(TorchVaeError, match="checksum"):
        L.load_labels("mnist", "test", mnist_dir)


def test_load_labels_of_cifar(tmp_path, register_md5s):
    fakedata.write_cifar(tmp_path / "cifar-10", per_batch=4)
    register_md5s("cifar-10", tmp_path / "cifar-10")
    labels = L.load_labels("cifar-10", "train", tmp_path)
    assert labels.tolist() == [i % 10 for i in range(4)] * 5
    assert len(load_split("cifar-10", "train", 32, tmp_path, progress=False)) == len(labels)
    assert L.class_names("cifar-100", tmp_path) == L.CIFAR_100  # no meta: the built-in list


def test_folder_labels_are_subfolders(tmp_path):
    root = tmp_path / "pics"
    for split in ("train", "test"):
        fakedata.write_folder(root / split / "cats", n=3, seed=1)
        fakedata.write_folder(root / split / "dogs", n=2, seed=2)
    fakedata.write_folder(root / "test" / "birds", n=1, seed=3)
    assert L.class_names(f"folder:{root}") == ["birds", "cats", "dogs"]
    assert L.load_labels(f"folder:{root}", "test", tmp_path).tolist() == [0, 1, 1, 1, 2, 2]
    flat = fakedata.write_folder(tmp_path / "flat", n=12)
    assert L.class_names(f"folder:{flat}") is None
    assert L.load_labels(f"folder:{flat}", "train", tmp_path) is None
