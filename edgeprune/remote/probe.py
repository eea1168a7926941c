"""`devices check`: is a device reachable, is its work dir writable, which runtimes does it have."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Optional, Sequence

from ..devices import Device, get_device
from ..errors import ArtifactError, ConnectionLostError, DeviceError, WorkdirError
from .results import DeviceCheck
from .interrupts import run_parallel
from .runner import cleanup, open_session
from .session import error_line
from .trust import BOOTSTRAP, DEVICE_MODULES, device_py, prepare, raise_if_untrusted
from .upload import last_json, runtimes_dir, untimed, upload_verified


def check(device: "str | Device", *, devices: "str | Path | None" = None,
          trust_new_host_key: bool = False, imports: bool = False,
          cancel: Optional[threading.Event] = None) -> DeviceCheck:
    """Is the device reachable, is its work dir writable, which runtimes does it have, what state is it in.
    A runtime counts as present when it is installed; with `imports`, only when it also imports (slower).
    Ctrl-C, or setting `cancel`, stops it: its probe dir is removed, then KeyboardInterrupt is raised."""
    if isinstance(device, str):
        device = get_device(device, devices)
    t0 = time.monotonic()
    try:
        session = open_session(device, trust_new_host_key, cancel)
    except DeviceError as exc:
        return DeviceCheck(device.name, device.address, reachable=False, error=str(exc))
    connect_s = time.monotonic() - t0
    probe_dir = None
    cmd_timeout = lambda step: device.command_timeout_s  # noqa: E731
    try:
        try:
            # the same trust checks as a benchmark's: a work dir another user could write is reported here
            probe_dir = prepare(session, device, f"check-{uuid.uuid4().hex[:8]}", device.command_timeout_s,
                                untimed).path
        except DeviceError as exc:
            if isinstance(exc, ConnectionLostError):
                raise
            return DeviceCheck(device.name, device.address, True, str(exc), workdir_writable=False, connect_s=connect_s)
        files = {f"{probe_dir}/{n}": runtimes_dir() / n for n in (BOOTSTRAP, "device.py", *DEVICE_MODULES)}
        upload_verified(session, device, files, {}, cmd_timeout)
        done = session.run(device_py(device, probe_dir, "probe", *(["--imports"] if imports else [])),
                           device.command_timeout_s, step="probe")
        raise_if_untrusted(done, device)
        if done.rc != 0:
            return DeviceCheck(device.name, device.address, True, f"python '{device.python}': "
                               f"{error_line(done.stderr)}", workdir_writable=True, connect_s=connect_s)
        info = last_json(done, device, "the probe")
        return DeviceCheck(device.name, device.address, True, None, info.get("python"), info.get("numpy"),
                           info.get("runtimes", {}), True, info.get("state", {}), connect_s)
    except (DeviceError, ArtifactError) as exc:
        return DeviceCheck(device.name, device.address, not isinstance(exc, ConnectionLostError), str(exc),
                           workdir_writable=False if isinstance(exc, WorkdirError) else None, connect_s=connect_s)
    finally:
        if probe_dir is not None:
            cleanup(session, device, probe_dir, None, "")
        session.close()


def check_many(devices: Sequence[Device], *, trust_new_host_key: bool = False,
               imports: bool = False) -> list[DeviceCheck]:
    """`check` each device, all at once (one thread each), in order. A device whose check raised something
    unexpected is reported in its own DeviceCheck; Ctrl-C stops every check, removes each probe dir, and
    raises KeyboardInterrupt."""
    found: list = [None] * len(devices)

    def work(i: int, cancel: threading.Event) -> None:
        device = devices[i]
        try:
            found[i] = check(device, trust_new_host_key=trust_new_host_key, imports=imports, cancel=cancel)
        except Exception as exc:  # reported in its row; the other devices' rows still print
            found[i] = DeviceCheck(device.name, device.address, False, f"unexpected {type(exc).__name__}: {exc}")

    run_parallel(range(len(devices)), work)
    return found
