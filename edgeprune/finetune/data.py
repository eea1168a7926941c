"""How the training loop draws its batches: from the caller's DataLoader, as given.

The loader's sampler or batch sampler decides which samples each epoch sees and how they are batched: a
WeightedRandomSampler's weights, a DistributedSampler's shard, a `batch_sampler`'s batches, a
SequentialSampler's fixed order (pass `shuffle=True` for a shuffled one). The loop adds only what makes a
run repeatable and resumable, for the length of one epoch and undone after it (`seeded_epoch`):

- every torch generator the loader draws from (the DataLoader's own, which seeds its workers; its
  sampler's; its batch sampler's and that one's sampler's, a `None` generator included) is replaced by a
  fresh one seeded from (seed, epoch): the sampler's with seed*1000 + epoch. So epoch e's order depends on
  nothing but `seed` and e, a run resumed from a checkpoint sees the batches an uninterrupted one saw, and
  the caller's generators are never advanced;
- a sampler with `set_epoch` (DistributedSampler) gets `set_epoch(epoch)`, as a training script calls it:
  its shuffle comes from its own seed, shared by every rank, and the epoch.

Anything else random in the loader draws from a global RNG (torch's, Python's `random`, numpy's), which the
loop seeds and checkpoints (rng.py).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset

from ..errors import ModelError

__all__ = ["check_loader", "seeded_epoch", "first_batch", "steps_in"]

# the loader's own generator (worker seeds) gets a stream of its own, away from the samplers' seeds
_STREAM = 1 << 40


def check_loader(data: Any, what: str) -> None:
    if not isinstance(data, DataLoader):
        raise ModelError(f"{what} must be a torch DataLoader of (inputs, labels) batches, got {type(data).__name__}")
    if not isinstance(data.dataset, IterableDataset) and len(data.dataset) == 0:
        raise ModelError(f"{what} is empty: its dataset has no samples")


def _samplers(loader: DataLoader) -> list[Any]:
    found: list[Any] = []
    batch_sampler = loader.batch_sampler
    for part in (loader.sampler, batch_sampler, getattr(batch_sampler, "sampler", None)):
        if part is not None and all(part is not seen for seen in found):
            found.append(part)
    return found


def _reseed(obj: Any, seed: int, undo: list) -> None:
    """Give `obj` a fresh `generator` seeded with `seed`, if it draws from one (None: the global RNG)."""
    if not hasattr(obj, "generator"):
        return
    old = obj.generator
    if old is not None and not isinstance(old, torch.Generator):
        return  # an attribute of that name that is not a torch generator: not ours to replace
    fresh = torch.Generator(device=old.device if old is not None else "cpu").manual_seed(seed)
    undo.append(lambda: setattr(obj, "generator", old))
    obj.generator = fresh


@contextmanager
def seeded_epoch(loader: DataLoader, seed: int, epoch: int) -> Iterator[DataLoader]:
    """`loader` itself, seeded for `epoch` of a run with `seed` while the block runs, restored after it."""
    undo: list = []
    try:
        for part in _samplers(loader):
            _reseed(part, seed * 1000 + epoch, undo)
            if callable(getattr(part, "set_epoch", None)):
                if hasattr(part, "epoch"):
                    undo.append(lambda part=part, was=part.epoch: part.set_epoch(was))
                part.set_epoch(epoch)
        _reseed(loader, _STREAM + seed * 1000 + epoch, undo)
        yield loader
    finally:
        for restore in reversed(undo):
            restore()


def first_batch(loader: DataLoader, seed: int) -> Any:
    """The first batch of epoch 0 (for shape and label checks), or None when the loader yields nothing."""
    with seeded_epoch(loader, seed, 0):
        return next(iter(loader), None)


def steps_in(loader: DataLoader) -> int:
    try:
        return len(loader)
    except TypeError:
        return sum(1 for _ in loader)
