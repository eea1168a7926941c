"""The `edgeprune` command line: targets, plan, prune."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.syntax import Syntax
from rich.table import Table

from . import _atomic
from .budget import Budget
from .errors import EdgepruneError, ModelError
from .factory import build, default_inputs
from .targets import builtin_targets, load_target

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Prune PyTorch models for the device they run on.")
targets_app = typer.Typer(help="List the built-in target profiles, or show one.")
app.add_typer(targets_app, name="targets")
console = Console()
err_console = Console(stderr=True)


def _fail(exc: Exception) -> None:
    err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def _size(n: int) -> str:
    if not n:
        return "—"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:g} {unit}"
    return f"{n} B"


@targets_app.callback(invoke_without_command=True)
def targets(ctx: typer.Context) -> None:
    """List the built-in target profiles."""
    if ctx.invoked_subcommand:
        return
    table = Table(title="built-in targets")
    table.add_column("name", no_wrap=True)
    for col in ("family", "accelerates", "align", "precisions", "SRAM", "flash", "runtime"):
        table.add_column(col)
    for name in builtin_targets():
        t = load_target(name)
        nm = f" ({t.sparsity.nm.n}:{t.sparsity.nm.m})" if t.sparsity.nm else ""
        table.add_row(
            name, t.family, ", ".join(t.sparsity.accelerated) + nm, str(t.alignment.channel_multiple),
            "/".join(t.precision.supported), _size(t.memory.sram_bytes), _size(t.memory.flash_bytes),
            f"{t.runtime.preferred} (.{t.runtime.export_format})",
        )
    console.print(table)


@targets_app.command("show")
def targets_show(name: str = typer.Argument(..., help="a built-in name or a path to a .toml profile")) -> None:
    """Print one profile, with the sources of its numbers."""
    try:
        target = load_target(name)
    except EdgepruneError as exc:
        _fail(exc)
    console.print(f"[bold]{target.name}[/] — {target.description}  ([dim]{target.source}[/])")
    console.print(Syntax(Path(target.source).read_text(encoding="utf-8"), "toml", word_wrap=True))


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in re.split(r"[,x×]", text.strip()))
    except ValueError:
        raise ModelError(f"--input-shape {text!r}: expected integers separated by commas, e.g. 1,3,224,224") from None
    if not shape or any(d <= 0 for d in shape):
        raise ModelError(f"--input-shape {text!r}: every dimension must be a positive integer")
    return shape


def _example_inputs(model_spec: str, shape: Optional[str], name: Optional[str], dtype: str) -> Any:
    import torch

    if shape is None:
        inputs = default_inputs(model_spec)
        if inputs is None:
            raise ModelError(f"{model_spec} has no example_inputs(); pass --input-shape (and --input-name for keywords)")
        return inputs
    torch_dtype = getattr(torch, dtype, None)
    if not isinstance(torch_dtype, torch.dtype):
        raise ModelError(f"--input-dtype {dtype!r} is not a torch dtype")
    dims = _parse_shape(shape)
    gen = torch.Generator().manual_seed(0)
    tensor = (torch.randn(dims, generator=gen).to(torch_dtype) if torch_dtype.is_floating_point
              else torch.zeros(dims, dtype=torch_dtype))
    return {name: tensor} if name else (tensor,)


def _make_plan(target, model, budget, recipe, input_shape, input_name, input_dtype, importance, scope):
    from .policy import plan as make_plan

    module = build(model)
    inputs = _example_inputs(model, input_shape, input_name, input_dtype)
    return module, make_plan(module, inputs, target, Budget.parse(budget), recipe=recipe, importance=importance,
                             scope=scope)


_TARGET = typer.Option(..., "--target", "-t", help="built-in target name or path to a .toml profile")
_MODEL = typer.Option(..., "--model", "-m", help="model factory, package.module:function")
_SHAPE = typer.Option(None, "--input-shape", help="e.g. 1,3,224,224 (default: the factory's example_inputs)")
_NAME = typer.Option(None, "--input-name", help="pass the input as this keyword (pixel_values, input_ids)")
_DTYPE = typer.Option("float32", "--input-dtype")
_BUDGET = typer.Option("macs=0.5", "--budget", "-b", help="macs=R (keep at most R of the MACs) or sparsity=S")
_RECIPE = typer.Option(None, "--recipe", "-r", help="TOML file of per-layer overrides")
_IMPORTANCE = typer.Option("l2", "--importance", help="l1 | l2 | bn_scale | taylor")
_SCOPE = typer.Option("per-layer", "--scope", help="per-layer | global")


@app.command("plan")
def plan_cmd(
    target: str = _TARGET, model: str = _MODEL, input_shape: Optional[str] = _SHAPE,
    input_name: Optional[str] = _NAME, input_dtype: str = _DTYPE, budget: str = _BUDGET,
    recipe: Optional[Path] = _RECIPE, importance: str = _IMPORTANCE, scope: str = _SCOPE,
    json_out: Optional[Path] = typer.Option(None, "--json", help="also write the plan as JSON here"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing --json file"),
) -> None:
    """Decide per layer how to prune MODEL for TARGET, print the plan and optionally write it as JSON."""
    try:
        if json_out is not None and json_out.exists() and not overwrite:
            raise EdgepruneError(f"{json_out}: already exists; pass --overwrite to replace it")
        _, result = _make_plan(target, model, budget, recipe, input_shape, input_name, input_dtype, importance, scope)
        console.print(result.table())
        if json_out is not None:
            _atomic.write_text(json_out, result.to_json(), overwrite=overwrite)
            console.print(f"wrote {json_out}")
    except EdgepruneError as exc:
        _fail(exc)


@app.command("prune")
def prune_cmd(
    target: str = _TARGET, model: str = _MODEL, input_shape: Optional[str] = _SHAPE,
    input_name: Optional[str] = _NAME, input_dtype: str = _DTYPE, budget: str = _BUDGET,
    recipe: Optional[Path] = _RECIPE, importance: str = _IMPORTANCE, scope: str = _SCOPE,
    out: Path = typer.Option(..., "--out", "-o", help="directory to save the pruned model in (safetensors + JSON)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing --out directory"),
) -> None:
    """Plan, prune and save MODEL for TARGET; `edgeprune.load(factory, OUT)` rebuilds it."""
    from .costs import compare_table, measure
    from .pruning import prune
    from .serialization import save

    try:
        if out.exists() and not overwrite:
            raise EdgepruneError(f"{out}: already exists; pass --overwrite to replace it")
        module, result = _make_plan(target, model, budget, recipe, input_shape, input_name, input_dtype, importance, scope)
        console.print(result.table())
        pruned = prune(module, result)
        save(pruned, result, out, factory=model, overwrite=overwrite)
        inputs = result.example()
        console.print(compare_table(measure(module, inputs), measure(pruned, inputs)))
        console.print(f"saved to {out}")
    except EdgepruneError as exc:
        _fail(exc)


def _calibration(spec: Optional[str], example: Any) -> Optional[list]:
    """`random:N` (N random inputs shaped like the example — a smoke test, not real calibration) or a
    .safetensors file whose tensors are named like the inputs, samples along the first dimension."""
    if spec is None:
        return None
    from .inputs import InputSpec, normalize

    if spec.startswith("random:"):
        try:
            count = int(spec.split(":", 1)[1])
        except ValueError:
            raise EdgepruneError(f"--calibration {spec!r}: expected random:N, e.g. random:16") from None
        shape_spec = InputSpec.of(example)
        return [shape_spec.make(seed=10_000 + i) for i in range(count)]
    import safetensors.torch

    path = Path(spec)
    try:
        tensors = safetensors.torch.load_file(str(path))
    except FileNotFoundError:
        raise EdgepruneError(f"--calibration {path}: file not found") from None
    except Exception as exc:
        raise EdgepruneError(f"--calibration {path}: not a safetensors file ({exc})") from None
    args, kwargs = normalize(example)
    names = list(kwargs) if kwargs else [f"input_{i}" for i in range(len(args))]
    missing = [n for n in names if n not in tensors]
    if missing:
        raise EdgepruneError(f"--calibration {path}: no tensor named {missing[0]!r} (has: {', '.join(tensors)})")
    count = tensors[names[0]].shape[0]
    items = [{n: tensors[n][i : i + 1] for n in names} for i in range(count)]
    return items if kwargs else [tuple(item[n] for n in names) for item in items]


@app.command("export")
def export_cmd(
    target: str = _TARGET, model: str = _MODEL, input_shape: Optional[str] = _SHAPE,
    input_name: Optional[str] = _NAME, input_dtype: str = _DTYPE,
    weights: Optional[Path] = typer.Option(None, "--weights", "-w", help="a pruned model saved by `prune --out`"),
    int8: bool = typer.Option(False, "--int8", help="full-int8 (PT2E static quantization); needs --calibration"),
    calibration: Optional[str] = typer.Option(None, "--calibration", help="a .safetensors of inputs, or random:N"),
    fmt: Optional[str] = typer.Option(None, "--format", "-f", help="pte | tflite | onnx (default: the profile's)"),
    out: Path = typer.Option(..., "--out", "-o", help="directory for the artifact and its manifest"),
    force: bool = typer.Option(False, "--force", help="replace an existing artifact"),
) -> None:
    """Export MODEL (or the pruned model in --weights) for TARGET's runtime and verify it there."""
    from .export import export
    from .export.report import manifest_table
    from .serialization import load

    try:
        module = load(model, weights) if weights is not None else build(model)
        inputs = _example_inputs(model, input_shape, input_name, input_dtype)
        precision = "int8" if int8 else None
        art = export(module, inputs, target, out, precision=precision, calibration=_calibration(calibration, inputs),
                     format=fmt, force=force)
        console.print(manifest_table(art.manifest))
        console.print(f"wrote {art.path} and {art.manifest_path.name}")
    except EdgepruneError as exc:
        _fail(exc)


def main() -> None:  # pragma: no cover
    app()
