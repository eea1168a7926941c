"""Where the built-in data (target profiles, device harnesses) lives.

In a wheel it sits inside the package (`edgeprune/_builtin/`, see pyproject's force-include); in a
source checkout or an editable install it is the repository's top-level folder of the same name.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def builtin_dir(kind: str) -> Path:
    """`kind` is "targets" or "runtimes"."""
    packaged = _PACKAGE / "_builtin" / kind
    if packaged.is_dir():
        return packaged
    return _PACKAGE.parent / kind
