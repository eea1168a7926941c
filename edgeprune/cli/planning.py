"""`edgeprune plan` and `edgeprune prune`: decide per layer how to prune a model for a target, and do it."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from .. import _atomic
from ..budget import Budget
from ..errors import ArtifactError, EdgepruneError
from ._app import (BUDGET_OPTION, CALIBRATION_OPTION, DEVICES_OPTION, DTYPE_OPTION, FORCE_OPTION, IMPORTANCE_OPTION, INPUT_NAME_OPTION,
                   LATENCY_CACHE_OPTION, MODEL_OPTION, PLAN_DEVICE_OPTION, RECIPE_OPTION, SCOPE_OPTION,
                   SENSITIVITY_OPTION, SHAPE_OPTION, TARGET_OPTION, TRUST_OPTION, WEIGHTS_OPTION, app, console, fail,
                   overwrite_option, styled)
from .data import calibration_inputs
from .models import dense, example_inputs


def print_notes(plan) -> None:
    """What the plan's rows cannot show (rollbacks, recipe entries, flash), where the user reads the table."""
    for note in plan.notes:
        console.print(styled("note:", "bold yellow", note), highlight=False, soft_wrap=True)


def read_sensitivity(path: Optional[Path]):
    """The `--sensitivity` file `edgeprune sensitivity` wrote (sensitivity.json), or None."""
    if path is None:
        return None
    from ..sensitivity import Sensitivity

    try:
        return Sensitivity.from_json(read_text(path))
    except EdgepruneError as exc:
        if str(path) in str(exc):
            raise
        raise EdgepruneError(f"--sensitivity {path}: {exc}") from None


def read_text(path: Path) -> str:
    if path.is_dir():
        raise ArtifactError(f"{path}: is a directory; name a file")
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ArtifactError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None


def make_plan(target, model, weights, budget, recipe, sensitivity, input_shape, input_name, input_dtype,
              importance, scope, on_device: "OnDevice | None" = None, calibration: Optional[str] = None):
    from ..closedloop import plan

    sens = read_sensitivity(sensitivity)
    module = dense(model, weights)
    inputs = example_inputs(model, input_shape, input_name, input_dtype)
    budget = Budget.parse(budget)
    kwargs = dict(recipe=recipe, importance=importance, scope=scope, sensitivity=sens,
                  calibration=calibration_inputs(calibration, inputs))
    if on_device is None or on_device.device is None:
        return module, plan(module, inputs, target, budget, **kwargs)
    with progress_bar("latency budget") as report:
        result = plan(module, inputs, target, budget, device=on_device.device, devices=on_device.devices,
                      cache_dir=on_device.cache, trust_new_host_key=on_device.trust, progress=report, **kwargs)
    console.print(result.iterations_table())
    return module, result


@contextmanager
def progress_bar(description: str) -> Iterator[Callable[[str, int, int], None]]:
    """A transient progress bar, and the `progress(what, done, total)` callback that moves it."""
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console,
                  transient=True) as bar:
        task = bar.add_task(description, total=None)

        def report(what: str, done: int, total: int) -> None:
            bar.update(task, description=what, completed=done, total=total)

        yield report


@dataclass(frozen=True)
class OnDevice:
    """Where `plan`/`prune` measure a latency budget (`--device`, `--devices`, `--latency-cache`)."""

    device: Optional[str]
    devices: Optional[Path]
    cache: Optional[Path]
    trust: bool


@app.command("plan")
def plan_cmd(
    target: str = TARGET_OPTION, model: str = MODEL_OPTION, weights: Optional[Path] = WEIGHTS_OPTION,
    input_shape: Optional[str] = SHAPE_OPTION, input_name: Optional[str] = INPUT_NAME_OPTION,
    input_dtype: str = DTYPE_OPTION, budget: str = BUDGET_OPTION, recipe: Optional[Path] = RECIPE_OPTION,
    sensitivity: Optional[Path] = SENSITIVITY_OPTION, importance: str = IMPORTANCE_OPTION, scope: str = SCOPE_OPTION,
    device: Optional[str] = PLAN_DEVICE_OPTION, devices: Optional[Path] = DEVICES_OPTION,
    latency_cache: Optional[Path] = LATENCY_CACHE_OPTION, trust_new_host_key: bool = TRUST_OPTION,
    calibration: Optional[str] = CALIBRATION_OPTION,
    json_out: Optional[Path] = typer.Option(None, "--json", help="also write the plan as JSON here"),
    overwrite: bool = overwrite_option("an existing --json file"), force: bool = FORCE_OPTION,
) -> None:
    """Decide per layer how to prune MODEL for TARGET, print the plan and optionally write it as JSON."""
    overwrite = overwrite or force
    try:
        if json_out is not None:
            _atomic.check_file_output(json_out, overwrite=overwrite)
            _atomic.check_writable(json_out)  # a read-only or foreign directory: said now, not after planning
        _, result = make_plan(target, model, weights, budget, recipe, sensitivity, input_shape, input_name,
                              input_dtype, importance, scope,
                              OnDevice(device, devices, latency_cache, trust_new_host_key), calibration)
        console.print(result.table())
        print_notes(result)
        if json_out is not None:
            _atomic.write_text(json_out, result.to_json(), overwrite=overwrite)
            console.print(f"wrote {json_out}")
    except EdgepruneError as exc:
        fail(exc)


@app.command("prune")
def prune_cmd(
    target: str = TARGET_OPTION, model: str = MODEL_OPTION, weights: Optional[Path] = WEIGHTS_OPTION,
    input_shape: Optional[str] = SHAPE_OPTION, input_name: Optional[str] = INPUT_NAME_OPTION,
    input_dtype: str = DTYPE_OPTION, budget: str = BUDGET_OPTION, recipe: Optional[Path] = RECIPE_OPTION,
    sensitivity: Optional[Path] = SENSITIVITY_OPTION, importance: str = IMPORTANCE_OPTION, scope: str = SCOPE_OPTION,
    device: Optional[str] = PLAN_DEVICE_OPTION, devices: Optional[Path] = DEVICES_OPTION,
    latency_cache: Optional[Path] = LATENCY_CACHE_OPTION, trust_new_host_key: bool = TRUST_OPTION,
    calibration: Optional[str] = CALIBRATION_OPTION,
    out: Path = typer.Option(..., "--out", "-o", help="directory to save the pruned model in (safetensors + JSON)"),
    overwrite: bool = overwrite_option("an existing --out directory"), force: bool = FORCE_OPTION,
) -> None:
    """Plan, prune and save MODEL for TARGET; `edgeprune.load(factory, OUT)` rebuilds it. Fine-tune it next
    (`edgeprune finetune`): a pruned model is not ready to ship."""
    from ..costs import compare_table, measure
    from ..pruning import prune
    from ..serialization import check_save_dir, save

    overwrite = overwrite or force
    try:
        check_save_dir(out, overwrite=overwrite)
        _atomic.check_writable(out)
        module, result = make_plan(target, model, weights, budget, recipe, sensitivity, input_shape, input_name,
                                   input_dtype, importance, scope,
                                   OnDevice(device, devices, latency_cache, trust_new_host_key), calibration)
        console.print(result.table())
        print_notes(result)
        pruned = prune(module, result)
        save(pruned, result, out, factory=model, overwrite=overwrite)
        inputs = result.example()
        console.print(compare_table(measure(module, inputs), measure(pruned, inputs)))
        console.print(f"saved to {out}")
    except EdgepruneError as exc:
        fail(exc)
