"""`edgeprune regress`: judge a candidate artifact against a baseline on a device, with exit codes for CI."""

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
from ._app import (CORES_OPTION, DEVICES_OPTION, HISTORY_NAME_OPTION, HISTORY_OPTION, NO_HISTORY_OPTION,
                   RUNTIME_OPTION, THREADS_OPTION, TRUST_OPTION, app, console, err_console, fail, interrupted,
                   os_error, overwrite_option, parse_cores, styled)
from .bench import append_history

# `edgeprune regress` exit codes, for CI systems that do not run pytest
REGRESS_EXIT = {"same": 0, "faster": 0, "slower": 1, "inconclusive": 3}


@app.command("regress")
def regress_cmd(
    candidate: Path = typer.Argument(..., help="the artifact to judge"),
    baseline: Path = typer.Option(..., "--baseline", help="the artifact to judge it against (same runtime)"),
    devices: Optional[Path] = DEVICES_OPTION,
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
    threads: Optional[int] = THREADS_OPTION,
    cores: Optional[str] = CORES_OPTION,
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the whole comparison here"),
    overwrite: bool = overwrite_option("an existing --json file"),
    runtime: Optional[str] = RUNTIME_OPTION,
    trust_new_host_key: bool = TRUST_OPTION,
    history: str = HISTORY_OPTION,
    no_history: bool = NO_HISTORY_OPTION,
    name: Optional[str] = HISTORY_NAME_OPTION,
) -> None:
    """Judge CANDIDATE against --baseline on a device, A/B interleaved in one process. Exit 0 when it is
    the same or faster, 1 slower, 3 inconclusive, 2 on a usage or device error."""
    from ..devices import get_device
    from ..remote import CompareSettings, compare

    try:
        dev = get_device(device, devices)
        settings = CompareSettings(max_slowdown=max_slowdown, min_effect=min_effect, max_rounds=max_rounds,
                                   max_seconds=max_seconds, governor=governor, threads=threads,
                                   cores=parse_cores(cores), cooldown_s=cooldown, retries=retries)
        if json_out is not None:
            _atomic.check_file_output(json_out, overwrite=overwrite)
            _atomic.check_writable(json_out)
        store = None if no_history else open_history(history)
    except (EdgepruneError, ValueError) as exc:
        fail(exc)
    with err_console.status(f"comparing on {dev.name}", spinner="dots") as status:
        def on_progress(stage: str, info: dict) -> None:
            detail = f" ({info['rounds']} rounds: {info['verdict']})" if stage == "judge" else ""
            status.update(f"{dev.name}: {stage}{detail}")

        try:
            c = compare(baseline, candidate, dev, settings=settings, runtime=runtime, name=name,
                        trust_new_host_key=trust_new_host_key, progress=on_progress)
        except KeyboardInterrupt as exc:
            status.stop()
            interrupted(exc)
        except EdgepruneError as exc:
            status.stop()
            fail(exc)
    console.print(comparison_table([c]))
    style = {"slower": "bold red", "inconclusive": "bold yellow"}.get(c.verdict.value, "bold green")
    console.print(styled(c.verdict.value, style, c.summary()[len(c.verdict.value):]), soft_wrap=True)
    for note in c.notes:
        console.print(Text(f"note: {note}", "dim"))
    kept = store is None or append_history(store, [c], lambda h, r: h.record_comparison(r))
    if json_out is not None:
        text = json.dumps(c.to_dict(), indent=2)
        try:
            _atomic.write_text(json_out, text, overwrite=overwrite)
        except (EdgepruneError, OSError) as exc:
            typer.echo(text)
            reason = exc if isinstance(exc, EdgepruneError) else os_error(exc, {"json_out": json_out})
            fail(f"the comparison could not be written to {json_out} ({reason}); it is printed above as JSON")
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
