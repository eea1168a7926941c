"""The policy: from a model, a target profile and a budget to a `Plan`, one explained decision per layer.

Rules (each reason in the plan names the profile key that decided it):

* every family: the first layer (it sees the raw input), the classifier head (its outputs are the
  model's outputs), the recipe's ignore list and layers the example inputs never reach are `keep`.
* jetson: 2:4 on Conv/Linear layers wide enough for the sparse tensor-core kernels
  (`sparsity.nm.min_in_channels` / `min_out_channels`, input dimension a multiple of M); the 2:4 layers
  count at the sparse rate (N/M of their MACs). Only where the budget asks for more than that do the
  other layers lose channels, counts kept multiples of `alignment.channel_multiple`.
* arm-cpu / x86-cpu: structured only, counts multiples of `alignment.channel_multiple` (XNNPACK's
  microkernel tile); unstructured zeros buy no speed there (`sparsity.unstructured_benefit = "none"`).
* mcu: structured (smaller activations in SRAM and weights in flash); int8 alignment. A sparsity budget
  on hardware whose toolchain compresses zeros in flash (`unstructured_benefit = "flash"`, Vela) is met
  with unstructured magnitude sparsity.

The budget is met by one scalar knob searched by bisection: the fraction of channels removed from every
group (scope "per-layer") or a global importance quantile (scope "global"). The plan is then checked by
pruning a copy for real and measuring it; a group that breaks the model is frozen and the search redone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Optional

import torch
from torch import nn

from ._copy import copy_model
from .budget import Budget
from .costs import ModelCost, measure, prunable_layers
from .errors import BudgetError, EdgepruneError, ModelError, RecipeError
from .inputs import InputSpec, call
from .plan import GroupDecision, LayerDecision, Plan
from .pruning import apply_masks, finalize, refresh
from .pruning.nm import reduction_size
from .pruning.structured import IMPORTANCES, ChannelGraph, ChannelGroup, remove_channels
from .pruning.unstructured import global_amounts
from .recipe import LayerOverride, Recipe, load_recipe
from .targets import Target, load_target

SCOPES = ("per-layer", "global")
_SEARCH_STEPS = 30


@dataclass
class _Choice:
    method: str
    reason: str
    amount: Optional[float] = None  # fixed by a recipe; None = decided by the budget search
    n: int = 0
    m: int = 0


def _channels(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features
    return module.out_channels, module.in_channels


def _is_depthwise(module: nn.Module) -> bool:
    return not isinstance(module, nn.Linear) and module.groups > 1 and module.groups == module.in_channels


def _nm_fits(target: Target, module: nn.Module) -> tuple[bool, str]:
    nm = target.sparsity.nm
    out_c, in_c = _channels(module)
    red = reduction_size(module)
    if not isinstance(module, nn.Linear) and module.groups > 1:
        return False, f"grouped convolution (groups={module.groups}): sparse tensor cores need a dense GEMM"
    if red % nm.m:
        return False, f"input dimension {red} is not a multiple of {nm.m} (sparsity.nm.m)"
    if in_c < nm.min_in_channels or out_c < nm.min_out_channels:
        return False, (
            f"{in_c}→{out_c} channels is below the sparse-kernel threshold "
            f"{nm.min_in_channels}→{nm.min_out_channels} (sparsity.nm.min_in/out_channels)"
        )
    return True, (
        f"{nm.n}:{nm.m} on sparse tensor cores: {in_c}→{out_c} channels ≥ "
        f"{nm.min_in_channels}→{nm.min_out_channels} (sparsity.nm), up to {nm.max_gemm_speedup:g}× GEMM rate"
    )


def _family_choice(target: Target, budget: Budget, module: nn.Module, align: int) -> _Choice:
    family = target.family
    if family == "jetson" and target.accelerates("n:m"):
        fits, why = _nm_fits(target, module)
        if fits:
            return _Choice("n:m", why, n=target.sparsity.nm.n, m=target.sparsity.nm.m)
        return _Choice("structured", f"{why}; structured instead, counts multiples of {align} (alignment)")
    if budget.kind == "sparsity" and target.sparsity.unstructured_benefit in ("flash", "speed"):
        benefit = "weights compressed in flash" if target.sparsity.unstructured_benefit == "flash" else "sparse kernels"
        return _Choice("unstructured", f"sparsity budget; unstructured zeros pay off here ({benefit}: sparsity.unstructured_benefit)")
    if family == "mcu":
        return _Choice(
            "structured",
            f"{target.runtime.delegate} int8 has no sparse kernels: structured shrinks SRAM activations and "
            f"flash weights, counts multiples of {align} (alignment)",
        )
    return _Choice(
        "structured",
        f"{target.runtime.delegate} on {target.hardware.simd}: unstructured gives no speed-up "
        f"(sparsity.unstructured_benefit=none); structured, counts multiples of {align} (alignment.channel_multiple)",
    )


def _override_choice(target: Target, name: str, module: nn.Module, o: LayerOverride, source: str) -> _Choice:
    why = f"recipe ({source})"
    if o.method == "n:m":
        n = o.n or (target.sparsity.nm.n if target.sparsity.nm else 2)
        m = o.m or (target.sparsity.nm.m if target.sparsity.nm else 4)
        if n >= m or reduction_size(module) % m:
            raise RecipeError(f"{source}: layer {name}: {n}:{m} needs n < m and an input dimension "
                              f"({reduction_size(module)}) that is a multiple of {m}")
        return _Choice("n:m", why, n=n, m=m)
    return _Choice(o.method, why, amount=o.amount)


class _Estimator:
    """Effective MACs and zeroed weights of a candidate plan, from the dense per-layer costs."""

    def __init__(self, cost: ModelCost, modules: dict[str, nn.Module], prunable: list[str]):
        self.cost = cost
        self.modules = modules
        self.prunable = prunable
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
            if _is_depthwise(m):
                in_f[n] = 1.0  # a depthwise conv's cost follows its channel count once, not twice
        return out_f, in_f

    def evaluate(self, groups, removal, choices: dict[str, _Choice], unstructured: dict[str, float]):
        out_f, in_f = self.fractions(groups, removal)
        macs = self.cost.other_macs
        zeroed = 0.0
        for n, c in self.cost.layers.items():
            f = out_f[n] * in_f[n]
            layer_macs = c.macs * f
            kept_weights = c.weights * f
            choice = choices.get(n)
            if choice and choice.method == "n:m":
                layer_macs *= choice.n / choice.m
                kept_weights *= choice.n / choice.m
            elif choice and choice.method == "unstructured":
                kept_weights *= 1 - unstructured.get(n, 0.0)
            macs += layer_macs
            if n in self.prunable:
                zeroed += c.weights - kept_weights
        return macs, zeroed / self.total_weights


def _keep_count(g: ChannelGroup, fraction: float, align: int, min_channels: int) -> int:
    """Channels left after removing `fraction` of the group, rounded to the target's alignment."""
    if g.head_dim:
        return max(1, round(g.heads * (1 - fraction))) * g.head_dim
    floor = align * math.ceil(max(min_channels, align) / align)
    if g.channels <= floor:
        return g.channels
    kept = align * round(g.channels * (1 - fraction) / align)
    return g.channels if kept >= g.channels else max(kept, floor)


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


def _removal_for(g: ChannelGroup, fraction: float, align: int, min_channels: int) -> int:
    return g.channels - _keep_count(g, fraction, align, min_channels)


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
) -> Plan:
    """Decide, layer by layer, how to prune `model` for `target` within `budget`. `model` is not changed.

    With `sensitivity` (from `edgeprune.sensitivity` for the same target), each channel group's removal
    fraction is bent by its layers' measured drop: sensitive groups keep more, insensitive ones give more,
    and the budget search still meets the budget."""
    target = load_target(target)
    if not isinstance(budget, Budget):
        raise BudgetError(f"budget must be an edgeprune.Budget, got {type(budget).__name__}")
    if importance not in IMPORTANCES:
        raise EdgepruneError(f"unknown importance {importance!r}: expected one of {', '.join(IMPORTANCES)}")
    if scope not in SCOPES:
        raise EdgepruneError(f"unknown scope {scope!r}: expected one of {', '.join(SCOPES)}")
    spec = InputSpec.of(example_inputs)
    work = finalize(model).eval()  # a copy; earlier masks folded in, as prune() will
    try:
        with torch.no_grad():
            call(work, example_inputs)
    except Exception as exc:
        raise ModelError(
            f"{type(model).__name__} does not run on the example inputs "
            f"({', '.join(f'{t.name or i}: {list(t.shape)}' for i, t in enumerate(spec.tensors))}): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    cost = measure(work, example_inputs)
    modules = prunable_layers(work)
    if not cost.order:
        raise ModelError(f"{type(model).__name__} has no Conv or Linear layer that runs on the example inputs")
    recipe_obj, source = load_recipe(recipe)
    ignored, overrides = recipe_obj.resolve(list(modules), source)
    align = target.alignment.multiple(target.precision.default)

    choices: dict[str, _Choice] = {}
    first, head = cost.order[0], cost.order[-1]
    for name, module in modules.items():
        if name in ignored:
            choices[name] = _Choice("keep", f"in the recipe's ignore list ({source})")
        elif name in overrides:
            choices[name] = _override_choice(target, name, module, overrides[name], source)
        elif name not in cost.order:
            choices[name] = _Choice("keep", "never runs on the example inputs")
        elif name == first:
            choices[name] = _Choice("keep", "first layer: sees the raw input, pruning it costs accuracy and saves little")
        elif name == head:
            choices[name] = _Choice("keep", "classifier head: its outputs are the model's outputs")
        else:
            choices[name] = _family_choice(target, budget, module, align)
    rule_kept = {n for n, c in choices.items() if c.method == "keep"}
    prunable = [n for n in modules if n not in rule_kept]
    estimator = _Estimator(cost, modules, prunable)
    if sensitivity is not None:
        _check_sensitivity(sensitivity, target, modules, scope)

    broken: dict[str, str] = {}
    for _attempt in range(4):
        result = _solve(work, example_inputs, target, budget, choices, estimator, align, scope, importance,
                        broken, loss_fn, nm_structured=False, sensitivity=sensitivity)
        if result.by_method("n:m") and not _meets(result, budget, cost.macs):
            # 2:4 alone does not reach the budget: let the 2:4 layers lose channels too
            result = _solve(work, example_inputs, target, budget, choices, estimator, align, scope, importance,
                            broken, loss_fn, nm_structured=True, sensitivity=sensitivity)
        failures, nm_demoted = _verify(model, example_inputs, result, importance, loss_fn, estimator)
        if not failures and not nm_demoted:
            break
        broken.update(failures)
        for n, why in nm_demoted.items():
            choices[n] = _Choice("keep", why)
    else:  # pragma: no cover - each attempt freezes at least one more group, so this needs a pathological model
        raise ModelError(f"could not find a plan that keeps {type(model).__name__} running: {broken}")
    result.target = target.name
    result.inputs = spec
    result.example_inputs = example_inputs
    result.params_before = cost.params
    result.macs_before = cost.macs
    _check_budget(result, budget, target)
    return result


_SENSITIVITY_AMOUNT = 0.5  # where groups are compared: the drop at half their channels removed
_BEND_RANGE = (0.25, 4.0)


def _check_sensitivity(sens, target: Target, modules: dict[str, nn.Module], scope: str) -> None:
    from .sensitivity import Sensitivity

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


def _sensitivity_exponents(sens, free: list[ChannelGroup]) -> dict[str, float]:
    """Per group, k in 1 - (1 - x)^k: the mean measured drop over the group's drop, clipped.
    k < 1 for the more sensitive groups (they keep more channels), > 1 for the less sensitive."""
    drops = {g.root: _group_drop(sens, g, _SENSITIVITY_AMOUNT) for g in free}
    known = [max(d, 0.0) for d in drops.values() if d is not None]
    mean = sum(known) / len(known) if known else 0.0
    eps = 0.01 * (abs(sens.baseline) or 1.0)
    lo, hi = _BEND_RANGE
    return {root: 1.0 if d is None else min(hi, max(lo, (mean + eps) / (max(d, 0.0) + eps)))
            for root, d in drops.items()}


def _explain_sensitivity(result: Plan, sens, groups: list[ChannelGroup], bend: dict[str, float]) -> None:
    for d in list(result.layers):
        if d.method != "structured" or d.group is None or d.layer not in sens.layers:
            continue
        g = groups[d.group]
        drop = sens.row(d.layer).drop_at(d.amount)
        at = f"{sens.points(-drop)} at {d.amount:.0%}"
        k = bend.get(g.root, 1.0)
        note = (f"sensitive: {at} → pruned less" if k < 1 else
                f"insensitive ({at}) → pruned more" if k > 1 else f"average sensitivity ({at})")
        result.replace_layer(replace(d, reason=f"{d.reason}; {note}"))


def _meets(result: Plan, budget: Budget, dense_macs: int) -> bool:
    if budget.kind == "macs_ratio":
        return result.macs_after <= budget.macs_ratio * dense_macs
    return result.sparsity >= budget.sparsity


def _solve(work, example_inputs, target, budget, choices, estimator, align, scope, importance, broken, loss_fn,
           nm_structured, sensitivity=None):
    shrinkable = ("structured", "n:m") if nm_structured else ("structured",)
    structured = [n for n, c in choices.items() if c.method in shrinkable]
    frozen = [n for n in choices if n not in structured]
    graph = ChannelGraph(copy_model(work), example_inputs)
    groups = [g for g in graph.groups(frozen=frozen) if g.root not in broken]
    in_group = {n for g in groups for n in g.out_layers}
    min_channels = target.alignment.min_channels

    fixed: dict[str, int] = {}
    free: list[ChannelGroup] = []
    for g in groups:
        amounts = {choices[n].amount for n in g.out_layers if choices[n].amount is not None}
        if amounts:
            fixed[g.root] = _removal_for(g, max(amounts), align, min_channels)
        else:
            free.append(g)

    unstructured = {n: c.amount for n, c in choices.items() if c.method == "unstructured" and c.amount is not None}
    searched_u = [n for n, c in choices.items() if c.method == "unstructured" and c.amount is None]
    if searched_u and budget.kind == "sparsity":
        unstructured.update(global_amounts({n: estimator.modules[n] for n in searched_u}, budget.sparsity))

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
                out[g.root] = _removal_for(g, frac, align, min_channels)
            return out
    elif sensitivity is not None:
        bend = _sensitivity_exponents(sensitivity, free)

        def removal_at(x: float) -> dict[str, int]:
            # 1 - (1 - x)^k: 0 at x=0 and 1 at x=1 for every group, so the search range is unchanged;
            # k > 1 (insensitive) removes more at a given x, k < 1 (sensitive) less
            return {g.root: _removal_for(g, 1 - (1 - x) ** bend[g.root], align, min_channels) for g in free}
    else:

        def removal_at(x: float) -> dict[str, int]:
            return {g.root: _removal_for(g, x, align, min_channels) for g in free}

    def within(removal: dict[str, int]) -> bool:
        macs, sparsity = estimator.evaluate(groups, removal, choices, unstructured)
        if budget.kind == "macs_ratio":
            return macs <= budget.macs_ratio * estimator.cost.macs
        return sparsity >= budget.sparsity

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
                       importance, scope, broken)
    if sensitivity is not None:
        _explain_sensitivity(result, sensitivity, groups, bend)
    return result


def _assemble(target, budget, choices, estimator, groups, in_group, removal, unstructured, align, importance,
              scope, broken) -> Plan:
    out_f, in_f = estimator.fractions(groups, removal)
    group_of = {n: i for i, g in enumerate(groups) for n in g.out_layers}
    rows = []
    for name, module in estimator.modules.items():
        c = choices[name]
        out_c, in_c = _channels(module)
        # a depthwise conv's inputs shrink with its outputs (in_f is 1 there only to count its MACs once)
        kept_out, kept_in = round(out_c * out_f[name]), round(in_c * (out_f if _is_depthwise(module) else in_f)[name])
        dense = estimator.cost.layers[name].macs
        macs_after = dense * out_f[name] * in_f[name]
        method, amount, reason, n, m = c.method, 0.0, c.reason, 0, 0
        group = None
        if c.method == "structured":
            gi = group_of.get(name)
            if gi is None:
                root = next((r for r in broken if r == name), None)
                method = "keep"
                reason = (f"rolled back: pruning broke the model ({broken[root]})" if root else
                          "its output channels are tied to a kept layer or to the model's output")
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
            macs_after *= c.n / c.m
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
            macs=(dense, int(macs_after)),
        ))
    decisions = [
        GroupDecision(i, g.root, g.channels, removal.get(g.root, 0), g.out_layers, g.heads)
        for i, g in enumerate(groups) if removal.get(g.root, 0) > 0
    ]
    macs, sparsity = estimator.evaluate(groups, removal, choices, unstructured)
    return Plan(
        target=target.name, family=target.family, budget=budget, importance=importance, scope=scope,
        alignment=align, layers=rows, groups=decisions, macs_after=int(macs), sparsity=sparsity,
    )


def _verify(model, example_inputs, result: Plan, importance, loss_fn,
            estimator: _Estimator) -> tuple[dict[str, str], dict[str, str]]:
    """Prune a copy for real: groups that break the model, and N:M layers whose inputs became too narrow.

    On success the plan's MACs, parameters and sparsity become those measured on the pruned copy."""
    removals = {g.root: g.remove for g in result.groups}
    pruned, _, failures = remove_channels(finalize(model).eval(), example_inputs, removals, importance, loss_fn)
    modules = dict(pruned.named_modules())
    demoted = {}
    for d in result.by_method("n:m"):
        if reduction_size(modules[d.layer]) % d.m:
            demoted[d.layer] = (f"input dimension {reduction_size(modules[d.layer])} after channel pruning "
                                f"is not a multiple of {d.m}")
    if failures or demoted:
        return failures, demoted
    apply_masks(pruned, result)
    measured = refresh(result, pruned, example_inputs)
    result.layers, result.macs_after, result.params_after = measured.layers, measured.macs_after, measured.params_after
    # zeroed or removed, over the dense weights of the layers the rules let be pruned
    after = measure(pruned, example_inputs)
    kept = sum(after.layers[n].nonzero_weights for n in estimator.prunable)
    result.sparsity = 1 - kept / estimator.total_weights if estimator.prunable else 0.0
    return {}, {}


def _check_budget(result: Plan, budget: Budget, target: Target) -> None:
    if budget.kind == "macs_ratio" and result.macs_ratio > budget.macs_ratio + 1e-9:
        raise BudgetError(
            f"{target.name}: Budget(macs_ratio={budget.macs_ratio:g}) cannot be met under this target's rules: "
            f"the most the policy can remove keeps {result.macs_ratio:.3f} of the MACs "
            f"(alignment {result.alignment}, min_channels {target.alignment.min_channels}, kept layers as listed). "
            "Loosen the budget or override layers in a recipe."
        )
    if budget.kind == "sparsity" and result.sparsity + 1e-9 < budget.sparsity:
        raise BudgetError(
            f"{target.name}: Budget(sparsity={budget.sparsity:g}) cannot be met under this target's rules: "
            f"at most {result.sparsity:.3f} of the prunable weights can be zeroed or removed. "
            "Loosen the budget or override layers in a recipe."
        )
