"""`edgeprune deploy`: ship an exported artifact to a device, build what it runs there, check its outputs
there, and bring back a bundle the application loads."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..errors import DeployError, EdgepruneError
from ._app import (DEVICES_OPTION, DTYPE_OPTION, FORCE_OPTION, INPUT_NAME_OPTION, SHAPE_OPTION, TRUST_OPTION, app,
                   console, err_console, fail, interrupted, overwrite_option, styled, warn)
from .data import samples
from .export import exportable
from .models import example_inputs


def kernels_table(layers) -> Table:
    table = Table(title="TensorRT kernels per plan layer", title_justify="left")
    for column in ("layer", "plan", "engine layer", "sparse kernel", "tactic"):
        table.add_column(column)
    for r in layers:
        table.add_row(r.layer, r.method, r.engine_layer or "-", "yes" if r.sparse_kernel else "no", r.tactic or "-")
    return table


def checks_table(deployment) -> Table:
    table = Table(title=f"outputs on the device ({deployment.runtime} {deployment.runtime_version})",
                  title_justify="left")
    for column in ("output", "max |a-b|", "cosine", "top-1", "tolerance", ""):
        table.add_column(column)
    for c in deployment.outputs:
        table.add_row(str(c["output"]), f"{c['max_abs_err']:.3g}", f"{c['cosine']:.5f}", f"{c['top1_agreement']:.2f}",
                      c["tolerance"], "passed" if c["passed"] else "FAILED")
    return table


@app.command("deploy")
def deploy_cmd(
    artifact: Path = typer.Argument(..., help="a .pte, .tflite or .onnx made by `edgeprune export` (with its manifest "
                                    "and reference beside it)"),
    out: Path = typer.Option(..., "--out", "-o", help="the bundle directory to write"),
    devices: Optional[Path] = DEVICES_OPTION,
    device: str = typer.Option("local", "--device", "-d", help="the device's name in the inventory"),
    precision: Optional[str] = typer.Option(None, "--precision", help="a TensorRT engine's: fp16 (default), int8 "
                                            "(from an int8 export), fp32"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="compute the reference outputs from this model "
                                        "(package.module:function) instead of the ones export wrote"),
    weights: Optional[Path] = typer.Option(None, "--weights", "-w", help="with --model: a saved model directory or "
                                           ".safetensors weights"),
    verify_data: Optional[Path] = typer.Option(None, "--verify-data", help="with --model: a .safetensors of inputs "
                                               "to check on (an int8 artifact needs it)"),
    input_shape: Optional[str] = SHAPE_OPTION,
    input_name: Optional[str] = INPUT_NAME_OPTION,
    input_dtype: str = DTYPE_OPTION,
    overwrite: bool = overwrite_option("a non-empty --out directory"), force: bool = FORCE_OPTION,
    trust_new_host_key: bool = TRUST_OPTION,
) -> None:
    """Deploy ARTIFACT to a device: upload it (sha256-checked), build what the device runs (a TensorRT engine on a
    Jetson), run it there on the reference inputs and compare with PyTorch's outputs, and write the bundle:
    the file to load, deploy.json, the reference and device outputs, a README. Exit 0 passed, 1 the outputs on
    the device differ, 2 a usage or device error."""
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from ..deployment import deploy

    kwargs = {}
    try:
        if model is not None:
            example = example_inputs(model, input_shape, input_name, input_dtype)
            kwargs = {"model": exportable(model, weights), "example_inputs": example,
                      "verify_inputs": samples("--verify-data", verify_data, example) if verify_data else None}
        elif weights is not None or verify_data is not None:
            raise EdgepruneError("--weights and --verify-data go with --model (the model to compute the reference "
                                 "outputs from)")
    except (EdgepruneError, ValueError) as exc:
        fail(exc)
    with Progress(SpinnerColumn(), TextColumn("{task.description}", markup=False), BarColumn(), TimeElapsedColumn(),
                  console=err_console, transient=True) as bar:
        task = bar.add_task("connect", total=None)

        def on_progress(stage: str, info: dict) -> None:
            if stage == "upload-progress":
                bar.update(task, description=f"upload {info['done'] / 2**20:.1f} MiB", completed=info["done"],
                           total=info["total"])
            elif stage == "measure" and info.get("stage"):
                bar.update(task, description=f"{'build/load' if info['stage'] == 'load' else 'run'} "
                           f"{info.get('elapsed_s', 0):.1f} s", total=None)
            elif stage != "measure":
                bar.update(task, description=f"{stage} {info.get('file', '')}".strip(), total=None)

        try:
            result = deploy(artifact, device, out, devices=devices, precision=precision, force=overwrite or force,
                            trust_new_host_key=trust_new_host_key, progress=on_progress, **kwargs)
        except KeyboardInterrupt as exc:
            bar.stop()
            interrupted(exc)
        except DeployError as exc:
            bar.stop()
            err_console.print(styled("failed:", "bold red", str(exc)), highlight=False, soft_wrap=True)
            raise typer.Exit(code=1)
        except (EdgepruneError, ValueError) as exc:
            bar.stop()
            fail(exc)
    console.print(checks_table(result))
    if result.layers:
        console.print(kernels_table(result.layers))
    for message in result.warnings:
        warn(message)
    console.print(styled("passed:", "bold green", f"{result.artifact} ({result.runtime} {result.runtime_version} on "
                         f"'{device}'); bundle in {result.out}"), highlight=False, soft_wrap=True)
