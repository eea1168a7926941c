"""Running a command and copying a file on a device. `LocalSession` (a subprocess here) and
`ssh.SSHSession` share `Session`'s shape, so that the benchmark flow is one piece of code for both."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from ..devices import Device
from ..errors import DeviceError, RemoteTimeoutError
from .interrupts import shielded

# how much longer than a command's own limit the host waits for the device to report its kill
KILL_GRACE_S = 10.0
# What is kept of a command's output; the rest is read and thrown away, so that a command flooding its
# output (a runaway harness, a looping runtime) cannot exhaust this host's memory, whatever the device
# does. The device's programs print one JSON line of a few KiB; a harness's result, raw samples included,
# is read with a larger `keep_stdout` (runner.RESULT_KEEP). The end of stderr holds the error line.
STDOUT_KEEP = 1 << 20
STDERR_KEEP = 64 << 10
LINE_MAX = 64 << 10  # a longer stderr line is no PROGRESS line: skipped, never buffered whole
ERROR_LINE_MAX = 500
POLL_S = 0.1  # how often a local wait looks for a stop request (`Session.cancel`)
STOP_GRACE_S = 3.0  # SIGTERM first: device.py's supervisor then kills the harness's whole tree itself


def fmt_size(n: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


class Tail:
    """The last `limit` bytes of a stream. What came before them is counted and dropped as it arrives."""

    def __init__(self, limit: int):
        self.limit, self.chunks, self.held, self.seen = limit, deque(), 0, 0

    def feed(self, data: bytes) -> None:
        if not data:
            return
        self.chunks.append(data)
        self.held += len(data)
        self.seen += len(data)
        while self.held - len(self.chunks[0]) >= self.limit:
            self.held -= len(self.chunks.popleft())

    def value(self) -> bytes:
        data = b"".join(self.chunks)
        return data[-self.limit:] if len(data) > self.limit else data

    @property
    def dropped(self) -> int:
        return self.seen - min(self.held, self.limit)


@dataclass
class Completed:
    rc: int
    stdout: str
    stderr: str
    stdout_dropped: int = 0  # bytes read and discarded before the kept tail (STDOUT_KEEP, STDERR_KEEP)
    stderr_dropped: int = 0

    def truncation(self) -> Optional[str]:
        """What was discarded of the output, or None when all of it was kept."""
        parts = [f"the first {fmt_size(dropped)} of {name} (kept the last {fmt_size(len(kept.encode()))})"
                 for name, dropped, kept in (("stdout", self.stdout_dropped, self.stdout),
                                             ("stderr", self.stderr_dropped, self.stderr)) if dropped]
        return "output truncated on this host: discarded " + " and ".join(parts) if parts else None


def error_line(stderr: str) -> str:
    # the supervisor's reports (runtimes/supervisor.py) and progress lines are no error
    lines = [line for line in stderr.strip().splitlines()
             if line.strip() and not line.startswith(("PROGRESS {", "OUTPUT {", "KILLED {"))]
    found = next((line[len("error: "):] for line in reversed(lines) if line.startswith("error: ")),
                 lines[-1] if lines else "no error output")
    # a flood's last "line" can be the whole kept tail: an error message quotes the start of it
    return found if len(found) <= ERROR_LINE_MAX else found[:ERROR_LINE_MAX] + f"… ({len(found)} characters)"


class Session:
    """Runs argv lists and copies files on a device. `LocalSession` and `SSHSession` share this shape so
    the benchmark flow is one piece of code for both."""

    device: Device
    # Set from another thread to stop this session's work as Ctrl-C would (bench_many's workers never see
    # SIGINT): the command under way is abandoned and KeyboardInterrupt raised.
    cancel: Optional[threading.Event] = None

    def run(self, argv: Sequence[str], timeout: float, *, cwd: Optional[str] = None,
            on_stderr_line: Optional[Callable[[str], None]] = None, step: str = "command",
            keep_stdout: int = STDOUT_KEEP) -> Completed:
        raise NotImplementedError

    def check_cancel(self) -> None:
        """Raise KeyboardInterrupt once a stop was asked for. Once only: the kill and the clean-up that
        follow run through this same session."""
        if self.cancel is not None and self.cancel.is_set():
            self.cancel = None
            raise KeyboardInterrupt

    def uninterruptible(self) -> "_Uninterruptible":
        """For the clean-up steps: neither a stop request nor a second Ctrl-C cuts them short. Each step
        has its own timeout, so this lasts seconds at most."""
        return _Uninterruptible(self)

    def put(self, local: Path, remote: str, timeout: float, on_bytes: Optional[Callable[[int, int], None]] = None) -> None:
        raise NotImplementedError

    def get(self, remote: str, local: Path, timeout: float, size: int) -> None:
        """Copy `remote` (`size` bytes, as the device reported) to `local`; the caller checks its sha256."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class _Uninterruptible:
    def __init__(self, session: Session):
        self.session, self.shield = session, shielded()

    def __enter__(self) -> None:
        self.cancel, self.session.cancel = self.session.cancel, None
        self.shield.__enter__()

    def __exit__(self, *exc) -> None:
        self.session.cancel = self.cancel
        self.shield.__exit__(*exc)


class LineSplitter:
    """Feeds complete lines of a byte stream to a callback (the harness's PROGRESS lines). A line longer
    than LINE_MAX is skipped up to its end, not collected."""

    def __init__(self, callback):
        self.callback, self.pending, self.skipping = callback, b"", False

    def feed(self, data: bytes) -> None:
        if self.callback is None:
            return
        *lines, rest = (self.pending + data).split(b"\n")
        if lines and self.skipping:
            lines, self.skipping = lines[1:], False
        for line in lines:
            if len(line) <= LINE_MAX:
                self.callback(line.decode("utf-8", "replace"))
        self.pending = rest
        if len(rest) > LINE_MAX:
            self.pending, self.skipping = b"", True


class LocalSession(Session):
    def __init__(self, device: Device):
        self.device = device

    def run(self, argv, timeout, *, cwd=None, on_stderr_line=None, step="command", keep_stdout=STDOUT_KEEP):
        self.check_cancel()
        try:
            proc = subprocess.Popen(list(argv), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            return Completed(127, "", f"error: cannot start {argv[0]}: {exc.strerror or exc}")
        out, err = Tail(keep_stdout), Tail(STDERR_KEEP)
        splitter = LineSplitter(on_stderr_line)

        def pump(stream, tail, feed=None):
            for chunk in iter(lambda: stream.read1(65536), b""):
                tail.feed(chunk)
                if feed:
                    feed(chunk)

        # One reader per stream (communicate() would race a second reader of stderr for its bytes).
        readers = [threading.Thread(target=pump, args=(proc.stdout, out), daemon=True),
                   threading.Thread(target=pump, args=(proc.stderr, err, splitter.feed), daemon=True)]
        for reader in readers:
            reader.start()
        end = time.monotonic() + timeout
        try:
            while True:
                try:
                    proc.wait(timeout=max(0.0, min(POLL_S, end - time.monotonic())))
                    break
                except subprocess.TimeoutExpired:
                    if time.monotonic() >= end:
                        raise RemoteTimeoutError(f"device '{self.device.name}': {step} ran past its {timeout:.0f} s "
                                                 f"timeout; killed (pid {proc.pid})") from None
                    self.check_cancel()
        except BaseException:  # the timeout, Ctrl-C, a stop request, a raising progress callback
            with shielded():
                self._stop(proc)
            raise
        finally:
            for reader in readers:
                reader.join(timeout=5 if proc.returncode is not None else 0.5)
        return Completed(proc.returncode, out.value().decode("utf-8", "replace"), err.value().decode("utf-8", "replace"),
                         out.dropped, err.dropped)

    @staticmethod
    def _stop(proc: subprocess.Popen) -> None:
        """SIGTERM the command's process group (its own session: Ctrl-C in the terminal never reaches it),
        then SIGKILL. device.py's supervisor answers SIGTERM by killing everything the harness started."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except OSError:
                pass
            try:
                proc.wait(timeout=STOP_GRACE_S)
                return
            except subprocess.TimeoutExpired:
                continue

    def _copy(self, source, destination, what: str) -> None:
        self.check_cancel()
        try:
            shutil.copyfile(source, destination)
        except OSError as exc:
            raise DeviceError(f"device '{self.device.name}': cannot copy {what}: {exc.strerror or exc}") from None

    def put(self, local, remote, timeout, on_bytes=None):
        self._copy(local, remote, f"{Path(local).name} to {remote}")
        if on_bytes:
            size = Path(remote).stat().st_size
            on_bytes(size, size)

    def get(self, remote, local, timeout, size):
        self._copy(remote, local, f"{remote} back to {local}")
