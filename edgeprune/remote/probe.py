"""`devices check`: is a device reachable, is its work dir writable, which runtimes does it have."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from ..devices import Device, get_device
from ..errors import ArtifactError, ConnectionLostError, DeviceError
from .results import DeviceCheck
from .runner import cleanup, open_session
from .session import error_line
from .upload import last_json, make_dir, runtimes_dir, untimed, upload_verified


def check(device: "str | Device", *, devices: "str | Path | None" = None,
          trust_new_host_key: bool = False, imports: bool = False) -> DeviceCheck:
    """Is the device reachable, is its work dir writable, which runtimes does it have, what state is it in.
    A runtime counts as present when it is installed; with `imports`, only when it also imports (slower)."""
    if isinstance(device, str):
        device = get_device(device, devices)
    t0 = time.monotonic()
    try:
        session = open_session(device, trust_new_host_key)
    except DeviceError as exc:
        return DeviceCheck(device.name, device.address, reachable=False, error=str(exc))
    connect_s = time.monotonic() - t0
    probe_dir = f"{device.workdir.rstrip('/')}/check-{uuid.uuid4().hex[:8]}"
    cmd_timeout = lambda step: device.command_timeout_s  # noqa: E731
    try:
        try:
            make_dir(session, device, probe_dir, device.command_timeout_s, untimed)
        except DeviceError as exc:
            return DeviceCheck(device.name, device.address, True, str(exc), workdir_writable=False, connect_s=connect_s)
        files = {f"{probe_dir}/{n}": runtimes_dir() / n for n in ("device.py", "device_state.py")}
        upload_verified(session, device, files, {}, cmd_timeout)
        done = session.run([device.python, f"{probe_dir}/device.py", "probe", *(["--imports"] if imports else [])],
                           device.command_timeout_s, step="probe")
        if done.rc != 0:
            return DeviceCheck(device.name, device.address, True, f"python '{device.python}': "
                               f"{error_line(done.stderr)}", workdir_writable=True, connect_s=connect_s)
        info = last_json(done, device, "the probe")
        return DeviceCheck(device.name, device.address, True, None, info.get("python"), info.get("numpy"),
                           info.get("runtimes", {}), True, info.get("state", {}), connect_s)
    except (DeviceError, ArtifactError) as exc:
        return DeviceCheck(device.name, device.address, not isinstance(exc, ConnectionLostError), str(exc),
                           connect_s=connect_s)
    finally:
        cleanup(session, device, probe_dir, None, "")
        session.close()
