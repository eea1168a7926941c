"""`edgeprune export`: export a model for a target's runtime and verify the artifact there."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from .. import _atomic
from ..errors import EdgepruneError
from ._app import (CALIBRATION_OPTION, DTYPE_OPTION, FORCE_OPTION, INPUT_NAME_OPTION, MODEL_OPTION, SHAPE_OPTION, TARGET_OPTION, app,
                   console, fail, overwrite_option, warn)
from .data import calibration_inputs, samples
from .models import dense, example_inputs


def exportable(model_spec: str, weights: Optional[Path]):
    """What `export --weights` names: a saved (pruned) model directory, dense .safetensors weights, or nothing."""
    from ..serialization import load

    if weights is not None and weights.is_dir():
        return load(model_spec, weights)
    return dense(model_spec, weights)


@app.command("export")
def export_cmd(
    target: str = TARGET_OPTION, model: str = MODEL_OPTION, input_shape: Optional[str] = SHAPE_OPTION,
    input_name: Optional[str] = INPUT_NAME_OPTION, input_dtype: str = DTYPE_OPTION,
    weights: Optional[Path] = typer.Option(None, "--weights", "-w", help="a model saved by `prune --out` or "
                                           "`finetune --out` (a directory), or dense weights (.safetensors)"),
    int8: bool = typer.Option(False, "--int8", help="full-int8 (PT2E static quantization); needs --calibration"),
    calibration: Optional[str] = CALIBRATION_OPTION,
    verify_data: Optional[Path] = typer.Option(None, "--verify-data", help="a .safetensors of inputs to verify "
                                               "the artifact on, named like --calibration's (default: held-out "
                                               "calibration samples, else random inputs)"),
    allow_other_target: bool = typer.Option(False, "--allow-other-target", help="export a model pruned for "
                                            "another target (its plan's) for TARGET anyway"),
    fmt: Optional[str] = typer.Option(None, "--format", "-f", help="pte | tflite | onnx (default: the profile's)"),
    out: Path = typer.Option(..., "--out", "-o", help="directory for the artifact and its manifest"),
    overwrite: bool = overwrite_option("an existing artifact and manifest"), force: bool = FORCE_OPTION,
) -> None:
    """Export MODEL (or the model in --weights) for TARGET's runtime and verify it there."""
    from ..export import export
    from ..export.report import manifest_table
    from ..pruning import record_of

    try:
        _atomic.check_dir_output(out)
        _atomic.check_writable(out)
        module = exportable(model, weights)
        inputs = example_inputs(model, input_shape, input_name, input_dtype)
        precision = "int8" if int8 else None
        verify_inputs = samples("--verify-data", verify_data, inputs) if verify_data is not None else None
        record = record_of(module)
        if record is not None and record.plan.sparsity > 0 and not record.finetuned:
            # one-shot pruning without recovery costs accuracy (the demo's digits CNN falls to about a third)
            warn(f"{weights}: this pruned model was never fine-tuned, so it may have lost much of its accuracy; "
                 "run `edgeprune finetune` on it first, or check its accuracy before shipping it")
        art = export(module, inputs, target, out, precision=precision,
                     calibration=calibration_inputs(calibration, inputs), format=fmt, force=overwrite or force,
                     verify_inputs=verify_inputs, allow_other_target=allow_other_target)
        console.print(manifest_table(art.manifest))
        console.print(f"wrote {art.path} and {art.manifest_path.name}")
    except EdgepruneError as exc:
        fail(exc)
