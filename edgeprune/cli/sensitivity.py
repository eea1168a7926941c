"""`edgeprune sensitivity`: prune each layer alone as the target would and measure what it costs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .. import _atomic
from ..errors import EdgepruneError
from ._app import (DTYPE_OPTION, FORCE_OPTION, INPUT_NAME_OPTION, MODEL_OPTION, SHAPE_OPTION, TARGET_OPTION,
                   WEIGHTS_OPTION, app, console, fail, overwrite_option)
from .data import labelled, load_tensors
from .models import dense, example_inputs


def validation(digits: bool, data: Optional[Path]):
    """(x, y) for the sensitivity metric: scikit-learn's digits test split, or a .safetensors file
    holding tensors named `x` (inputs, samples along the first dimension) and `y` (integer labels)."""
    if digits == (data is not None):
        raise EdgepruneError("pass exactly one of --digits or --data F.safetensors")
    if digits:
        from ..zoo import digits as load_digits

        return load_digits("test")
    return labelled("--data", data)


def bn_data_of(source: Optional[str]):
    """(x, y) whose x recomputes BatchNorm statistics: 'digits' (the training split) or a .safetensors with x."""
    if source is None:
        return None
    if source == "digits":
        from ..zoo import digits as load_digits

        return load_digits("train")
    import torch

    tensors = load_tensors("--bn-data", Path(source))
    if "x" not in tensors:
        raise EdgepruneError(f"--bn-data {source}: no tensor named 'x' (has: {', '.join(tensors)})")
    return tensors["x"], torch.zeros(len(tensors["x"]), dtype=torch.long)  # labels unused: statistics only


@app.command("sensitivity")
def sensitivity_cmd(
    target: str = TARGET_OPTION, model: str = MODEL_OPTION, weights: Optional[Path] = WEIGHTS_OPTION,
    input_shape: Optional[str] = SHAPE_OPTION,
    input_name: Optional[str] = INPUT_NAME_OPTION,
    input_dtype: str = DTYPE_OPTION,
    digits: bool = typer.Option(False, "--digits", help="validate on scikit-learn's digits (test split)"),
    data: Optional[Path] = typer.Option(None, "--data", help=".safetensors with tensors x (inputs) and y (labels)"),
    amounts: str = typer.Option("0.25,0.5,0.75", "--amounts", help="fractions to prune each layer by"),
    out: Path = typer.Option(..., "--out", "-o", help="directory for sensitivity.json and sensitivity.png"),
    overwrite: bool = overwrite_option("existing files in --out"), force: bool = FORCE_OPTION,
    bn_data: Optional[str] = typer.Option(None, "--bn-data", help="recompute each pruned copy's BatchNorm statistics "
                                          "first: 'digits' (training split) or a .safetensors with tensor x"),
) -> None:
    """Prune each layer of MODEL alone as TARGET would, measure top-1 accuracy, write JSON and a plot."""
    from ..sensitivity import sensitivity

    overwrite = overwrite or force
    try:
        try:
            fractions = tuple(float(a) for a in amounts.split(","))
        except ValueError:
            raise EdgepruneError(f"--amounts {amounts!r}: expected fractions separated by commas, e.g. 0.25,0.5") from None
        json_path, png_path = _atomic.check_dir_output(out) / "sensitivity.json", out / "sensitivity.png"
        for path in (json_path, png_path):
            _atomic.check_file_output(path, overwrite=overwrite)
        _atomic.check_writable(out)
        val = validation(digits, data)
        module = dense(model, weights)
        inputs = example_inputs(model, input_shape, input_name, input_dtype)
        result = sensitivity(module, inputs, val, None, target, amounts=fractions, calibration_data=bn_data_of(bn_data))
        table = Table(title=f"sensitivity for {result.target} (baseline {result.baseline:.4g})")
        for col in ("layer", "method", *(f"{a:.0%}" for a in fractions)):
            table.add_column(col)
        for r in result.rows:
            cells = {f"{a:.0%}": f"{v:.4g} ({result.points(-d)})" for a, v, d in zip(r.amounts, r.values, r.drops)}
            table.add_row(r.layer, r.method, *(cells.get(f"{a:.0%}", "") for a in fractions))
        console.print(table)
        _atomic.write_text(json_path, result.to_json(), overwrite=overwrite)
        result.plot(png_path, overwrite=overwrite)
        console.print(f"wrote {json_path} and {png_path}")
    except EdgepruneError as exc:
        fail(exc)
