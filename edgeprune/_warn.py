"""Warnings attributed to the user's line, however deep inside edgeprune they are raised.

A fixed `stacklevel` is right for one call path only: `save` → `check_save_dir` → `_recover` needs 4, the CLI
calling `check_save_dir` needs 3. Counting the frames up to the first one outside the package is right for all.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

_PACKAGE = str(Path(__file__).resolve().parent)


def _inside(filename: str) -> bool:
    return str(Path(filename).resolve()).startswith(_PACKAGE + "/") if filename[:1] != "<" else False


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    frame, level = sys._getframe(1), 2  # 1 would be this line; 2 is whoever called warn
    while frame is not None and _inside(frame.f_code.co_filename):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
