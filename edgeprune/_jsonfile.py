"""Reading back a JSON file edgeprune wrote (a manifest, a saved structure, a checkpoint record).

Such a file is written whole, so one that cannot be parsed was damaged or hand-edited afterwards: that is
a MalformedError naming the file, never a bare JSONDecodeError or UnicodeDecodeError, and a file that
cannot be read at all is an ArtifactError with the system's reason.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import ArtifactError, MalformedError


def read_json_object(path: "str | Path", what: str, *, missing: str = "", remedy: str = "") -> dict:
    """The JSON object in `path`. `what` names the file in messages ("the manifest export wrote");
    `missing` is said when the file does not exist, `remedy` after any malformation."""
    path = Path(path)
    after = f"; {remedy}" if remedy else ""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ArtifactError(f"{path}: not found" + (f" — {missing}" if missing else "")) from None
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise MalformedError(f"{path}: not {what} (not UTF-8 text: byte {exc.object[exc.start]:#04x} at offset "
                             f"{exc.start}){after}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MalformedError(f"{path}: not {what} (not valid JSON: {exc}){after}") from None
    if not isinstance(data, dict):
        raise MalformedError(f"{path}: not {what} (a JSON {type(data).__name__}, not an object){after}")
    return data
