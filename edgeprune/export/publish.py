"""Putting an export's files in place as a unit: all of them with their manifest, or none.

Everything is written into a staging directory beside the outputs, `.<artifact>.<pid>-<host>-<random>.export`
(named like _atomic's temporaries, so a dead writer's is recognised at once), manifest included; a full disk
fails there, before anything the user had is touched. Publishing then only renames, in this order:

1. `publish.json` (the list of files to move, the manifest last) is written into the staging directory;
2. each file the export replaces is moved into the staging directory's `old/`, and the new one into place;
3. the manifest moves last: the export is complete (the commit point); the staging directory goes.

A run killed at any step leaves the staging directory, which says how far it got. The next export into the
same directory rolls it back: new files that came before the manifest are removed, replaced ones moved back,
so an earlier complete export is intact again and an incomplete one never blocks a rerun. A failure inside
step 2 is rolled back the same way at once; should that rollback fail too, the staging directory is kept
(not discarded with the files it had moved aside) for the next export, even in the same process, to roll back.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .._atomic import abandoned, remove_abandoned, remove_path, temporary_path, write_text
from ..errors import ArtifactError
from .manifest import legacy_manifest, legacy_manifest_path, owned_files
from .._warn import warn

KIND = "export"
JOURNAL = "publish.json"

# Staging directories of this process whose publication ended neither committed nor rolled back (the rollback
# itself failed or was interrupted): they hold the files it replaced. abandoned() skips them (their writer,
# this process, is alive), but no publication is in progress in them any more, so recover() takes them too.
_unsettled: set[Path] = set()


def recover(out_dir: Path) -> None:
    """Roll back what exports killed in `out_dir` left (see the module docstring), and remove abandoned
    temporaries, saying so."""
    for left in abandoned(out_dir, (KIND,)):
        what = _roll_back(left.path, out_dir)
        remove_path(left.path)
        warn(f"{left.final}: an export interrupted before it completed (process {left.pid}, now gone) "
             f"left files behind; {what}")
    for root in sorted(r for r in _unsettled if r.parent == out_dir):
        what = _roll_back(root, out_dir)
        remove_path(root)
        _unsettled.discard(root)
        warn(f"{out_dir}: an earlier export in this process that failed and could not be undone "
             f"left files behind; {what}")
    remove_abandoned(out_dir, ("tmp", "stage"))


def check_destinations(out_dir: Path, artifact_name: str, names: list[str], force: bool) -> None:
    """Refuse to publish over a file no manifest of an earlier export of this artifact names (edgeprune did
    not write it: never replaced, even with force), or over one it does name without `force`."""
    owned = owned_files(out_dir, artifact_name)
    for name in names:
        dest = out_dir / name
        if not (dest.exists() or dest.is_symlink()):
            continue
        if name not in owned or dest.is_dir():
            raise ArtifactError(f"{dest}: is in the way: edgeprune did not write it (no manifest of an earlier export of "
                                f"{artifact_name} names it); remove it, or choose another output directory or name")
        if not force:
            raise ArtifactError(f"{dest}: already exists; pass force=True (CLI: --overwrite) to replace it")


class Staging:
    """The staging directory of one export: `new/` holds what the export writes."""

    def __init__(self, out_dir: Path, artifact_name: str):
        self.out_dir, self.artifact_name = out_dir, artifact_name
        self.root = temporary_path(out_dir / artifact_name, KIND)
        self.new = self.root / "new"
        # False from the journal until the commit or a completed rollback: meanwhile `old/` may hold the user's files
        self.settled = True
        try:
            self.new.mkdir(parents=True)
        except OSError as exc:
            raise ArtifactError(f"{out_dir}: cannot be written: {exc.strerror or exc}") from None

    def publish(self, manifest_text: str, manifest_name: str, force: bool) -> list[Path]:
        """Write the manifest into staging, then move every staged file into place, the manifest last."""
        try:
            (self.new / manifest_name).write_text(manifest_text, encoding="utf-8")
        except OSError as exc:
            raise ArtifactError(f"{self.out_dir / manifest_name}: cannot be written: {exc.strerror or exc}") from None
        staged = sorted(p.relative_to(self.new).as_posix() for p in self.new.rglob("*") if p.is_file())
        moves = [rel for rel in staged if rel != manifest_name] + [manifest_name]
        check_destinations(self.out_dir, self.artifact_name, moves, force)
        # a legacy <stem>.manifest.json naming this artifact would describe the file this export replaces
        retire = []
        if legacy_manifest(self.out_dir / self.artifact_name) is not None:
            retire = [legacy_manifest_path(self.out_dir / self.artifact_name).name]
        self.settled = False
        write_text(self.root / JOURNAL, json.dumps({"moves": moves, "retire": retire}))
        try:
            for rel in retire:
                self._set_aside(rel)
            for rel in moves:
                self._set_aside(rel)
                dest = self.out_dir / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(self.new / rel, dest)
            self.settled = True
        except BaseException as exc:
            try:
                _roll_back(self.root, self.out_dir)
            except OSError as undo:
                reason = (exc.strerror or exc) if isinstance(exc, OSError) else type(exc).__name__
                raise ArtifactError(f"{self.out_dir}: cannot put {self.artifact_name} in place ({reason}), nor undo "
                                    f"it ({undo.strerror or undo}): the files it replaced are kept in {self.root}; "
                                    f"the next export into {self.out_dir} puts them back") from None
            self.settled = True
            if isinstance(exc, OSError):
                raise ArtifactError(f"{self.out_dir}: cannot put {self.artifact_name} in place "
                                    f"({exc.strerror or exc}); nothing was changed") from None
            raise
        return [self.out_dir / rel for rel in moves]

    def _set_aside(self, rel: str) -> None:
        dest = self.out_dir / rel
        if dest.exists() or dest.is_symlink():
            kept = self.root / "old" / rel
            kept.parent.mkdir(parents=True, exist_ok=True)
            os.replace(dest, kept)

    def discard(self) -> None:
        """Remove the staging directory, unless it holds files of an unfinished publication: then it is left
        for the next export's recover() to roll back."""
        if not self.settled:
            _unsettled.add(self.root)
            return
        shutil.rmtree(self.root, ignore_errors=True)


def _roll_back(root: Path, out_dir: Path) -> str:
    """Undo an unfinished publication from its staging directory `root`; say what was done."""
    try:
        journal = json.loads((root / JOURNAL).read_text(encoding="utf-8"))
        moves, retire = list(journal["moves"]), list(journal["retire"])
    except (OSError, ValueError, KeyError, TypeError):
        return "nothing had been put in place; its staging files were removed"
    new, old = root / "new", root / "old"
    if moves and not (new / moves[-1]).exists():  # the manifest was moved: the export had completed
        return "it had completed; its staging files were removed"
    for rel in moves + retire:
        if rel in moves and not (new / rel).exists():
            remove_path(out_dir / rel)  # ours: it came from staging
        if (old / rel).exists() or (old / rel).is_symlink():
            os.replace(old / rel, out_dir / rel)
    return "the files it had put in place were removed and the ones it replaced put back"
