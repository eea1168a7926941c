"""The policy: from a model, a target profile and a budget to a `Plan`, one explained decision per layer.

Rules (edgeprune.rules; each reason in the plan names the profile key that decided it):

* every family: the layers that see the model's inputs, the classifier head (its outputs are the
  model's outputs), the recipe's ignore list and layers the example inputs never reach are `keep`.
* jetson: 2:4 on Conv/Linear layers wide enough for the sparse tensor-core kernels
  (`sparsity.nm.min_in_channels` / `min_out_channels`, input dimension a multiple of M), checked again on
  the shapes left after channel pruning; the 2:4 layers count at the sparse rate (N/M of their MACs), N:M
  that the target does not accelerate counts in full. Only where the budget asks for more than that do the
  other layers lose channels, counts kept multiples of `alignment.channel_multiple`.
* arm-cpu / x86-cpu: structured only, counts multiples of `alignment.channel_multiple` (XNNPACK's
  microkernel tile); unstructured zeros buy no speed there (`sparsity.unstructured_benefit = "none"`).
* mcu: structured (smaller activations in SRAM and weights in flash); int8 alignment. A sparsity budget
  on hardware whose toolchain compresses zeros in flash (`unstructured_benefit = "flash"`, Vela) is met
  with unstructured magnitude sparsity.

The budget is met by one scalar knob searched by bisection: the fraction of channels removed from every
group (scope "per-layer") or a global importance quantile (scope "global"). Channels are then given back,
one aligned unit (or attention head) at a time, while the budget holds, so a plan lands just inside its
budget, not anywhere inside it: no pruned group could keep one more unit and still meet it. How far inside
depends on how coarse one unit is against the model's widths: within 0.05 of the budget on the zoo's tiny
models at alignments of 4-8 channels, more where one unit is a large share of a layer (alignment 32 on
64-channel layers). Only Jetson's 2:4, which the rules give whatever the budget, can meet a loose budget
by more. The plan is then checked by pruning a copy for real and measuring it; a group that breaks the
model is frozen and the search redone.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Optional

import torch
from torch import nn

from ._copy import copy_model
from .budget import Budget, Estimate
from .costs import BYTES, ModelCost, measure, prunable_layers, weight_bytes
from .errors import BudgetError, EdgepruneError, ModelError
from .finite import check_finite, check_finite_outputs
from .inputs import InputSpec, call
from .latency import LatencyModel
from .plan import GroupDecision, LayerDecision, Plan
from .pruning import apply_masks, finalize, refresh
from .pruning.nm import reduction_size
from .pruning.structured import IMPORTANCES, ChannelGraph, ChannelGroup, remove_channels
from .pruning.unstructured import global_amounts
from .recipe import Recipe, load_recipe
from .rules import (LayerChoice, apply_recipe, channels, is_depthwise, nm_fits, removal_for, rule_choices,
                    structured_instead)
from .sensitivity import Sensitivity
from .targets import Target, load_target
from ._warn import warn

SCOPES = ("per-layer", "global")
_SEARCH_STEPS = 30


class _Estimator:
    """What a candidate plan costs (effective MACs, zeroed weights, bytes of weights and activations at the
    target's precision), from the dense per-layer costs."""

    def __init__(self, cost: ModelCost, modules: dict[str, nn.Module], prunable: list[str], precision: str,
                 dense_weight_bytes: int, latency: Optional[LatencyModel] = None):
        self.cost = cost
        self.latency = latency
        self.dense_latency_ms = latency.dense_ms if latency else None
        self.modules = modules
        self.prunable = prunable
        self.precision = precision
        self.dense_weight_bytes = dense_weight_bytes
        self.total_weights = sum(cost.layers[n].weights for n in prunable) or 1

    def fractions(self, groups: list[ChannelGroup], removal: dict[str, int]) -> tuple[dict, dict]:
        out_f = {n: 1.0 for n in self.cost.layers}
        in_f = {n: 1.0 for n in self.cost.layers}
        in_removed: dict[str, int] = {}
        in_total: dict[str, int] = {}
        for g in groups:
            r = removal.get(g.root, 0)
            for n in g.out_layers:
                out_f[n] = (g.channels - r) / g.channels
            for n in g.in_layers:
                in_removed[n] = in_removed.get(n, 0) + r
                in_total[n] = in_total.get(n, 0) + g.channels
        for n, total in in_total.items():
            # a layer fed by a concat takes its inputs from several groups, in proportion to their widths
            in_f[n] = 1 - in_removed[n] / total
        for n, m in self.modules.items():
            if is_depthwise(m):
                in_f[n] = 1.0  # a depthwise conv's cost follows its channel count once, not twice
        return out_f, in_f

    def evaluate(self, groups, removal, choices: dict[str, LayerChoice], unstructured: dict[str, float]) -> Estimate:
        out_f, in_f = self.fractions(groups, removal)
        macs = self.cost.other_macs
        zeroed = 0.0
        removed_weights = 0.0
        activations = 0.0
        for n, c in self.cost.layers.items():
            f = out_f[n] * in_f[n]
            layer_macs = c.macs * f
            kept_weights = c.weights * f
            removed_weights += c.weights - kept_weights
            # a layer's input and output live in memory at once: the largest pair bounds the activation memory
            activations = max(activations, c.in_elements * in_f[n] + c.out_elements * out_f[n])
            choice = choices.get(n)
            if choice and choice.method == "n:m":
                layer_macs *= choice.mac_rate  # zeros the hardware skips; all of them where it has no sparse kernel
                kept_weights *= choice.n / choice.m
            elif choice and choice.method == "unstructured":
                kept_weights *= 1 - unstructured.get(n, 0.0)
            macs += layer_macs
            if n in self.prunable:
                zeroed += c.weights - kept_weights
        for g in groups:
            if g.attention:  # its score and context matmuls run once per head kept
                macs -= self.cost.macs_outside_layers(g.attention) * removal.get(g.root, 0) / g.channels
        width = BYTES[self.precision]
        stored = self.dense_weight_bytes - removed_weights * width
        return Estimate(macs_ratio=macs / self.cost.macs if self.cost.macs else 1.0,
                        sparsity=zeroed / self.total_weights, flash_bytes=int(stored),
                        sram_bytes=int(activations * width), ram_bytes=int(stored + activations * width),
                        latency_ms=self.latency_at(out_f, in_f), dense_latency_ms=self.dense_latency_ms)

    def latency_at(self, out_f: dict[str, float], in_f: dict[str, float]) -> Optional[float]:
        if self.latency is None:
            return None
        counts = {}
        for n in self.latency.layers:
            out_c, in_c = channels(self.modules[n])
            kept_out = round(out_c * out_f[n])
            counts[n] = (kept_out if is_depthwise(self.modules[n]) else round(in_c * in_f[n]), kept_out)
        return self.latency.predict(counts)

def _refill(removal: dict[str, int], free: list[ChannelGroup], align: int, within: Callable,
            priority: Optional[dict[str, float]] = None) -> dict[str, int]:
    """Give channels back, one aligned unit at a time, while the budget still holds.

    The knob moves every group at once, and alignment makes its steps coarse; this lands the plan close
    to the budget instead of well under it. The most-pruned group gets its channels back first, so the
    per-layer fractions stay near-uniform.
    """
    removal = dict(removal)
    while True:
        candidates = sorted((g for g in free if removal.get(g.root, 0) > 0),
                            key=(lambda g: removal[g.root] / g.channels) if priority is None else
                            (lambda g: removal[g.root] / g.channels / priority[g.root]), reverse=True)
        for g in candidates:
            trial = dict(removal)
            trial[g.root] = max(0, removal[g.root] - (g.head_dim or align))
            if within(trial):
                removal = trial
                break
        else:
            return removal


def plan(
    model: nn.Module,
    example_inputs: Any,
    target: "Target | str",
    budget: Budget,
    *,
    recipe: "Recipe | str | dict | None" = None,
    importance: str = "l2",
    scope: str = "per-layer",
    loss_fn: Optional[Callable] = None,
    sensitivity: "Any | None" = None,
    latency: Optional[LatencyModel] = None,
) -> Plan:
    """Decide, layer by layer, how to prune `model` for `target` within `budget`. `model` is not changed.

    With `sensitivity` (from `edgeprune.sensitivity` for the same target), each channel group's removal
    fraction is bent by its layers' measured drop: sensitive groups keep more, insensitive ones give more,
    and the budget search still meets the budget.

    With `latency` (a `LatencyModel` measured on the device for this model, see `edgeprune.profiling`), every
    candidate's p50 is predicted from it, so a latency budget can be searched; without it such a budget is
    an error."""
    target = load_target(target)
    if not isinstance(budget, Budget):
        raise BudgetError(f"budget must be an edgeprune.Budget, got {type(budget).__name__}")
    if budget.needs_device and latency is None:
        budget.quantity(Estimate())  # says what the budget needs that the policy alone cannot tell
    if importance not in IMPORTANCES:
        raise EdgepruneError(f"unknown importance {importance!r}: expected one of {', '.join(IMPORTANCES)}")
    if scope not in SCOPES:
        raise EdgepruneError(f"unknown scope {scope!r}: expected one of {', '.join(SCOPES)}")
    spec = InputSpec.of(example_inputs)
    check_finite(model, example_inputs)
    work = finalize(model).eval()  # a copy; earlier masks folded in, as prune() will
    try:
        with torch.no_grad():
            output = call(work, example_inputs)
    except Exception as exc:
        raise ModelError(
            f"{type(model).__name__} does not run on the example inputs "
            f"({', '.join(f'{t.name or i}: {list(t.shape)}' for i, t in enumerate(spec.tensors))}): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    check_finite_outputs(model, output)
    cost = measure(work, example_inputs)
    modules = prunable_layers(work)
    if not cost.order:
        raise ModelError(f"{type(model).__name__} has no Conv or Linear layer that runs on the example inputs")
    recipe_obj, source = load_recipe(recipe)
    align = target.alignment.multiple(target.precision.default)
    choices = rule_choices(work, example_inputs, target, budget, cost, modules, align)
    choices, notes = apply_recipe(choices, modules, target, recipe_obj, source)
    rule_kept = {n for n, c in choices.items() if c.method == "keep"}
    prunable = [n for n in modules if n not in rule_kept]
    estimator = _Estimator(cost, modules, prunable, target.precision.default,
                           weight_bytes(work, target.precision.default), latency)
    if latency is not None:
        _check_latency(latency, modules, cost)
    if sensitivity is not None:
        _check_sensitivity(sensitivity, target, modules, scope)

    broken: dict[str, str] = {}
    # each failed attempt freezes a broken group or re-decides an N:M layer, so this bounds the attempts
    for _attempt in range(len(modules) + 1):
        result = _solve(work, example_inputs, target, budget, choices, estimator, align, scope, importance,
                        broken, loss_fn, nm_structured=False, sensitivity=sensitivity)
        if result.by_method("n:m") and not budget.meets(result.estimate()):
            # 2:4 alone does not reach the budget: let the 2:4 layers lose channels too
            result = _solve(work, example_inputs, target, budget, choices, estimator, align, scope, importance,
                            broken, loss_fn, nm_structured=True, sensitivity=sensitivity)
        failures, redecided = _verify(model, example_inputs, result, importance, loss_fn, estimator, target,
                                      choices)
        if not failures and not redecided:
            break
        broken.update(failures)
        choices.update(redecided)
    else:  # pragma: no cover - each attempt freezes at least one more group, so this needs a pathological model
        raise ModelError(f"could not find a plan that keeps {type(model).__name__} running: {broken}")
    result.target = target.name
    result.inputs = spec
    result.example_inputs = example_inputs
    result.params_before = cost.params
    result.macs_before = cost.macs
    result.notes = notes + [f"rolled back the channel group of {root}: pruning it broke the model ({error}); "
                            "its layers are kept" for root, error in broken.items()]
    flash = _flash_shortfall(result, target)
    if flash:
        result.notes.append(flash)
    for note in result.notes:
        warn(f"edgeprune plan for {target.name}: {note}")
    _check_budget(result, budget, target)
    return result


_SENSITIVITY_AMOUNT = 0.5  # where groups are compared: the drop at half their channels removed
_BEND_RANGE = (0.25, 4.0)


def _check_sensitivity(sens, target: Target, modules: dict[str, nn.Module], scope: str) -> None:
    if not isinstance(sens, Sensitivity):
        raise EdgepruneError(f"sensitivity must be an edgeprune Sensitivity, got {type(sens).__name__}")
    if sens.target != target.name:
        raise EdgepruneError(f"the sensitivity was measured for target {sens.target!r}, but this plan is for "
                             f"{target.name!r}: measure it again with target={target.name!r}")
    unknown = [r.layer for r in sens.rows if r.layer not in modules]
    if unknown:
        raise ModelError(f"the sensitivity names layer {unknown[0]!r}, which the model does not have: "
                         "was it measured on another model?")
    if scope != "per-layer":
        raise EdgepruneError(f"sensitivity applies to scope 'per-layer' only, not {scope!r}")


def _group_drop(sens, g: ChannelGroup, amount: float) -> Optional[float]:
    drops = [sens.row(n).drop_at(amount) for n in g.out_layers if n in sens.layers]
    return max(drops) if drops else None


def _mean_drop(sens, free: list[ChannelGroup]) -> float:
    """The mean measured drop of the groups the search moves, at the comparison point."""
    known = [max(d, 0.0) for d in (_group_drop(sens, g, _SENSITIVITY_AMOUNT) for g in free) if d is not None]
    return sum(known) / len(known) if known else 0.0


def _sensitivity_exponents(sens, free: list[ChannelGroup]) -> dict[str, float]:
    """Per group, k in 1 - (1 - x)^k: the mean measured drop over the group's drop, clipped.
    k < 1 for the more sensitive groups (they keep more channels), > 1 for the less sensitive."""
    drops = {g.root: _group_drop(sens, g, _SENSITIVITY_AMOUNT) for g in free}
    mean = _mean_drop(sens, free)
    eps = 0.01 * (abs(sens.baseline) or 1.0)
    lo, hi = _BEND_RANGE
    return {root: 1.0 if d is None else min(hi, max(lo, (mean + eps) / (max(d, 0.0) + eps)))
            for root, d in drops.items()}


def _explain_sensitivity(result: Plan, sens, groups: list[ChannelGroup], free: list[ChannelGroup],
                         bend: dict[str, float]) -> None:
    """One wording for every group: what was measured (the drop at the comparison point, against the mean
    of the groups) and what was decided from it. The drop at the final amount is not it: a layer pruned
    more because it is insensitive would show a large drop there and read as sensitive."""
    mean = _mean_drop(sens, free)
    for d in list(result.layers):
        if d.method != "structured" or d.group is None or d.layer not in sens.layers:
            continue
        g = groups[d.group]
        drop = _group_drop(sens, g, _SENSITIVITY_AMOUNT)
        k = bend.get(g.root, 1.0)
        decided = ("more sensitive than average → pruned less" if k < 1 else
                   "less sensitive than average → pruned more" if k > 1 else "average → pruned as the budget gives")
        measured = (f"sensitivity measured {sens.points(-drop)} at {_SENSITIVITY_AMOUNT:.0%} of its channels removed "
                    f"(average {sens.points(-mean)})")
        result.replace_layer(replace(d, reason=f"{d.reason}; {measured}: {decided}"))


def _solve(work, example_inputs, target, budget, choices, estimator, align, scope, importance, broken, loss_fn,
           nm_structured, sensitivity=None):
    shrinkable = ("structured", "n:m") if nm_structured else ("structured",)
    structured = [n for n, c in choices.items() if c.method in shrinkable]
    frozen = [n for n in choices if n not in structured]
    graph = ChannelGraph(copy_model(work), example_inputs)
    offered = graph.groups(frozen=frozen)
    groups = [g for g in offered if g.root not in broken]
    rolled_back = {n: broken[g.root] for g in offered if g.root in broken for n in g.out_layers}
    in_group = {n for g in groups for n in g.out_layers}
    min_channels = target.alignment.min_channels

    fixed: dict[str, int] = {}
    free: list[ChannelGroup] = []
    for g in groups:
        amounts = {choices[n].amount for n in g.out_layers if choices[n].amount is not None}
        if amounts:
            fixed[g.root] = removal_for(g, max(amounts), align, min_channels)
        else:
            free.append(g)

    unstructured = {n: c.amount for n, c in choices.items() if c.method == "unstructured" and c.amount is not None}
    searched_u = [n for n, c in choices.items() if c.method == "unstructured" and c.amount is None]
    if searched_u and budget.counts_zeros:
        unstructured.update(global_amounts({n: estimator.modules[n] for n in searched_u}, budget.value))

    if scope == "global" and free:
        if importance == "taylor":
            from .pruning.structured import prepare_taylor

            prepare_taylor(graph.model, example_inputs, loss_fn)
        scores = {g.root: graph.scores(g, importance) for g in free}
        pooled = torch.cat(list(scores.values())).sort().values

        def removal_at(x: float) -> dict[str, int]:
            if x <= 0:
                return {}
            threshold = pooled[min(len(pooled) - 1, int(x * len(pooled)))]
            out = {}
            for g in free:
                frac = float((scores[g.root] < threshold).float().mean()) if x < 1 else 1.0
                out[g.root] = removal_for(g, frac, align, min_channels)
            return out
    elif sensitivity is not None:
        bend = _sensitivity_exponents(sensitivity, free)

        def removal_at(x: float) -> dict[str, int]:
            # 1 - (1 - x)^k: 0 at x=0 and 1 at x=1 for every group, so the search range is unchanged;
            # k > 1 (insensitive) removes more at a given x, k < 1 (sensitive) less
            return {g.root: removal_for(g, 1 - (1 - x) ** bend[g.root], align, min_channels) for g in free}
    else:

        def removal_at(x: float) -> dict[str, int]:
            return {g.root: removal_for(g, x, align, min_channels) for g in free}

    def within(removal: dict[str, int]) -> bool:
        return budget.meets(estimator.evaluate(groups, removal, choices, unstructured))

    def meets(x: float) -> bool:
        return within({**removal_at(x), **fixed})

    if meets(0.0):
        x = 0.0
    elif not free or not meets(1.0):
        x = 1.0 if free else 0.0  # the best the rules allow; _check_budget says by how much it falls short
    else:
        lo, hi = 0.0, 1.0
        for _ in range(_SEARCH_STEPS):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if meets(mid) else (mid, hi)
        x = hi
    removal = {**removal_at(x), **fixed}
    if x > 0:
        if sensitivity is not None and scope != "global":
            removal = _refill(removal, free, align, within, priority=bend)
        else:
            removal = _refill(removal, free, align, within)
    result = _assemble(target, budget, choices, estimator, groups, in_group, removal, unstructured, align,
                       importance, scope, rolled_back)
    if sensitivity is not None:
        _explain_sensitivity(result, sensitivity, groups, free, bend)
    return result


def _assemble(target, budget, choices, estimator, groups, in_group, removal, unstructured, align, importance,
              scope, rolled_back: dict[str, str]) -> Plan:
    out_f, in_f = estimator.fractions(groups, removal)
    group_of = {n: i for i, g in enumerate(groups) for n in g.out_layers}
    rows = []
    for name, module in estimator.modules.items():
        c = choices[name]
        out_c, in_c = channels(module)
        # a depthwise conv's inputs shrink with its outputs (in_f is 1 there only to count its MACs once)
        kept_out, kept_in = round(out_c * out_f[name]), round(in_c * (out_f if is_depthwise(module) else in_f)[name])
        dense = estimator.cost.layers[name].macs
        macs_after = dense * out_f[name] * in_f[name]
        method, amount, reason, n, m = c.method, 0.0, c.reason, 0, 0
        group = None
        if c.method == "structured":
            gi = group_of.get(name)
            if gi is None:
                method = "keep"
                reason = (f"rolled back: pruning broke the model ({rolled_back[name]})" if name in rolled_back else
                          f"its output channels are tied to a kept layer or to the model's output ({c.reason})")
            elif removal.get(groups[gi].root, 0) == 0:
                method = "keep"
                reason = (f"budget met without it ({c.reason})" if not c.amount else
                          f"recipe amount rounds to 0 channels at alignment {align}")
            else:
                group = gi
                amount = removal[groups[gi].root] / groups[gi].channels
                if groups[gi].head_dim:
                    reason = f"{c.reason}; whole attention heads ({groups[gi].head_dim} channels each)"
        elif c.method == "n:m":
            amount, n, m = 1 - c.n / c.m, c.n, c.m
            macs_after *= c.mac_rate
            gi = group_of.get(name)
            if gi is not None and removal.get(groups[gi].root, 0):
                group = gi
                reason = (f"{c.reason}; and {out_c}→{kept_out} channels, multiples of {align}: "
                          "the budget asks for more than 2:4 gives")
        elif c.method == "unstructured":
            amount = unstructured.get(name, 0.0)
        rows.append(LayerDecision(
            layer=name, op=type(module).__name__, method=method, amount=amount, reason=reason,
            out_channels=(out_c, kept_out), in_channels=(in_c, kept_in), group=group, n=n, m=m,
            macs=(dense, int(macs_after)), dense_rate=c.method == "n:m" and c.dense_rate,
        ))
    decisions = [
        GroupDecision(i, g.root, g.channels, removal.get(g.root, 0), g.out_layers, g.heads)
        for i, g in enumerate(groups) if removal.get(g.root, 0) > 0
    ]
    estimate = estimator.evaluate(groups, removal, choices, unstructured)
    return Plan(
        target=target.name, family=target.family, budget=budget, importance=importance, scope=scope,
        alignment=align, layers=rows, groups=decisions, macs_before=estimator.cost.macs,
        macs_after=int(estimate.macs_ratio * estimator.cost.macs), sparsity=estimate.sparsity,
        weight_bytes=estimate.flash_bytes or 0, activation_bytes=estimate.sram_bytes or 0,
        latency_ms=estimate.latency_ms, dense_latency_ms=estimate.dense_latency_ms,
    )


def _verify(model, example_inputs, result: Plan, importance, loss_fn, estimator: _Estimator, target: Target,
            choices: dict[str, LayerChoice]) -> tuple[dict[str, str], dict[str, LayerChoice]]:
    """Prune a copy for real: the groups that break the model, and the N:M layers to decide again because
    channel pruning changed their shapes (below the sparse-kernel thresholds, or an input dimension that
    is no longer a multiple of M).

    On success the plan's MACs, parameters and sparsity become those measured on the pruned copy, and each
    N:M reason gives the layer's final shape."""
    removals = {g.root: g.remove for g in result.groups}
    pruned, _, failures = remove_channels(finalize(model).eval(), example_inputs, removals, importance, loss_fn)
    modules = dict(pruned.named_modules())
    redecided = {}
    final_reasons = {}
    for d in result.by_method("n:m"):
        module, c = modules[d.layer], choices[d.layer]
        shape = f"after channel pruning its input dimension is {reduction_size(module)}"
        if c.forced:  # the recipe's choice stands unless the pattern no longer fits at all
            if reduction_size(module) % d.m:
                redecided[d.layer] = LayerChoice("keep", f"{c.reason}; but {shape}, not a multiple of {d.m}: kept")
            continue
        fits, why = nm_fits(target, module)
        if not fits:
            redecided[d.layer] = LayerChoice("structured", structured_instead(
                f"not 2:4 after all: after channel pruning {why}", result.alignment))
        else:
            final_reasons[d.layer] = why + d.reason[len(c.reason):]  # the dense shapes' reason, re-said
    if failures or redecided:
        return failures, redecided
    apply_masks(pruned, result)
    measured = refresh(result, pruned, example_inputs)
    result.layers = [replace(d, reason=final_reasons.get(d.layer, d.reason)) for d in measured.layers]
    result.macs_after, result.params_after = measured.macs_after, measured.params_after
    # zeroed or removed, over the dense weights of the layers the rules let be pruned
    after = measure(pruned, example_inputs)
    kept = sum(after.layers[n].nonzero_weights for n in estimator.prunable)
    result.sparsity = 1 - kept / estimator.total_weights if estimator.prunable else 0.0
    result.weight_bytes = weight_bytes(pruned, target.precision.default)
    return {}, {}


def _check_latency(latency: LatencyModel, modules: dict[str, nn.Module], cost: ModelCost) -> None:
    if not isinstance(latency, LatencyModel):
        raise EdgepruneError(f"latency must be an edgeprune LatencyModel, got {type(latency).__name__}")
    unknown = [n for n in latency.layers if n not in modules]
    if unknown:
        raise ModelError(f"the latency model names layer {unknown[0]!r}, which the model does not have: was it "
                         "profiled for another model?")
    for name, config in latency.layers.items():
        out_c, in_c = channels(modules[name])
        if (config.in_channels, config.out_channels) != (in_c, out_c):
            raise ModelError(f"the latency model was profiled with layer {name!r} at {config.in_channels}→"
                             f"{config.out_channels} channels, the model has {in_c}→{out_c}: profile it again")


def _flash_shortfall(result: Plan, target: Target) -> str:
    """A note when the planned model's weights alone exceed the target's flash ('' when they fit or
    the profile sets no flash budget)."""
    flash = target.memory.flash_bytes
    if not flash or result.weight_bytes <= flash:
        return ""
    kib = 1024
    return (f"does not fit flash: the planned model's {target.precision.default} weights need about "
            f"{result.weight_bytes / kib:.0f} KiB, {target.name} has {flash / kib:.0f} KiB of flash "
            f"(memory.flash_bytes), {(result.weight_bytes - flash) / kib:.0f} KiB over before the firmware's own "
            "code; prune harder (a lower budget) or choose a target with more flash")


def _check_budget(result: Plan, budget: Budget, target: Target) -> None:
    estimate = result.estimate()
    if not budget.meets(estimate):
        raise BudgetError(
            f"{target.name}: Budget({budget}) cannot be met under this target's rules: the most the policy can "
            f"remove leaves {budget.quantity(estimate):.3f} ({budget.meaning}), {budget.miss(estimate):.1%} "
            f"{'over' if budget.upper else 'short'} (alignment {result.alignment}, min_channels "
            f"{target.alignment.min_channels}, kept layers as listed). Loosen the budget or override layers in a recipe."
        )
