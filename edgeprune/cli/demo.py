"""`edgeprune demo`: the whole flow on scikit-learn's digits, for three targets, with a report folder."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .. import _atomic
from ..errors import ArtifactError, EdgepruneError
from ._app import DEVICES_OPTION, app, fail


@app.command("demo")
def demo_cmd(
    device: str = typer.Option("local", "--device", "-d", help="where to time the artifacts (default: a subprocess here)"),
    devices: Optional[Path] = DEVICES_OPTION,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="report folder (default: ./edgeprune-demo-report, "
                                       "or -2, -3, ... when one is already there)"),
) -> None:
    """The whole flow on scikit-learn's digits for a Jetson, a Pi 5 and an Ethos-U55: train, sensitivity,
    plan, prune, fine-tune with KD, export, verify, measure; a summary table and a report folder."""
    from .. import demo

    try:
        if out is not None and _atomic.check_dir_output(out).exists() and any(out.iterdir()):
            raise ArtifactError(f"{out}: already exists and is not empty; choose a new --out")
        if out is not None:
            _atomic.check_writable(out)
        demo.main(device=device, devices=str(devices) if devices else None, out=out)
    except EdgepruneError as exc:
        fail(exc)
