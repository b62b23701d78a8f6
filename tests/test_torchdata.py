"""CachedImages: a torch Dataset over a cached split, with DataLoader in and out of workers."""

import pytest
import torch
from torch.utils.data import DataLoader

from torch_vae.data import CachedImages, load_split
from torch_vae.runtime.device import to_float


def test_items_are_the_cached_pixels_as_floats(mnist_dir):
    ds = CachedImages("mnist", "test", image_size=32, data_dir=mnist_dir, progress=False)
    cached = torch.from_numpy(load_split("mnist", "test", 32, mnist_dir, progress=False))
    assert len(ds) == len(cached) == 20
    assert ds.images.dtype == torch.uint8 and torch.equal(ds.images, cached)
    x = ds[3]
    assert x.shape == (1, 32, 32) and x.dtype == torch.float32
    assert 0 <= x.min() and x.max() <= 1 and x.max() > 0.5  # the fake digits have bright blobs
    assert torch.equal(x * 255, cached[3].permute(2, 0, 1).float())
    # exactly what the training loop feeds the model
    assert torch.equal(torch.stack([ds[i] for i in range(len(ds))]), to_float(cached, "cpu"))
    assert torch.equal(ds[-1], ds[len(ds) - 1])
    with pytest.raises(IndexError):
        ds[len(ds)]
    assert len(list(ds)) == len(ds)  # plain iteration stops at the end


def test_transform_is_applied(mnist_dir):
    plain = CachedImages("mnist", "train", 28, mnist_dir, progress=False)
    flipped = CachedImages(
        "mnist", "train", 28, mnist_dir, transform=lambda x: x.flip(-1), progress=False
    )
    assert len(plain) == 40
    assert torch.equal(flipped[5], plain[5].flip(-1))


@pytest.mark.parametrize("workers", [0, 2])
def test_dataloader_batches(mnist_dir, workers):
    ds = CachedImages("mnist", "train", 32, mnist_dir, progress=False)
    loader = DataLoader(ds, batch_size=16, shuffle=False, num_workers=workers)
    batches = list(loader)
    assert [len(b) for b in batches] == [16, 16, 8]
    assert batches[0].shape == (16, 1, 32, 32) and batches[0].dtype == torch.float32
    assert torch.equal(torch.cat(batches), torch.stack([ds[i] for i in range(len(ds))]))
