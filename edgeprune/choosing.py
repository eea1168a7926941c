"""Choose the pruning for a device by measurement (`ep.choose`): build the candidate prunings a target
allows at the budget, measure each on the device, estimate each one's accuracy on the user's validation
data when given, and say which to use and why, with the measured numbers.

The candidates (`KINDS`, one small class each):

    rules         the target's own rules: what `ep.plan` chooses (a mix on a Jetson: 2:4 and channels)
    structured    whole channels only, searched to the budget
    n:m           the target's N:M pattern (2:4 on a Jetson) on every layer the rules leave free; fixed sparsity
    unstructured  50 % of each free layer's weights zeroed; fixed sparsity

A latency budget is met on the device: the searched candidates go through the closed loop
(`closedloop.plan_on_board`, one latency model profiled for all of them), the fixed ones are measured once
and meet the budget only if their measured p50 does. Another budget is met by the policy, and every
candidate is still measured, so the table shows what each buys on this device: on a CPU without sparse
kernels the zeros of n:m and unstructured pruning run at the dense speed.
"""

from __future__ import annotations

import copy
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from rich.table import Table
from rich.text import Text
from torch import nn

from .batchnorm import recalibrate_bn
from .budget import Budget, LatencyBudget, LatencyRatioBudget, MacsBudget
from .closedloop import Measured, check_calibration, measurer, plan_on_board
from .devices import Device, get_device
from .errors import BudgetError
from .metrics import accuracy
from .plan import Plan
from .policy import plan as plan_with_policy
from .profiling import profile_on
from .pruning import prune
from .remote import BenchSettings, reserve
from .targets import Target, load_target

UNSTRUCTURED_AMOUNT = 0.5


class Kind:
    """One kind of candidate: the recipe that makes it, and whether the budget search sizes it."""

    name = ""
    description = ""
    searched = True  # the policy (or the closed loop) sizes it to the budget; else its sparsity is fixed

    def applies(self, target: Target) -> bool:
        return True

    def recipe(self, target: Target) -> Optional[dict]:
        return None


class Rules(Kind):
    name, description = "rules", "the target's rules, as ep.plan chooses"


class Structured(Kind):
    name, description = "structured", "whole channels only"

    def applies(self, target: Target) -> bool:
        # where channels are all the hardware accelerates and zeros buy nothing, the rules choose exactly this
        return target.sparsity.accelerated != ["structured"] or target.sparsity.unstructured_benefit != "none"

    def recipe(self, target: Target) -> Optional[dict]:
        return {"layers": {"*": {"method": "structured"}}}


class NM(Kind):
    name, searched = "n:m", False

    def applies(self, target: Target) -> bool:
        return target.sparsity.nm is not None

    def recipe(self, target: Target) -> Optional[dict]:
        nm = target.sparsity.nm
        self.description = f"{nm.n}:{nm.m} on every free layer"
        return {"layers": {"*": {"method": "n:m", "n": nm.n, "m": nm.m}}}


class Unstructured(Kind):
    name, searched = "unstructured", False
    description = f"{UNSTRUCTURED_AMOUNT:.0%} of each free layer's weights zeroed"

    def recipe(self, target: Target) -> Optional[dict]:
        return {"layers": {"*": {"method": "unstructured", "amount": UNSTRUCTURED_AMOUNT}}}


KINDS: tuple[Kind, ...] = (Rules(), Structured(), NM(), Unstructured())


@dataclass
class Candidate:
    name: str
    description: str
    plan: Optional[Plan]  # None: no plan could be made at the budget (`reason` says why)
    meets: bool
    reason: str  # why it meets the budget or misses it, with the numbers
    measured_ms: Optional[float] = None  # p50 on the device
    ci95_ms: Optional[tuple[float, float]] = None
    accuracy: Optional[float] = None
    device_s: float = 0.0  # device time this candidate cost (its loop's measurements, or its one run)

    @property
    def macs_ratio(self) -> Optional[float]:
        return self.plan.macs_ratio if self.plan else None

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "meets": self.meets, "reason": self.reason,
                "measured_ms": self.measured_ms, "ci95_ms": list(self.ci95_ms) if self.ci95_ms else None,
                "accuracy": self.accuracy, "device_s": self.device_s, "macs_ratio": self.macs_ratio,
                "plan": self.plan.to_dict() if self.plan else None}


@dataclass
class Choice:
    """The candidates measured on one device, and the one to use (`best`), with why."""

    target: str
    device: str
    device_target: str  # the device's own profile: when it is not `target`, its latencies are a proxy
    budget: Budget
    dense_ms: float
    candidates: list[Candidate]
    chosen: Optional[str]  # the name of the candidate to use; None when none meets the budget
    why: str
    dense_accuracy: Optional[float] = None
    accuracy_source: str = ""  # how the accuracies were estimated ("" without validation data)
    notes: list[str] = field(default_factory=list)

    @property
    def best(self) -> Optional[Candidate]:
        return next((c for c in self.candidates if c.name == self.chosen), None)

    @property
    def proxy(self) -> bool:
        return self.device_target != self.target

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, "target": self.target, "device": self.device, "device_target": self.device_target,
                "budget": self.budget.to_json(), "dense_ms": self.dense_ms, "dense_accuracy": self.dense_accuracy,
                "accuracy_source": self.accuracy_source, "chosen": self.chosen, "why": self.why,
                "notes": list(self.notes), "candidates": [c.to_dict() for c in self.candidates]}

    def table(self) -> Table:
        where = f"{self.device}" + (f" (a proxy for {self.target})" if self.proxy else "")
        # the reasons go under the table (`reasons`): as a column they would fold into a word a line
        table = Table(title=Text(f"{self.target} within {self.budget}, measured on {where}"))
        for col in ("candidate", "MACs kept", "p50 ms [95% CI]", "× dense", "accuracy", "budget"):
            table.add_column(col, overflow="fold")
        table.add_row("dense", "1.00", f"{self.dense_ms:.3f}", "1.00",
                      f"{self.dense_accuracy:.1%}" if self.dense_accuracy is not None else "-", "")
        for c in self.candidates:
            p50 = f"{c.measured_ms:.3f} [{c.ci95_ms[0]:.3f}, {c.ci95_ms[1]:.3f}]" if c.measured_ms else "-"
            ratio = f"{c.measured_ms / self.dense_ms:.2f}" if c.measured_ms and self.dense_ms else "-"
            style = "bold green" if c.name == self.chosen else ("" if c.meets else "dim")
            table.add_row(Text(c.name, style), f"{c.macs_ratio:.2f}" if c.plan else "-", p50, ratio,
                          f"{c.accuracy:.1%}" if c.accuracy is not None else "-",
                          Text("meets" if c.meets else "misses", "green" if c.meets else "red"))
        return table

    def reasons(self) -> list[str]:
        """One line per candidate: what it is, and why it meets the budget or misses it."""
        return [f"{c.name} ({c.description}): {c.reason}" for c in self.candidates]

    def __rich__(self) -> Table:
        return self.table()


SCHEMA = "edgeprune.choice/1"


def choose(model: nn.Module, example_inputs: Any, target: "Target | str", budget: Budget, *,
           device: "str | Device" = "local", devices: "str | Path | None" = None,
           val_data: Any = None, bn_data: Any = None, train_data: Any = None, recover_epochs: int = 0,
           calibration: Any = None, cache_dir: "str | Path | None" = None,
           settings: Optional[BenchSettings] = None, trust_new_host_key: bool = False,
           progress: Optional[Callable[[str, int, int], None]] = None) -> Choice:
    """Measure each candidate pruning of `model` for `target` within `budget` on `device` and choose one.

    `val_data`: labelled validation data (a DataLoader or an (x, y) pair) to estimate each candidate's
    accuracy on, after its BatchNorm statistics are recomputed on `bn_data` (default: `train_data`, else
    none) and, with `recover_epochs` > 0 and `train_data`, that many epochs of recovery distilled from the
    dense model. Without `val_data` the candidate that meets the budget keeping the most MACs is chosen."""
    target = load_target(target)
    calibration = check_calibration(target, budget, calibration)
    if isinstance(device, str):
        device = get_device(device, devices)
    settings = settings or BenchSettings()
    kinds = [k for k in KINDS if k.applies(target)]
    bn_data = bn_data if bn_data is not None else train_data
    source = _source(val_data, bn_data, train_data, recover_epochs)
    with reserve(device, trust_new_host_key=trust_new_host_key) as board, \
            tempfile.TemporaryDirectory(prefix="edgeprune-choose-") as tmp:
        measure = measurer(board, target, example_inputs, Path(tmp), settings, calibration)
        if progress:
            progress("the dense model", 0, len(kinds) + 1)
        dense = measure(model, "dense")
        latency = None
        if budget.needs_device:
            latency = profile_on(board, model, example_inputs, target, cache_dir=cache_dir,
                                 trust_new_host_key=trust_new_host_key, progress=progress)
        goal = budget.absolute(dense.p50_ms) if isinstance(budget, LatencyRatioBudget) else budget
        candidates = []
        with warnings.catch_warnings():
            # the candidates' own '*' recipes leave the first layer and the head to the rules, as meant
            warnings.filterwarnings("ignore", message=r".*pattern '\*' leaves the rules' kept layers")
            for k, kind in enumerate(kinds, 1):
                if progress:
                    progress(f"candidate {kind.name}", k, len(kinds) + 1)
                candidates.append(_candidate(kind, model, example_inputs, target, budget, goal, latency, dense,
                                             measure, board.device.name))
        dense_accuracy = None
        if val_data is not None:
            dense_accuracy = accuracy(model, val_data)
            for c in candidates:
                if c.plan is not None:
                    c.accuracy = _accuracy(model, c.plan, val_data, bn_data, train_data, recover_epochs)
    chosen, why = _decide(candidates, budget, val_data is not None)
    notes = []
    if device.target != target.name:
        notes.append(f"proxy: measured on '{device.name}' ({device.target}), not on {target.name}")
    return Choice(target.name, device.name, device.target, budget, dense.p50_ms, candidates, chosen, why,
                  dense_accuracy, source, notes)


def _candidate(kind: Kind, model: nn.Module, example_inputs: Any, target: Target, budget: Budget, goal: Budget,
               latency, dense: Measured, measure, device: str) -> Candidate:
    recipe = kind.recipe(target)
    description = kind.description
    if budget.needs_device and kind.searched:
        try:
            plan = plan_on_board(model, example_inputs, target, budget, copy.deepcopy(latency), measure,
                                 device=device, dense_ms=dense.p50_ms, settle=True, recipe=recipe)
        except BudgetError as exc:
            return Candidate(kind.name, description, None, False, str(exc))
        mine = [i for i in plan.iterations if i.measured_ms == plan.measured_latency_ms]
        return Candidate(kind.name, description, plan, True,
                         f"measured {plan.measured_latency_ms:.3f} ms (the closed loop, {len(plan.iterations)} runs), "
                         f"within {goal.value:.3f} ms", plan.measured_latency_ms, mine[-1].ci95_ms, None,
                         sum(i.device_s for i in plan.iterations))
    policy_budget = budget if kind.searched else MacsBudget(1.0)
    try:
        plan = plan_with_policy(model, example_inputs, target, policy_budget, recipe=recipe)
    except BudgetError as exc:
        return Candidate(kind.name, description, None, False, str(exc))
    result = measure(prune(model, plan), kind.name.replace(":", "-"))
    if isinstance(goal, LatencyBudget):
        meets = result.p50_ms <= goal.value
        reason = (f"measured {result.p50_ms:.3f} ms, " + ("within" if meets else "over") + f" {goal.value:.3f} ms"
                  + ("" if meets or plan.macs_ratio < 1 else f": {target.name}'s runtime runs its zeros at the dense "
                     f"speed ({result.p50_ms / dense.p50_ms:.2f}× the dense p50)"))
    else:
        meets = budget.meets(plan.estimate())
        reason = f"{budget.meaning} {budget.quantity(plan.estimate()):.3g}" + (" meets" if meets else " misses") + \
            f" {budget.value:g}; measured {result.p50_ms:.3f} ms ({result.p50_ms / dense.p50_ms:.2f}× dense)"
    return Candidate(kind.name, description, plan, meets, reason, result.p50_ms, result.ci95_ms, None,
                     result.device_s)


def _accuracy(dense: nn.Module, plan: Plan, val_data: Any, bn_data: Any, train_data: Any, epochs: int) -> float:
    pruned = prune(dense, plan)
    if bn_data is not None:
        pruned = recalibrate_bn(pruned, bn_data)
    if epochs > 0 and train_data is not None:
        from .finetune import finetune

        pruned = finetune(pruned, train_data, epochs=epochs, teacher=dense, quiet=True).model
    return accuracy(pruned.eval(), val_data)


def _source(val_data: Any, bn_data: Any, train_data: Any, epochs: int) -> str:
    if val_data is None:
        return ""
    steps = ["pruned"]
    if bn_data is not None:
        steps.append("BatchNorm recalibrated")
    if epochs > 0 and train_data is not None:
        steps.append(f"{epochs} epoch{'s' if epochs != 1 else ''} of recovery distilled from the dense model")
    return "top-1 on the validation data, " + ", ".join(steps)


def _decide(candidates: list[Candidate], budget: Budget, judged: bool) -> tuple[Optional[str], str]:
    meeting = [c for c in candidates if c.meets and c.plan is not None]
    if not meeting:
        return None, f"no candidate meets {budget} on this device: see each one's reason"
    if judged:
        best = max(meeting, key=lambda c: (c.accuracy or 0.0, -(c.measured_ms or 0.0)))
        others = [c for c in meeting if c is not best]
        rest = f", against {', '.join(f'{c.name} {c.accuracy:.1%}' for c in others)}" if others else ""
        return best.name, (f"use {best.name}: it meets {budget} at {best.measured_ms:.3f} ms measured, with the "
                           f"highest estimated accuracy of those that meet it ({best.accuracy:.1%}{rest})")
    best = max(meeting, key=lambda c: (c.macs_ratio or 0.0, -(c.measured_ms or 0.0)))
    return best.name, (f"use {best.name}: it meets {budget} at {best.measured_ms:.3f} ms measured keeping the most "
                       f"MACs ({best.macs_ratio:.2f}); no validation data was given, and the least pruning is the "
                       "safest guess of accuracy")
