"""The target's per-layer rules, and a recipe's overrides of them: which method each Conv/Linear layer gets
before the budget search, and the reason, naming the profile key or recipe entry that decided it.

* every family keeps the layers that see the model's inputs (not a transformer's first projection, which
  sees embeddings), the classifier head and layers the example inputs never reach;
* jetson: 2:4 on layers wide enough for the sparse tensor-core kernels (`sparsity.nm`), structured elsewhere;
* a sparsity budget on hardware where unstructured zeros pay off (`sparsity.unstructured_benefit`):
  unstructured; otherwise structured, counts multiples of the alignment.

A recipe's explicit layer name overrides any of these, saying so; a glob pattern applies only to the
layers the rules leave free to prune, and only where its method fits the layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Optional

from torch import nn

from ._copy import copy_model
from .budget import Budget
from .costs import ModelCost
from .errors import RecipeError
from .pruning.nm import reduction_size
from .pruning.structured import ChannelGraph, ChannelGroup
from .recipe import LayerOverride, Recipe
from .targets import Target


@dataclass(frozen=True)
class LayerChoice:
    method: str  # structured | n:m | unstructured | keep
    reason: str
    amount: Optional[float] = None  # fixed by a recipe; None = decided by the budget search
    n: int = 0
    m: int = 0
    kept_by: str = ""  # the rule that keeps this layer whatever the budget ("first layer", ...)
    forced: bool = False  # a recipe asked for this method: the target's N:M thresholds do not demote it
    dense_rate: bool = False  # n:m that the target has no sparse kernel for: its MACs count in full

    @property
    def mac_rate(self) -> float:
        """The fraction of a layer's MACs the hardware runs: N/M on sparse kernels, else all of them."""
        return self.n / self.m if self.method == "n:m" and not self.dense_rate else 1.0


def channels(module: nn.Module) -> tuple[int, int]:
    """(output channels, input channels) of a Conv or Linear layer."""
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features
    return module.out_channels, module.in_channels


def is_depthwise(module: nn.Module) -> bool:
    return not isinstance(module, nn.Linear) and module.groups > 1 and module.groups == module.in_channels


def nm_fits(target: Target, module: nn.Module) -> tuple[bool, str]:
    """Whether the target's sparse kernels take this layer at its current shape, and why, with the shape."""
    nm = target.sparsity.nm
    out_c, in_c = channels(module)
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


def structured_instead(why: str, align: int) -> str:
    return f"{why}; structured instead, counts multiples of {align} (alignment)"


class FamilyRules:
    """How one target family prunes a layer that no other rule keeps. One subclass per family, looked up
    by the profile's `family` (`rules_for`): a new family is one more subclass, not another branch."""

    families: ClassVar[tuple[str, ...]] = ()
    _registry: ClassVar[dict[str, "FamilyRules"]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for family in cls.families:
            FamilyRules._registry[family] = cls()

    def choice(self, target: Target, budget: Budget, module: nn.Module, align: int) -> LayerChoice:
        zeros = _zeros_pay_off(target, budget)
        return zeros or self.dense_choice(target, module, align)

    def dense_choice(self, target: Target, module: nn.Module, align: int) -> LayerChoice:
        return LayerChoice(
            "structured",
            f"{target.runtime.delegate} on {target.hardware.simd}: unstructured gives no speed-up "
            f"(sparsity.unstructured_benefit=none); structured, counts multiples of {align} (alignment.channel_multiple)",
        )


def _zeros_pay_off(target: Target, budget: Budget) -> Optional[LayerChoice]:
    """Unstructured, where the budget counts zeroed weights and the hardware turns zeros into a gain."""
    if not budget.counts_zeros or target.sparsity.unstructured_benefit not in ("flash", "speed"):
        return None
    benefit = "weights compressed in flash" if target.sparsity.unstructured_benefit == "flash" else "sparse kernels"
    return LayerChoice("unstructured",
                       f"{budget.key} budget; unstructured zeros pay off here ({benefit}: sparsity.unstructured_benefit)")


class CpuRules(FamilyRules):
    families = ("arm-cpu", "x86-cpu")


class JetsonRules(FamilyRules):
    """2:4 on the layers wide enough for the sparse tensor cores, whatever the budget; structured elsewhere."""

    families = ("jetson",)

    def choice(self, target, budget, module, align):
        if not target.accelerates("n:m"):
            return super().choice(target, budget, module, align)
        fits, why = nm_fits(target, module)
        if fits:
            return LayerChoice("n:m", why, n=target.sparsity.nm.n, m=target.sparsity.nm.m)
        return LayerChoice("structured", structured_instead(why, align))


class McuRules(FamilyRules):
    families = ("mcu",)

    def dense_choice(self, target, module, align):
        return LayerChoice(
            "structured",
            f"{target.runtime.delegate} int8 has no sparse kernels: structured shrinks SRAM activations and "
            f"flash weights, counts multiples of {align} (alignment)",
        )


def rules_for(target: Target) -> FamilyRules:
    return FamilyRules._registry.get(target.family, CpuRules())


def family_choice(target: Target, budget: Budget, module: nn.Module, align: int) -> LayerChoice:
    """The method the target's family gives a layer no other rule keeps."""
    return rules_for(target).choice(target, budget, module, align)


FIRST_LAYER = "first layer"
HEAD = "classifier head"
NEVER_RUNS = "never runs"


def rule_choices(model: nn.Module, example_inputs: Any, target: Target, budget: Budget, cost: ModelCost,
                 modules: dict[str, nn.Module], align: int) -> dict[str, LayerChoice]:
    """The rules' choice for every prunable layer of `model` (measured as `cost`), before any recipe."""
    sees_inputs = ChannelGraph(copy_model(model), example_inputs).input_layers()
    head = cost.order[-1]
    choices = {}
    for name, module in modules.items():
        if name not in cost.order:
            choices[name] = LayerChoice("keep", "never runs on the example inputs", kept_by=NEVER_RUNS)
        elif name in sees_inputs:
            choices[name] = LayerChoice("keep", "first layer: sees the model's inputs, pruning it costs accuracy "
                                        "and saves little", kept_by=FIRST_LAYER)
        elif name == head:
            choices[name] = LayerChoice("keep", "classifier head: its outputs are the model's outputs", kept_by=HEAD)
        else:
            choices[name] = family_choice(target, budget, module, align)
    return choices


def keep_count(g: ChannelGroup, fraction: float, align: int, min_channels: int) -> int:
    """Channels left after removing `fraction` of the group, rounded to the target's alignment."""
    if g.head_dim:
        return max(1, round(g.heads * (1 - fraction))) * g.head_dim
    floor = align * math.ceil(max(min_channels, align) / align)
    if g.channels <= floor:
        return g.channels
    kept = align * round(g.channels * (1 - fraction) / align)
    return g.channels if kept >= g.channels else max(kept, floor)


def removal_for(g: ChannelGroup, fraction: float, align: int, min_channels: int) -> int:
    """Channels to remove from the group for `fraction`, as the target's alignment and minimum allow."""
    return g.channels - keep_count(g, fraction, align, min_channels)


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def _override(target: Target, name: str, module: nn.Module, o: LayerOverride, entry: str, glob: bool,
              rule: LayerChoice) -> "LayerChoice | str":
    """The recipe's choice for one layer, or why a glob's method does not fit it (an explicit name's misfit
    is an error)."""
    why = f"recipe ({entry})"
    if rule.kept_by:
        why += f" overrides the {rule.kept_by} rule ({rule.reason})"
    if o.method != "n:m":
        return LayerChoice(o.method, why, amount=o.amount, forced=True)
    nm = target.sparsity.nm
    n, m = o.n or (nm.n if nm else 2), o.m or (nm.m if nm else 4)
    if n >= m or reduction_size(module) % m:
        misfit = (f"{n}:{m} needs n < m and an input dimension ({reduction_size(module)}) that is a multiple of {m}")
        if glob:
            return misfit
        raise RecipeError(f"{entry}: layer {name}: {misfit}")
    choice = LayerChoice("n:m", why, n=n, m=m, forced=True)
    slow = _unaccelerated(target, choice)
    return LayerChoice("n:m", f"{why}; {slow}", n=n, m=m, forced=True, dense_rate=True) if slow else choice


def _unaccelerated(target: Target, choice: LayerChoice) -> str:
    """Why the target runs this n:m pattern at the dense rate ('' when the profile lists it). A recipe's 2:4
    on a layer below the profile's width thresholds still counts at the sparse rate: the user chose it."""
    nm = target.sparsity.nm
    if not target.accelerates("n:m") or nm is None:
        return (f"{target.name} has no N:M sparse kernels (sparsity.accelerated = "
                f"{', '.join(target.sparsity.accelerated)}): the zeros save no time, MACs counted in full")
    if (choice.n, choice.m) != (nm.n, nm.m):
        return (f"{target.name}'s sparse kernels run {nm.n}:{nm.m} only (sparsity.nm), not {choice.n}:{choice.m}: "
                "MACs counted in full")
    return ""


def apply_recipe(choices: dict[str, LayerChoice], modules: dict[str, nn.Module], target: Target, recipe: Recipe,
                 source: str) -> tuple[dict[str, LayerChoice], list[str]]:
    """The rules' choices with the recipe's ignore list and overrides applied, and notes on what a glob
    pattern left to the rules."""
    ignored, overrides = recipe.resolve(list(modules), source)
    out, notes, skipped = dict(choices), [], {}
    for name in modules:
        if name in ignored:
            out[name] = LayerChoice("keep", f"in the recipe's ignore list ({source})")
            continue
        if name not in overrides:
            continue
        pattern, o = overrides[name]
        # no square brackets: the plan table is rich text, which would read them as markup
        entry = f"{source}, {'pattern' if _is_glob(pattern) else 'layer'} {pattern!r}"
        rule = choices[name]
        if _is_glob(pattern) and rule.kept_by:
            skipped.setdefault(pattern, []).append(f"{name}: {rule.kept_by}")
            continue
        choice = _override(target, name, modules[name], o, entry, _is_glob(pattern), rule)
        if isinstance(choice, str):  # a glob whose method this layer cannot take: the rule stands
            out[name] = replace(rule, reason=f"{rule.reason}; recipe ({entry}) does not apply: {choice}")
        else:
            out[name] = choice
    for pattern, layers in skipped.items():
        notes.append(f"recipe ({source}) pattern {pattern!r} leaves the rules' kept layers as they are "
                     f"({'; '.join(layers)}); name a layer explicitly to override its rule")
    slow: dict[str, list[str]] = {}
    for name, c in out.items():
        if c.method == "n:m" and c.dense_rate:
            slow.setdefault(_unaccelerated(target, c), []).append(name)
    for why, layers in slow.items():
        notes.append(f"recipe ({source}) asks for N:M sparsity on {', '.join(layers)}, a pattern the device does "
                     f"not accelerate there: {why}")
    return out, notes
