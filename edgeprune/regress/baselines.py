"""Baselines of latency regression tests: per device and name, the artifact itself (an A/B comparison
runs it again beside the candidate) and a JSON record of it and of its measurement.

    DIR/<device>/<name>/baseline.json    {"schema", name, device, file, sha256, recorded_at, runtime, p50, ...}
    DIR/<device>/<name>/<artifact file>  the baseline artifact, byte for byte

Both are written atomically (the artifact first: a record never names a file that is not complete). A
baseline whose artifact no longer has the recorded sha256 is refused, not compared against.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from .._atomic import sha256_file, write_text, write_with
from ..errors import ArtifactError, SettingsError

SCHEMA = "edgeprune.baseline/1"
RECORD = "baseline.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class Baseline:
    name: str
    device: str
    artifact: Path  # the stored copy
    sha256: str
    recorded_at: str
    runtime: str = ""
    p50: Optional[float] = None
    ci95_p50: Optional[tuple[float, float]] = None
    samples: tuple[float, ...] = ()
    source: str = ""  # where the artifact was recorded from


def check_name(what: str, value: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise SettingsError(f"{what} {value!r}: letters, digits, '.', '_' and '-' only (a directory name in the "
                            f"baselines directory), starting with a letter or digit")
    return value


class BaselineStore:
    """The baselines under one directory."""

    def __init__(self, root: "str | Path"):
        self.root = Path(root)

    def folder(self, name: str, device: str) -> Path:
        return self.root / check_name("device", device) / check_name("name", name)

    def get(self, name: str, device: str) -> Optional[Baseline]:
        """The baseline of `name` on `device`; None if there is none; ArtifactError if it is damaged."""
        record = self.folder(name, device) / RECORD
        if not record.exists():
            return None
        try:
            data = json.loads(record.read_text(encoding="utf-8"))
            if data.get("schema") != SCHEMA:
                raise ValueError(f"schema {data.get('schema')!r}, expected {SCHEMA!r}")
            baseline = Baseline(**{**{k: v for k, v in data.items() if k in Baseline.__dataclass_fields__},
                                   "artifact": record.parent / data["file"],
                                   "samples": tuple(data.get("samples") or ()),
                                   "ci95_p50": tuple(data["ci95_p50"]) if data.get("ci95_p50") else None})
        except (ValueError, KeyError, TypeError) as exc:
            raise ArtifactError(f"{record}: not a baseline record edgeprune wrote ({exc}); record it again with "
                                "--ep-update-baselines") from None
        if not baseline.artifact.is_file() or sha256_file(baseline.artifact) != baseline.sha256:
            raise ArtifactError(f"{baseline.artifact}: the baseline artifact is missing or changed since it was "
                                f"recorded (sha256 {baseline.sha256[:16]}… in {record}); record it again with "
                                "--ep-update-baselines")
        return baseline

    def record(self, name: str, device: str, artifact: "str | Path", result=None) -> Baseline:
        """Store `artifact` as the baseline of `name` on `device` (replacing an earlier one: recording is
        asked for explicitly), with the BenchResult `result` of it when given."""
        artifact = Path(artifact)
        folder = self.folder(name, device)
        if not artifact.is_file():
            raise ArtifactError(f"{artifact}: not found; nothing recorded as the baseline of {name} on {device}")
        sha = sha256_file(artifact)
        with open(artifact, "rb") as src:
            write_with(folder / artifact.name, lambda fh: shutil.copyfileobj(src, fh), overwrite=True)
        baseline = Baseline(
            name=name, device=device, artifact=folder / artifact.name, sha256=sha,
            recorded_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            runtime=getattr(result, "runtime", ""), p50=getattr(result, "p50", None),
            ci95_p50=tuple(result.ci95_p50) if result is not None else None,
            samples=tuple(result.samples) if result is not None else (), source=str(artifact))
        data = {**asdict(baseline), "schema": SCHEMA, "file": artifact.name}
        del data["artifact"]
        write_text(folder / RECORD, json.dumps(data, indent=1) + "\n", overwrite=True)
        for old in folder.iterdir():  # an earlier baseline's artifact under another name
            if old.is_file() and old.name not in (RECORD, artifact.name) and not old.name.startswith("."):
                old.unlink()
        return baseline
