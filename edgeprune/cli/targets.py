"""`edgeprune targets`: list the built-in target profiles, or show one."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from ..errors import EdgepruneError
from ..targets import builtin_targets, load_target
from ._app import console, fail, format_size, targets_app


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
            "/".join(t.precision.supported), format_size(t.memory.sram_bytes), format_size(t.memory.flash_bytes),
            f"{t.runtime.preferred} (.{t.runtime.export_format})",
        )
    console.print(table)


@targets_app.command("show")
def targets_show(name: str = typer.Argument(..., help="a built-in name or a path to a .toml profile")) -> None:
    """Print one profile, with the sources of its numbers."""
    try:
        target = load_target(name)
    except EdgepruneError as exc:
        fail(exc)
    console.print(Text.assemble((target.name, "bold"), f" — {target.description}  (", (str(target.source), "dim"), ")"))
    hw = target.hardware  # as loaded: a profile's "host" values are this machine's, read now
    console.print(f"hardware as loaded: {hw.cpu}; {hw.cores} cores at {hw.clock_hz / 1e9:.2f} GHz; "
                  f"SIMD {hw.simd} ({hw.simd_width_bits}-bit)", highlight=False)
    console.print(Syntax(Path(target.source).read_text(encoding="utf-8"), "toml", word_wrap=True))
