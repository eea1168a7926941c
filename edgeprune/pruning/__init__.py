"""Carrying out a plan: `prune` (structured channels, then N:M and unstructured masks) and `finalize`."""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any, Callable, Optional

from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils import prune as torch_prune

from .._copy import copy_model
from ..costs import measure
from ..finite import check_finite
from ..plan import LayerDecision, Plan
from .nm import apply_nm, reduction_size
from .structured import Removal, remove_channels
from .unstructured import apply_unstructured
from .._warn import warn

__all__ = ["prune", "finalize", "PruneRecord", "record_of", "apply_masks", "refresh"]

RECORD_ATTR = "edgeprune_record"


@dataclass(frozen=True)
class PruneRecord:
    """What `prune` did to a model: the plan as carried out and the channels it removed (for `save`), and
    whether the model has been fine-tuned since (`ep.finetune` sets it; pruning leaves accuracy to recover)."""

    plan: Plan
    removals: tuple[Removal, ...]
    finetuned: bool = False


def record_of(model: nn.Module) -> Optional[PruneRecord]:
    return getattr(model, RECORD_ATTR, None)


def apply_masks(model: nn.Module, plan: Plan) -> None:
    """Attach the plan's N:M and unstructured masks (`torch.nn.utils.prune`) to an already-shrunk model."""
    modules = dict(model.named_modules())
    for d in plan.layers:
        if d.method == "n:m":
            apply_nm(modules[d.layer], d.n, d.m)
        elif d.method == "unstructured" and d.amount > 0:
            apply_unstructured(modules[d.layer], d.amount)


def refresh(plan: Plan, pruned: nn.Module, example_inputs: Any) -> Plan:
    """A copy of `plan` whose rows and totals are what `pruned` (the model carried out, masks attached)
    really has: channel counts, MACs (N:M layers at their sparse rate) and parameters."""
    modules = dict(pruned.named_modules())
    after = measure(pruned, example_inputs)

    def as_pruned(d: LayerDecision) -> LayerDecision:
        m = modules[d.layer]
        out_c, in_c = (m.out_features, m.in_features) if isinstance(m, nn.Linear) else (m.out_channels, m.in_channels)
        return replace(d, out_channels=(d.out_channels[0], out_c), in_channels=(d.in_channels[0], in_c),
                       macs=(d.macs[0], int(after.layers[d.layer].macs * d.mac_rate)))

    fresh = copy.copy(plan)
    fresh.layers = [as_pruned(d) for d in plan.layers]
    fresh.macs_after = after.other_macs + sum(d.macs[1] for d in fresh.layers)
    fresh.params_after = after.params
    return fresh


def _roll_back(plan: Plan, failures: dict[str, str]) -> Plan:
    """The plan with every layer of a group that broke the model turned to `keep`, naming the error."""
    failed_layers = {
        layer: failures[g.root] for g in plan.groups if g.root in failures for layer in g.layers
    }
    executed = copy.copy(plan)
    executed.layers = [
        replace(d, method="keep", amount=0.0, reason=f"rolled back: pruning broke the model ({failed_layers[d.layer]})")
        if d.layer in failed_layers else d
        for d in plan.layers
    ]
    executed.groups = [g for g in plan.groups if g.root not in failures]
    executed.notes = [*plan.notes, *(f"rolled back the channel group of {root}: pruning it broke the model ({error}); "
                                     "its layers are kept" for root, error in failures.items())]
    return executed


def prune(model: nn.Module, plan: Plan, example_inputs: Any = None, loss_fn: Optional[Callable] = None) -> nn.Module:
    """A pruned copy of `model` as `plan` says; `model` itself is left untouched.

    Channels are removed first (torch-pruning), then N:M and unstructured masks are attached with
    `torch.nn.utils.prune`, so they stay in force while fine-tuning; `finalize` folds them in.
    Masks already on `model` (from an earlier prune) are folded in first.
    A channel group that breaks the model is rolled back: its layers are reported as `keep` with the error
    in `record_of(pruned).plan`, and a warning is issued.
    """
    inputs = plan.example() if example_inputs is None else example_inputs
    check_finite(model, inputs)
    # masks already on the model are folded in first: torch-pruning shrinks plain weights
    work = finalize(model)
    was_training = work.training
    work.eval()
    removals = {g.root: g.remove for g in plan.groups if g.remove > 0}
    work, removed, failures = remove_channels(work, inputs, removals, plan.importance, loss_fn)
    executed = plan
    if failures:
        executed = _roll_back(plan, failures)
        warn("edgeprune: rolled back channel groups that broke the model: "
             + "; ".join(f"{root}: {err}" for root, err in failures.items()))
    modules = dict(work.named_modules())
    for d in executed.by_method("n:m"):
        if reduction_size(modules[d.layer]) % d.m:
            raise ValueError(f"layer {d.layer}: input dimension {reduction_size(modules[d.layer])} is not a multiple of {d.m}")
    apply_masks(work, executed)
    if failures:
        executed = refresh(executed, work, inputs)
    work.train(was_training)
    setattr(work, RECORD_ATTR, PruneRecord(executed, tuple(removed)))
    return work


def finalize(model: nn.Module) -> nn.Module:
    """A copy with every mask folded into its weight: no pruning hooks or parametrizations remain,
    so `torch.export` and the exporters see plain modules with zeros in the weights."""
    work = copy_model(model)
    for module in work.modules():
        for name in [h._tensor_name for h in list(module._forward_pre_hooks.values())
                     if isinstance(h, torch_prune.BasePruningMethod)]:
            torch_prune.remove(module, name)
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations.keys()):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return work
