"""The `edgeprune` command line: targets, plan, prune, finetune, export, bench, devices, sensitivity, demo."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text
from typer.core import TyperCommand

from . import _atomic
from ._version import __version__
from .budget import Budget
from .errors import ArtifactError, EdgepruneError, ModelError
from .factory import build, default_inputs
from .history import DEFAULT_PATH as DEFAULT_HISTORY
from .history import ENV_VAR as HISTORY_ENV_VAR
from .history import open_history
from .inputs import check_size
from .targets import builtin_targets, load_target

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Prune PyTorch models for the device they run on.")
targets_app = typer.Typer(help="List the built-in target profiles, or show one.")
app.add_typer(targets_app, name="targets")
# no markup interpretation, anywhere: paths, device names, layer names and error messages are the user's
# text, and `[/x]` or `[bold]` in them must print as typed (rich would parse them as tags, or fail on them).
# Styled words are rich Text objects instead (`_styled`).
console = Console(markup=False)
err_console = Console(stderr=True, markup=False)


def _styled(label: str, style: str, message: str = "") -> Text:
    """`label` in `style`, then `message` as plain text."""
    return Text.assemble((label, style), (" " + message) if message else "")


def _version(value: bool) -> None:
    if value:
        console.print(f"edgeprune {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print the version and exit"),
) -> None:
    # `--model mymodels:net` names a module beside the user, as `python -m` finds one: the current directory
    # goes first on the import path (an installed console script would otherwise only see site-packages)
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())


def _print_notes(plan) -> None:
    """What the plan's rows cannot show (rollbacks, recipe entries, flash), where the user reads the table."""
    for note in plan.notes:
        console.print(_styled("note:", "bold yellow", note), highlight=False, soft_wrap=True)


def _fail(exc: "Exception | str") -> None:
    err_console.print(_styled("error:", "bold red", str(exc)), highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def _os_error(exc: OSError, params: dict) -> str:
    """An OSError that reached a command (a full disk, a read-only file system): the path and the reason.
    Where the OS named no file, the command's outputs are named: writing them is what fails that way."""
    where = exc.filename or ", ".join(str(params[k]) for k in ("out", "json_out") if params.get(k) is not None)
    reason = exc.strerror or str(exc)
    return f"{where}: {reason}" if where else reason


class _Command(TyperCommand):
    """Every command's last line of defence: an EdgepruneError, or an OSError from the file system (a full
    disk, a read-only output), is an `error:` line naming the path and exit code 2, never a traceback.
    Given to every command at the end of this module."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EdgepruneError as exc:
            _fail(exc)
        except OSError as exc:
            _fail(_os_error(exc, ctx.params))


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
    console.print(Text.assemble((target.name, "bold"), f" — {target.description}  (", (str(target.source), "dim"), ")"))
    hw = target.hardware  # as loaded: a profile's "host" values are this machine's, read now
    console.print(f"hardware as loaded: {hw.cpu}; {hw.cores} cores at {hw.clock_hz / 1e9:.2f} GHz; "
                  f"SIMD {hw.simd} ({hw.simd_width_bits}-bit)", highlight=False)
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
    check_size(dims, torch_dtype, f"--input-shape {shape}")  # refused before allocating, not killed by the kernel
    gen = torch.Generator().manual_seed(0)
    tensor = (torch.randn(dims, generator=gen).to(torch_dtype) if torch_dtype.is_floating_point
              else torch.zeros(dims, dtype=torch_dtype))
    return {name: tensor} if name else (tensor,)


def _dense(model_spec: str, weights: Optional[Path]):
    """The factory's dense model, with trained weights from `--weights F.safetensors` when given."""
    from .serialization import load_weights

    return build(model_spec) if weights is None else load_weights(model_spec, weights)


def _read_sensitivity(path: Optional[Path]):
    """The `--sensitivity` file `edgeprune sensitivity` wrote (sensitivity.json), or None."""
    if path is None:
        return None
    from .sensitivity import Sensitivity

    try:
        return Sensitivity.from_json(_read_text(path))
    except EdgepruneError as exc:
        if str(path) in str(exc):
            raise
        raise EdgepruneError(f"--sensitivity {path}: {exc}") from None


def _read_text(path: Path) -> str:
    if path.is_dir():
        raise ArtifactError(f"{path}: is a directory; name a file")
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ArtifactError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None


def _make_plan(target, model, weights, budget, recipe, sensitivity, input_shape, input_name, input_dtype,
               importance, scope):
    from .policy import plan as make_plan

    sens = _read_sensitivity(sensitivity)
    module = _dense(model, weights)
    inputs = _example_inputs(model, input_shape, input_name, input_dtype)
    return module, make_plan(module, inputs, target, Budget.parse(budget), recipe=recipe, importance=importance,
                             scope=scope, sensitivity=sens)


_TARGET = typer.Option(..., "--target", "-t", help="built-in target name or path to a .toml profile")
_MODEL = typer.Option(..., "--model", "-m", help="model factory, package.module:function (the current directory "
                      "is on the import path)")
_WEIGHTS = typer.Option(None, "--weights", "-w", help="trained weights of the dense model: a .safetensors file "
                        "(safetensors.torch.save_model(model, path)); default: the factory's own")
_SHAPE = typer.Option(None, "--input-shape", help="e.g. 1,3,224,224 (default: the factory's example_inputs)")
_NAME = typer.Option(None, "--input-name", help="pass the input as this keyword (pixel_values, input_ids)")
_DTYPE = typer.Option("float32", "--input-dtype")
_BUDGET = typer.Option("macs=0.5", "--budget", "-b", help="macs=R (keep at most R of the MACs) or sparsity=S")
_RECIPE = typer.Option(None, "--recipe", "-r", help="TOML file of per-layer overrides")
_SENSITIVITY = typer.Option(None, "--sensitivity", "-s", help="sensitivity.json written by `edgeprune sensitivity` "
                            "for the same target: prune sensitive layers less")
_IMPORTANCE = typer.Option("l2", "--importance", help="l1 | l2 | bn_scale | taylor")
_SCOPE = typer.Option("per-layer", "--scope", help="per-layer | global")
# --force was the first spelling of --overwrite; it keeps working, unlisted
_FORCE = typer.Option(False, "--force", hidden=True, help="the same as --overwrite")


def _overwrite(what: str):
    return typer.Option(False, "--overwrite", help=f"replace {what}")


@app.command("plan")
def plan_cmd(
    target: str = _TARGET, model: str = _MODEL, weights: Optional[Path] = _WEIGHTS, input_shape: Optional[str] = _SHAPE,
    input_name: Optional[str] = _NAME, input_dtype: str = _DTYPE, budget: str = _BUDGET,
    recipe: Optional[Path] = _RECIPE, sensitivity: Optional[Path] = _SENSITIVITY, importance: str = _IMPORTANCE,
    scope: str = _SCOPE, json_out: Optional[Path] = typer.Option(None, "--json", help="also write the plan as JSON here"),
    overwrite: bool = _overwrite("an existing --json file"), force: bool = _FORCE,
) -> None:
    """Decide per layer how to prune MODEL for TARGET, print the plan and optionally write it as JSON."""
    overwrite = overwrite or force
    try:
        if json_out is not None:
            _atomic.check_file_output(json_out, overwrite=overwrite)
            _atomic.check_writable(json_out)  # a read-only or foreign directory: said now, not after planning
        _, result = _make_plan(target, model, weights, budget, recipe, sensitivity, input_shape, input_name,
                               input_dtype, importance, scope)
        console.print(result.table())
        _print_notes(result)
        if json_out is not None:
            _atomic.write_text(json_out, result.to_json(), overwrite=overwrite)
            console.print(f"wrote {json_out}")
    except EdgepruneError as exc:
        _fail(exc)


@app.command("prune")
def prune_cmd(
    target: str = _TARGET, model: str = _MODEL, weights: Optional[Path] = _WEIGHTS, input_shape: Optional[str] = _SHAPE,
    input_name: Optional[str] = _NAME, input_dtype: str = _DTYPE, budget: str = _BUDGET,
    recipe: Optional[Path] = _RECIPE, sensitivity: Optional[Path] = _SENSITIVITY, importance: str = _IMPORTANCE,
    scope: str = _SCOPE,
    out: Path = typer.Option(..., "--out", "-o", help="directory to save the pruned model in (safetensors + JSON)"),
    overwrite: bool = _overwrite("an existing --out directory"), force: bool = _FORCE,
) -> None:
    """Plan, prune and save MODEL for TARGET; `edgeprune.load(factory, OUT)` rebuilds it. Fine-tune it next
    (`edgeprune finetune`): a pruned model is not ready to ship."""
    from .costs import compare_table, measure
    from .pruning import prune
    from .serialization import check_save_dir, save

    overwrite = overwrite or force
    try:
        check_save_dir(out, overwrite=overwrite)
        _atomic.check_writable(out)
        module, result = _make_plan(target, model, weights, budget, recipe, sensitivity, input_shape, input_name,
                                    input_dtype, importance, scope)
        console.print(result.table())
        _print_notes(result)
        pruned = prune(module, result)
        save(pruned, result, out, factory=model, overwrite=overwrite)
        inputs = result.example()
        console.print(compare_table(measure(module, inputs), measure(pruned, inputs)))
        console.print(f"saved to {out}")
    except EdgepruneError as exc:
        _fail(exc)


@app.command("finetune")
def finetune_cmd(
    pruned: Path = typer.Argument(..., help="a pruned model saved by `edgeprune prune --out` (a directory)"),
    model: str = _MODEL,
    weights: Optional[Path] = typer.Option(None, "--weights", "-w", help="the dense model's trained weights "
                                           "(.safetensors): distil from it as the teacher"),
    digits: bool = typer.Option(False, "--digits", help="train on scikit-learn's digits (training split), "
                                "report accuracy on its test split"),
    data: Optional[Path] = typer.Option(None, "--data", help="training data: .safetensors with tensors x (inputs) "
                                        "and y (labels)"),
    val_data: Optional[Path] = typer.Option(None, "--val-data", help="validation data, like --data: accuracy "
                                            "after each epoch"),
    epochs: int = typer.Option(10, "--epochs", min=1),
    lr: float = typer.Option(1e-3, "--lr", min=0.0),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    seed: int = typer.Option(0, "--seed"),
    out: Path = typer.Option(..., "--out", "-o", help="directory to save the fine-tuned model in"),
    overwrite: bool = _overwrite("an existing --out directory"), force: bool = _FORCE,
) -> None:
    """Fine-tune a pruned model (its masks stay in force) to recover accuracy, and save it for `export`."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from .finetune import finetune
    from .pruning import record_of
    from .serialization import check_save_dir, load, save

    overwrite = overwrite or force
    try:
        check_save_dir(out, overwrite=overwrite)
        _atomic.check_writable(out)
        if digits == (data is not None):
            raise EdgepruneError("pass exactly one of --digits or --data F.safetensors")
        if digits and val_data is not None:
            raise EdgepruneError("--val-data goes with --data; --digits validates on the digits test split")
        if digits:
            from .zoo import digits as load_digits

            train, val = load_digits("train"), load_digits("test")
        else:
            train, val = _labelled("--data", data), _labelled("--val-data", val_data) if val_data else None
        student = load(model, pruned)
        teacher = _dense(model, weights) if weights is not None else None
        loader = DataLoader(TensorDataset(*train), batch_size=batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(seed))
        val_loader = DataLoader(TensorDataset(*val), batch_size=256) if val is not None else None
        result = finetune(student, loader, epochs=epochs, val_data=val_loader, teacher=teacher, lr=lr, seed=seed)
        save(result.model, record_of(result.model).plan, out, factory=model, overwrite=overwrite)
        if result.history and result.history[-1].get("metric") is not None:
            console.print(f"validation accuracy after {len(result.history)} epochs: {result.history[-1]['metric']:.1%}")
        console.print(f"saved to {out}")
    except EdgepruneError as exc:
        _fail(exc)


def _load_tensors(option: str, path) -> dict:
    import safetensors.torch

    path = Path(path)
    if path.is_dir():
        raise ArtifactError(f"{option} {path}: is a directory; name a .safetensors file")
    try:
        with open(path, "rb"):  # an OSError (permissions, a symlink loop) says what it is; safetensors' would not
            pass
        return safetensors.torch.load_file(str(path))
    except FileNotFoundError:
        raise ArtifactError(f"{option} {path}: file not found") from None
    except OSError as exc:
        raise ArtifactError(f"{option} {path}: cannot read: {exc.strerror or exc}") from None
    except Exception as exc:
        raise ArtifactError(f"{option} {path}: not a safetensors file ({exc})") from None


def _samples(option: str, path: Path, example: Any) -> list:
    """The samples in a .safetensors file whose tensors are named like the example's inputs (`input_0`,
    `input_1`, ... for positional inputs, the keyword for keyword inputs), samples along the first dimension."""
    from .inputs import normalize

    tensors = _load_tensors(option, path)
    args, kwargs = normalize(example)
    names = list(kwargs) if kwargs else [f"input_{i}" for i in range(len(args))]
    missing = [n for n in names if n not in tensors]
    if missing:
        raise EdgepruneError(f"{option} {path}: no tensor named {missing[0]!r} (has: {', '.join(tensors)}); "
                             f"the model's inputs are {', '.join(names)}")
    examples = dict(kwargs) if kwargs else {f"input_{i}": a for i, a in enumerate(args)}
    for n in names:
        got, want = tuple(tensors[n].shape[1:]), tuple(getattr(examples[n], "shape", ())[1:])
        if got != want:
            raise EdgepruneError(f"{option} {path}: tensor {n!r} holds samples of shape {got}, but the model's "
                                 f"input {n} takes {want} (samples along the first dimension)")
    counts = {n: len(tensors[n]) for n in names}
    if len(set(counts.values())) > 1:
        raise EdgepruneError(f"{option} {path}: the inputs hold different numbers of samples ({counts})")
    count = counts[names[0]]
    items = [{n: tensors[n][i : i + 1] for n in names} for i in range(count)]
    return items if kwargs else [tuple(item[n] for n in names) for item in items]


def _calibration(spec: Optional[str], example: Any) -> Optional[list]:
    """`random:N` (N random inputs shaped like the example — a smoke test, not real calibration) or a
    .safetensors file of inputs (see `_samples`)."""
    if spec is None:
        return None
    from .inputs import InputSpec

    if spec.startswith("random:"):
        try:
            count = int(spec.split(":", 1)[1])
        except ValueError:
            raise EdgepruneError(f"--calibration {spec!r}: expected random:N, e.g. random:16") from None
        shape_spec = InputSpec.of(example)
        return [shape_spec.make(seed=10_000 + i) for i in range(count)]
    return _samples("--calibration", Path(spec), example)


def _exportable(model_spec: str, weights: Optional[Path]):
    """What `export --weights` names: a saved (pruned) model directory, dense .safetensors weights, or nothing."""
    from .serialization import load

    if weights is not None and weights.is_dir():
        return load(model_spec, weights)
    return _dense(model_spec, weights)


@app.command("export")
def export_cmd(
    target: str = _TARGET, model: str = _MODEL, input_shape: Optional[str] = _SHAPE,
    input_name: Optional[str] = _NAME, input_dtype: str = _DTYPE,
    weights: Optional[Path] = typer.Option(None, "--weights", "-w", help="a model saved by `prune --out` or "
                                           "`finetune --out` (a directory), or dense weights (.safetensors)"),
    int8: bool = typer.Option(False, "--int8", help="full-int8 (PT2E static quantization); needs --calibration"),
    calibration: Optional[str] = typer.Option(None, "--calibration", help="a .safetensors of inputs (tensors "
                                              "input_0, input_1, ... or the --input-name keyword), or random:N"),
    verify_data: Optional[Path] = typer.Option(None, "--verify-data", help="a .safetensors of inputs to verify "
                                               "the artifact on, named like --calibration's (default: held-out "
                                               "calibration samples, else random inputs)"),
    allow_other_target: bool = typer.Option(False, "--allow-other-target", help="export a model pruned for "
                                            "another target (its plan's) for TARGET anyway"),
    fmt: Optional[str] = typer.Option(None, "--format", "-f", help="pte | tflite | onnx (default: the profile's)"),
    out: Path = typer.Option(..., "--out", "-o", help="directory for the artifact and its manifest"),
    overwrite: bool = _overwrite("an existing artifact and manifest"), force: bool = _FORCE,
) -> None:
    """Export MODEL (or the model in --weights) for TARGET's runtime and verify it there."""
    from .export import export
    from .export.report import manifest_table
    from .pruning import record_of

    try:
        _atomic.check_dir_output(out)
        _atomic.check_writable(out)
        module = _exportable(model, weights)
        inputs = _example_inputs(model, input_shape, input_name, input_dtype)
        precision = "int8" if int8 else None
        verify_inputs = _samples("--verify-data", verify_data, inputs) if verify_data is not None else None
        record = record_of(module)
        if record is not None and record.plan.sparsity > 0 and not record.finetuned:
            # one-shot pruning without recovery costs accuracy (the demo's digits CNN falls to about a third)
            _warn(f"{weights}: this pruned model was never fine-tuned, so it may have lost much of its accuracy; "
                  "run `edgeprune finetune` on it first, or check its accuracy before shipping it")
        art = export(module, inputs, target, out, precision=precision, calibration=_calibration(calibration, inputs),
                     format=fmt, force=overwrite or force, verify_inputs=verify_inputs,
                     allow_other_target=allow_other_target)
        console.print(manifest_table(art.manifest))
        console.print(f"wrote {art.path} and {art.manifest_path.name}")
    except EdgepruneError as exc:
        _fail(exc)


def _warn(message: str) -> None:
    err_console.print(_styled("warning:", "bold yellow", message), highlight=False, soft_wrap=True)


def main() -> None:  # pragma: no cover
    app()


# ------------------------------------------------------------------------------------ devices and bench

devices_app = typer.Typer(help="The devices in devices.toml: list them, or check that they answer.")
app.add_typer(devices_app, name="devices")
_DEVICES = typer.Option(None, "--devices", help="device inventory (default: ./devices.toml if present, else only 'local')")
_HISTORY = typer.Option(str(DEFAULT_HISTORY), "--history", envvar=HISTORY_ENV_VAR, help="the history database: a "
                        "file, sqlite:///relative/path or sqlite:////absolute/path")
_THREADS = typer.Option(None, "--threads", help="runtime threads (default: the device's setting)")
_CORES = typer.Option(None, "--cores", help="pin to these CPUs, e.g. 0,1 (default: the device's)")
_RUNTIME = typer.Option(None, "--runtime", help="executorch | litert | onnx | tflm (default: from the artifact)")
_NO_HISTORY = typer.Option(False, "--no-history", help="append nothing to the history")
_NAME = typer.Option(None, "--name", help="the model's name in the history (default: the measured artifact's file "
                     "name)")
_TRUST = typer.Option(False, "--trust-new-host-key", help="accept and record an unknown SSH host key (first use only; "
                      "a changed key is always refused)")


@devices_app.command("list")
def devices_list(devices: Optional[Path] = _DEVICES) -> None:
    """List the devices and how each is reached."""
    from .devices import load_devices

    try:
        inventory = load_devices(devices)
    except EdgepruneError as exc:
        _fail(exc)
    table = Table(title=f"devices ({devices or 'devices.toml'})")
    for col in ("name", "target", "address", "python", "workdir", "timeouts (connect/command/deadline)"):
        table.add_column(col)
    for d in inventory.values():
        table.add_row(d.name, d.target, d.address, d.python, d.workdir,
                      f"{d.connect_timeout_s:g} / {d.command_timeout_s:g} / {d.deadline_s:g} s")
    console.print(table)


@devices_app.command("check")
def devices_check(
    name: Optional[str] = typer.Argument(None, help="one device (default: every device in the file)"),
    devices: Optional[Path] = _DEVICES, trust_new_host_key: bool = _TRUST,
    imports: bool = typer.Option(False, "--imports", help="import each runtime on the device to prove it loads "
                                 "(slower: seconds per runtime), not only check that it is installed"),
) -> None:
    """Is each device reachable, which runtimes does it have, and what state is it in? Exit 1 if one is not."""
    from .devices import load_devices

    try:
        inventory = load_devices(devices)
        if name is not None and name not in inventory:
            raise EdgepruneError(f"{devices or 'devices.toml'}: no device named '{name}' (known: {', '.join(inventory)})")
    except EdgepruneError as exc:
        _fail(exc)
    names = [name] if name else list(inventory)
    from .remote import check_many

    try:
        with console.status(f"checking {', '.join(names)}…"):
            checks = check_many([inventory[n] for n in names], trust_new_host_key=trust_new_host_key, imports=imports)
    except KeyboardInterrupt as exc:
        _interrupted(exc)
    table = Table(title="device check")
    for col in ("device", "address", "reachable", "python / numpy", "runtimes", "state", "problem"):
        table.add_column(col, overflow="fold")
    for c in checks:
        present = [f"{k} {v['version']}" if v.get("version") else k for k, v in c.runtimes.items()
                   if v.get("version") or v.get("trtexec")]
        table.add_row(c.device, c.address, Text("yes", "green") if c.reachable and not c.error else Text("no", "red"),
                      f"{c.python or '—'} / {c.numpy or '—'}", "\n".join(present) or "—",
                      describe_state(c.state), c.error or "")
    console.print(table)
    if any(c.error for c in checks):
        raise typer.Exit(code=1)


def _interrupted(exc: KeyboardInterrupt) -> None:
    """Ctrl-C, once the remote work was stopped and cleaned up (the library does that before it raises, and
    says in the exception what it did): one line, exit 130 as a shell reports SIGINT, no traceback."""
    err_console.print(_styled("interrupted:", "bold yellow", str(exc) or "stopped before anything ran on a device"),
                      highlight=False, soft_wrap=True)
    raise typer.Exit(code=130)


def describe_state(state: dict) -> str:
    """One short line per fact: governors, clocks, hottest zone, load, Jetson power mode."""
    if not state:
        return "—"
    parts = []
    governors = sorted(set((state.get("governor") or {}).values()))
    if governors:
        parts.append("governor " + "/".join(governors))
    mhz = [v for v in (state.get("cur_mhz") or {}).values() if v]
    if mhz:
        parts.append(f"clock {min(mhz):.0f}–{max(mhz):.0f} MHz")
    temps = [z for z in state.get("thermal") or [] if z.get("temp_c") is not None]
    if temps:
        hot = max(temps, key=lambda z: z["temp_c"])
        parts.append(f"{hot.get('type') or 'zone'} {hot['temp_c']:.1f} °C")
    if state.get("loadavg"):
        parts.append("load " + " ".join(f"{v:.2f}" for v in state["loadavg"]))
    if state.get("nvpmodel"):
        parts.append("nvpmodel " + " ".join(str(state["nvpmodel"]).split())[:60])
    return "\n".join(parts)


def _cores(text: Optional[str]) -> Optional[tuple[int, ...]]:
    if not text:
        return None
    try:
        cores = tuple(int(c) for c in text.split(","))
    except ValueError:
        raise EdgepruneError(f"--cores {text!r}: expected CPU numbers separated by commas, e.g. 0,1") from None
    if any(c < 0 for c in cores):
        raise EdgepruneError(f"--cores {text!r}: CPU numbers are >= 0")
    return cores


@app.command("bench")
def bench_cmd(
    artifact: Path = typer.Argument(..., help="a .pte, .tflite or .onnx made by `edgeprune export`"),
    devices: Optional[Path] = _DEVICES,
    device: list[str] = typer.Option(["local"], "--device", "-d", help="device name; repeat to measure on several "
                                     "devices at once (one thread per device)"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the statistics (and raw samples) here"),
    overwrite: bool = _overwrite("an existing --json file"), force: bool = _FORCE,
    min_runs: int = typer.Option(50, "--min-runs", help="measure at least this many inferences…"),
    min_seconds: float = typer.Option(2.0, "--min-seconds", help="…and for at least this long"),
    warmup_runs: int = typer.Option(5, "--warmup-runs"),
    warmup_seconds: float = typer.Option(0.5, "--warmup-seconds"),
    threads: Optional[int] = _THREADS,
    cores: Optional[str] = _CORES,
    runtime: Optional[str] = _RUNTIME,
    trust_new_host_key: bool = _TRUST,
    history: str = _HISTORY,
    no_history: bool = _NO_HISTORY,
    name: Optional[str] = _NAME,
) -> None:
    """Measure ARTIFACT's latency on one or more devices; print the statistics and the device's state, and
    append each result to the history database (`edgeprune history` shows it)."""
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from .devices import load_devices
    from .remote import BenchSettings, bench_many

    overwrite = overwrite or force
    try:
        inventory = load_devices(devices)
        unknown = [d for d in device if d not in inventory]
        if unknown:
            raise EdgepruneError(f"{devices or 'devices.toml'}: no device named '{unknown[0]}' "
                                 f"(known: {', '.join(inventory)})")
        if json_out is not None:
            _atomic.check_file_output(json_out, overwrite=overwrite)
            _atomic.check_writable(json_out)  # before the device is used: a measurement is not to be thrown away
        # unset threads/cores fall back to each device's own, in remote.bench
        settings = BenchSettings(min_runs, min_seconds, warmup_runs, warmup_seconds, threads, _cores(cores))
        names = list(dict.fromkeys(device))
        # opened (and a damaged file refused) before the device is used, as the --json output is checked
        store = None if no_history else open_history(history)
    except (EdgepruneError, ValueError) as exc:
        _fail(exc)
    with Progress(SpinnerColumn(), TextColumn("{task.fields[device]}", style="bold", markup=False),
                  TextColumn("{task.description}", markup=False),
                  BarColumn(), TimeElapsedColumn(), console=err_console, transient=True) as bar:
        tasks = {d: bar.add_task("waiting", total=None, device=d) for d in names}

        def on_progress(name: str, stage: str, info: dict) -> None:
            if stage == "upload-progress":
                bar.update(tasks[name], description=f"upload {info['done'] / 2**20:.1f} MiB",
                           completed=info["done"], total=info["total"])
            elif stage == "measure" and "n" in info:
                bar.update(tasks[name], description=f"{info.get('stage')} n={info['n']} "
                           f"{info.get('elapsed_s', 0):.1f} s", total=None)
            else:
                bar.update(tasks[name], description=stage, total=None)

        try:
            results = bench_many([(inventory[d], artifact) for d in names], settings=settings, runtime=runtime,
                                 trust_new_host_key=trust_new_host_key, progress=on_progress)
        except KeyboardInterrupt as exc:
            bar.stop()
            _interrupted(exc)
    ok = [r for r in results if not isinstance(r, Exception)]
    if ok:
        console.print(bench_table(ok))
        for r in ok:
            for flag in r.flags:
                console.print(_styled("flagged", "bold yellow", f"{r.device}: {flag}"))
            for note in r.notes:
                console.print(Text(f"note {r.device}: {note}", "dim"))
    errors = [r for r in results if isinstance(r, Exception)]
    for exc in errors:
        err_console.print(_styled("error:", "bold red", str(exc)), highlight=False, soft_wrap=True)
    # before --json: a full disk there loses neither
    kept = store is None or _append_history(store, ok, lambda h, r: h.record_bench(r, name=name))
    if json_out is not None and ok:
        payload = ok[0].to_dict() if len(results) == 1 else {
            "schema": "edgeprune.bench-results/1", "results": [r.to_dict() for r in ok],
            "errors": [str(e) for e in errors]}
        text = json.dumps(payload, indent=2)
        try:
            _atomic.write_text(json_out, text, overwrite=overwrite)
        except (EdgepruneError, OSError) as exc:  # the disk filled up, or the directory went, during the run
            typer.echo(text)  # the measurement is kept: on stdout, for the user to redirect
            reason = exc if isinstance(exc, EdgepruneError) else _os_error(exc, {"json_out": json_out})
            _fail(f"the result could not be written to {json_out} ({reason}); it is printed above as JSON")
        console.print(f"wrote {json_out}")
    if errors or not kept:
        raise typer.Exit(code=2)


def _append_history(store, results, record) -> bool:
    """Append `results` to the history (`record(store, result)`); False (and the error printed) when one did
    not land. The measurement is not lost with it: the table above shows it, --json keeps it."""
    try:
        with store:
            for r in results:
                record(store, r)
    except EdgepruneError as exc:
        err_console.print(_styled("error:", "bold red", f"the result was not added to the history: {exc}"),
                          highlight=False, soft_wrap=True)
        return False
    if results:
        console.print(Text(f"added {len(results)} result{'s' if len(results) > 1 else ''} to the history "
                           f"{store.path} (`edgeprune history` shows it)", "dim"))
    return True


# `edgeprune regress` exit codes, for CI systems that do not run pytest
REGRESS_EXIT = {"same": 0, "faster": 0, "slower": 1, "inconclusive": 3}


@app.command("regress")
def regress_cmd(
    candidate: Path = typer.Argument(..., help="the artifact to judge"),
    baseline: Path = typer.Option(..., "--baseline", help="the artifact to judge it against (same runtime)"),
    devices: Optional[Path] = _DEVICES,
    device: str = typer.Option("local", "--device", "-d", help="the device to compare on"),
    max_slowdown: float = typer.Option(0.05, "--max-slowdown", help="the slowdown that fails (0.05: 5 %)"),
    min_effect: float = typer.Option(0.01, "--min-effect", help="changes smaller than this are `same`"),
    max_rounds: int = typer.Option(120, "--max-rounds", help="rounds at most, while the answer is open"),
    max_seconds: float = typer.Option(120.0, "--max-seconds", help="measuring time at most, while it is open"),
    governor: Optional[str] = typer.Option(None, "--governor", help="judge only rounds run under this CPU "
                                           "frequency governor (e.g. performance)"),
    cooldown: float = typer.Option(30.0, "--cooldown", help="seconds to wait before re-running a batch whose "
                                   "device state was flagged (a clock drop, a thermal trip)"),
    retries: int = typer.Option(1, "--retries", help="re-runs of a flagged batch before giving up (inconclusive)"),
    threads: Optional[int] = _THREADS,
    cores: Optional[str] = _CORES,
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the whole comparison here"),
    overwrite: bool = _overwrite("an existing --json file"),
    runtime: Optional[str] = _RUNTIME,
    trust_new_host_key: bool = _TRUST,
    history: str = _HISTORY,
    no_history: bool = _NO_HISTORY,
    name: Optional[str] = _NAME,
) -> None:
    """Judge CANDIDATE against --baseline on a device, A/B interleaved in one process. Exit 0 when it is
    the same or faster, 1 slower, 3 inconclusive, 2 on a usage or device error."""
    from .devices import get_device
    from .remote import CompareSettings, compare

    try:
        dev = get_device(device, devices)
        settings = CompareSettings(max_slowdown=max_slowdown, min_effect=min_effect, max_rounds=max_rounds,
                                   max_seconds=max_seconds, governor=governor, threads=threads,
                                   cores=_cores(cores), cooldown_s=cooldown, retries=retries)
        if json_out is not None:
            _atomic.check_file_output(json_out, overwrite=overwrite)
            _atomic.check_writable(json_out)
        store = None if no_history else open_history(history)
    except (EdgepruneError, ValueError) as exc:
        _fail(exc)
    with err_console.status(f"comparing on {dev.name}", spinner="dots") as status:
        def on_progress(stage: str, info: dict) -> None:
            detail = f" ({info['rounds']} rounds: {info['verdict']})" if stage == "judge" else ""
            status.update(f"{dev.name}: {stage}{detail}")

        try:
            c = compare(baseline, candidate, dev, settings=settings, runtime=runtime, name=name,
                        trust_new_host_key=trust_new_host_key, progress=on_progress)
        except KeyboardInterrupt as exc:
            status.stop()
            _interrupted(exc)
        except EdgepruneError as exc:
            status.stop()
            _fail(exc)
    console.print(comparison_table([c]))
    style = {"slower": "bold red", "inconclusive": "bold yellow"}.get(c.verdict.value, "bold green")
    console.print(_styled(c.verdict.value, style, c.summary()[len(c.verdict.value):]), soft_wrap=True)
    for note in c.notes:
        console.print(Text(f"note: {note}", "dim"))
    kept = store is None or _append_history(store, [c], lambda h, r: h.record_comparison(r))
    if json_out is not None:
        text = json.dumps(c.to_dict(), indent=2)
        try:
            _atomic.write_text(json_out, text, overwrite=overwrite)
        except (EdgepruneError, OSError) as exc:
            typer.echo(text)
            reason = exc if isinstance(exc, EdgepruneError) else _os_error(exc, {"json_out": json_out})
            _fail(f"the comparison could not be written to {json_out} ({reason}); it is printed above as JSON")
        console.print(f"wrote {json_out}")
    if not kept:
        raise typer.Exit(code=2)
    raise typer.Exit(code=REGRESS_EXIT[c.verdict.value])


def comparison_table(comparisons) -> Table:
    table = Table(title="A/B comparison (interleaved rounds)")
    for column in ("device", "p50 ms: baseline -> candidate", "ratio", "CI", "n", "p", "verdict"):
        table.add_column(column, justify="left" if column in ("device", "verdict") else "right")
    for c in comparisons:
        lo, hi = c.ci
        table.add_row(c.device, f"{c.baseline_p50:.4g} -> {c.candidate_p50:.4g}", f"{c.ratio:.3f}x",
                      f"{lo:.3f}-{hi:.3f}", str(c.n), f"{c.p_value:.2g}",
                      c.verdict.value + ("" if c.judged else " (not judged)"))
    return table


def bench_table(results) -> Table:
    table = Table(title="latency (ms)")
    for col in ("device", "runtime", "n", "p50", "95% CI of p50", "p90", "p99", "mean ± std", "CV", "min", "state"):
        table.add_column(col, justify="right" if col not in ("device", "runtime", "state") else "left")
    for r in results:
        label = Text.assemble(r.device, (" (proxy)", "yellow") if r.proxy else "")
        table.add_row(label, f"{r.runtime} {r.runtime_version}", str(r.n), f"{r.p50:.3f}",
                      f"{r.ci95_p50[0]:.3f}–{r.ci95_p50[1]:.3f}", f"{r.p90:.3f}", f"{r.p99:.3f}",
                      f"{r.mean:.3f} ± {r.std:.3f}", f"{r.cv:.1%}", f"{r.min:.3f}",
                      Text.assemble(("FLAGGED\n", "red") if r.flags else "", describe_state(r.state_after)))
    return table


@app.command("history")
def history_cmd(
    history: str = _HISTORY,
    device: Optional[str] = typer.Option(None, "--device", "-d", help="only this device's records"),
    name: Optional[str] = typer.Option(None, "--name", help="only this model's records (the artifact's file name "
                                       "unless `bench --name` gave another)"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="also draw p50 with its CI per device, slower verdicts "
                                        "and change points, to this PNG"),
    overwrite: bool = _overwrite("an existing --plot file"),
) -> None:
    """Print the recorded bench results and comparisons, oldest first, with the change points in p50 found
    per device and model; optionally plot them."""
    from .history import level_changes, plot_history

    if plot is not None:
        _atomic.check_file_output(plot, overwrite=overwrite)
    with open_history(history, create=False) as store:
        records = store.records(device=device, name=name)
    if not records:
        console.print(f"no records in {store.path}" + (" for " + " and ".join(
            f"{k} '{v}'" for k, v in (("device", device), ("name", name)) if v) if device or name else ""))
        return
    changes = level_changes(records)
    console.print(history_table(records, changes, title=f"history ({store.path})"))
    if plot is not None:
        plot_history(records, plot, overwrite=overwrite)
        console.print(f"wrote {plot}")


def history_table(records, changes: dict, title: str = "history") -> Table:
    """One row per record: when, the commit, what was measured where, p50 and its CI, the verdict (a
    comparison's, with its ratio) or a bench result's flags, and a mark where a new p50 level starts."""
    table = Table(title=title)
    for col in ("#", "time (UTC)", "commit", "device", "name", "kind", "p50 (ms)", "95% CI", "verdict / ratio",
                "change"):
        table.add_column(col, justify="right" if col in ("#", "p50 (ms)", "95% CI") else "left")
    for r in records:
        when = r.recorded_at[:19].replace("T", " ")
        p50 = "—" if r.p50 is None else f"{r.p50:.4g}"
        ci = f"{r.p50_ci[0]:.4g}–{r.p50_ci[1]:.4g}" if r.p50_ci else "—"
        if r.kind == "comparison":
            lo, hi = r.ratio_ci or (float("nan"), float("nan"))
            judged = "" if r.valid else " (not judged)"
            verdict = Text.assemble((r.verdict or "?", "bold red" if r.slower else ""),
                                    f" {r.ratio:.3f}× ({lo:.3f}–{hi:.3f}){judged}")
        else:
            verdict = Text("flagged: " + "; ".join(r.flags), "yellow") if r.flags else Text("valid")
        change = changes.get(r.id)
        mark = Text("") if change is None else Text(f"{'▲' if change > 1 else '▼'} {change - 1:+.1%}",
                                                   "bold magenta")
        table.add_row(str(r.id), when, (r.commit or "—")[:10], r.device, r.name, r.kind, p50, ci, verdict, mark)
    return table


# ------------------------------------------------------------------------------------ sensitivity

def _validation(digits: bool, data: Optional[Path]):
    """(x, y) for the sensitivity metric: scikit-learn's digits test split, or a .safetensors file
    holding tensors named `x` (inputs, samples along the first dimension) and `y` (integer labels)."""
    if digits == (data is not None):
        raise EdgepruneError("pass exactly one of --digits or --data F.safetensors")
    if digits:
        from .zoo import digits as load_digits

        return load_digits("test")
    return _labelled("--data", data)


def _labelled(option: str, path: Path):
    """(x, y) from a .safetensors file holding tensors `x` (inputs, samples along the first dimension) and
    `y` (integer labels, one per sample)."""
    tensors = _load_tensors(option, path)
    missing = [k for k in ("x", "y") if k not in tensors]
    if missing:
        raise EdgepruneError(f"{option} {path}: no tensor named {missing[0]!r} (has: {', '.join(tensors)}); "
                             "expected x (inputs) and y (labels)")
    if len(tensors["x"]) != len(tensors["y"]):
        raise EdgepruneError(f"{option} {path}: x has {len(tensors['x'])} samples but y has {len(tensors['y'])} labels")
    return tensors["x"], tensors["y"].long()


def _bn_data(source: Optional[str]):
    """(x, y) whose x recomputes BatchNorm statistics: 'digits' (the training split) or a .safetensors with x."""
    if source is None:
        return None
    if source == "digits":
        from .zoo import digits as load_digits

        return load_digits("train")
    import torch

    tensors = _load_tensors("--bn-data", Path(source))
    if "x" not in tensors:
        raise EdgepruneError(f"--bn-data {source}: no tensor named 'x' (has: {', '.join(tensors)})")
    return tensors["x"], torch.zeros(len(tensors["x"]), dtype=torch.long)  # labels unused: statistics only


@app.command("sensitivity")
def sensitivity_cmd(
    target: str = _TARGET, model: str = _MODEL, weights: Optional[Path] = _WEIGHTS, input_shape: Optional[str] = _SHAPE,
    input_name: Optional[str] = _NAME, input_dtype: str = _DTYPE,
    digits: bool = typer.Option(False, "--digits", help="validate on scikit-learn's digits (test split)"),
    data: Optional[Path] = typer.Option(None, "--data", help=".safetensors with tensors x (inputs) and y (labels)"),
    amounts: str = typer.Option("0.25,0.5,0.75", "--amounts", help="fractions to prune each layer by"),
    out: Path = typer.Option(..., "--out", "-o", help="directory for sensitivity.json and sensitivity.png"),
    overwrite: bool = _overwrite("existing files in --out"), force: bool = _FORCE,
    bn_data: Optional[str] = typer.Option(None, "--bn-data", help="recompute each pruned copy's BatchNorm statistics "
                                          "first: 'digits' (training split) or a .safetensors with tensor x"),
) -> None:
    """Prune each layer of MODEL alone as TARGET would, measure top-1 accuracy, write JSON and a plot."""
    from .sensitivity import sensitivity

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
        val = _validation(digits, data)
        module = _dense(model, weights)
        inputs = _example_inputs(model, input_shape, input_name, input_dtype)
        result = sensitivity(module, inputs, val, None, target, amounts=fractions, calibration_data=_bn_data(bn_data))
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
        _fail(exc)


@app.command("demo")
def demo_cmd(
    device: str = typer.Option("local", "--device", "-d", help="where to time the artifacts (default: a subprocess here)"),
    devices: Optional[Path] = _DEVICES,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="report folder (default: a new temporary folder)"),
) -> None:
    """The whole flow on scikit-learn's digits for a Jetson, a Pi 5 and an Ethos-U55: train, sensitivity,
    plan, prune, fine-tune with KD, export, verify, measure; a summary table and a report folder."""
    from . import demo

    try:
        if out is not None and _atomic.check_dir_output(out).exists() and any(out.iterdir()):
            raise ArtifactError(f"{out}: already exists and is not empty; choose a new --out")
        if out is not None:
            _atomic.check_writable(out)
        demo.main(device=device, devices=str(devices) if devices else None, out=out)
    except EdgepruneError as exc:
        _fail(exc)


# every command, the sub-apps' included, ends in `_Command`'s handler; set here, once, so that no command
# (a new one included) can leave a user's mistake to a traceback
for _typer in (app, targets_app, devices_app):
    for _info in _typer.registered_commands:
        if _info.cls in (None, TyperCommand):  # typer fills in its own class for a command given none
            _info.cls = _Command
