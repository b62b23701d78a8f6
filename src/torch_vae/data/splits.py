"""The validation split: training images held out from training, chosen by the run's seed, on
which each epoch is measured and everything chosen during or after training is judged; the
test split stays for the final reports."""

from __future__ import annotations

import hashlib

import torch

# The most of the training split held out, for small datasets (a folder of a few hundred
# images keeps most of them for training).
MAX_SHARE = 0.1
_STREAM = 0x56414C  # the split's own generator stream, apart from the run's batch order


def validation_size(n: int, requested: int) -> int:
    """How many of ``n`` training images a run asking for ``requested`` holds out."""
    return min(requested, int(n * MAX_SHARE))


def validation_rows(n: int, requested: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(training rows, validation rows) of a training split of ``n`` images, each sorted: the
    validation rows are the first ``validation_size`` of a permutation drawn for ``seed`` by
    a CPU generator, so the same on every machine."""
    k = validation_size(n, requested)
    gen = torch.Generator().manual_seed((int(seed) + _STREAM) % 2**64)
    perm = torch.randperm(n, generator=gen)
    return perm[k:].sort().values, perm[:k].sort().values


def rows_digest(rows: torch.Tensor) -> str:
    """SHA-256 of the rows (int64, little-endian): what a run's config.json records."""
    return hashlib.sha256(rows.to(torch.int64).numpy().astype("<i8").tobytes()).hexdigest()


def recorded_rows(n: int, config: dict) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(training rows, validation rows) of the run whose ``config.json`` is ``config``, over
    its ``n`` training images: the split it recorded, drawn again from its seed and checked
    against the recorded digest; None for a run that held none out (or whose record does not
    match these images)."""
    split, train = config.get("split"), config.get("train") or {}
    if not isinstance(split, dict) or not split.get("validation_images"):
        return None
    seed = train.get("split_seed")
    seed = int(train.get("seed", 0)) if seed is None else int(seed)
    rows, val = validation_rows(n, int(train.get("val_images", 0)), seed)
    if rows_digest(val) != split.get("validation_rows_sha256"):
        return None
    return rows, val
