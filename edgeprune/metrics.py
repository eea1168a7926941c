"""Top-1 accuracy, the default metric of both `sensitivity` and `finetune`.

It lives down here, beside `inputs`, because sensitivity sits below fine-tuning and must not import it.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from .errors import EdgepruneError, ModelError
from .inputs import call, main_output

__all__ = ["accuracy", "batches", "split_batch", "logits"]

_CHUNK = 256  # an (X, Y) pair is scored in slices so a large validation set never runs as one batch


def split_batch(batch: Any) -> tuple[Any, torch.Tensor]:
    """(inputs, labels) from an (inputs, labels) pair or a dict whose 'labels' entry holds the labels."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    if isinstance(batch, dict) and "labels" in batch:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return inputs, batch["labels"]
    raise ModelError(f"each batch must be (inputs, labels) or a dict with 'labels'; got {type(batch).__name__}")


def logits(model: nn.Module, inputs: Any) -> torch.Tensor:
    return main_output(call(model, inputs if isinstance(inputs, dict) else (inputs,)))


def batches(data: Any) -> Iterable:
    """Batches of `data`: a DataLoader or iterable as it is; one (X, Y) tensor pair in slices."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
        return [(x[i:i + _CHUNK], y[i:i + _CHUNK]) for i in range(0, len(y), _CHUNK)]
    return data


def accuracy(model: nn.Module, data: Any, *, raise_if_empty: bool = False) -> float:
    """Top-1 accuracy of `model` (eval mode, no grad; its mode is restored) over `data`: a DataLoader or any
    iterable of batches (pairs or dicts with 'labels'), or one (X, Y) tensor pair.

    Empty data gives NaN, or EdgepruneError with `raise_if_empty` (where a NaN would spread silently).
    """
    was = model.training
    model.eval()
    correct = total = 0
    try:
        with torch.no_grad():
            for batch in batches(data):
                inputs, labels = split_batch(batch)
                correct += int((logits(model, inputs).argmax(-1) == labels).sum())
                total += int(labels.numel())
    finally:
        model.train(was)
    if total:
        return correct / total
    if raise_if_empty:
        raise EdgepruneError("validation data is empty: no (x, y) batches to measure the metric on")
    return float("nan")
