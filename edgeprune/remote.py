"""Measure an artifact's latency on a device: ship it, run the device-side harness, bring back statistics.

    result = ep.bench("model.pte", "pi5-lab", devices="devices.toml")   # -> BenchResult
    result.p50, result.ci95_p50, result.flags

One run, on any device (the built-in `local` is a subprocess here; the others are reached over SSH):

    connect (host key checked first) -> make the run dir -> upload the harness -> take the device's lock
    -> upload the artifact -> check every file's sha256 on the device -> run the harness under a
    supervisor that kills it at the command timeout -> parse its JSON -> release the lock -> remove the
    run dir (also on failure)

The harnesses (runtimes/bench_*.py) and the control script (runtimes/device.py) need only the device's
python3, numpy and the runtime. Every wait has a limit: the connect timeout, the per-command timeout and
the device's overall deadline; a command is read while it runs (paramiko's `recv_exit_status` would hang
on large output) and is killed on the device when a limit passes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import select
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import paramiko

from ._atomic import sha256_file
from ._resources import builtin_dir
from .devices import Device, get_device, load_devices
from .errors import (ArtifactError, ConnectionLostError, DeviceBusyError, DeviceError, EdgepruneError, HostKeyError,
                     RemoteTimeoutError)

# artifact suffix -> harness; a .tflite whose manifest names TFLite-Micro runs in bench_tflm.py
HARNESSES = {"executorch": "bench_executorch.py", "litert": "bench_litert.py", "onnx": "bench_onnx.py",
             "tflm": "bench_tflm.py"}
_SUPPORT_FILES = ("device.py", "device_state.py", "harness.py")
_KILL_GRACE_S = 10.0
Progress = Callable[[str, dict], None]


@dataclass(frozen=True)
class BenchSettings:
    """How long to warm up and measure (both a count AND a duration, as benchmark_model and trtexec do)."""

    min_runs: int = 50
    min_seconds: float = 2.0
    warmup_runs: int = 5
    warmup_seconds: float = 0.5
    threads: Optional[int] = None  # None: the device's `threads` in devices.toml (else the runtime's default)
    cores: Optional[tuple[int, ...]] = None  # None: the device's `cores` (else no pinning)
    seed: int = 0

    def __post_init__(self):
        if self.min_runs < 1 or self.warmup_runs < 0 or self.min_seconds < 0 or self.warmup_seconds < 0:
            raise ValueError(f"bench settings out of range: {self}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")


@dataclass(frozen=True)
class BenchResult:
    """Latency of one artifact on one device, in milliseconds, with the device's state around the run.

    `flags` lists what makes the numbers suspect (a CPU clock that dropped, a thermal trip point crossed);
    `valid` is False when there is any. `proxy` is True when the device is not the artifact's target
    (a Jetson artifact timed by onnxruntime on a laptop is not the Jetson's latency)."""

    device: str
    device_target: str
    artifact: str
    artifact_sha256: str
    artifact_target: Optional[str]
    runtime: str
    runtime_version: str
    engine: str
    n: int
    p50: float
    p90: float
    p99: float
    mean: float
    std: float
    cv: float
    min: float
    max: float
    ci95_p50: tuple[float, float]
    samples: tuple[float, ...]
    warmup_runs: int
    threads: Optional[int]
    cores: Optional[tuple[int, ...]]
    state_before: dict
    state_after: dict
    flags: tuple[str, ...]
    notes: tuple[str, ...]
    overhead_s: dict
    settings: dict
    measured_at: str
    unit: str = "ms"

    @property
    def valid(self) -> bool:
        return not self.flags

    @property
    def proxy(self) -> bool:
        return self.artifact_target is not None and self.artifact_target != self.device_target

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(schema="edgeprune.bench-result/1", valid=self.valid, proxy=self.proxy)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict) -> "BenchResult":
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known}
        for key in ("samples", "flags", "notes"):
            values[key] = tuple(values.get(key, ()))
        values["ci95_p50"] = tuple(values["ci95_p50"])
        values["cores"] = tuple(values["cores"]) if values.get("cores") else None
        return cls(**values)


@dataclass(frozen=True)
class DeviceCheck:
    """What `devices check` found: can we reach the device, which runtimes it has, and its state."""

    device: str
    address: str
    reachable: bool
    error: Optional[str] = None
    python: Optional[str] = None
    numpy: Optional[str] = None
    runtimes: dict = field(default_factory=dict)
    workdir_writable: Optional[bool] = None
    state: dict = field(default_factory=dict)
    connect_s: Optional[float] = None


# ---------------------------------------------------------------------------------------------- limits

class _Deadline:
    def __init__(self, device: Device, seconds: float):
        self.device, self.seconds, self.end = device, seconds, time.monotonic() + seconds

    def cap(self, timeout: float, step: str) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise RemoteTimeoutError(f"device '{self.device.name}': the overall deadline of {self.seconds:.0f} s "
                                     f"(deadline_s) passed before {step}")
        return min(timeout, left)


@dataclass
class _Completed:
    rc: int
    stdout: str
    stderr: str


def _error_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("error: "):
            return line[len("error: "):]
    return lines[-1] if lines else "no error output"


# -------------------------------------------------------------------------------------------- sessions

class _Session:
    """Runs argv lists and copies files on a device. `_LocalSession` and `_SSHSession` share this shape so
    the benchmark flow is one piece of code for both."""

    device: Device

    def run(self, argv: Sequence[str], timeout: float, *, cwd: Optional[str] = None,
            on_stderr_line: Optional[Callable[[str], None]] = None, step: str = "command") -> _Completed:
        raise NotImplementedError

    def put(self, local: Path, remote: str, timeout: float, on_bytes: Optional[Callable[[int, int], None]] = None) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _LineSplitter:
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


class _LocalSession(_Session):
    def __init__(self, device: Device):
        self.device = device

    def run(self, argv, timeout, *, cwd=None, on_stderr_line=None, step="command"):
        try:
            proc = subprocess.Popen(list(argv), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            return _Completed(127, "", f"error: cannot start {argv[0]}: {exc.strerror or exc}")
        chunks: dict[str, list[bytes]] = {"out": [], "err": []}
        splitter = _LineSplitter(on_stderr_line)

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
        return _Completed(proc.returncode, b"".join(chunks["out"]).decode("utf-8", "replace"),
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


class _RefuseUnknownKey(paramiko.MissingHostKeyPolicy):
    def __init__(self, device: Device):
        self.device = device

    def missing_host_key(self, client, hostname, key):
        d = self.device
        raise HostKeyError(
            f"device '{d.name}': the host key of {hostname} ({key.get_name()} {_fingerprint(key)}) is not in "
            f"{d.known_hosts}; refused before anything ran. Check that fingerprint on the device "
            f"(`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`), then pin it "
            f"(`ssh-keyscan -p {d.port} {d.hostname} >> {d.known_hosts}`) or run once with --trust-new-host-key")


class _RecordNewKey(paramiko.MissingHostKeyPolicy):
    """--trust-new-host-key: trust on first use and record the key, so that a later change is refused."""

    def __init__(self, device: Device):
        self.device = device

    def missing_host_key(self, client, hostname, key):
        path = self.device.known_hosts
        if path.exists() and not path.is_file():
            raise HostKeyError(f"device '{self.device.name}': cannot record the host key in {path}: not a regular "
                               "file; set known_hosts in devices.toml")
        client.get_host_keys().add(hostname, key.get_name(), key)
        path.parent.mkdir(parents=True, exist_ok=True)
        line = paramiko.hostkeys.HostKeyEntry([hostname], key).to_line()
        # O_APPEND keeps other hosts' lines as they are; a new file is created private (0600)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as fh:
            if fh.tell() > 0 and not path.read_bytes().endswith(b"\n"):
                fh.write("\n")  # a last line without its newline would be glued to ours
            fh.write(line)


def _fingerprint(key) -> str:
    import base64
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


class _Watchdog:
    """Closes the SSH connection when a step outlives `limit`: the one way to unblock the paramiko calls
    that wait without a limit of their own (opening a channel, the SFTP handshake, a write to a dead link)."""

    def __init__(self, session: "_SSHSession", limit: float, step: str):
        self.session, self.limit, self.step, self.fired = session, limit, step, False
        self._timer = threading.Timer(limit, self._fire)
        self._timer.daemon = True

    def _fire(self) -> None:
        self.fired = True
        self.session.client.close()

    def __enter__(self) -> "_Watchdog":
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()

    def error(self) -> Optional[RemoteTimeoutError]:
        if not self.fired:
            return None
        return RemoteTimeoutError(f"device '{self.session.device.name}': {self.step} did not finish within "
                                  f"{self.limit:g} s; the connection was closed")


def _load_known_hosts(client: paramiko.SSHClient, device: Device) -> None:
    """known_hosts, line by line: paramiko rejects a whole file for one line it cannot parse (an
    `@cert-authority` line, a key type it lacks), which would lock us out of every device."""
    path = device.known_hosts
    if not path.exists():
        return
    if not path.is_file():
        raise HostKeyError(f"device '{device.name}': known_hosts {path} is not a regular file; host keys must be "
                           "pinned in a file (set known_hosts in devices.toml)")
    keys = client.get_host_keys()
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise HostKeyError(f"device '{device.name}': cannot read known_hosts {path}: {exc.strerror or exc}") from None
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("@"):
            marker, _, rest = line.partition(" ")
            if marker == "@revoked":
                entry = _parse_host_line(rest)
                if entry and _host_matches(entry, device):
                    raise HostKeyError(f"device '{device.name}': {path} marks a key of {device.hostname} @revoked; "
                                       "refusing to connect until the line is resolved")
            continue  # @cert-authority: host certificates are not supported; ordinary lines still apply
        entry = _parse_host_line(line)
        if entry is not None:
            for name in entry.hostnames:
                keys.add(name, entry.key.get_name(), entry.key)


def _parse_host_line(line: str):
    try:
        return paramiko.hostkeys.HostKeyEntry.from_line(line)
    except Exception:  # paramiko raises InvalidHostKey (a plain Exception) and others for a bad line
        return None


def _host_matches(entry, device: Device) -> bool:
    host = device.hostname if device.port == 22 else f"[{device.hostname}]:{device.port}"
    probe = paramiko.HostKeys()
    for name in entry.hostnames:
        probe.add(name, entry.key.get_name(), entry.key)
    return probe.lookup(host) is not None


class _SSHSession(_Session):
    def __init__(self, device: Device, timeout: float, trust_new_host_key: bool = False):
        self.device = device
        missing = [p for p in device.identity_files if not p.is_file()]
        if device.identity_files and len(missing) == len(device.identity_files):
            raise DeviceError(f"{device.source}: device '{device.name}': no identity file exists "
                              f"({', '.join(map(str, missing))}; from identity_file or ssh_config's IdentityFile)")
        self.client = paramiko.SSHClient()
        self._sftp = None
        _load_known_hosts(self.client, device)
        self.client.set_missing_host_key_policy(
            _RecordNewKey(device) if trust_new_host_key else _RefuseUnknownKey(device))
        where = f"device '{device.name}' ({device.address})"
        started = time.monotonic()
        watchdog = _Watchdog(self, timeout, "connecting")
        try:
            with watchdog:
                self.client.connect(
                    device.hostname, port=device.port, username=device.user,
                    key_filename=[str(p) for p in device.identity_files if p.is_file()] or None,
                    look_for_keys=not device.identity_files, allow_agent=True,
                    timeout=timeout, banner_timeout=timeout, auth_timeout=timeout, channel_timeout=timeout,
                    password=None, passphrase=None)
        except HostKeyError:
            self.client.close()
            raise
        except paramiko.BadHostKeyException as exc:
            self.client.close()
            entry = device.hostname if device.port == 22 else f"[{device.hostname}]:{device.port}"
            raise HostKeyError(
                f"{where}: the host key CHANGED (got {exc.key.get_name()} {_fingerprint(exc.key)}, "
                f"{device.known_hosts} pins {_fingerprint(exc.expected_key)}); refused before anything ran — "
                f"this is what a man-in-the-middle looks like. If the device was reinstalled, remove the old "
                f"entry (`ssh-keygen -R '{entry}' -f {device.known_hosts}`) and pin the new key") from None
        except paramiko.AuthenticationException as exc:
            self.client.close()
            keys = ", ".join(map(str, device.identity_files)) or "ssh-agent / default keys"
            raise DeviceError(f"{where}: authentication failed with {keys}: {exc}") from None
        except Exception as exc:  # paramiko raises plain Exceptions too (e.g. for an unsupported key type)
            self.client.close()
            # A handshake that timed out surfaces as one of several SSHExceptions ("Error reading SSH
            # protocol banner", "No existing session"): judge by the clock, not the message.
            if watchdog.fired or isinstance(exc, socket.timeout) or time.monotonic() - started >= 0.9 * timeout:
                raise RemoteTimeoutError(f"{where}: no SSH connection (TCP, banner, key exchange and "
                                         f"authentication) within {timeout:g} s (connect_timeout_s)") from None
            raise DeviceError(f"{where}: cannot connect: {type(exc).__name__}: {exc}") from None
        # Keepalives make sshd's side notice us gone; a dead link is caught by each step's own limit.
        self.client.get_transport().set_keepalive(5)

    def _lost(self, step: str) -> ConnectionLostError:
        return ConnectionLostError(f"device '{self.device.name}' ({self.device.address}): the SSH connection "
                                   f"was lost during {step}; no result recorded")

    def run(self, argv, timeout, *, cwd=None, on_stderr_line=None, step="command"):
        command = shlex.join(argv)
        if cwd is not None:
            command = f"cd {shlex.quote(cwd)} && exec {command}"
        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            raise self._lost(step)
        with _Watchdog(self, timeout + _KILL_GRACE_S, step) as watchdog:
            try:
                channel = transport.open_session(timeout=timeout)
                channel.exec_command(command)
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise watchdog.error() or self._failed_channel(step, exc) from None
            try:
                out, err = self._read_until_done(channel, transport, timeout, on_stderr_line, step)
            except (OSError, EOFError, paramiko.SSHException):
                raise watchdog.error() or self._lost(step) from None
            finally:
                channel.close()
        return _Completed(channel.exit_status, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))

    def _read_until_done(self, channel, transport, timeout, on_stderr_line, step) -> tuple[bytearray, bytearray]:
        """Read both streams while waiting (a full channel window blocks the remote side, and
        recv_exit_status() would wait forever) until the exit status AND the end of the output have come:
        OpenSSH may send the status before the last data."""
        out, err = bytearray(), bytearray()
        splitter = _LineSplitter(on_stderr_line)
        end = time.monotonic() + timeout
        # The channel's fileno wakes select() for data but not for the exit status, so the wait starts
        # short (a quick command returns in milliseconds) and backs off to 0.2 s while nothing arrives.
        pause = 0.002
        while True:
            if channel.eof_received or channel.closed:
                channel.status_event.wait(pause)
            else:
                select.select([channel], [], [], pause)
            pause = min(0.2, pause * 2)
            while channel.recv_ready():
                out += channel.recv(65536)
                pause = 0.002
            while channel.recv_stderr_ready():
                chunk = channel.recv_stderr(65536)
                err += chunk
                splitter.feed(chunk)
                pause = 0.002
            drained = not channel.recv_ready() and not channel.recv_stderr_ready()
            done = drained and (channel.eof_received or channel.closed) and channel.status_event.is_set()
            if done and channel.exit_status != -1:
                return out, err
            if done or (channel.closed and drained):
                # No exit status: either the link died (the transport notices within moments) or sshd
                # closed the channel on a command killed by a signal.
                for _ in range(20):
                    if not transport.is_active():
                        raise self._lost(step)
                    time.sleep(0.05)
                raise DeviceError(f"device '{self.device.name}': {step} ended without an exit status "
                                  "(killed by a signal on the device?)")
            if not transport.is_active():
                raise self._lost(step)
            if time.monotonic() > end:
                raise RemoteTimeoutError(f"device '{self.device.name}': {step} ran past its {timeout:g} s timeout")

    def _failed_channel(self, step: str, exc: BaseException) -> DeviceError:
        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            return self._lost(step)
        # the link is up but sshd refused a channel (MaxSessions, a ForceCommand, ...)
        return DeviceError(f"device '{self.device.name}': sshd refused a session for {step}: {exc}")

    def put(self, local, remote, timeout, on_bytes=None):
        name = Path(local).name
        end = time.monotonic() + timeout

        def callback(done, total):
            if time.monotonic() > end:
                raise RemoteTimeoutError(f"device '{self.device.name}': upload of {name} ran past its {timeout:g} s "
                                         "timeout")
            if on_bytes:
                on_bytes(done, total)

        watchdog = _Watchdog(self, timeout + _KILL_GRACE_S, f"the upload of {name}")
        try:
            with watchdog:
                if self._sftp is None:
                    self._sftp = self.client.open_sftp()
                # the channel timeout bounds each SFTP request; the callback and the watchdog the transfer
                self._sftp.get_channel().settimeout(timeout)
                self._sftp.put(str(local), remote, callback=callback, confirm=True)
        except RemoteTimeoutError:
            raise
        except socket.timeout:
            raise RemoteTimeoutError(f"device '{self.device.name}': upload of {name} stalled for {timeout:g} s") from None
        except Exception as exc:  # IOError from the server, SFTPError (a plain Exception), SSHException, EOFError
            if watchdog.fired:
                raise watchdog.error() from None
            transport = self.client.get_transport()
            if transport is None or not transport.is_active():
                raise self._lost(f"the upload of {name}") from None
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise DeviceError(f"device '{self.device.name}': cannot upload {name} to {remote}: {reason}") from None

    def close(self):
        try:
            if self._sftp is not None:
                self._sftp.close()
        finally:
            self.client.close()


def open_session(device: Device, trust_new_host_key: bool = False) -> _Session:
    if device.is_local:
        return _LocalSession(device)
    return _SSHSession(device, device.connect_timeout_s, trust_new_host_key)


# ----------------------------------------------------------------------------------------------- flow

def _manifest(artifact: Path) -> Optional[dict]:
    path = artifact.with_name(artifact.name[: -len(artifact.suffix)] + ".manifest.json")
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc})") from None


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
        manifest = _manifest(artifact) or {}
        return "tflm" if manifest.get("runtime") == "tflite-micro" else "litert"
    raise ArtifactError(f"{artifact}: no harness for '{suffix or artifact.name}' files "
                        "(expected .pte, .tflite or .onnx)")


# A hasher that does not depend on anything we uploaded: nothing uploaded runs before it is checked.
_HASHER = ("import hashlib, json, sys\n"
           "out = {}\n"
           "for path in sys.argv[1:]:\n"
           "    digest = hashlib.sha256()\n"
           "    with open(path, 'rb') as fh:\n"
           "        for block in iter(lambda: fh.read(1 << 20), b''):\n"
           "            digest.update(block)\n"
           "    out[path] = digest.hexdigest()\n"
           "print(json.dumps(out))\n")


def _make_dir(session: _Session, device: Device, path: str, timeout: float, timed) -> None:
    # private (0700): another user of the device must not swap files between our checksum and their use
    made = timed("setup_s", session.run, ["sh", "-c", 'umask 077 && mkdir -p -- "$1"', "mkdir", path], timeout,
                 step="mkdir")
    if made.rc != 0:
        raise DeviceError(f"device '{device.name}': remote work dir '{device.workdir}' (workdir) is not "
                          f"writable: {_error_line(made.stderr)}")


def _untimed(name: str, fn, *args, **kwargs):
    return fn(*args, **kwargs)


def _upload_verified(session: _Session, device: Device, files: dict[str, Path], known: dict[str, str],
                     cmd_timeout: Callable[[str], float], timed=None, report: Optional[Progress] = None) -> None:
    """Upload `files` (remote path -> local path) by SFTP, then compare every sha256 on the device with
    ours (`known` holds digests already computed). `timed(name, fn, *args)` and `report` are optional:
    `bench` accounts for the overhead and shows progress, `check` does neither."""
    timed = timed or _untimed
    report = report or (lambda stage, info: None)
    for remote_path, local in files.items():
        report("upload", {"file": local.name, "bytes": local.stat().st_size})
        timed("upload_s", session.put, local, remote_path, cmd_timeout("upload"),
              lambda done, total: report("upload-progress", {"done": done, "total": total}))
    report("verify", {})
    sums = timed("verify_s", session.run, [device.python, "-c", _HASHER, *files], cmd_timeout("sha256"),
                 step="the sha256 check")
    if sums.rc == 127:
        raise DeviceError(f"device '{device.name}': cannot run python '{device.python}' there "
                          f"({_error_line(sums.stderr)}); set `python` in devices.toml")
    if sums.rc != 0:
        raise DeviceError(f"device '{device.name}': cannot checksum the upload: {_error_line(sums.stderr)}")
    got = _last_json(sums, device, "the sha256 check")
    for remote_path, local in files.items():
        digest = known.get(remote_path) or sha256_file(local)
        if got.get(remote_path) != digest:
            raise ArtifactError(f"device '{device.name}': {local.name} arrived corrupted: sha256 on the device "
                                f"{str(got.get(remote_path))[:16]}… != local {digest[:16]}…; nothing was run")


def _last_json(done: _Completed, device: Device, step: str) -> dict:
    """The JSON object on the last non-empty stdout line (a login script may print before it)."""
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    try:
        value = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        raise DeviceError(f"device '{device.name}': {step} printed no result JSON "
                          f"(stdout ends {done.stdout[-200:]!r}; stderr: {_error_line(done.stderr)})") from None
    if not isinstance(value, dict):
        raise DeviceError(f"device '{device.name}': {step} printed {type(value).__name__}, not a JSON object")
    return value



def _runtimes_dir() -> Path:
    return builtin_dir("runtimes")


def _device_defaults(settings: BenchSettings, device: Device) -> BenchSettings:
    """`settings` with unset threads/cores taken from devices.toml: here rather than in each caller, so that
    `bench_many` gives every device its own defaults from one shared BenchSettings."""
    return replace(settings, threads=device.threads if settings.threads is None else settings.threads,
                   cores=device.cores if settings.cores is None else settings.cores)


def bench(artifact: "str | Path", device: "str | Device" = "local", *, devices: "str | Path | None" = None,
          settings: Optional[BenchSettings] = None, runtime: Optional[str] = None,
          trust_new_host_key: bool = False, progress: Optional[Progress] = None) -> BenchResult:
    """Measure `artifact` on `device` (a name in `devices`, or a Device). Raises DeviceError (with a
    subclass saying what went wrong) naming the device; nothing is returned unless the run was complete."""
    artifact = Path(artifact)
    if not artifact.is_file():
        raise ArtifactError(f"{artifact}: " + ("is a directory; name the artifact file in it" if artifact.is_dir()
                                               else "not found"))
    if isinstance(device, str):
        device = get_device(device, devices)
    settings = _device_defaults(settings or BenchSettings(), device)
    kind = harness_for(artifact, runtime)
    manifest = _manifest(artifact)
    sha = sha256_file(artifact)
    if manifest and manifest.get("sha256") not in (None, sha):
        raise ArtifactError(f"{artifact}: sha256 differs from its manifest's; the file changed after export")
    report = progress or (lambda stage, info: None)
    deadline = _Deadline(device, device.deadline_s)
    overhead: dict[str, float] = {}
    owner = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    rundir = f"{device.workdir.rstrip('/')}/run-{owner}"
    lockdir = f"{device.workdir.rstrip('/')}/lock"
    started = time.monotonic()

    def timed(name: str, fn, *args, **kwargs):
        t0 = time.monotonic()
        try:
            return fn(*args, **kwargs)
        finally:
            overhead[name] = overhead.get(name, 0.0) + time.monotonic() - t0

    report("connect", {"device": device.name, "address": device.address})
    session = timed("connect_s", open_session, device, trust_new_host_key)
    lock_started = False
    try:
        cmd_timeout = lambda step: deadline.cap(device.command_timeout_s, step)  # noqa: E731
        _make_dir(session, device, rundir, cmd_timeout("mkdir"), timed)
        # Everything is uploaded and checked before any of it runs (the lock step runs device.py).
        files = {f"{rundir}/{p.name}": p for p in (_runtimes_dir() / n for n in (*_SUPPORT_FILES, HARNESSES[kind]))}
        remote_artifact = f"{rundir}/{artifact.name}"
        files[remote_artifact] = artifact
        _upload_verified(session, device, files, {remote_artifact: sha}, cmd_timeout, timed, report)
        lock_wait = max(0.0, min(device.lock_wait_s, deadline.cap(device.lock_wait_s, "lock") - 5.0))
        report("lock", {"wait_s": lock_wait})
        lock_started = True
        lock = timed("lock_s", session.run,
                     [device.python, f"{rundir}/device.py", "lock", lockdir, "--owner", owner,
                      "--lease-s", f"{device.lease_s:g}", "--wait-s", f"{lock_wait:g}", "--rundir", rundir],
                     lock_wait + min(30.0, device.command_timeout_s), step="lock")
        if lock.rc == 6:
            raise DeviceBusyError(f"device '{device.name}': {_error_line(lock.stderr)}")
        if lock.rc != 0:
            raise DeviceError(f"device '{device.name}': cannot take the benchmark lock: {_error_line(lock.stderr)}")
        lock_info = _last_json(lock, device, "the lock step")
        result = timed("run_s", _run_harness, session, device, kind, rundir, remote_artifact, settings, deadline,
                       report)
    finally:
        t0 = time.monotonic()
        # unlock checks the owner, so it is safe (and needed) whenever the lock step was started
        _cleanup(session, device, rundir, lockdir if lock_started else None, owner)
        session.close()
        overhead["cleanup_s"] = time.monotonic() - t0
    overhead["total_s"] = time.monotonic() - started
    measured = result.get("warmup_s", 0.0) + result.get("measure_s", 0.0)
    overhead["outside_window_s"] = overhead["total_s"] - measured
    notes = list(result.get("notes", []))
    if lock_info.get("reclaimed"):
        notes.append("reclaimed a stale benchmark lock: " + ", ".join(
            f"{r['owner']} (lease expired {r['expired_s_ago']} s before)" for r in lock_info["reclaimed"]))
    artifact_target = (manifest or {}).get("target")
    if artifact_target and artifact_target != device.target:
        notes.append(f"proxy: the artifact was exported for {artifact_target}, timed on '{device.name}' "
                     f"({device.target}); this is not {artifact_target}'s latency")
    return BenchResult(
        device=device.name, device_target=device.target, artifact=str(artifact), artifact_sha256=sha,
        artifact_target=artifact_target, runtime=result["runtime"], runtime_version=str(result["runtime_version"]),
        engine=str(result.get("engine", "")), n=int(result["n"]),
        # std and cv are null for a single run
        **{k: math.nan if result.get(k) is None else float(result[k])
           for k in ("p50", "p90", "p99", "mean", "std", "cv", "min", "max")},
        ci95_p50=tuple(float(v) for v in result["ci95_p50"]), samples=tuple(float(v) for v in result["samples"]),
        warmup_runs=int(result.get("warmup_runs", 0)), threads=result.get("threads"),
        cores=tuple(result["cores"]) if result.get("cores") else None,
        state_before=result.get("state_before", {}), state_after=result.get("state_after", {}),
        flags=tuple(result.get("flags", [])), notes=tuple(notes), overhead_s={k: round(v, 4) for k, v in overhead.items()},
        settings=asdict(settings), measured_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def _run_harness(session: _Session, device: Device, kind: str, rundir: str, remote_artifact: str,
                 settings: BenchSettings, deadline: _Deadline, report: Progress) -> dict:
    timeout = deadline.cap(device.command_timeout_s, "the benchmark")
    args = [remote_artifact, "--min-runs", str(settings.min_runs), "--min-seconds", f"{settings.min_seconds:g}",
            "--warmup-runs", str(settings.warmup_runs), "--warmup-seconds", f"{settings.warmup_seconds:g}",
            "--seed", str(settings.seed),
            # the harness's own deadline is a backstop behind the supervisor's kill at `timeout`
            "--max-seconds", f"{timeout + _KILL_GRACE_S:g}"]
    if settings.threads is not None:
        args += ["--threads", str(settings.threads)]
    if settings.cores:
        args += ["--cores", ",".join(str(c) for c in settings.cores)]
    pidfile = f"{rundir}/harness.pid"
    argv = [device.python, f"{rundir}/device.py", "exec", "--pidfile", pidfile, "--timeout", f"{timeout:g}", "--",
            device.python, f"{rundir}/{HARNESSES[kind]}", *args]

    def on_line(line: str):
        if line.startswith("PROGRESS "):
            try:
                report("measure", json.loads(line[len("PROGRESS "):]))
            except json.JSONDecodeError:
                pass

    report("measure", {"stage": "start"})
    try:
        # a little longer than the supervisor's limit, so that normally the device reports its own kill
        done = session.run(argv, timeout + _KILL_GRACE_S, cwd=rundir, on_stderr_line=on_line, step="the benchmark")
    except RemoteTimeoutError as exc:
        _kill_remote(session, device, pidfile)
        raise RemoteTimeoutError(f"{exc}; the harness was killed on the device") from None
    except BaseException:
        # a lost link, a progress callback that raised, Ctrl-C: never leave a harness running unlocked
        _kill_remote(session, device, pidfile)
        raise
    if done.rc == 124:
        raise RemoteTimeoutError(f"device '{device.name}': the benchmark ran past its {timeout:.0f} s timeout "
                                 f"(command_timeout_s) and was killed on the device: {_error_line(done.stderr)}")
    if done.rc != 0:
        raise DeviceError(f"device '{device.name}': the {kind} harness failed (exit {done.rc}): "
                          f"{_error_line(done.stderr)}")
    result = _last_json(done, device, f"the {kind} harness")
    missing = [k for k in ("runtime", "runtime_version", "n", "p50", "ci95_p50", "samples") if k not in result]
    if missing:
        raise DeviceError(f"device '{device.name}': the {kind} harness's result lacks {', '.join(missing)}")
    return result


def _kill_remote(session: _Session, device: Device, pidfile: str) -> None:
    try:
        session.run([device.python, pidfile.rsplit("/", 1)[0] + "/device.py", "kill", "--pidfile", pidfile],
                    min(30.0, device.command_timeout_s), step="kill")
    except DeviceError:
        pass  # the supervisor's own timeout and the harness's --max-seconds still stop it


def _cleanup(session: _Session, device: Device, rundir: str, lockdir: Optional[str], owner: str) -> None:
    """Release the lock, then remove the run dir; each step tried on its own. Best effort when the link
    is gone: the lease then expires and the next run reclaims both."""
    timeout = min(30.0, device.command_timeout_s)
    steps = [["rm", "-rf", "--", rundir]]
    if lockdir:
        steps.insert(0, [device.python, f"{rundir}/device.py", "unlock", lockdir, "--owner", owner])
    for argv in steps:
        try:
            session.run(argv, timeout, step="clean-up")
        except DeviceError:
            pass


def bench_many(jobs: Sequence[tuple["str | Device", "str | Path"]], *, devices: "str | Path | None" = None,
               settings: Optional[BenchSettings] = None, runtime: Optional[str] = None,
               trust_new_host_key: bool = False, progress: Optional[Callable[[str, str, dict], None]] = None,
               ) -> list["BenchResult | EdgepruneError"]:
    """Run (device, artifact) jobs, one thread per device, jobs on one device one after another.
    Returns a result or the error for each job, in order; one device failing does not stop the others."""
    inventory = load_devices(devices) if any(isinstance(d, str) for d, _ in jobs) else {}
    resolved = [(d if isinstance(d, Device) else inventory.get(d) or get_device(d, devices), Path(a)) for d, a in jobs]
    by_device: dict[str, list[int]] = {}
    for i, (dev, _) in enumerate(resolved):
        by_device.setdefault(dev.name, []).append(i)
    results: list = [None] * len(resolved)

    def worker(indices: list[int]):
        for i in indices:
            dev, art = resolved[i]
            report = (lambda stage, info, _n=dev.name: progress(_n, stage, info)) if progress else None
            try:
                results[i] = bench(art, dev, settings=settings, runtime=runtime,
                                   trust_new_host_key=trust_new_host_key, progress=report)
            except EdgepruneError as exc:
                results[i] = exc
            except Exception as exc:  # one device's surprise must not take the others' results with it
                results[i] = DeviceError(f"device '{dev.name}': unexpected {type(exc).__name__}: {exc}")

    with ThreadPoolExecutor(max_workers=max(1, len(by_device))) as pool:
        list(pool.map(worker, by_device.values()))
    return results


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
            _make_dir(session, device, probe_dir, device.command_timeout_s, _untimed)
        except DeviceError as exc:
            return DeviceCheck(device.name, device.address, True, str(exc), workdir_writable=False, connect_s=connect_s)
        files = {f"{probe_dir}/{n}": _runtimes_dir() / n for n in ("device.py", "device_state.py")}
        _upload_verified(session, device, files, {}, cmd_timeout)
        done = session.run([device.python, f"{probe_dir}/device.py", "probe", *(["--imports"] if imports else [])],
                           device.command_timeout_s, step="probe")
        if done.rc != 0:
            return DeviceCheck(device.name, device.address, True, f"python '{device.python}': "
                               f"{_error_line(done.stderr)}", workdir_writable=True, connect_s=connect_s)
        info = _last_json(done, device, "the probe")
        return DeviceCheck(device.name, device.address, True, None, info.get("python"), info.get("numpy"),
                           info.get("runtimes", {}), True, info.get("state", {}), connect_s)
    except (DeviceError, ArtifactError) as exc:
        return DeviceCheck(device.name, device.address, not isinstance(exc, ConnectionLostError), str(exc),
                           connect_s=connect_s)
    finally:
        _cleanup(session, device, probe_dir, None, "")
        session.close()
