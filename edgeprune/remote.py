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
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import paramiko

from ._atomic import sha256_file
from ._resources import builtin_dir
from .devices import Device, get_device, load_devices
from .errors import (ArtifactError, ConnectionLostError, DeviceBusyError, DeviceError, HostKeyError,
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
    threads: Optional[int] = None
    cores: Optional[tuple[int, ...]] = None
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
        client.get_host_keys().add(hostname, key.get_name(), key)
        path = self.device.known_hosts
        path.parent.mkdir(parents=True, exist_ok=True)
        entry = paramiko.hostkeys.HostKeyEntry([hostname], key).to_line()
        with open(path, "a", encoding="utf-8") as fh:  # append: other hosts' lines stay as they are
            fh.write(entry)
        os.chmod(path, 0o600)


def _fingerprint(key) -> str:
    import base64
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


class _SSHSession(_Session):
    def __init__(self, device: Device, timeout: float, trust_new_host_key: bool = False):
        self.device = device
        if device.identity_file is not None and not device.identity_file.is_file():
            raise DeviceError(f"{device.source}: device '{device.name}': key 'devices.{device.name}.identity_file': "
                              f"{device.identity_file} does not exist")
        self.client = paramiko.SSHClient()
        self._sftp = None
        if device.known_hosts.exists():
            try:
                self.client.load_host_keys(str(device.known_hosts))
            except Exception as exc:
                raise HostKeyError(f"device '{device.name}': cannot read known_hosts {device.known_hosts}: {exc}") from None
        self.client.set_missing_host_key_policy(
            _RecordNewKey(device) if trust_new_host_key else _RefuseUnknownKey(device))
        where = f"device '{device.name}' ({device.address})"
        started = time.monotonic()
        try:
            self.client.connect(
                device.hostname, port=device.port, username=device.user,
                key_filename=str(device.identity_file) if device.identity_file else None,
                look_for_keys=device.identity_file is None, allow_agent=True,
                timeout=timeout, banner_timeout=timeout, auth_timeout=timeout, channel_timeout=timeout,
                password=None, passphrase=None)
        except HostKeyError:
            self.client.close()
            raise
        except paramiko.BadHostKeyException as exc:
            self.client.close()
            raise HostKeyError(
                f"{where}: the host key CHANGED (got {exc.key.get_name()} {_fingerprint(exc.key)}, "
                f"{device.known_hosts} pins {_fingerprint(exc.expected_key)}); refused before anything ran — "
                f"this is what a man-in-the-middle looks like. If the device was reinstalled, remove the old "
                f"entry (`ssh-keygen -R '[{device.hostname}]:{device.port}' -f {device.known_hosts}`) and pin "
                f"the new key") from None
        except paramiko.AuthenticationException as exc:
            self.client.close()
            key = device.identity_file or "ssh-agent / default keys"
            raise DeviceError(f"{where}: authentication failed with {key}: {exc}") from None
        except (socket.timeout, TimeoutError):
            self.client.close()
            raise RemoteTimeoutError(f"{where}: no SSH connection within {timeout:g} s (connect_timeout_s)") from None
        except (OSError, paramiko.SSHException) as exc:
            self.client.close()
            # paramiko reports a handshake that timed out in its transport thread as one of several
            # SSHExceptions ("Error reading SSH protocol banner", "No existing session"): judge by the clock.
            if "banner" in str(exc).lower() or time.monotonic() - started >= 0.9 * timeout:
                raise RemoteTimeoutError(f"{where}: connected, but no SSH banner/handshake within {timeout:g} s "
                                         "(connect_timeout_s)") from None
            raise DeviceError(f"{where}: cannot connect: {exc}") from None
        transport = self.client.get_transport()
        transport.set_keepalive(5)  # a dead link shows up within seconds, not at the next TCP timeout

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
        try:
            channel = transport.open_session(timeout=timeout)
            channel.exec_command(command)
        except (paramiko.SSHException, OSError, EOFError):
            raise self._lost(step) from None
        out, err = bytearray(), bytearray()
        splitter = _LineSplitter(on_stderr_line)
        end = time.monotonic() + timeout
        # Read both streams while waiting: a full channel window blocks the remote side, and
        # recv_exit_status() would wait forever. The loop ends on exit status + both EOFs.
        # The channel's fileno wakes select() for data but not for the exit status, so the wait starts
        # short (a quick command returns in milliseconds) and backs off to 0.2 s while nothing arrives.
        pause = 0.002
        try:
            while True:
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
                if channel.exit_status_ready() and not channel.recv_ready() and not channel.recv_stderr_ready():
                    if channel.status_event.is_set() and channel.exit_status != -1:
                        break
                if channel.closed or not transport.is_active():
                    if channel.exit_status_ready() and channel.exit_status != -1:
                        break
                    raise self._lost(step)
                if time.monotonic() > end:
                    channel.close()
                    raise RemoteTimeoutError(f"device '{self.device.name}': {step} ran past its {timeout:.0f} s "
                                             "timeout")
        except (socket.error, EOFError, paramiko.SSHException):
            raise self._lost(step) from None
        rc = channel.exit_status
        channel.close()
        return _Completed(rc, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))

    def put(self, local, remote, timeout, on_bytes=None):
        try:
            if self._sftp is None:
                self._sftp = self.client.open_sftp()
            # The channel timeout bounds each SFTP request; the callback bounds the whole transfer.
            self._sftp.get_channel().settimeout(timeout)
            end = time.monotonic() + timeout

            def callback(done, total):
                if time.monotonic() > end:
                    raise RemoteTimeoutError(f"device '{self.device.name}': upload of {Path(local).name} ran past "
                                             f"its {timeout:.0f} s timeout")
                if on_bytes:
                    on_bytes(done, total)

            self._sftp.put(str(local), remote, callback=callback, confirm=True)
        except RemoteTimeoutError:
            raise
        except socket.timeout:
            raise RemoteTimeoutError(f"device '{self.device.name}': upload of {Path(local).name} stalled for "
                                     f"{timeout:.0f} s") from None
        except IOError as exc:
            if not self.client.get_transport() or not self.client.get_transport().is_active():
                raise self._lost(f"the upload of {Path(local).name}") from None
            raise DeviceError(f"device '{self.device.name}': cannot upload {Path(local).name} to {remote}: "
                              f"{exc.strerror or exc}") from None
        except (paramiko.SSHException, EOFError):
            raise self._lost(f"the upload of {Path(local).name}") from None

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


def _runtimes_dir() -> Path:
    return builtin_dir("runtimes")


def bench(artifact: "str | Path", device: "str | Device" = "local", *, devices: "str | Path | None" = None,
          settings: Optional[BenchSettings] = None, runtime: Optional[str] = None,
          trust_new_host_key: bool = False, progress: Optional[Progress] = None) -> BenchResult:
    """Measure `artifact` on `device` (a name in `devices`, or a Device). Raises DeviceError (with a
    subclass saying what went wrong) naming the device; nothing is returned unless the run was complete."""
    artifact = Path(artifact)
    if not artifact.is_file():
        raise ArtifactError(f"{artifact}: not found")
    if isinstance(device, str):
        device = get_device(device, devices)
    settings = settings or BenchSettings(threads=device.threads, cores=device.cores)
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
    locked = made_rundir = False
    try:
        cmd_timeout = lambda step: deadline.cap(device.command_timeout_s, step)  # noqa: E731
        made = timed("setup_s", session.run, ["mkdir", "-p", "--", rundir], cmd_timeout("mkdir"), step="mkdir")
        if made.rc != 0:
            raise DeviceError(f"device '{device.name}': remote work dir '{device.workdir}' (workdir) is not "
                              f"writable: {_error_line(made.stderr)}")
        made_rundir = True
        files = [_runtimes_dir() / name for name in (*_SUPPORT_FILES, HARNESSES[kind])]
        report("upload", {"file": "harness", "bytes": sum(f.stat().st_size for f in files)})
        for path in files:
            timed("upload_s", session.put, path, f"{rundir}/{path.name}", cmd_timeout("upload"))
        py = [device.python, f"{rundir}/device.py"]
        report("lock", {"wait_s": device.lock_wait_s})
        lock = timed("lock_s", session.run,
                     [*py, "lock", lockdir, "--owner", owner, "--lease-s", f"{device.lease_s:g}",
                      "--wait-s", f"{device.lock_wait_s:g}", "--rundir", rundir],
                     deadline.cap(device.lock_wait_s + device.command_timeout_s, "lock"), step="lock")
        if lock.rc == 127:
            raise DeviceError(f"device '{device.name}': cannot run python '{device.python}' there "
                              f"({_error_line(lock.stderr)}); set `python` in devices.toml")
        if lock.rc == 6:
            raise DeviceBusyError(f"device '{device.name}': {_error_line(lock.stderr)}")
        if lock.rc != 0:
            raise DeviceError(f"device '{device.name}': cannot take the benchmark lock: {_error_line(lock.stderr)}")
        locked = True
        lock_info = json.loads(lock.stdout)
        remote_artifact = f"{rundir}/{artifact.name}"
        report("upload", {"file": artifact.name, "bytes": artifact.stat().st_size})
        timed("upload_s", session.put, artifact, remote_artifact, cmd_timeout("upload"),
              lambda done, total: report("upload-progress", {"done": done, "total": total}))
        expected = {f"{rundir}/{p.name}": sha256_file(p) for p in files}
        expected[remote_artifact] = sha
        report("verify", {})
        sums = timed("verify_s", session.run, [*py, "sha256", *expected], cmd_timeout("sha256"), step="sha256")
        if sums.rc != 0:
            raise DeviceError(f"device '{device.name}': cannot checksum the upload: {_error_line(sums.stderr)}")
        got = json.loads(sums.stdout)
        for path, digest in expected.items():
            if got.get(path) != digest:
                raise ArtifactError(f"device '{device.name}': {Path(path).name} arrived corrupted: sha256 on the "
                                    f"device {str(got.get(path))[:16]}… != local {digest[:16]}…; nothing was run")
        result = timed("run_s", _run_harness, session, device, kind, rundir, remote_artifact, settings, deadline,
                       report)
    finally:
        t0 = time.monotonic()
        _cleanup(session, device, rundir if made_rundir else None, lockdir if locked else None, owner)
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
        **{k: float(result[k]) for k in ("p50", "p90", "p99", "mean", "std", "cv", "min", "max")},
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
    if done.rc == 124:
        raise RemoteTimeoutError(f"device '{device.name}': the benchmark ran past its {timeout:.0f} s timeout "
                                 f"(command_timeout_s) and was killed on the device: {_error_line(done.stderr)}")
    if done.rc != 0:
        raise DeviceError(f"device '{device.name}': the {kind} harness failed (exit {done.rc}): "
                          f"{_error_line(done.stderr)}")
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        raise DeviceError(f"device '{device.name}': the {kind} harness printed no result JSON "
                          f"(stdout: {done.stdout[-200:]!r})") from None


def _kill_remote(session: _Session, device: Device, pidfile: str) -> None:
    try:
        session.run([device.python, pidfile.rsplit("/", 1)[0] + "/device.py", "kill", "--pidfile", pidfile],
                    min(30.0, device.command_timeout_s), step="kill")
    except DeviceError:
        pass  # the supervisor's own timeout and the harness's --max-seconds still stop it


def _cleanup(session: _Session, device: Device, rundir: Optional[str], lockdir: Optional[str], owner: str) -> None:
    """Release the lock and remove the run dir. Best effort when the link is gone: the lease then expires
    and the next run reclaims both."""
    timeout = min(30.0, device.command_timeout_s)
    try:
        if lockdir and rundir:
            session.run([device.python, f"{rundir}/device.py", "unlock", lockdir, "--owner", owner], timeout,
                        step="unlock")
        if rundir:
            session.run(["rm", "-rf", "--", rundir], timeout, step="clean-up")
    except DeviceError:
        pass


def bench_many(jobs: Sequence[tuple["str | Device", "str | Path"]], *, devices: "str | Path | None" = None,
               settings: Optional[BenchSettings] = None, runtime: Optional[str] = None,
               trust_new_host_key: bool = False, progress: Optional[Callable[[str, str, dict], None]] = None,
               ) -> list["BenchResult | DeviceError"]:
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
            except (DeviceError, ArtifactError) as exc:
                results[i] = exc

    with ThreadPoolExecutor(max_workers=max(1, len(by_device))) as pool:
        list(pool.map(worker, by_device.values()))
    return results


def check(device: "str | Device", *, devices: "str | Path | None" = None,
          trust_new_host_key: bool = False) -> DeviceCheck:
    """Is the device reachable, is its work dir writable, which runtimes does it have, what state is it in."""
    if isinstance(device, str):
        device = get_device(device, devices)
    t0 = time.monotonic()
    try:
        session = open_session(device, trust_new_host_key)
    except DeviceError as exc:
        return DeviceCheck(device.name, device.address, reachable=False, error=str(exc))
    connect_s = time.monotonic() - t0
    probe_dir = f"{device.workdir.rstrip('/')}/check-{uuid.uuid4().hex[:8]}"
    try:
        made = session.run(["mkdir", "-p", "--", probe_dir], device.command_timeout_s, step="mkdir")
        if made.rc != 0:
            return DeviceCheck(device.name, device.address, True, f"work dir {device.workdir} is not writable: "
                               f"{_error_line(made.stderr)}", workdir_writable=False, connect_s=connect_s)
        for name in ("device.py", "device_state.py"):
            session.put(_runtimes_dir() / name, f"{probe_dir}/{name}", device.command_timeout_s)
        done = session.run([device.python, f"{probe_dir}/device.py", "probe"], device.command_timeout_s, step="probe")
        session.run(["rm", "-rf", "--", probe_dir], device.command_timeout_s, step="clean-up")
        if done.rc != 0:
            return DeviceCheck(device.name, device.address, True, f"python '{device.python}': "
                               f"{_error_line(done.stderr)}", workdir_writable=True, connect_s=connect_s)
        info = json.loads(done.stdout)
        return DeviceCheck(device.name, device.address, True, None, info["python"], info.get("numpy"),
                           info["runtimes"], True, info["state"], connect_s)
    except DeviceError as exc:
        return DeviceCheck(device.name, device.address, False, str(exc), connect_s=connect_s)
    finally:
        session.close()
