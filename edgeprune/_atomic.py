"""Files: written so they appear complete or not at all (never replacing one silently), and checksummed."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

from .errors import ArtifactError


def _blocking_file(path: Path) -> "Path | None":
    """The existing file among `path` and its ancestors that stops `path` from being a directory."""
    for part in (path, *path.parents):
        if part.exists() and not part.is_dir():
            return part
    return None


def check_file_output(path: "str | Path", *, overwrite: bool = False) -> Path:
    """Refuse, before any work is done, to write the file `path` where it cannot or must not go: an existing
    file without `overwrite`, a directory, or a parent that is a file."""
    path = Path(path)
    if path.is_dir():
        raise ArtifactError(f"{path}: is a directory; name a file to write")
    if path.exists() and not overwrite:
        raise ArtifactError(f"{path}: already exists; pass --overwrite (overwrite=True) to replace it")
    blocker = _blocking_file(path.parent)
    if blocker is not None:
        raise ArtifactError(f"{path}: cannot be written: {blocker} is a file, not a directory")
    return path


def check_dir_output(path: "str | Path", *, exists_ok: bool = True) -> Path:
    """Refuse, before any work is done, an output directory that is a file (or lies under one), and with
    `exists_ok=False` one that already exists (a directory replaced as a whole needs --overwrite)."""
    path = Path(path)
    blocker = _blocking_file(path)
    if blocker is not None:
        where = "" if blocker == path else f" ({blocker} is a file)"
        raise ArtifactError(f"{path}: is not a directory{where}; name a directory to write into")
    if not exists_ok and path.exists():
        raise ArtifactError(f"{path}: already exists; pass --overwrite (overwrite=True) to replace it")
    return path


def make_dir(path: "str | Path") -> Path:
    """`mkdir -p path`, with a failure (a file in the way, no permission) raised as ArtifactError."""
    path = check_dir_output(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot create the directory: {exc.strerror or exc}") from None
    return path


def write_with(path: "str | Path", write: Callable[[BinaryIO], None], *, overwrite: bool = False) -> Path:
    """Call `write(fh)` on a temporary file beside `path`, then rename it into place."""

    def fill(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            write(fh)

    return write_file(path, fill, overwrite=overwrite)


def write_file(path: "str | Path", write_to: Callable[[str], None], *, overwrite: bool = False) -> Path:
    """For writers that take a file name (safetensors' `save_file`): `write_to(tmp)` on a temporary file
    beside `path`, synced, then renamed into place; the temporary file is removed if anything fails."""
    path = check_file_output(path, overwrite=overwrite)
    make_dir(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot be written: {exc.strerror or exc}") from None
    os.close(fd)
    try:
        write_to(tmp)
        with open(tmp, "rb") as fh:
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
