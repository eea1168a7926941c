"""Ship files to a device and prove there, by sha256, that they arrived as they left."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

from .._atomic import sha256_file
from .._resources import builtin_dir
from ..devices import Device
from ..errors import ArtifactError, DeviceError
from .session import Completed, Session, error_line

SUPPORT_FILES = ("bootstrap.py", "device.py", "device_state.py", "supervisor.py", "harness.py", "interleave.py",
                 "deploy_check.py")
Progress = Callable[[str, dict], None]


# A hasher that does not depend on anything we uploaded: nothing uploaded runs before it is checked.
HASHER = ("import hashlib, json, sys\n"
           "out = {}\n"
           "for path in sys.argv[1:]:\n"
           "    digest = hashlib.sha256()\n"
           "    with open(path, 'rb') as fh:\n"
           "        for block in iter(lambda: fh.read(1 << 20), b''):\n"
           "            digest.update(block)\n"
           "    out[path] = digest.hexdigest()\n"
           "print(json.dumps(out))\n")


def untimed(name: str, fn, *args, **kwargs):
    return fn(*args, **kwargs)


def upload_verified(session: Session, device: Device, files: dict[str, Path], known: dict[str, str],
                     cmd_timeout: Callable[[str], float], timed=None, report: Optional[Progress] = None) -> None:
    """Upload `files` (remote path -> local path) by SFTP, then compare every sha256 on the device with
    ours (`known` holds digests already computed). `timed(name, fn, *args)` and `report` are optional:
    `bench` accounts for the overhead and shows progress, `check` does neither."""
    timed = timed or untimed
    report = report or (lambda stage, info: None)
    for remote_path, local in files.items():
        report("upload", {"file": local.name, "bytes": local.stat().st_size})
        timed("upload_s", session.put, local, remote_path, cmd_timeout("upload"),
              lambda done, total: report("upload-progress", {"done": done, "total": total}))
    report("verify", {})
    sums = timed("verify_s", session.run, [device.python, "-c", HASHER, *files], cmd_timeout("sha256"),
                 step="the sha256 check")
    if sums.rc == 127:
        raise DeviceError(f"device '{device.name}': cannot run python '{device.python}' there "
                          f"({error_line(sums.stderr)}); set `python` in devices.toml")
    if sums.rc != 0:
        raise DeviceError(f"device '{device.name}': cannot checksum the upload: {error_line(sums.stderr)}")
    got = last_json(sums, device, "the sha256 check")
    for remote_path, local in files.items():
        digest = known.get(remote_path) or sha256_file(local)
        if got.get(remote_path) != digest:
            raise ArtifactError(f"device '{device.name}': {local.name} arrived corrupted: sha256 on the device "
                                f"{str(got.get(remote_path))[:16]}… != local {digest[:16]}…; nothing was run")


def last_json(done: Completed, device: Device, step: str) -> dict:
    """The JSON object on the last non-empty stdout line (a login script may print before it)."""
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    try:
        value = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        raise DeviceError(f"device '{device.name}': {step} printed no result JSON "
                          f"(stdout ends {done.stdout[-200:]!r}; stderr: {error_line(done.stderr)})") from None
    if not isinstance(value, dict):
        raise DeviceError(f"device '{device.name}': {step} printed {type(value).__name__}, not a JSON object")
    return value


def runtimes_dir() -> Path:
    return builtin_dir("runtimes")
