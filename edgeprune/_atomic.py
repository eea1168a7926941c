"""Files: written so they appear complete or not at all (never replacing one silently), and checksummed."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

from .errors import ArtifactError


def write_with(path: "str | Path", write: Callable[[BinaryIO], None], *, overwrite: bool = False) -> Path:
    """Call `write(fh)` on a temporary file beside `path`, then rename it into place."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise ArtifactError(f"{path}: already exists; pass --overwrite (overwrite=True) to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: "str | Path", text: str, *, overwrite: bool = False) -> Path:
    return write_with(path, lambda fh: fh.write(text.encode("utf-8")), overwrite=overwrite)


def sha256_file(path: "str | Path") -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
