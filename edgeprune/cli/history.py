"""`edgeprune history`: the recorded bench results and comparisons, with their change points."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table
from rich.text import Text

from .. import _atomic
from ..history import open_history
from ._app import HISTORY_OPTION, app, console, overwrite_option


@app.command("history")
def history_cmd(
    history: str = HISTORY_OPTION,
    device: Optional[str] = typer.Option(None, "--device", "-d", help="only this device's records"),
    name: Optional[str] = typer.Option(None, "--name", help="only this model's records (the artifact's file name "
                                       "unless `bench --name` gave another)"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="also draw p50 with its CI per device, slower verdicts "
                                        "and change points, to this PNG"),
    overwrite: bool = overwrite_option("an existing --plot file"),
) -> None:
    """Print the recorded bench results and comparisons, oldest first, with the change points in p50 found
    per device and model; optionally plot them."""
    from ..history import level_changes, plot_history

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
