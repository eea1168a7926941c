"""The global random number generators a fine-tuning run draws from, seeded for the run and checkpointed.

Beyond the loader's samplers (data.py), a training step can draw from three global generators: torch's
(dropout, augmentations written in torch), Python's `random` and numpy's (augmentations written with
them, which run in this process when the loader has no workers; a worker process seeds its own three from
the loader's generator, which data.py seeds per epoch). `seeded` seeds all three from the run's seed and
gives the caller's states back afterwards; a checkpoint holds their states (`states`), and a resumed run
takes them up again (`restore`), so it draws what the uninterrupted run drew.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch

__all__ = ["seeded", "states", "restore"]

_NUMPY_SEEDS = 1 << 32  # numpy's legacy global generator takes a seed in [0, 2**32)


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % _NUMPY_SEEDS)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def states() -> dict[str, torch.Tensor]:
    """The three generators' states as tensors, for a checkpoint (safetensors holds tensors only)."""
    version, internal, gauss_next = random.getstate()
    _, keys, pos, has_gauss, cached_gaussian = np.random.get_state()  # always MT19937, numpy's legacy generator
    return {
        "rng.torch": torch.get_rng_state(),
        "rng.python": torch.tensor([version, *internal], dtype=torch.int64),
        # an empty tensor: no Gaussian value held over from random.gauss
        "rng.python.gauss": torch.tensor([] if gauss_next is None else [gauss_next], dtype=torch.float64),
        "rng.numpy": torch.tensor([pos, has_gauss, *keys.tolist()], dtype=torch.int64),
        "rng.numpy.gauss": torch.tensor([cached_gaussian], dtype=torch.float64),
    }


def restore(tensors: dict[str, torch.Tensor]) -> None:
    """Set the generators to the states `states` gave. A checkpoint from before Python's and numpy's states
    were recorded holds torch's only: those two stay as `seeded` left them."""
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.python" in tensors:
        version, *internal = tensors["rng.python"].tolist()
        gauss = tensors["rng.python.gauss"].tolist()
        random.setstate((version, tuple(internal), gauss[0] if gauss else None))
    if "rng.numpy" in tensors:
        pos, has_gauss, *keys = tensors["rng.numpy"].tolist()
        [cached_gaussian] = tensors["rng.numpy.gauss"].tolist()
        np.random.set_state(("MT19937", np.array(keys, dtype=np.uint32), pos, has_gauss, cached_gaussian))
