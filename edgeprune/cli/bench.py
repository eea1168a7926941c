"""`edgeprune bench`: measure an artifact's latency on one or more devices, and record it in the history."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table
from rich.text import Text

from .. import _atomic
from ..errors import EdgepruneError
from ..history import open_history
from ._app import (CORES_OPTION, DEVICES_OPTION, FORCE_OPTION, HISTORY_NAME_OPTION, HISTORY_OPTION,
                   NO_HISTORY_OPTION, RUNTIME_OPTION, THREADS_OPTION, TRUST_OPTION, app, console, err_console, fail,
                   interrupted, os_error, overwrite_option, parse_cores, styled)
from .devices import describe_state


@app.command("bench")
def bench_cmd(
    artifact: Path = typer.Argument(..., help="a .pte, .tflite or .onnx made by `edgeprune export`"),
    devices: Optional[Path] = DEVICES_OPTION,
    device: list[str] = typer.Option(["local"], "--device", "-d", help="device name; repeat to measure on several "
                                     "devices at once (one thread per device)"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the statistics (and raw samples) here"),
    overwrite: bool = overwrite_option("an existing --json file"), force: bool = FORCE_OPTION,
    min_runs: int = typer.Option(50, "--min-runs", help="measure at least this many inferences…"),
    min_seconds: float = typer.Option(2.0, "--min-seconds", help="…and for at least this long"),
    warmup_runs: int = typer.Option(5, "--warmup-runs"),
    warmup_seconds: float = typer.Option(0.5, "--warmup-seconds"),
    threads: Optional[int] = THREADS_OPTION,
    cores: Optional[str] = CORES_OPTION,
    runtime: Optional[str] = RUNTIME_OPTION,
    trust_new_host_key: bool = TRUST_OPTION,
    history: str = HISTORY_OPTION,
    no_history: bool = NO_HISTORY_OPTION,
    name: Optional[str] = HISTORY_NAME_OPTION,
) -> None:
    """Measure ARTIFACT's latency on one or more devices; print the statistics and the device's state, and
    append each result to the history database (`edgeprune history` shows it)."""
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from ..devices import load_devices
    from ..remote import BenchSettings, bench_many

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
        settings = BenchSettings(min_runs, min_seconds, warmup_runs, warmup_seconds, threads, parse_cores(cores))
        names = list(dict.fromkeys(device))
        # opened (and a damaged file refused) before the device is used, as the --json output is checked
        store = None if no_history else open_history(history)
    except (EdgepruneError, ValueError) as exc:
        fail(exc)
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
            interrupted(exc)
    ok = [r for r in results if not isinstance(r, Exception)]
    if ok:
        console.print(bench_table(ok))
        for r in ok:
            for flag in r.flags:
                console.print(styled("flagged", "bold yellow", f"{r.device}: {flag}"))
            for note in r.notes:
                console.print(Text(f"note {r.device}: {note}", "dim"))
    errors = [r for r in results if isinstance(r, Exception)]
    for exc in errors:
        err_console.print(styled("error:", "bold red", str(exc)), highlight=False, soft_wrap=True)
    # before --json: a full disk there loses neither
    kept = store is None or append_history(store, ok, lambda h, r: h.record_bench(r, name=name))
    if json_out is not None and ok:
        payload = ok[0].to_dict() if len(results) == 1 else {
            "schema": "edgeprune.bench-results/1", "results": [r.to_dict() for r in ok],
            "errors": [str(e) for e in errors]}
        text = json.dumps(payload, indent=2)
        try:
            _atomic.write_text(json_out, text, overwrite=overwrite)
        except (EdgepruneError, OSError) as exc:  # the disk filled up, or the directory went, during the run
            typer.echo(text)  # the measurement is kept: on stdout, for the user to redirect
            reason = exc if isinstance(exc, EdgepruneError) else os_error(exc, {"json_out": json_out})
            fail(f"the result could not be written to {json_out} ({reason}); it is printed above as JSON")
        console.print(f"wrote {json_out}")
    if errors or not kept:
        raise typer.Exit(code=2)


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


def append_history(store, results, record) -> bool:
    """Append `results` to the history (`record(store, result)`); False (and the error printed) when one did
    not land. The measurement is not lost with it: the table above shows it, --json keeps it."""
    try:
        with store:
            for r in results:
                record(store, r)
    except EdgepruneError as exc:
        err_console.print(styled("error:", "bold red", f"the result was not added to the history: {exc}"),
                          highlight=False, soft_wrap=True)
        return False
    if results:
        console.print(Text(f"added {len(results)} result{'s' if len(results) > 1 else ''} to the history "
                           f"{store.path} (`edgeprune history` shows it)", "dim"))
    return True
