"""Files: written so they appear complete or not at all (never replacing one silently), and checksummed.

A temporary file or directory is named `.<final name>.<pid>-<host>-<random>.<kind>` beside where its
content ends up. The writer's pid in the name lets the next run tell what a killed writer left behind (its
process is gone) from what a live one is still writing, at once: an age threshold would either leave a
kill's leftovers for minutes or delete the file of a slow writer (a large model's weights, Vela's compile).
A reused pid only keeps a leftover until that process ends; another host's leftovers (a shared network
directory) are never touched, since its processes cannot be checked from here.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterable

from .errors import ArtifactError
from ._warn import warn

_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-(?P<host>[0-9a-f]{8})-[0-9a-f]{8}\.(?P<kind>[a-z]+)$")


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


def check_writable(path: "str | Path") -> Path:
    """Refuse, before any work is done, an output (file or directory) that cannot be created: a file is
    created and removed in the nearest existing directory that will hold it. File modes cannot tell (root
    ignores them); a read-only file system or a directory of another user's only shows when tried."""
    path = Path(path)
    existing = next((p for p in (path, *path.parents) if p.is_dir()), Path("."))
    probe = temporary_path(existing / ".edgeprune-write-check", "tmp")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as exc:
        where = "" if existing == path else f" ({existing} is not writable)"
        raise ArtifactError(f"{path}: cannot be written{where}: {exc.strerror or exc}") from None
    probe.unlink(missing_ok=True)
    return path


def foreign_files(directory: "str | Path", ours: Iterable[str] = ()) -> list[str]:
    """What `directory` holds besides the files named in `ours`, as sorted relative paths. Symlinks are
    listed, never followed; an empty subdirectory is listed as `name/`."""
    directory, ours, found = Path(directory), set(ours), []
    for root, dirs, files in os.walk(directory):
        here = Path(root)
        links = [d for d in dirs if (here / d).is_symlink()]
        for name in files + links:
            rel = (here / name).relative_to(directory).as_posix()
            if rel not in ours:
                found.append(rel)
        if here != directory and not dirs and not files:
            found.append(here.relative_to(directory).as_posix() + "/")
    return sorted(found)


def in_the_way(directory: "str | Path", foreign: list[str], remedy: str) -> ArtifactError:
    """The error for a directory edgeprune would replace that holds files it did not write."""
    shown = ", ".join(foreign[:8]) + (f" and {len(foreign) - 8} more" if len(foreign) > 8 else "")
    return ArtifactError(f"{directory}/: holds files edgeprune did not write: {shown}; remove them or {remedy}")


def make_dir(path: "str | Path") -> Path:
    """`mkdir -p path`, with a failure (a file in the way, no permission) raised as ArtifactError."""
    path = check_dir_output(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot create the directory: {exc.strerror or exc}") from None
    return path


def temporary_path(path: "str | Path", kind: str) -> Path:
    """A fresh name beside `path` for a temporary of this process (`kind`: "tmp", "stage", ...)."""
    path = Path(path)
    return path.parent / f".{path.name}.{os.getpid()}-{_HOST}-{uuid.uuid4().hex[:8]}.{kind}"


@dataclass(frozen=True)
class Leftover:
    """A temporary whose writer is gone."""

    path: Path
    kind: str
    pid: int

    @property
    def final(self) -> Path:
        """Where its content was going."""
        return self.path.parent / _TEMPORARY.match(self.path.name)["name"]


def writer_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def abandoned(directory: "str | Path", kinds: Iterable[str]) -> list[Leftover]:
    """The temporaries of `kinds` in `directory` (ours by name, from this host) whose writer is dead."""
    kinds = set(kinds)
    try:
        names = sorted(os.listdir(directory))
    except OSError:  # missing or unreadable: nothing of ours to find
        return []
    found = []
    for name in names:
        match = _TEMPORARY.match(name)
        if match and match["kind"] in kinds and match["host"] == _HOST and not writer_alive(int(match["pid"])):
            found.append(Leftover(Path(directory) / name, match["kind"], int(match["pid"])))
    return found


def remove_path(path: Path) -> None:
    """Remove a file, a symlink (not what it points to) or a directory tree; a missing one is fine."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass


def remove_abandoned(directory: "str | Path", kinds: Iterable[str] = ("tmp", "stage")) -> list[Path]:
    """Remove what killed writers left in `directory` (see the module docstring), saying so."""
    removed = []
    for left in abandoned(directory, kinds):
        try:
            remove_path(left.path)
        except OSError:  # a read-only directory: the write that follows fails and says why
            continue
        removed.append(left.path)
    if removed:
        warn(f"{directory}: removed what an interrupted run left behind (its process is gone): "
             + ", ".join(p.name for p in removed))
    return removed


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
    remove_abandoned(path.parent, ("tmp",))
    tmp = temporary_path(path, "tmp")
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot be written: {exc.strerror or exc}") from None
    try:
        write_to(str(tmp))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:  # a full disk, a read-only or vanished directory
        tmp.unlink(missing_ok=True)
        raise ArtifactError(f"{path}: cannot be written: {exc.strerror or exc}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
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
