"""Running a command and copying a file on a device. `LocalSession` (a subprocess here) and
`ssh.SSHSession` share `Session`'s shape, so that the benchmark flow is one piece of code for both."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from ..devices import Device
from ..errors import DeviceError, RemoteTimeoutError

# how much longer than a command's own limit the host waits for the device to report its kill
KILL_GRACE_S = 10.0


@dataclass
class Completed:
    rc: int
    stdout: str
    stderr: str


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("error: "):
            return line[len("error: "):]
    return lines[-1] if lines else "no error output"


class Session:
    """Runs argv lists and copies files on a device. `LocalSession` and `SSHSession` share this shape so
    the benchmark flow is one piece of code for both."""

    device: Device

    def run(self, argv: Sequence[str], timeout: float, *, cwd: Optional[str] = None,
            on_stderr_line: Optional[Callable[[str], None]] = None, step: str = "command") -> Completed:
        raise NotImplementedError

    def put(self, local: Path, remote: str, timeout: float, on_bytes: Optional[Callable[[int, int], None]] = None) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class LineSplitter:
    """Feeds complete lines of a byte stream to a callback (the harness's PROGRESS lines)."""

    def __init__(self, callback):
        self.callback, self.pending = callback, b""

    def feed(self, data: bytes) -> None:
        if self.callback is None:
            return
        self.pending += data
        *lines, self.pending = self.pending.split(b"\n")
        for line in lines:
            self.callback(line.decode("utf-8", "replace"))


class LocalSession(Session):
    def __init__(self, device: Device):
        self.device = device

    def run(self, argv, timeout, *, cwd=None, on_stderr_line=None, step="command"):
        try:
            proc = subprocess.Popen(list(argv), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            return Completed(127, "", f"error: cannot start {argv[0]}: {exc.strerror or exc}")
        chunks: dict[str, list[bytes]] = {"out": [], "err": []}
        splitter = LineSplitter(on_stderr_line)

        def pump(stream, key, feed=None):
            for chunk in iter(lambda: stream.read1(65536), b""):
                chunks[key].append(chunk)
                if feed:
                    feed(chunk)

        # One reader per stream (communicate() would race a second reader of stderr for its bytes).
        readers = [threading.Thread(target=pump, args=(proc.stdout, "out"), daemon=True),
                   threading.Thread(target=pump, args=(proc.stderr, "err", splitter.feed), daemon=True)]
        for reader in readers:
            reader.start()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise RemoteTimeoutError(f"device '{self.device.name}': {step} ran past its {timeout:.0f} s timeout; "
                                     f"killed (pid {proc.pid})") from None
        except BaseException:  # Ctrl-C or a raising progress callback: its own session would not see the signal
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        finally:
            for reader in readers:
                reader.join(timeout=5)
        return Completed(proc.returncode, b"".join(chunks["out"]).decode("utf-8", "replace"),
                          b"".join(chunks["err"]).decode("utf-8", "replace"))

    def put(self, local, remote, timeout, on_bytes=None):
        try:
            shutil.copyfile(local, remote)
        except OSError as exc:
            raise DeviceError(f"device '{self.device.name}': cannot copy {Path(local).name} to {remote}: "
                              f"{exc.strerror or exc}") from None
        if on_bytes:
            size = Path(remote).stat().st_size
            on_bytes(size, size)
