"""A ``torch.utils.data.Dataset`` over a cached split, for use with a ``DataLoader``.

    from torch.utils.data import DataLoader
    from torch_vae.data import CachedImages

    train = CachedImages("fashion-mnist", "train", image_size=64)
    for x in DataLoader(train, batch_size=128, shuffle=True, num_workers=2):
        ...  # x: float32 (128, 1, 64, 64) in [0, 1]

The split is loaded once, as the uint8 array of the cache (``load_split``: downloaded, decoded
and cached on first use), and stays uint8: 4x smaller than float. Each item is converted on
access. DataLoader workers share that array: forked workers read the parent's memory, and under
the spawn or forkserver start methods PyTorch moves the tensor to shared memory once when it
sends the dataset to the workers.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import torch
from torch.utils.data import Dataset

from .cache import load_split


class CachedImages(Dataset):
    """The images of one split of ``dataset`` at ``image_size``, as float32 tensors (C, H, W)
    in [0, 1] (the values the training loop feeds the model), each passed through
    ``transform`` if given. ``images`` holds the uint8 (N, H, W, C) cache itself (no copy)."""

    def __init__(
        self,
        dataset: str,
        split: str = "train",
        image_size: int = 64,
        data_dir: str | os.PathLike | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        progress: bool = True,
    ):
        images = load_split(dataset, split, image_size, data_dir, progress)
        with warnings.catch_warnings():
            # read-only when it is the decoded file itself (MNIST at 28x28): never written here
            warnings.filterwarnings("ignore", "The given NumPy array is not writable")
            self.images = torch.from_numpy(images)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        x = self.images[index].permute(2, 0, 1).float().div_(255)  # (C, H, W)
        return self.transform(x) if self.transform is not None else x
