"""Datasets: registry, readers of the real on-disk formats, downloads and the uint8 cache."""

from .cache import default_data_dir, load_split, read_only
from .datasets import DATASETS, SPLITS, check_channels, get_dataset
from .torchdata import CachedImages

__all__ = [
    "DATASETS",
    "SPLITS",
    "CachedImages",
    "check_channels",
    "default_data_dir",
    "get_dataset",
    "load_split",
    "read_only",
]
