"""The command line's shared plumbing: the Typer apps, the consoles, the `error:` / `warning:` /
`interrupted:` lines and their exit codes, the last line of defence every command runs in (`Command`), and
the options several commands share. The commands themselves live in the modules beside this one."""

from __future__ import annotations

import os
import sys
from typing import Optional

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperCommand

from .._version import __version__
from ..errors import EdgepruneError
from ..history import DEFAULT_PATH as DEFAULT_HISTORY
from ..history import ENV_VAR as HISTORY_ENV_VAR

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Prune PyTorch models for the device they run on.")
targets_app = typer.Typer(help="List the built-in target profiles, or show one.")
app.add_typer(targets_app, name="targets")
devices_app = typer.Typer(help="The devices in devices.toml: list them, or check that they answer.")
app.add_typer(devices_app, name="devices")
# no markup interpretation, anywhere: paths, device names, layer names and error messages are the user's
# text, and `[/x]` or `[bold]` in them must print as typed (rich would parse them as tags, or fail on them).
# Styled words are rich Text objects instead (`styled`).
console = Console(markup=False)
err_console = Console(stderr=True, markup=False)


def styled(label: str, style: str, message: str = "") -> Text:
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


def main() -> None:  # pragma: no cover
    app()


def fail(exc: "Exception | str") -> None:
    err_console.print(styled("error:", "bold red", str(exc)), highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def warn(message: str) -> None:
    err_console.print(styled("warning:", "bold yellow", message), highlight=False, soft_wrap=True)


def interrupted(exc: KeyboardInterrupt) -> None:
    """Ctrl-C, once the remote work was stopped and cleaned up (the library does that before it raises, and
    says in the exception what it did): one line, exit 130 as a shell reports SIGINT, no traceback."""
    err_console.print(styled("interrupted:", "bold yellow", str(exc) or "stopped before anything ran on a device"),
                      highlight=False, soft_wrap=True)
    raise typer.Exit(code=130)


def os_error(exc: OSError, params: dict) -> str:
    """An OSError that reached a command (a full disk, a read-only file system): the path and the reason.
    Where the OS named no file, the command's outputs are named: writing them is what fails that way."""
    where = exc.filename or ", ".join(str(params[k]) for k in ("out", "json_out") if params.get(k) is not None)
    reason = exc.strerror or str(exc)
    return f"{where}: {reason}" if where else reason


class Command(TyperCommand):
    """Every command's last line of defence: an EdgepruneError, or an OSError from the file system (a full
    disk, a read-only output), is an `error:` line naming the path and exit code 2, never a traceback.
    Given to every command by `use_command_class`, once the package has imported every command module."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EdgepruneError as exc:
            fail(exc)
        except OSError as exc:
            fail(os_error(exc, ctx.params))


def use_command_class(typer_app: typer.Typer = app) -> None:
    """Make `Command` the class of every command of `typer_app` and of its sub-apps (`targets`, `devices`),
    so that no command (a new one included) can leave a user's mistake to a traceback."""
    for info in typer_app.registered_commands:
        if info.cls in (None, TyperCommand):  # typer fills in its own class for a command given none
            info.cls = Command
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            use_command_class(group.typer_instance)


def format_size(n: int) -> str:
    if not n:
        return "—"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:g} {unit}"
    return f"{n} B"


def parse_cores(text: Optional[str]) -> Optional[tuple[int, ...]]:
    """`--cores 0,1`: the CPU numbers, or None for the device's own."""
    if not text:
        return None
    try:
        cores = tuple(int(c) for c in text.split(","))
    except ValueError:
        raise EdgepruneError(f"--cores {text!r}: expected CPU numbers separated by commas, e.g. 0,1") from None
    if any(c < 0 for c in cores):
        raise EdgepruneError(f"--cores {text!r}: CPU numbers are >= 0")
    return cores


# ------------------------------------------------------------------------------------ shared options

# the model and its inputs (plan, prune, finetune, export, sensitivity)
TARGET_OPTION = typer.Option(..., "--target", "-t", help="built-in target name or path to a .toml profile")
MODEL_OPTION = typer.Option(..., "--model", "-m", help="model factory, package.module:function (the current "
                            "directory is on the import path)")
WEIGHTS_OPTION = typer.Option(None, "--weights", "-w", help="trained weights of the dense model: a .safetensors "
                              "file (safetensors.torch.save_model(model, path)); default: the factory's own")
SHAPE_OPTION = typer.Option(None, "--input-shape", help="e.g. 1,3,224,224 (default: the factory's example_inputs)")
INPUT_NAME_OPTION = typer.Option(None, "--input-name", help="pass the input as this keyword (pixel_values, "
                                 "input_ids)")
DTYPE_OPTION = typer.Option("float32", "--input-dtype")
# planning (plan, prune)
BUDGET_OPTION = typer.Option("macs=0.5", "--budget", "-b", help="macs=R (keep at most R of the MACs), sparsity=S, "
                             "latency_ms=MS or latency_ratio=R (measured on --device), flash_kib=K, sram_kib=K, "
                             "ram_mib=M")
PLAN_DEVICE_OPTION = typer.Option(None, "--device", "-d", help="measure a latency budget here ('local' or a name in "
                                  "--devices): profile the model, then plan, export and measure until it is met")
LATENCY_CACHE_OPTION = typer.Option(None, "--latency-cache", help="where latency tables are kept (default: "
                                    "~/.cache/edgeprune/latency)")
CALIBRATION_OPTION = typer.Option(None, "--calibration", help="int8 calibration inputs: a .safetensors (tensors "
                                  "input_0, input_1, ... or the --input-name keyword), or random:N")
RECIPE_OPTION = typer.Option(None, "--recipe", "-r", help="TOML file of per-layer overrides")
SENSITIVITY_OPTION = typer.Option(None, "--sensitivity", "-s", help="sensitivity.json written by `edgeprune "
                                  "sensitivity` for the same target: prune sensitive layers less")
IMPORTANCE_OPTION = typer.Option("l2", "--importance", help="l1 | l2 | bn_scale | taylor")
SCOPE_OPTION = typer.Option("per-layer", "--scope", help="per-layer | global")
# outputs: --force was the first spelling of --overwrite; it keeps working, unlisted
FORCE_OPTION = typer.Option(False, "--force", hidden=True, help="the same as --overwrite")


def overwrite_option(what: str):
    return typer.Option(False, "--overwrite", help=f"replace {what}")


# devices, measurements and their history (devices, bench, regress, demo)
DEVICES_OPTION = typer.Option(None, "--devices", help="device inventory (default: ./devices.toml if present, else "
                              "only 'local')")
HISTORY_OPTION = typer.Option(str(DEFAULT_HISTORY), "--history", envvar=HISTORY_ENV_VAR, help="the history "
                              "database: a file, sqlite:///relative/path or sqlite:////absolute/path")
THREADS_OPTION = typer.Option(None, "--threads", help="runtime threads (default: the device's setting)")
CORES_OPTION = typer.Option(None, "--cores", help="pin to these CPUs, e.g. 0,1 (default: the device's)")
RUNTIME_OPTION = typer.Option(None, "--runtime", help="executorch | litert | onnx | tflm (default: from the "
                              "artifact)")
NO_HISTORY_OPTION = typer.Option(False, "--no-history", help="append nothing to the history")
HISTORY_NAME_OPTION = typer.Option(None, "--name", help="the model's name in the history (default: the measured "
                                   "artifact's file name)")
TRUST_OPTION = typer.Option(False, "--trust-new-host-key", help="accept and record an unknown SSH host key (first "
                            "use only; a changed key is always refused)")
