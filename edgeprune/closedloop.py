"""Meet a latency budget on the device: plan with the device's latency model, prune, export, measure there,
correct the model with what was measured, plan again, until the measured p50 lies within the window
(0.90–1.00 × the budget by default) or no plan can reach it.

Each iteration is recorded in the plan (`Plan.iterations`): the latency the search aimed at, what the
latency model predicted, the measured p50 and its 95 % CI, and the device seconds it cost. A budget the
device's noise cannot resolve (the p50's CI wider than the window) is an error that says so: a plan
measured inside the window by luck would not stay there on the next run.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

from torch import nn

from .budget import Budget, Estimate, FlashBudget, LatencyBudget, LatencyRatioBudget, SramBudget
from .devices import Device, get_device
from .errors import BudgetError
from .export import export
from .latency import LatencyModel
from .plan import Iteration, Plan
from .policy import plan as plan_with_model
from .profiling import profile_on
from .pruning import prune
from .remote import BenchSettings, Reservation, reserve
from .rules import channels
from .targets import Target, load_target

WINDOW = (0.90, 1.00)
AIM = 0.95  # where in the window the search aims: its middle, so noise on either side stays inside
MAX_ITERATIONS = 6


def plan(model: nn.Module, example_inputs: Any, target: "Target | str", budget: Budget, *,
         device: "str | Device | None" = None, devices: "str | Path | None" = None, **kwargs) -> Plan:
    """Decide how to prune `model` for `target` within `budget` (see `edgeprune.policy.plan`). A latency
    budget needs `device` (`"local"`, a name in `devices`, or a Device): the plan is then measured there
    until it meets the budget (`plan_on_device`)."""
    if device is not None:
        return plan_on_device(model, example_inputs, target, budget, device=device, devices=devices, **kwargs)
    if isinstance(budget, ARTIFACT_MEASURED) and kwargs.get("calibration") is not None:
        return plan_to_fit(model, example_inputs, target, budget, **kwargs)
    kwargs.pop("calibration", None)
    result = plan_with_model(model, example_inputs, target, budget, **kwargs)
    if isinstance(budget, ARTIFACT_MEASURED) and load_target(target).family == "mcu":
        result.notes.append(f"{budget} met on the policy's estimate (weights at int8; the largest layer input + "
                            "output, a lower bound of TFLite-Micro's arena): pass calibration= to measure it on "
                            "the exported artifact")
    return result


def plan_on_device(model: nn.Module, example_inputs: Any, target: "Target | str", budget: Budget, *,
                   device: "str | Device", devices: "str | Path | None" = None,
                   latency: Optional[LatencyModel] = None, cache_dir: "str | Path | None" = None,
                   window: tuple[float, float] = WINDOW, max_iterations: int = MAX_ITERATIONS,
                   settings: Optional[BenchSettings] = None, calibration: Any = None,
                   trust_new_host_key: bool = False, progress: Optional[Callable[[str, int, int], None]] = None,
                   **plan_kwargs) -> Plan:
    """A plan for `model` whose measured p50 on `device` lies within `window` × the latency budget. Each
    plan is measured on the artifact export makes of it (`calibration`: samples for an int8 target's
    export); the device is held (`ep.reserve`) from the profile to the last measurement."""
    target = load_target(target)
    if not budget.needs_device:
        raise BudgetError(f"Budget({budget}) is met by the policy alone: plan without a device")
    calibration = check_calibration(target, budget, calibration)
    if isinstance(device, str):
        device = get_device(device, devices)
    with reserve(device, trust_new_host_key=trust_new_host_key) as board, \
            tempfile.TemporaryDirectory(prefix="edgeprune-loop-") as tmp:
        if latency is None:
            latency = profile_on(board, model, example_inputs, target, cache_dir=cache_dir,
                                 trust_new_host_key=trust_new_host_key, progress=progress)
        measure = measurer(board, target, example_inputs, Path(tmp), settings, calibration)
        return plan_on_board(model, example_inputs, target, budget, latency, measure, device=board.device.name,
                             window=window, max_iterations=max_iterations, progress=progress, **plan_kwargs)


def check_calibration(target: Target, budget: Budget, calibration: Any) -> Optional[list]:
    """The calibration samples as a list; BudgetError before any device time is spent when an int8
    target's plans, measured on their int8 artifacts, have none."""
    calibration = list(calibration) if calibration is not None else None
    if target.precision.default == "int8" and not calibration:
        raise BudgetError(f"Budget({budget}) on {target.name}: its plans are measured on their int8 artifacts, "
                          "whose export needs calibration data: pass calibration=[example inputs, ...] "
                          "(CLI: --calibration)")
    return calibration


def measurer(board: Reservation, target: Target, example_inputs: Any, out: Path,
             settings: Optional[BenchSettings] = None, calibration: Optional[list] = None
             ) -> Callable[[nn.Module, str], "Measured"]:
    """measure(module, name): export `module` for `target` into out/name and time it on the reserved device."""
    settings = settings or BenchSettings()

    def measure(module: nn.Module, name: str) -> Measured:
        artifact = export(module, example_inputs, target, out / name, calibration=calibration)
        result = board.bench(artifact.path, settings=settings)
        return Measured(result.p50, tuple(result.ci95_p50), float(result.overhead_s.get("total_s", 0.0)))

    return measure


def plan_on_board(model: nn.Module, example_inputs: Any, target: Target, budget: Budget, latency: LatencyModel,
                  measure: Callable[[nn.Module, str], "Measured"], *, device: str, dense_ms: Optional[float] = None,
                  progress: Optional[Callable[[str, int, int], None]] = None, **loop_kwargs) -> Plan:
    """The closed loop with a latency model and a measure function in hand; a latency_ratio budget's
    dense p50 is measured first (as the loop measures: the profile's runs are shorter) unless given."""
    if isinstance(budget, LatencyRatioBudget) and dense_ms is None:
        if progress:
            progress("the dense model", 0, loop_kwargs.get("max_iterations", MAX_ITERATIONS))
        dense_ms = measure(model, "dense").p50_ms
    if dense_ms is not None:
        latency.correct({}, dense_ms)
    return converge(model, example_inputs, target, budget, latency, measure, device=device, dense_ms=dense_ms,
                    progress=progress, **loop_kwargs)


class Measured(NamedTuple):
    """What the loop needs of one measurement on the device."""

    p50_ms: float
    ci95_ms: tuple[float, float]
    device_s: float  # wall time it held the device


def converge(model: nn.Module, example_inputs: Any, target: "Target | str", budget: Budget,
             latency: LatencyModel, measure: Callable[[nn.Module, str], Measured], *, device: str,
             dense_ms: Optional[float] = None, window: tuple[float, float] = WINDOW,
             max_iterations: int = MAX_ITERATIONS, progress: Optional[Callable[[str, int, int], None]] = None,
             settle: bool = False, **plan_kwargs) -> Plan:
    """The loop itself: plan with `latency`, prune, `measure(pruned, name)` on `device`, correct, plan again;
    `dense_ms`: the dense p50 a latency_ratio budget is a fraction of (default: the model's prediction).
    `settle`: when no plan the alignment allows lands in the window, return the largest plan measured
    under the budget (twice) instead of raising (`ep.choose` compares candidates at the budget)."""
    target = load_target(target)
    if dense_ms is None:
        dense_ms = latency.dense_ms
    goal = budget.absolute(dense_ms) if isinstance(budget, LatencyRatioBudget) else budget
    low, high = window[0] * goal.value, window[1] * goal.value
    iterations: list[Iteration] = []
    shapes: list[dict] = []  # each measured plan's channel counts: a plan is the same plan by its shapes
    plans: list[Plan] = []  # the plan of each measurement
    aim = AIM * goal.value
    while len(iterations) < max_iterations:
        k = len(iterations)
        if progress:
            progress(f"plan {k + 1}: aim {aim:.3f} ms", k, max_iterations)
        try:
            candidate = plan_with_model(model, example_inputs, target, LatencyBudget(aim), latency=latency,
                                        **plan_kwargs)
        except BudgetError as exc:
            raise BudgetError(_unreachable(budget, goal, device, iterations, exc)) from None
        pruned = prune(model, candidate)
        shape = _channels(pruned, latency)
        same = [i.measured_ms for i, s in zip(iterations, shapes) if s == shape]
        if len(same) >= 2:
            below = _settled(iterations, plans, shapes, high) if settle and max(same) - min(same) <= high - low else None
            if below is None:
                raise BudgetError(_stuck(budget, goal, device, iterations, same, low, high))
            below.budget, below.dense_latency_ms = budget, dense_ms
            below.notes.append(f"no plan {target.name}'s alignment allows lands in the window {low:.3f}–{high:.3f} ms: "
                               f"this is the largest measured under {high:.3f} ms, twice")
            return below

        def run() -> Iteration:
            result = measure(pruned, f"iteration-{len(iterations)}")
            it = Iteration(aim, candidate.latency_ms, result.p50_ms, tuple(result.ci95_ms), result.device_s,
                           candidate.macs_ratio)
            iterations.append(it)
            shapes.append(shape)
            plans.append(candidate)
            width = it.ci95_ms[1] - it.ci95_ms[0]
            if width > high - low:
                raise BudgetError(
                    f"Budget({budget}) on {device}: the device's noise cannot resolve it: the p50's 95 % "
                    f"CI is {width:.3f} ms wide ({it.ci95_ms[0]:.3f}–{it.ci95_ms[1]:.3f} ms), wider than the "
                    f"window {low:.3f}–{high:.3f} ms; measure longer (BenchSettings(min_seconds=...)), quiet "
                    "the device, or give a looser budget")
            return it

        measured = run().measured_ms
        if low <= measured <= high:
            # once more, to tell a plan inside the window from a run that landed there by chance: the
            # within-run CI does not see the spread between runs (process start, the device's state)
            again = run().measured_ms
            if low <= again <= high:
                candidate.budget = budget
                candidate.iterations = iterations
                candidate.measured_latency_ms = max(measured, again)
                candidate.dense_latency_ms = dense_ms
                return candidate
            measured = (measured + again) / 2
        # the next plan aims at the same latency, predicted by a model that now knows this measurement
        latency.correct(shape, measured)
    raise BudgetError(f"Budget({budget}) on {device}: not met in {max_iterations} measurements: "
                      + "; ".join(f"{i.macs_ratio:.2f} of the MACs measured {i.measured_ms:.3f} ms" for i in iterations)
                      + f" (window {low:.3f}–{high:.3f} ms)")


# measured on the exported artifact of an MCU target: TFLite-Micro's arena, the stored file
ARTIFACT_MEASURED = (SramBudget, FlashBudget)


def measured_memory(manifest: dict) -> Estimate:
    """SRAM and flash as export measured them: TFLite-Micro's arena (or Vela's SRAM, when larger) and the
    file the firmware stores (Vela's compiled file for Ethos-U)."""
    memory = manifest.get("memory") or {}
    vela = memory.get("vela") or {}
    sram = max(memory.get("tflm_arena_bytes") or 0, vela.get("sram_bytes") or 0) or None
    return Estimate(sram_bytes=sram, flash_bytes=vela.get("vela_tflite_bytes") or manifest.get("size_bytes"))


def plan_to_fit(model: nn.Module, example_inputs: Any, target: "Target | str", budget: Budget, *,
                calibration: Any = None, max_iterations: int = 4, margin: float = 0.98,
                **plan_kwargs) -> Plan:
    """A plan whose int8 artifact fits `budget` as export measures it. The policy's estimate of activation
    memory is a lower bound of the arena (which also holds tensors later layers still need, and scratch
    buffers), and weights gain quantization scales and the file's own structure: each miss shrinks what the
    search aims at by the measured overshoot (and `margin`), until the artifact fits."""
    target = load_target(target)
    if target.family != "mcu":
        raise BudgetError(f"Budget({budget}) is measured on the artifact only for MCU targets (TFLite-Micro's "
                          f"arena, the stored file); {target.name} is {target.family}: plan without calibration=")
    aim, iterations, pairs = budget, [], []
    calibration = list(calibration) if calibration is not None else []
    with tempfile.TemporaryDirectory(prefix="edgeprune-fit-") as tmp:
        for k in range(max_iterations):
            try:
                candidate = plan_with_model(model, example_inputs, target, aim, **plan_kwargs)
            except BudgetError as exc:
                if not iterations:
                    raise
                raise BudgetError(f"Budget({budget}) cannot be met on {target.name}'s artifact: "
                                  + "; ".join(iterations) + f"; to measure {budget.value:g} the policy's estimate "
                                  f"would have to be {aim.value:.2f}: {exc}") from None
            artifact = export(prune(model, candidate), example_inputs, target, Path(tmp) / f"iteration-{k}",
                              calibration=calibration)
            measured = candidate.estimate().but(**{f: getattr(measured_memory(artifact.manifest), f)
                                                   for f in ("sram_bytes", "flash_bytes")})
            quantity, estimated = budget.quantity(measured), budget.quantity(candidate.estimate())
            pairs.append((estimated, quantity))
            iterations.append(f"aimed {aim.value:.1f}, estimated {estimated:.1f}, measured {quantity:.1f} "
                              f"({budget.meaning})")
            if budget.meets(measured):
                candidate.budget = budget
                candidate.measured_flash_bytes, candidate.measured_sram_bytes = measured.flash_bytes, measured.sram_bytes
                candidate.notes.append(f"{budget} met on the exported artifact: " + "; ".join(iterations))
                return candidate
            aim = type(budget)(margin * _estimate_for(budget.value, pairs))
    raise BudgetError(f"Budget({budget}) not met on {target.name}'s artifact in {max_iterations} exports: "
                      + "; ".join(iterations))


def _estimate_for(goal: float, pairs: list[tuple[float, float]]) -> float:
    """The estimate whose artifact should measure `goal`, from the (estimated, measured) pairs so far: the
    line through the last two (an arena grows with the activations it holds), or, after one, the same
    offset (a file adds its own structure and quantization parameters to the weights)."""
    (e1, m1) = pairs[-1]
    if len(pairs) >= 2:
        e0, m0 = pairs[-2]
        slope = (m1 - m0) / (e1 - e0) if e1 != e0 else 0.0
        if slope > 0:
            return e1 + (goal - m1) / slope
    return e1 + (goal - m1)


def _channels(pruned: nn.Module, latency: LatencyModel) -> dict[str, tuple[int, int]]:
    """The pruned model's (in, out) channels of each layer in the latency model."""
    modules = dict(pruned.named_modules())
    return {name: channels(modules[name])[::-1] for name in latency.layers}


def _settled(iterations: list[Iteration], plans: list[Plan], shapes: list[dict], high: float) -> Optional[Plan]:
    """The largest plan (most MACs) whose every measurement was under `high`, measured at least twice, with
    the loop's measurements up to now; None if there is none."""
    runs: dict[int, list[int]] = {}
    for k, shape in enumerate(shapes):
        runs.setdefault(next(j for j, s in enumerate(shapes) if s == shape), []).append(k)
    under = [ks for ks in runs.values() if len(ks) >= 2 and all(iterations[k].measured_ms <= high for k in ks)]
    if not under:
        return None
    ks = max(under, key=lambda ks: iterations[ks[0]].macs_ratio)
    plan = copy.deepcopy(plans[ks[0]])
    plan.iterations = list(iterations)
    plan.measured_latency_ms = max(iterations[k].measured_ms for k in ks)
    return plan


def _stuck(budget: Budget, goal: LatencyBudget, device: str, iterations: list[Iteration], same: list[float],
           low: float, high: float) -> str:
    """Why the loop chose a plan it had measured twice already: the device's noise between runs is wider
    than the window, or no plan the target's alignment allows lands inside it."""
    said = f"Budget({budget})" + (f" ({goal.value:.3f} ms)" if goal is not budget else "")
    if max(same) - min(same) > high - low:
        return (f"{said} on {device}: the device's noise cannot resolve it: one plan measured "
                f"{min(same):.3f}–{max(same):.3f} ms in separate runs, wider than the window {low:.3f}–{high:.3f} ms; "
                "quiet the device (pin cores in devices.toml), measure longer, or give a looser budget")
    below = max((i for i in iterations if i.measured_ms < low), key=lambda i: i.measured_ms, default=None)
    above = min((i for i in iterations if i.measured_ms > high), key=lambda i: i.measured_ms, default=None)
    nearest = "; ".join(f"{i.macs_ratio:.2f} of the MACs measured {i.measured_ms:.3f} ms" for i in (below, above) if i)
    return (f"{said} on {device}: no plan lands in the window {low:.3f}–{high:.3f} ms: the nearest plans "
            f"({nearest}) are one step of the target's channel alignment apart; choose a budget at one of them, "
            "or widen the window")


def _unreachable(budget: Budget, goal: LatencyBudget, device: str, iterations: list[Iteration],
                 exc: BudgetError) -> str:
    said = f"Budget({budget})" + (f" ({goal.value:.3f} ms)" if goal is not budget else "")
    if not iterations:
        return f"{said} on {device}: the latency model measured there predicts no plan reaches it: {exc}"
    fastest = min(iterations, key=lambda i: i.measured_ms)
    return (f"{said} cannot be met on {device}: after {len(iterations)} measurements no plan is predicted "
            f"to reach it; the fastest measured {fastest.measured_ms:.3f} ms (p50, {fastest.macs_ratio:.2f} of the "
            "MACs kept). Loosen the budget, or override layers in a recipe")
