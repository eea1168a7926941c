"""Where benchmark results go: printed, and written to --out (BENCHMARKS.md quotes these files)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional


def emit(lines: list[str], out: Optional[Path]) -> None:
    text = "\n".join(lines) + "\n"
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    print(text)
