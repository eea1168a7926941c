"""Where an artifact's manifest lives, and which files a manifest says export wrote.

Each artifact has its own manifest, named after the whole file name: `model.pte.manifest.json` beside
`model.pte`, so a `.pte` and a `.tflite` of the same model and target never share one. Exports before this
naming wrote `<stem>.manifest.json`; such a legacy manifest is read only for the very file it names, with
the sha256 it records (it may be another format's manifest that overwrote this one's).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from .._atomic import sha256_file

SCHEMA = "edgeprune.manifest/1"
SUFFIX = ".manifest.json"


def manifest_path(artifact: "str | Path") -> Path:
    """The manifest export writes for `artifact`."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + SUFFIX)


def legacy_manifest_path(artifact: "str | Path") -> Path:
    """`<stem>.manifest.json`, where exports before per-artifact manifests wrote one."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name[: -len(artifact.suffix)] + SUFFIX if artifact.suffix else artifact.name + SUFFIX)


def _peek(path: Path) -> Optional[dict]:
    """An edgeprune manifest's content, or None for anything else (missing, not JSON, not ours)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("schema") == SCHEMA else None


def legacy_manifest(artifact: "str | Path") -> Optional[dict]:
    """The legacy manifest beside `artifact` when it names this artifact file (any content)."""
    artifact = Path(artifact)
    data = _peek(legacy_manifest_path(artifact))
    return data if data is not None and data.get("artifact") == artifact.name else None


def manifest_file(artifact: "str | Path") -> Path:
    """The manifest to read for `artifact`: its own; else a legacy one that names this file and records its
    current sha256; else its own name (which does not exist: the caller says it is missing)."""
    artifact = Path(artifact)
    own = manifest_path(artifact)
    if own.exists():
        return own
    legacy = legacy_manifest(artifact)
    if legacy is not None and artifact.is_file() and legacy.get("sha256") == sha256_file(artifact):
        return legacy_manifest_path(artifact)
    return own


def written_files(manifest: dict) -> set[str]:
    """The files (relative to the manifest's directory) a manifest says its export wrote, itself excluded:
    the artifact, and the side files (the `.pte`'s weight names, Vela's output) newer manifests list under
    "files" and older ones named in their export facts and memory checks."""
    files = {manifest["artifact"]} if isinstance(manifest.get("artifact"), str) else set()
    listed = manifest.get("files")
    if isinstance(listed, dict):
        files |= {f for f in listed if isinstance(f, str)}
    extra = (manifest.get("export") or {}).get("extra_files") if isinstance(manifest.get("export"), dict) else None
    files |= {f for f in extra or () if isinstance(f, str)}
    vela = (manifest.get("memory") or {}).get("vela") if isinstance(manifest.get("memory"), dict) else None
    if isinstance(vela, dict):
        files |= {vela[k] for k in ("vela_tflite", "summary_csv") if isinstance(vela.get(k), str)}
    return {f for f in files if not Path(f).is_absolute() and ".." not in Path(f).parts}


def owned_files(out_dir: Path, artifact_name: str) -> set[str]:
    """The files in `out_dir` an earlier export of `artifact_name` wrote, by its manifests (its own and a
    legacy one naming it), those manifests included: what a forced export may replace."""
    owned = set()
    own = manifest_path(out_dir / artifact_name)
    data = _peek(own)
    if data is not None and data.get("artifact") == artifact_name:
        owned |= written_files(data) | {own.name}
    legacy = legacy_manifest(out_dir / artifact_name)
    if legacy is not None:
        owned |= written_files(legacy) | {legacy_manifest_path(out_dir / artifact_name).name}
    return owned
