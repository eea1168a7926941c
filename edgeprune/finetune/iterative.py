"""Schemes that call the fine-tuning loop repeatedly: `iterative_prune` (plan, prune, fine-tune, in steps) and
`lottery` (iterative magnitude pruning with rewinding)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from .._copy import copy_model
from ..batchnorm import recalibrate_ as _recalibrate_
from ..budget import Budget, Estimate
from ..costs import activation_bytes, measure, weight_bytes
from ..errors import BudgetError, EdgepruneError, ModelError
from ..metrics import split_batch as _split
from ..policy import plan as make_plan
from ..pruning import RECORD_ATTR, finalize, prune, record_of
from ..targets import load_target
from .data import check_loader, first_batch, seeded_epoch
from .loop import FinetuneResult, finetune
from .masks import enforce_masks, ensure_mask, magnitude_mask, refresh_weight, resolve_layers

__all__ = ["iterative_prune", "lottery"]


def iterative_prune(model: nn.Module, example_inputs: Any, target: Any, budget: Budget, train_data: DataLoader, *,
                    steps: int = 3, epochs_per_step: int = 1, checkpoint_dir: "str | Path | None" = None,
                    recipe: Any = None, importance: str = "l2", **finetune_kwargs) -> FinetuneResult:
    """Pruning in `steps` stages: the quantity `budget` bounds (MACs kept, flash, ...) goes linearly from the
    dense model's to the budget's (`Budget.stage`); each stage plans (`ep.plan`, with `recipe` and
    `importance`) and prunes (`ep.prune`) the current model, recalibrates BatchNorm on `train_data`, then
    fine-tunes for `epochs_per_step`. History entries carry `prune_step`, `macs_ratio`."""
    if not isinstance(budget, Budget):
        raise BudgetError(f"budget must be an edgeprune.Budget, got {type(budget).__name__}")
    if steps < 1:
        raise EdgepruneError(f"steps={steps}: must be >= 1")
    target = load_target(target)
    dense = measure(finalize(model).eval(), example_inputs).macs
    original = _estimate(model, example_inputs, target, dense)
    current, history, result = model, [], None
    for k in range(1, steps + 1):
        stage = budget.stage(k, steps, original, _estimate(current, example_inputs, target, dense))
        p = make_plan(current, example_inputs, target, stage, recipe=recipe, importance=importance)
        pruned = prune(current, p)
        with seeded_epoch(train_data, finetune_kwargs.get("seed", 0), 0):
            _recalibrate_(pruned, train_data)
        result = finetune(pruned, train_data, epochs=epochs_per_step, recalibrate_bn=False,
                          checkpoint_dir=None if checkpoint_dir is None else Path(checkpoint_dir) / f"step-{k}",
                          **finetune_kwargs)
        ratio = p.macs_after / dense
        history += [dict(h, prune_step=k, macs_ratio=ratio) for h in result.history]
        current = result.model
    result.history = history
    return result


def _estimate(model: nn.Module, example_inputs: Any, target, dense_macs: int) -> Estimate:
    """What `model` costs now, its MACs against the original dense model's."""
    work = finalize(model).eval()
    cost = measure(work, example_inputs)
    precision = target.precision.default
    weights, activations = weight_bytes(work, precision), activation_bytes(cost, precision)
    return Estimate(macs_ratio=cost.macs / dense_macs, sparsity=0.0, flash_bytes=weights, sram_bytes=activations,
                    ram_bytes=weights + activations)


def lottery(model: nn.Module, train_data: DataLoader, *, rounds: int, sparsity_per_round: float,
            epochs_per_round: int, rewind_epoch: int = 0, layers: Optional[Sequence[str]] = None,
            retrain_final: bool = True, **finetune_kwargs) -> FinetuneResult:
    """Iterative magnitude pruning with rewinding (Frankle et al. 2019): train; remember the weights at the end of
    epoch `rewind_epoch` of the first round (0: the weights given); per round, prune `sparsity_per_round` of
    each layer's surviving weights by magnitude (unstructured, per layer), rewind everything but the masks to
    the remembered state and train again. After `rounds` prunings the sparse network is trained once more
    (`retrain_final=False` returns it rewound, untrained). History entries carry `round`."""
    if rounds < 1 or not 0 < sparsity_per_round < 1 or not 0 <= rewind_epoch <= epochs_per_round:
        raise EdgepruneError(f"lottery: need rounds >= 1, 0 < sparsity_per_round < 1, "
                             f"0 <= rewind_epoch <= epochs_per_round (got {rounds}, {sparsity_per_round}, {rewind_epoch})")
    if rewind_epoch and finetune_kwargs.get("checkpoint_dir"):
        raise EdgepruneError("lottery: checkpoint_dir is supported only with rewind_epoch=0")
    check_loader(train_data, "train_data")
    work = copy_model(model)
    first = first_batch(train_data, finetune_kwargs.get("seed", 0))
    if first is None:
        raise ModelError("train_data is empty: it yields no batches")
    names = resolve_layers(work, layers, _split(first)[0])
    modules = dict(work.named_modules())
    for name in names:
        ensure_mask(modules[name])
    saved: dict[str, dict] = {}

    def remember(epoch, m):
        if epoch == rewind_epoch:
            saved["state"] = {k: v.detach().clone() for k, v in m.state_dict().items()}

    if rewind_epoch == 0:
        remember(0, work)
    base_dir = finetune_kwargs.pop("checkpoint_dir", None)
    history: list[dict] = []
    result = None
    for r in range(1, rounds + 2):
        if r == rounds + 1 and not retrain_final:
            break
        result = finetune(work, train_data, epochs=epochs_per_round,
                          checkpoint_dir=None if base_dir is None else Path(base_dir) / f"round-{r}",
                          _on_epoch_end=remember if (r == 1 and rewind_epoch) else None, **finetune_kwargs)
        history += [dict(h, round=r) for h in result.history]
        work = result.model
        if r == rounds + 1:
            break
        modules = dict(work.named_modules())
        masks = {}
        with torch.no_grad():
            for name in names:
                module = modules[name]
                alive = int(module.weight_mask.sum())
                masks[name] = magnitude_mask(module, (module.weight_mask.numel() - alive
                                                       + round(sparsity_per_round * alive)) / module.weight_mask.numel())
            work.load_state_dict(saved["state"])
            for name in names:
                modules[name].weight_mask.copy_(masks[name])
                refresh_weight(modules[name])
            enforce_masks(work)
    if result is None:
        result = FinetuneResult(model=work)
    record = record_of(work)
    if not retrain_final and record is not None:  # rewound after its last pruning, and not trained since
        setattr(work, RECORD_ATTR, replace(record, finetuned=False))
    result.model, result.history = work, history
    return result
