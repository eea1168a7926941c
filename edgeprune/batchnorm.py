"""BatchNorm recalibration: recompute running statistics of a pruned model from real data, nothing trained.

Pruning changes what every BatchNorm downstream sees, so its stored mean and variance are stale; on the
demo task this alone takes a half-MACs model from 46 % to 86 % (BENCHMARKS.md, "Accuracy recovery").
It lives below `sensitivity` and `finetune`, which both use it.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from ._copy import copy_model
from .errors import ModelError
from .metrics import batches as _batches, logits, split_batch

__all__ = ["recalibrate_bn", "recalibrate_"]


def recalibrate_(model: nn.Module, data: Any, batches: Optional[int] = None) -> None:
    """In place: reset every BatchNorm's running statistics and re-average them (cumulatively, not with
    momentum) over the first `batches` batches of `data` (all by default); only BN layers run in train
    mode, no grad, and the model's mode is restored."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    was = model.training
    momenta = [bn.momentum for bn in bns]
    # kept so that a failure (empty data, a batch the model rejects) leaves the statistics as they were
    saved = [{k: v.clone() for k, v in bn.state_dict().items()} for bn in bns]
    model.eval()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    seen = 0
    try:
        with torch.no_grad():
            for i, batch in enumerate(_batches(data)):
                if batches is not None and i >= batches:
                    break
                logits(model, split_batch(batch)[0])
                seen += 1
        if not seen:
            raise ModelError("BatchNorm recalibration data is empty: it yields no batches")
    except BaseException:
        for bn, state in zip(bns, saved):
            bn.load_state_dict(state)
        raise
    finally:
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
        model.train(was)


def recalibrate_bn(model: nn.Module, data: Any, batches: Optional[int] = None) -> nn.Module:
    """A copy of `model` whose BatchNorm running statistics are recomputed from `data` (a DataLoader, any
    iterable of (inputs, labels) batches, or one (X, Y) tensor pair); `model` is not changed."""
    work = copy_model(model)
    recalibrate_(work, data, batches)
    return work
