"""Per-layer sensitivity: how much a metric drops when one layer alone is pruned the way the target would.

    sens = ep.sensitivity(model, example_inputs, (images, labels), None, "raspberry-pi-5")
    plan = ep.plan(model, example_inputs, "raspberry-pi-5", budget, sensitivity=sens)

Each eligible layer (one `edgeprune.rules` lets the policy prune: not a layer that sees the model's inputs, not
the classifier head) is pruned on a copy with the method the target uses for it: structured channels (its
whole coupled channel group, counts rounded to the target's alignment, exactly as the policy removes them),
2:4 on Jetson layers that qualify (one point: amounts are moot), or unstructured magnitude sparsity where the
target prefers it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from torch import nn

from .budget import Budget
from .errors import EdgepruneError, ModelError
from .finite import check_finite
from .batchnorm import recalibrate_
from .costs import measure, prunable_layers
from .metrics import accuracy
from .rules import removal_for, rule_choices
from .targets import Target, load_target

SCHEMA = "edgeprune.sensitivity/1"


@dataclass(frozen=True)
class LayerSensitivity:
    layer: str
    method: str  # structured | n:m | unstructured
    amounts: tuple[float, ...]  # requested fractions (n:m: the one fraction zeroed, 1 - n/m)
    values: tuple[float, ...]  # metric after pruning only this layer, one per amount
    drops: tuple[float, ...]  # baseline - value (positive = worse)
    removed: tuple[float, ...] = ()  # fraction actually removed/zeroed (alignment rounding), one per amount
    group: str = ""  # structured: the root of the channel group the layer shrinks with

    def drop_at(self, amount: float) -> float:
        """The drop at `amount`, linearly interpolated (0 at amount 0, flat beyond the last point)."""
        xs = [0.0, *(self.removed or self.amounts)]
        ys = [0.0, *self.drops]
        if amount >= xs[-1]:
            return ys[-1] if len(xs) > 1 else 0.0
        for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
            if x0 <= amount <= x1:
                return y0 if x1 == x0 else y0 + (y1 - y0) * (amount - x0) / (x1 - x0)
        return 0.0


@dataclass
class Sensitivity:
    target: str
    baseline: float
    rows: list[LayerSensitivity]
    metric: str = "top1"
    skipped: dict[str, str] = field(default_factory=dict)  # eligible layers that could not be measured, why
    bn_recalibrated: bool = False  # each pruned copy's BatchNorm statistics recomputed before measuring

    def row(self, layer: str) -> LayerSensitivity:
        for r in self.rows:
            if r.layer == layer:
                return r
        raise KeyError(f"the sensitivity has no layer named {layer!r}")

    @property
    def layers(self) -> list[str]:
        return [r.layer for r in self.rows]

    def most_sensitive(self, amount: float = 0.5) -> str:
        return max(self.rows, key=lambda r: r.drop_at(amount)).layer

    def points(self, change: float) -> str:
        """A signed metric change as text: percentage points for a [0, 1] metric, else the metric's units."""
        return f"{change * 100:+.1f} pts" if abs(self.baseline) <= 1.0 else f"{change:+.3g}"

    # -- JSON -------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"schema": SCHEMA, "target": self.target, "baseline": self.baseline, "metric": self.metric,
                "rows": [asdict(r) for r in self.rows], "skipped": dict(self.skipped),
                "bn_recalibrated": self.bn_recalibrated}

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict) -> "Sensitivity":
        if data.get("schema") != SCHEMA:
            raise EdgepruneError(f"not an edgeprune sensitivity (schema {data.get('schema')!r}, expected {SCHEMA!r})")
        rows = [LayerSensitivity(**{**r, **{k: tuple(r[k]) for k in ("amounts", "values", "drops", "removed")}})
                for r in data["rows"]]
        return cls(target=data["target"], baseline=data["baseline"], rows=rows, metric=data.get("metric", "top1"),
                   skipped=dict(data.get("skipped", {})), bn_recalibrated=bool(data.get("bn_recalibrated", False)))

    @classmethod
    def from_json(cls, text: str) -> "Sensitivity":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise EdgepruneError(f"not an edgeprune sensitivity: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise EdgepruneError(f"not an edgeprune sensitivity: a JSON {type(data).__name__}, not an object")
        try:
            return cls.from_dict(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise EdgepruneError(f"malformed edgeprune sensitivity ({type(exc).__name__}: {exc})") from None

    def plot(self, path: "str | Path", *, overwrite: bool = False) -> Path:
        from .plots import plot_sensitivity

        return plot_sensitivity(self, path, overwrite=overwrite)


# -- measurement ---------------------------------------------------------------------------------------

def _eligible(work: nn.Module, example_inputs: Any, target: Target, layers: Optional[Sequence[str]]):
    """{layer: policy choice} for the layers the policy would prune (same rules as `policy.plan`)."""

    cost = measure(work, example_inputs)
    modules = prunable_layers(work)
    if not cost.order:
        raise ModelError(f"{type(work).__name__} has no Conv or Linear layer that runs on the example inputs")
    align = target.alignment.multiple(target.precision.default)
    rules = rule_choices(work, example_inputs, target, Budget(macs_ratio=0.5), cost, modules, align)
    eligible = {n: c for n, c in rules.items() if not c.kept_by}
    if layers is not None:
        unknown = [n for n in layers if n not in modules]
        if unknown:
            raise ModelError(f"layer {unknown[0]!r}: the model has no such Conv/Linear layer "
                             f"(it has {', '.join(modules)})")
        kept = [n for n in layers if n not in eligible]
        if kept:
            raise ModelError(f"layer {kept[0]!r}: the target's rules always keep it ({rules[kept[0]].kept_by}), "
                             "so it has no sensitivity to measure")
        eligible = {n: c for n, c in eligible.items() if n in layers}
    return eligible, modules, align


def _why_tied(graph, name: str, eligible: dict) -> str:
    """Why a structured layer's channels cannot shrink alone: the layers its channel group couples it to."""
    group = next((g for g in graph.groups() if name in g.out_layers), None)
    partners = [n for n in (group.out_layers if group else ()) if n != name]
    methods = {n: eligible[n].method if n in eligible else "keep" for n in partners}
    tied = [f"{n} ({m} on this target)" for n, m in methods.items() if m != "structured"]
    if tied:
        return f"its output channels are coupled to {', '.join(tied)}, so they cannot shrink alone"
    return "its output channels are tied to the model's output or to a kept layer"


def _on_dense(failure: str, step: Callable[[], Any]) -> Any:
    """Run a step on the dense model; a user-side failure (their data, their metric) becomes a ModelError."""
    try:
        return step()
    except EdgepruneError:
        raise
    except Exception as exc:
        raise ModelError(f"{failure}: {type(exc).__name__}: {exc}") from exc


def sensitivity(
    model: nn.Module,
    example_inputs: Any,
    val_data: Any,
    metric: Optional[Callable[[nn.Module, Any], float]] = None,
    target: "Target | str" = "raspberry-pi-5",
    *,
    amounts: Sequence[float] = (0.25, 0.5, 0.75),
    layers: Optional[Sequence[str]] = None,
    importance: str = "l2",
    calibration_data: Any = None,
    calibration_batches: Optional[int] = None,
) -> Sensitivity:
    """Prune each eligible layer alone, at each amount, on a copy of `model`, and record the metric's drop.

    `metric(model, val_data) -> float`, higher is better (default: top-1 accuracy over (x, y) batches).
    With `calibration_data` (training batches), the BatchNorm statistics of the dense copy that gives the
    baseline and of each pruned copy are recomputed before it is measured, so a drop shows what the layer
    carries rather than stale statistics, which `ep.finetune` would repair anyway. `model` is never modified.
    """
    from .pruning import finalize
    from .pruning.nm import apply_nm
    from .pruning.structured import ChannelGraph, remove_channels
    from .pruning.unstructured import apply_unstructured
    from ._copy import copy_model

    target = load_target(target)
    try:
        amounts = tuple(float(a) for a in amounts)
    except (TypeError, ValueError):
        raise EdgepruneError(f"amounts {amounts!r}: expected fractions in (0, 1), e.g. (0.25, 0.5)") from None
    if not amounts or any(not 0.0 < a < 1.0 for a in amounts):
        raise EdgepruneError(f"amounts {amounts}: each must be in (0, 1), the fraction pruned")
    amounts = tuple(sorted(set(amounts)))
    # empty val_data must fail loudly: a NaN baseline would make every drop NaN
    metric_fn = metric or partial(accuracy, raise_if_empty=True)
    check_finite(model, example_inputs)
    base_model = finalize(model).eval()  # a copy: the caller's model is never touched
    dense = type(model).__name__
    if calibration_data is not None:
        # the baseline gets the same treatment as every pruned copy, so a drop is the pruning's alone
        _on_dense(f"calibration_data does not run through the dense {dense}",
                  lambda: recalibrate_(base_model, calibration_data, calibration_batches))
    baseline = float(_on_dense(f"the metric failed on the dense {dense}",
                               lambda: metric_fn(copy_model(base_model), val_data)))
    eligible, modules, align = _eligible(base_model, example_inputs, target, layers)

    def score(pruned: nn.Module) -> float:
        if calibration_data is not None:
            recalibrate_(pruned, calibration_data, calibration_batches)
        return float(metric_fn(pruned.eval(), val_data))

    structured = [n for n, c in eligible.items() if c.method == "structured"]
    frozen = [n for n in modules if n not in structured]
    graph = ChannelGraph(copy_model(base_model), example_inputs)
    group_of = {n: g for g in graph.groups(frozen=frozen) for n in g.out_layers}

    rows: list[LayerSensitivity] = []
    skipped: dict[str, str] = {}
    measured: dict[tuple[str, float], tuple[float, float]] = {}  # (group root, amount) -> (value, removed)
    for name, choice in eligible.items():
        if choice.method == "structured":
            g = group_of.get(name)
            if g is None:
                skipped[name] = _why_tied(graph, name, eligible)
                continue
            values, removed = [], []
            for a in amounts:
                key = (g.root, a)
                if key not in measured:
                    remove = removal_for(g, a, align, target.alignment.min_channels)
                    if remove == 0:
                        measured[key] = (baseline, 0.0)
                    else:
                        pruned, _, failures = remove_channels(copy_model(base_model), example_inputs,
                                                              {g.root: remove}, importance)
                        if failures:
                            skipped[name] = f"pruning it breaks the model ({failures[g.root]})"
                            break
                        measured[key] = (score(pruned), remove / g.channels)
                v, r = measured[key]
                values.append(v)
                removed.append(r)
            else:
                rows.append(LayerSensitivity(name, "structured", amounts, tuple(values),
                                             tuple(baseline - v for v in values), tuple(removed), g.root))
        elif choice.method == "n:m":
            pruned = copy_model(base_model)
            apply_nm(dict(pruned.named_modules())[name], choice.n, choice.m)
            v = score(finalize(pruned))
            a = 1 - choice.n / choice.m
            rows.append(LayerSensitivity(name, "n:m", (a,), (v,), (baseline - v,), (a,)))
        else:  # unstructured
            values = []
            for a in amounts:
                pruned = copy_model(base_model)
                apply_unstructured(dict(pruned.named_modules())[name], a)
                values.append(score(finalize(pruned)))
            rows.append(LayerSensitivity(name, "unstructured", amounts, tuple(values),
                                         tuple(baseline - v for v in values), amounts))
    name = getattr(metric, "__name__", "metric") if metric is not None else "top1"
    return Sensitivity(target=target.name, baseline=baseline, rows=rows, metric=name, skipped=skipped,
                       bn_recalibrated=calibration_data is not None)
