"""`edgeprune choose`: measure the candidate prunings of a model on a device and say which to use."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .. import _atomic
from ..budget import Budget
from ..errors import EdgepruneError
from ._app import (BUDGET_OPTION, CALIBRATION_OPTION, DEVICES_OPTION, DTYPE_OPTION, FORCE_OPTION, INPUT_NAME_OPTION,
                   LATENCY_CACHE_OPTION, MODEL_OPTION, SHAPE_OPTION, TARGET_OPTION, TRUST_OPTION, WEIGHTS_OPTION, app,
                   console, fail, overwrite_option, styled)
from .data import calibration_inputs, labelled
from .models import dense, example_inputs
from .planning import progress_bar

# exit codes: a candidate meets the budget; none does; (2: a usage or device error, as everywhere)
CHOSEN, NONE_MEETS = 0, 1


@app.command("choose")
def choose_cmd(
    target: str = TARGET_OPTION, model: str = MODEL_OPTION, weights: Optional[Path] = WEIGHTS_OPTION,
    input_shape: Optional[str] = SHAPE_OPTION, input_name: Optional[str] = INPUT_NAME_OPTION,
    input_dtype: str = DTYPE_OPTION, budget: str = BUDGET_OPTION,
    device: str = typer.Option("local", "--device", "-d", help="where to measure: 'local' or a name in --devices"),
    devices: Optional[Path] = DEVICES_OPTION, latency_cache: Optional[Path] = LATENCY_CACHE_OPTION,
    trust_new_host_key: bool = TRUST_OPTION, calibration: Optional[str] = CALIBRATION_OPTION,
    val_data: Optional[Path] = typer.Option(None, "--val-data", help="labelled validation data (.safetensors "
                                            "with x and y): each candidate's accuracy is estimated on it"),
    data: Optional[Path] = typer.Option(None, "--data", help="labelled training data, like --val-data: BatchNorm "
                                        "statistics recomputed on it, and --recover-epochs of recovery"),
    recover_epochs: int = typer.Option(0, "--recover-epochs", min=0, help="epochs of recovery (distilled from "
                                       "the dense model) before each candidate's accuracy is measured"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="also write the choice and every candidate here"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="also draw accuracy against measured latency here "
                                        "(a PNG; needs --val-data)"),
    overwrite: bool = overwrite_option("an existing --json file"), force: bool = FORCE_OPTION,
) -> None:
    """Measure each candidate pruning of MODEL for TARGET within the budget on the device (the target's
    rules, channels only, its N:M pattern, unstructured) and say which to use. Exit 0 when one meets the
    budget, 1 when none does, 2 on a usage or device error."""
    from ..choosing import choose

    overwrite = overwrite or force
    try:
        for out in (p for p in (json_out, plot) if p is not None):
            _atomic.check_file_output(out, overwrite=overwrite)
            _atomic.check_writable(out)
        if plot is not None and val_data is None:
            raise EdgepruneError("--plot draws accuracy against latency: pass --val-data to estimate accuracy")
        if recover_epochs and data is None:
            raise EdgepruneError("--recover-epochs needs --data (the training data to recover on)")
        module = dense(model, weights)
        inputs = example_inputs(model, input_shape, input_name, input_dtype)
        val = _loader(labelled("--val-data", val_data)) if val_data is not None else None
        train = _loader(labelled("--data", data), shuffle=True) if data is not None else None
        with progress_bar("choose") as report:
            choice = choose(module, inputs, target, Budget.parse(budget), device=device, devices=devices,
                            val_data=val, train_data=train, recover_epochs=recover_epochs,
                            calibration=calibration_inputs(calibration, inputs), cache_dir=latency_cache,
                            trust_new_host_key=trust_new_host_key, progress=report)
        console.print(choice.table())
        for line in choice.reasons():
            console.print(f"- {line}", highlight=False, soft_wrap=True)
        console.print(styled("choice:", "bold green" if choice.chosen else "bold red", choice.why), highlight=False,
                      soft_wrap=True)
        for note in choice.notes:
            console.print(styled("note:", "bold yellow", note), highlight=False, soft_wrap=True)
        if choice.accuracy_source:
            console.print(f"accuracy: {choice.accuracy_source}", highlight=False, soft_wrap=True)
        if json_out is not None:
            _atomic.write_text(json_out, json.dumps(choice.to_dict(), indent=2), overwrite=overwrite)
            console.print(f"wrote {json_out}")
        if plot is not None:
            from ..plots import plot_pareto

            console.print(f"wrote {plot_pareto([choice], plot, overwrite=overwrite)}")
    except EdgepruneError as exc:
        fail(exc)
    raise typer.Exit(CHOSEN if choice.chosen else NONE_MEETS)


def _loader(xy, shuffle: bool = False):
    """(x, y) in batches, as accuracy and finetune take them (training data shuffled, seeded)."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    return DataLoader(TensorDataset(*xy), batch_size=64 if shuffle else 256, shuffle=shuffle,
                      generator=torch.Generator().manual_seed(0) if shuffle else None)
