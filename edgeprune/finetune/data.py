"""How the training loop draws its batches from the caller's DataLoader.

The data order of epoch e comes from a generator seeded with seed*1000 + e (a RandomSampler over the
caller's loader's dataset and batch size), so a resumed run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, RandomSampler

from ..errors import ModelError

__all__ = ["check_loader", "epoch_loader", "steps_in"]


def check_loader(data: Any, what: str) -> None:
    if not isinstance(data, DataLoader):
        raise ModelError(f"{what} must be a torch DataLoader of (inputs, labels) batches, got {type(data).__name__}")
    if not isinstance(data.dataset, IterableDataset) and len(data.dataset) == 0:
        raise ModelError(f"{what} is empty: its dataset has no samples")


def epoch_loader(loader: DataLoader, seed: int, epoch: int) -> DataLoader:
    if isinstance(loader.dataset, IterableDataset):
        return loader  # no sampler to seed: order is the dataset's own
    g = torch.Generator().manual_seed(seed * 1000 + epoch)
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=RandomSampler(loader.dataset, generator=g),
                      collate_fn=loader.collate_fn, drop_last=loader.drop_last, num_workers=loader.num_workers)


def steps_in(loader: DataLoader) -> int:
    try:
        return len(loader)
    except TypeError:
        return sum(1 for _ in loader)
