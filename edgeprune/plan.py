"""A pruning plan: one decision per prunable layer, each with the reason that decided it.

Produced by `policy.plan`, carried out by `pruning.prune`, saved as JSON beside the weights.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, Optional

from rich.table import Table
from rich.text import Text

from .budget import Budget, Estimate
from .errors import MalformedError
from .inputs import InputSpec

# plan/2: budgets of every kind (latency, memory), activation_bytes; plan/1 files read as they were written
SCHEMA = "edgeprune.plan/2"
READS = ("edgeprune.plan/1", SCHEMA)

Method = Literal["structured", "n:m", "unstructured", "keep"]
METHODS = ("structured", "n:m", "unstructured", "keep")


@dataclass(frozen=True)
class LayerDecision:
    layer: str  # the module's qualified name, e.g. "resnet.encoder.stages.0.layers.0.layer.0.convolution"
    op: str  # Conv2d, Linear, ...
    method: Method
    # structured: fraction of output channels removed; n:m: fraction zeroed (1 - n/m);
    # unstructured: fraction of weights zeroed; keep: 0
    amount: float
    reason: str
    out_channels: tuple[int, int] = (0, 0)  # before -> after structured pruning
    in_channels: tuple[int, int] = (0, 0)
    group: Optional[int] = None  # the coupled channel group whose pruning removes this layer's outputs
    n: int = 0  # n:m only
    m: int = 0
    macs: tuple[int, int] = (0, 0)  # dense -> effective (n:m counted at the sparse-kernel rate)
    dense_rate: bool = False  # n:m the target has no sparse kernel for: its MACs count in full

    @property
    def mac_rate(self) -> float:
        """The fraction of this layer's MACs the hardware runs: N/M on sparse kernels, else all."""
        return self.n / self.m if self.method == "n:m" and not self.dense_rate else 1.0


@dataclass(frozen=True)
class GroupDecision:
    """Output channels that torch-pruning's dependency graph couples (residual adds, concat, depthwise)."""

    id: int
    root: str  # the layer whose output channels define the group
    channels: int
    remove: int  # how many channels to remove (a multiple of the target's alignment, or all kept)
    layers: tuple[str, ...]  # layers whose output channels shrink with this group
    heads: int = 0  # attention groups: number of heads before pruning (whole heads are removed)


@dataclass(frozen=True)
class Iteration:
    """One plan the closed loop measured on the device (`closedloop.plan_on_device`)."""

    aim_ms: float  # the latency the search was asked to stay under (in the corrected model's terms)
    predicted_ms: float  # what the latency model predicted for the plan it found
    measured_ms: float  # p50 measured on the device
    ci95_ms: tuple[float, float]
    device_s: float  # wall time the measurement held the device (upload, warm-up, runs, clean-up)
    macs_ratio: float

    @classmethod
    def from_dict(cls, data: dict) -> "Iteration":
        return cls(**{**data, "ci95_ms": tuple(data["ci95_ms"])})


@dataclass
class Plan:
    target: str
    family: str
    budget: Budget
    importance: str
    scope: str
    alignment: int
    layers: list[LayerDecision]
    groups: list[GroupDecision] = field(default_factory=list)
    inputs: Optional[InputSpec] = None
    macs_before: int = 0
    macs_after: int = 0  # effective: dense MACs of the pruned shapes, n:m layers at their sparse rate
    params_before: int = 0
    params_after: int = 0
    sparsity: float = 0.0  # fraction of prunable weights zeroed or removed
    weight_bytes: int = 0  # parameters of the planned model at the target's default precision (0: not estimated)
    activation_bytes: int = 0  # the largest layer input + output at that precision (0: not estimated)
    latency_ms: Optional[float] = None  # p50 predicted by the device's latency model (None: none was given)
    dense_latency_ms: Optional[float] = None  # the dense model's, by the same model
    measured_latency_ms: Optional[float] = None  # p50 measured on the device (plans made there: closedloop)
    iterations: list[Iteration] = field(default_factory=list)  # the closed loop's, one per plan measured
    # measured on the exported int8 artifact (MCU plans made with calibration=): TFLite-Micro's arena, the file
    measured_sram_bytes: Optional[int] = None
    measured_flash_bytes: Optional[int] = None
    # what the user must know beyond the rows: rollbacks, recipe entries the rules overrode, N:M the device
    # does not accelerate, "does not fit flash: ..." when weight_bytes exceeds the target's flash
    notes: list[str] = field(default_factory=list)
    # the tensors the plan was made with; not serialized (a loaded plan rebuilds inputs from `inputs`)
    example_inputs: Any = field(default=None, repr=False, compare=False)

    def layer(self, name: str) -> LayerDecision:
        for d in self.layers:
            if d.layer == name:
                return d
        raise KeyError(f"the plan has no layer named {name!r}")

    def by_method(self, method: str) -> list[LayerDecision]:
        return [d for d in self.layers if d.method == method]

    @property
    def macs_ratio(self) -> float:
        return self.macs_after / self.macs_before if self.macs_before else 1.0

    def estimate(self) -> Estimate:
        """What the plan is expected to cost, for a budget to judge (`Budget.meets`): what was measured where
        it was, the policy's estimate elsewhere."""
        known = self.weight_bytes or None, self.activation_bytes or None
        return Estimate(macs_ratio=self.macs_ratio, sparsity=self.sparsity,
                        flash_bytes=self.measured_flash_bytes or known[0], sram_bytes=self.measured_sram_bytes or known[1],
                        ram_bytes=sum(known) if all(known) else None,
                        latency_ms=self.measured_latency_ms or self.latency_ms, dense_latency_ms=self.dense_latency_ms)

    def replace_layer(self, decision: LayerDecision) -> None:
        self.layers = [decision if d.layer == decision.layer else d for d in self.layers]

    # -- JSON -------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        data = {k: v for k, v in asdict(self).items() if k not in ("example_inputs", "inputs", "budget")}
        data["budget"] = self.budget.to_json()
        data["inputs"] = self.inputs.to_json() if self.inputs else None
        data["schema"] = SCHEMA
        return data

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict) -> "Plan":
        """The plan `to_dict` wrote. A hand-edited one with a key missing or of the wrong type raises
        MalformedError naming the key (callers add the file it came from)."""
        if not isinstance(data, dict):
            raise MalformedError(f"not an edgeprune plan: a {type(data).__name__}, not a JSON object")
        if data.get("schema") not in READS:
            raise MalformedError(f"not an edgeprune plan this version reads ('schema' {data.get('schema')!r}, "
                                 f"expected one of {', '.join(READS)})")
        try:
            return cls._from_dict(dict(data))
        except KeyError as exc:
            raise MalformedError(f"plan: key {exc.args[0]!r} is missing") from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise MalformedError(f"plan: malformed ({type(exc).__name__}: {exc})") from None

    @classmethod
    def _from_dict(cls, data: dict) -> "Plan":
        data.pop("schema")
        layers = [
            LayerDecision(**{**d, **{k: tuple(d[k]) for k in ("out_channels", "in_channels", "macs")}})
            for d in data.pop("layers")
        ]
        groups = [GroupDecision(**{**g, "layers": tuple(g["layers"])}) for g in data.pop("groups")]
        inputs = InputSpec.from_json(data.pop("inputs")) if data.get("inputs") else None
        data.pop("inputs", None)
        budget = Budget.from_json(data.pop("budget"), "plan: budget")
        iterations = [Iteration.from_dict(i) for i in data.pop("iterations", [])]
        return cls(layers=layers, groups=groups, inputs=inputs, budget=budget, iterations=iterations, **data)

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        try:
            data = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise MalformedError(f"not an edgeprune plan: not valid JSON ({exc})") from None
        return cls.from_dict(data)

    def example(self) -> Any:
        """The inputs to trace the model with: the original tensors, or ones rebuilt from the spec."""
        if self.example_inputs is not None:
            return self.example_inputs
        if self.inputs is None:
            raise ValueError("this plan has neither example inputs nor an input spec")
        return self.inputs.make()

    # -- display ----------------------------------------------------------------------------------
    def summary(self) -> str:
        return (
            f"{self.target} ({self.family}), budget {self.budget}: MACs {_si(self.macs_before)} -> "
            f"{_si(self.macs_after)} ({self.macs_ratio:.2f}x kept), params {_si(self.params_before)} -> "
            f"{_si(self.params_after)}, sparsity {self.sparsity:.1%}" + self._latency_summary()
        )

    def _latency_summary(self) -> str:
        if self.measured_latency_ms is not None:
            return f", p50 {self.measured_latency_ms:.3g} ms measured on the device ({len(self.iterations)} runs)"
        if self.latency_ms is not None:
            return f", p50 {self.latency_ms:.3g} ms predicted by the device's latency model"
        return ""

    def table(self) -> Table:
        # Text, not strings: a layer name, a target's name or a reason quoting a recipe (`[layers."*"]`) is
        # shown as written, never parsed as rich markup
        table = Table(title=Text(f"plan for {self.target}"), caption=Text(self.summary()), show_lines=False)
        for col in ("layer", "op", "method", "amount", "channels", "MACs", "reason"):
            table.add_column(col, overflow="fold")
        style = {"structured": "cyan", "n:m": "magenta", "unstructured": "yellow", "keep": "dim"}
        for d in self.layers:
            channels = f"{d.out_channels[0]}→{d.out_channels[1]}" if d.out_channels[0] else ""
            method = f"{d.n}:{d.m}" if d.method == "n:m" else d.method
            table.add_row(
                Text(d.layer), Text(d.op), Text(method, style[d.method]), f"{d.amount:.0%}" if d.amount else "",
                channels, f"{_si(d.macs[0])}→{_si(d.macs[1])}", Text(d.reason),
            )
        return table

    def iterations_table(self) -> Table:
        """The closed loop's measurements, one row each: what it aimed at, predicted and measured there."""
        table = Table(title=Text(f"measured on the device: {self.budget}"))
        for col in ("#", "aim ms", "predicted ms", "p50 ms", "95% CI", "MACs kept", "device s"):
            table.add_column(col, justify="right")
        for k, it in enumerate(self.iterations, 1):
            table.add_row(str(k), f"{it.aim_ms:.3f}", f"{it.predicted_ms:.3f}", f"{it.measured_ms:.3f}",
                          f"{it.ci95_ms[0]:.3f}–{it.ci95_ms[1]:.3f}", f"{it.macs_ratio:.2f}", f"{it.device_s:.1f}")
        return table

    def __rich__(self) -> Table:
        return self.table()


def _si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def with_method(decision: LayerDecision, method: str, amount: float, reason: str, **kw) -> LayerDecision:
    return replace(decision, method=method, amount=amount, reason=reason, **kw)
