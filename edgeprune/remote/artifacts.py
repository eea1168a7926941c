"""Which device-side harness runs an artifact, and the manifest that export wrote beside it."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from .._jsonfile import read_json_object
from ..errors import ArtifactError
from ..export.manifest import manifest_file

# artifact suffix -> harness; a .tflite whose manifest names TFLite-Micro runs in bench_tflm.py
HARNESSES = {"executorch": "bench_executorch.py", "litert": "bench_litert.py", "onnx": "bench_onnx.py",
             "tflm": "bench_tflm.py"}


def read_manifest(artifact: Path) -> Optional[dict]:
    """The manifest export wrote for this artifact file (`<file>.manifest.json`, or a legacy
    `<stem>.manifest.json` only where it names this file and its sha256), or None."""
    path = manifest_file(artifact)
    if not path.exists():
        return None
    return read_json_object(path, "the manifest export writes")


def harness_for(artifact: "str | Path", runtime: Optional[str] = None) -> str:
    """The runtime whose harness runs this artifact: from `runtime`, else the suffix (and, for .tflite,
    the manifest: an MCU export runs in TFLite-Micro)."""
    artifact = Path(artifact)
    if runtime is not None:
        if runtime not in HARNESSES:
            raise ArtifactError(f"unknown runtime '{runtime}' (expected one of: {', '.join(HARNESSES)})")
        return runtime
    suffix = artifact.suffix.lower()
    if suffix == ".pte":
        return "executorch"
    if suffix == ".onnx":
        return "onnx"
    if suffix == ".tflite":
        manifest = read_manifest(artifact) or {}
        return "tflm" if manifest.get("runtime") == "tflite-micro" else "litert"
    raise ArtifactError(f"{artifact}: no harness for '{suffix or artifact.name}' files "
                        "(expected .pte, .tflite or .onnx)")
