"""One benchmark from start to clean-up, and several devices at once."""

from __future__ import annotations

import json
import math
import os
import re
import socket
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

from .._atomic import sha256_file
from ..devices import Device, get_device, load_devices
from ..errors import ArtifactError, DeviceBusyError, DeviceError, EdgepruneError, RemoteTimeoutError
from .artifacts import HARNESSES, harness_for, read_manifest
from .results import BenchResult, BenchSettings
from .interrupts import run_parallel
from .session import KILL_GRACE_S, LocalSession, Session, error_line, fmt_size
from .ssh import SSHSession
from .trust import device_py, harness_py, prepare, raise_if_untrusted, remove_argv
from .upload import SUPPORT_FILES, Progress, last_json, runtimes_dir, upload_verified


# what is kept of the harness's stdout: its JSON line, raw samples included (runtimes/supervisor.py keeps as
# much on the device); far more is a flood, read and discarded
RESULT_KEEP = 32 << 20


class Deadline:
    def __init__(self, device: Device, seconds: float):
        self.device, self.seconds, self.end = device, seconds, time.monotonic() + seconds

    def cap(self, timeout: float, step: str) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise RemoteTimeoutError(f"device '{self.device.name}': the overall deadline of {self.seconds:.0f} s "
                                     f"(deadline_s) passed before {step}")
        return min(timeout, left)


def open_session(device: Device, trust_new_host_key: bool = False,
                 cancel: Optional[threading.Event] = None) -> Session:
    """A session to `device`; setting `cancel` stops its work as Ctrl-C would (see Session.cancel)."""
    if device.is_local:
        session = LocalSession(device)
        session.cancel = cancel
        return session
    return SSHSession(device, device.connect_timeout_s, trust_new_host_key, cancel)


def device_defaults(settings: BenchSettings, device: Device) -> BenchSettings:
    """`settings` with unset threads/cores taken from devices.toml: here rather than in each caller, so that
    `bench_many` gives every device its own defaults from one shared BenchSettings."""
    return replace(settings, threads=device.threads if settings.threads is None else settings.threads,
                   cores=device.cores if settings.cores is None else settings.cores)


def reclaim_notes(reclaimed: list[dict]) -> list[str]:
    """What the lock step said about the stale locks it reclaimed, and about what it left alone."""
    notes = []
    for r in reclaimed:
        why = r.get("holder_gone") or f"lease expired {r.get('expired_s_ago')} s before"
        notes.append(f"reclaimed a stale benchmark lock: {r.get('owner')} ({why})")
        notes += [f"the stale lock's run dir was not removed: {what}" for what in r.get("left_alone") or []]
    return notes


class Held:
    """A device held for this process's runs: connected, a private run dir made, the support files, the
    harnesses and the artifacts uploaded and their sha256 checked on the device, the benchmark lock taken.
    `remote[local path]` is where each artifact is on the device; `timed` adds a step's seconds to
    `overhead` (cleanup_s and total_s are added when the hold ends, or by `operation` for each operation
    of a longer hold)."""

    def __init__(self, device: Device, session: Session, report: Progress, owner: str):
        self.device, self.session, self.report, self.owner = device, session, report, owner
        self.deadline = Deadline(device, device.deadline_s)
        self.overhead: dict[str, float] = {}
        self.remote: dict[tuple[Path, str], str] = {}  # (local path, sha256) -> path on the device
        self.harnesses: set[str] = set()
        self.rundir: Optional[str] = None
        self.lockdir: Optional[str] = None
        self.lock_info: dict = {}

    def timed(self, name: str, fn, *args, **kwargs):
        t0 = time.monotonic()
        try:
            return fn(*args, **kwargs)
        finally:
            self.overhead[name] = self.overhead.get(name, 0.0) + time.monotonic() - t0

    def cmd_timeout(self, step: str) -> float:
        return self.deadline.cap(self.device.command_timeout_s, step)

    def upload(self, artifacts: dict[Path, str], kind: Optional[str], also: Optional[dict[str, Path]] = None) -> None:
        """Upload what is not on the device yet (the `kind` harness, the artifacts: {local path: sha256}, and
        `also`: {remote path: local path}), then check every sha256 there in one step."""
        taken = set(self.remote.values())
        files: dict[str, Path] = dict(also or {})
        if kind is not None and kind not in self.harnesses:
            files[f"{self.rundir}/{HARNESSES[kind]}"] = runtimes_dir() / HARNESSES[kind]
        known = {}
        for artifact, sha in artifacts.items():
            if (artifact, sha) in self.remote:
                continue
            name, i = artifact.name, 0
            while f"{self.rundir}/{name}" in taken or f"{self.rundir}/{name}" in files \
                    or name in SUPPORT_FILES or name in HARNESSES.values():
                i += 1
                name = f"{i}-{artifact.name}"
            files[f"{self.rundir}/{name}"] = artifact
            known[f"{self.rundir}/{name}"] = sha
        if files:
            upload_verified(self.session, self.device, files, known, self.cmd_timeout, self.timed, self.report)
        if kind is not None:
            self.harnesses.add(kind)
        for remote, local in files.items():
            if remote in known:
                self.remote[(local, known[remote])] = remote

    def renew(self) -> None:
        """Extend the lock's lease to lease_s from now; DeviceBusyError if this hold lost the lock."""
        done = self.session.run(device_py(self.device, self.rundir, "renew", self.lockdir, "--owner", self.owner,
                                          "--lease-s", f"{self.device.lease_s:g}"),
                                min(30.0, self.device.command_timeout_s), step="renew the lock")
        raise_if_untrusted(done, self.device)
        if done.rc != 0:
            raise DeviceBusyError(f"device '{self.device.name}': the benchmark lock was lost (its lease ran out and "
                                  f"another run took it?): {error_line(done.stderr) or done.stdout.strip()}")

    @contextmanager
    def operation(self) -> Iterator[dict]:
        """One operation of a longer hold: its own deadline (deadline_s) and overhead record, which it yields;
        the lease is renewed first so that the operation has all of it."""
        self.deadline = Deadline(self.device, self.device.deadline_s)
        self.overhead = {}
        started = time.monotonic()
        self.timed("lock_s", self.renew)
        try:
            yield self.overhead
        finally:
            self.overhead["total_s"] = time.monotonic() - started


def _lock(held: Held) -> None:
    device = held.device
    # the whole lock_wait_s, cut only by what is left of the run's deadline
    lock_wait = held.deadline.cap(device.lock_wait_s, "the lock")
    held.report("lock", {"wait_s": lock_wait})
    lock = held.timed("lock_s", held.session.run,
                      device_py(device, held.rundir, "lock", held.lockdir, "--owner", held.owner,
                                "--lease-s", f"{device.lease_s:g}", "--wait-s", f"{lock_wait:g}",
                                "--rundir", held.rundir,
                                # this process is the holder on `local`: if it dies, the lock is free at once
                                *(["--holder-pid", str(os.getpid())] if device.is_local else [])),
                      lock_wait + min(30.0, device.command_timeout_s), step="lock")
    if lock.rc == 6:
        raise DeviceBusyError(f"device '{device.name}': {error_line(lock.stderr)}")
    raise_if_untrusted(lock, device)
    if lock.rc != 0:
        raise DeviceError(f"device '{device.name}': cannot take the benchmark lock: {error_line(lock.stderr)}")
    held.lock_info = last_json(lock, device, "the lock step")


@contextmanager
def hold(device: Device, kind: Optional[str], artifacts: dict[Path, str], *, trust_new_host_key: bool = False,
         progress: Optional[Progress] = None, cancel: Optional[threading.Event] = None) -> Iterator[Held]:
    """Hold `device` for runs of the `kind` harness (None: none yet) on `artifacts` ({local path: its
    sha256}), uploaded and checked before the lock is taken; on leaving, also on failure or Ctrl-C, the lock
    is released and the run dir removed."""
    report = progress or (lambda stage, info: None)
    started = time.monotonic()
    # the lease's owner and the run dir's name: letters, digits, '.', '_', '-' only (device.py checks)
    owner = f"{re.sub(r'[^A-Za-z0-9._-]', '_', socket.gethostname())}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    held = Held(device, None, report, owner)  # type: ignore[arg-type]
    report("connect", {"device": device.name, "address": device.address})
    held.session = session = held.timed("connect_s", open_session, device, trust_new_host_key, cancel)
    lock_started = False
    try:
        # The work dir, its ancestors and the lock are checked to be private to the login user, and a fresh
        # run dir made, by an inline program before anything is uploaded; raises WorkdirError if not.
        space = prepare(session, device, f"run-{owner}", held.cmd_timeout("mkdir"), held.timed)
        held.rundir, held.lockdir = space.path, space.lockdir
        # Everything is uploaded and checked before any of it runs; then each command that runs uploaded code
        # (device.py, the harness) checks the sha256 of the very bytes it runs (trust.verified_run).
        held.upload(artifacts, kind, also={f"{held.rundir}/{n}": runtimes_dir() / n for n in SUPPORT_FILES})
        lock_started = True
        _lock(held)
        yield held
    finally:
        t0 = time.monotonic()
        # unlock checks the owner, so it is safe (and needed) whenever the lock step was started
        if held.rundir is not None:  # nothing was made when the work dir failed its checks: nothing to remove
            cleanup(session, device, held.rundir, held.lockdir if lock_started else None, owner)
        session.close()
        held.overhead["cleanup_s"] = time.monotonic() - t0
        held.overhead["total_s"] = time.monotonic() - started


def checked_artifact(artifact: "str | Path", runtime: Optional[str]) -> tuple[Path, str, Optional[dict], str]:
    """(path, harness kind, manifest, sha256) of an artifact about to be measured; ArtifactError if it is not
    a file or changed since its export."""
    artifact = Path(artifact)
    if not artifact.is_file():
        raise ArtifactError(f"{artifact}: " + ("is a directory; name the artifact file in it" if artifact.is_dir()
                                               else "not found"))
    kind = harness_for(artifact, runtime)
    manifest = read_manifest(artifact)
    sha = sha256_file(artifact)
    if manifest and manifest.get("sha256") not in (None, sha):
        raise ArtifactError(f"{artifact}: sha256 differs from its manifest's; the file changed after export")
    return artifact, kind, manifest, sha


def bench(artifact: "str | Path", device: "str | Device" = "local", *, devices: "str | Path | None" = None,
          settings: Optional[BenchSettings] = None, runtime: Optional[str] = None,
          trust_new_host_key: bool = False, progress: Optional[Progress] = None,
          cancel: Optional[threading.Event] = None) -> BenchResult:
    """Measure `artifact` on `device` (a name in `devices`, or a Device). Raises DeviceError (with a
    subclass saying what went wrong) naming the device; nothing is returned unless the run was complete.
    Ctrl-C, or setting `cancel` from another thread, stops the run: the harness is killed, the lock released
    and the run dir removed, then KeyboardInterrupt is raised."""
    artifact, kind, manifest, sha = checked_artifact(artifact, runtime)
    if isinstance(device, str):
        device = get_device(device, devices)
    settings = device_defaults(settings or BenchSettings(), device)
    with hold(device, kind, {artifact: sha}, trust_new_host_key=trust_new_host_key, progress=progress,
              cancel=cancel) as held:
        result = held.timed("run_s", run_harness, held.session, device, kind, held.rundir,
                            held.remote[(artifact, sha)], settings, held.deadline, held.report)
    return bench_result(held, artifact, sha, manifest, settings, result)


def bench_result(held: Held, artifact: Path, sha: str, manifest: Optional[dict], settings: BenchSettings,
                 result: dict, share: int = 1) -> BenchResult:
    """The BenchResult of a harness run `result` made while `held`; `share`: how many artifacts the run
    measured (a series): each is charged that fraction of the device time."""
    device = held.device
    overhead = {k: v / share for k, v in held.overhead.items()}
    measured = result.get("warmup_s", 0.0) + result.get("measure_s", 0.0)
    overhead["outside_window_s"] = overhead["total_s"] - measured
    notes = list(result.get("notes", []))
    notes += reclaim_notes(held.lock_info.get("reclaimed", []))
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
        load=result.get("load") or {}, ci95_p50_scope=str(result.get("ci95_p50_scope", "within-run")),
        ci95_p50_batches=tuple(float(v) for v in result["ci95_p50_batches"]) if result.get("ci95_p50_batches")
        else None,
    )


CHANGED = 8  # the harness's exit when the artifact's bytes on the device are not the ones checked (deploy_check.py)
BENCH_KEYS = ("runtime", "runtime_version", "n", "p50", "ci95_p50", "samples")  # what a result must hold


def run_harness(session: Session, device: Device, kind: str, rundir: str, remote_artifact: str,
                settings: BenchSettings, deadline: Deadline, report: Progress, extra: Sequence[str] = (),
                required: Sequence[str] = BENCH_KEYS) -> dict:
    """Run the harness on `remote_artifact` (with `extra` arguments: A/B mode) and return its JSON."""
    timeout = deadline.cap(device.command_timeout_s, "the benchmark")
    args = [remote_artifact, "--min-runs", str(settings.min_runs), "--min-seconds", f"{settings.min_seconds:g}",
            "--warmup-runs", str(settings.warmup_runs), "--warmup-seconds", f"{settings.warmup_seconds:g}",
            "--seed", str(settings.seed),
            # the harness's own deadline is a backstop behind the supervisor's kill at `timeout`
            "--max-seconds", f"{timeout + KILL_GRACE_S:g}"]
    if settings.threads is not None:
        args += ["--threads", str(settings.threads)]
    if settings.cores:
        args += ["--cores", ",".join(str(c) for c in settings.cores)]
    for flag, limit in (("--max-cv", settings.max_cv), ("--max-busy", settings.max_busy)):
        if limit is not None:
            args += [flag, f"{limit:g}"]
    args += list(extra)
    pidfile = f"{rundir}/harness.pid"
    argv = device_py(device, rundir, "exec", "--pidfile", pidfile, "--timeout", f"{timeout:g}", "--",
                     *harness_py(device, rundir, HARNESSES[kind], *args))

    def on_line(line: str):
        if line.startswith("PROGRESS "):
            try:
                report("measure", json.loads(line[len("PROGRESS "):]))
            except json.JSONDecodeError:
                pass

    report("measure", {"stage": "start"})
    try:
        # a little longer than the supervisor's limit, so that normally the device reports its own kill
        done = session.run(argv, timeout + KILL_GRACE_S, cwd=rundir, on_stderr_line=on_line, step="the benchmark",
                           keep_stdout=RESULT_KEEP)
    except RemoteTimeoutError as exc:
        raise RemoteTimeoutError(f"{exc}; {kill_remote(session, device, pidfile)}") from None
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"device '{device.name}': {kill_remote(session, device, pidfile)}") from None
    except BaseException:
        # a lost link, a progress callback that raised: never leave a harness running unlocked
        kill_remote(session, device, pidfile)
        raise
    raise_if_untrusted(done, device)  # a file changed after its check: refused, nothing of it ran
    truncated = "; ".join(filter(None, (device_truncation(done.stderr), done.truncation())))
    tail = f"; {truncated}" if truncated else ""
    killed = supervisor_report(done.stderr, "KILLED")
    if done.rc == 124:
        if killed and (killed.get("survivors") or killed.get("verified") is False):
            raise RemoteTimeoutError(f"device '{device.name}': the benchmark ran past its {timeout:.0f} s timeout "
                                     f"(command_timeout_s); {describe_kill(killed)}{tail}")
        raise RemoteTimeoutError(f"device '{device.name}': the benchmark ran past its {timeout:.0f} s timeout "
                                 f"(command_timeout_s) and was killed on the device: {error_line(done.stderr)}{tail}")
    if done.rc == CHANGED:
        raise ArtifactError(f"device '{device.name}': {error_line(done.stderr)}")
    if done.rc != 0:
        raise DeviceError(f"device '{device.name}': the {kind} harness failed (exit {done.rc}): "
                          f"{error_line(done.stderr)}{tail}")
    try:
        result = last_json(done, device, f"the {kind} harness")
    except DeviceError as exc:
        raise DeviceError(f"{exc}{tail}") from None
    missing = [k for k in required if k not in result]
    if missing:
        raise DeviceError(f"device '{device.name}': the {kind} harness's result lacks {', '.join(missing)}{tail}")
    extra = [truncated] if truncated else []
    if killed:  # it exited, but left processes behind, which the supervisor killed
        left = len(killed.get("killed") or [])
        extra.append(f"the harness left {left} process{'es' if left != 1 else ''} running when it exited; "
                     + (describe_kill(killed) if killed.get("survivors") else "the supervisor killed them"))
    if extra:
        result["notes"] = [*result.get("notes", []), *extra]
    return result


def supervisor_report(stderr: str, kind: str) -> Optional[dict]:
    """The supervisor's `KILLED {...}` or `OUTPUT {...}` line (runtimes/supervisor.py), if it wrote one."""
    for line in reversed(stderr.splitlines()):
        if line.startswith(kind + " {"):
            try:
                value = json.loads(line[len(kind) + 1:])
            except json.JSONDecodeError:
                return None
            return value if isinstance(value, dict) else None
    return None


def device_truncation(stderr: str) -> Optional[str]:
    info = supervisor_report(stderr, "OUTPUT")
    if not info:
        return None
    parts = [f"the first {fmt_size(info.get(f'{name}_dropped', 0))} of {fmt_size(info.get(f'{name}_bytes', 0))} "
             f"on {name}" for name in ("stdout", "stderr") if info.get(f"{name}_dropped")]
    return "output truncated on the device: discarded " + " and ".join(parts) if parts else None


def describe_kill(info: Optional[dict]) -> str:
    """What a kill on the device did, as the device reported it: never 'killed' unless nothing survived."""
    if not info:
        return "the device did not report the kill"
    if info.get("verified") is False:
        return "the harness was signalled on the device, which has no /proc to confirm that all of it is gone"
    survivors = info.get("survivors") or []
    if survivors:
        return (f"{len(survivors)} of the harness's processes survived the kill on the device: "
                + ", ".join(f"pid {s.get('pid')} ({s.get('name')})" for s in survivors))
    killed = info.get("killed") or []
    if not killed:
        return "the harness is stopped: no process of it is left on the device"
    return (f"the harness was killed on the device ({len(killed)} process{'es' if len(killed) > 1 else ''}: "
            f"pid {', '.join(map(str, killed))})")


def kill_remote(session: Session, device: Device, pidfile: str) -> str:
    """Kill the harness's whole run on the device (device.py kill); returns what the device reported."""
    with session.uninterruptible():
        try:
            done = session.run(device_py(device, pidfile.rsplit("/", 1)[0], "kill", "--pidfile", pidfile),
                               min(30.0, device.command_timeout_s), step="kill")
        except DeviceError as exc:
            # the supervisor's own timeout and the harness's --max-seconds still stop it
            return f"the harness could not be killed on the device ({exc})"
    try:
        return describe_kill(last_json(done, device, "the kill"))
    except DeviceError as exc:
        return f"the harness could not be killed on the device ({exc})"


def cleanup(session: Session, device: Device, rundir: str, lockdir: Optional[str], owner: str) -> None:
    """Release the lock, then remove the run dir; each step tried on its own, neither cut short by a stop
    request or a second Ctrl-C. Best effort when the link is gone: the lease then expires and the next run
    reclaims both. When a Ctrl-C is on its way out, its message says what the clean-up did."""
    timeout = min(30.0, device.command_timeout_s)
    # this run's own dir, lstat-checked on the device; nothing else
    steps = [("removed the run dir", "remove the run dir", remove_argv(device, rundir), False)]
    if lockdir:
        steps.insert(0, ("released the lock", "release the lock",
                         device_py(device, rundir, "unlock", lockdir, "--owner", owner), True))
    done_steps, failed = [], []
    with session.uninterruptible():
        for did, do, argv, is_unlock in steps:
            try:
                done = session.run(argv, timeout, step="clean-up")
            except DeviceError as exc:
                failed.append(f"could not {do} ({exc})")
                continue
            if done.rc == 0 and is_unlock:
                # unlock exits 0 also when the lock is not ours (never taken: Ctrl-C while waiting for it)
                try:
                    unlocked = last_json(done, device, "the unlock")
                except DeviceError as exc:
                    failed.append(f"could not {do} ({exc})")
                    continue
                if unlocked.get("released") is True:
                    done_steps.append(did)
                elif unlocked.get("holder"):
                    done_steps.append(f"left the lock alone (held by {unlocked['holder']}, not by this run)")
                else:
                    done_steps.append("found no lock of this run to release")
            elif done.rc == 0:
                done_steps.append(did)
            else:
                failed.append(f"could not {do} ({error_line(done.stderr)})")
    interrupt = sys.exc_info()[1]  # called from a `finally`: the exception under way, if any
    if isinstance(interrupt, KeyboardInterrupt):
        parts = [str(interrupt) or f"device '{device.name}': stopped"]
        if done_steps:
            parts.append(" and ".join(done_steps))
        interrupt.args = ("; ".join(parts + failed),)


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

    def worker(indices: list[int], cancel: threading.Event):
        for i in indices:
            if cancel.is_set():
                raise KeyboardInterrupt
            dev, art = resolved[i]
            report = (lambda stage, info, _n=dev.name: progress(_n, stage, info)) if progress else None
            try:
                results[i] = bench(art, dev, settings=settings, runtime=runtime,
                                   trust_new_host_key=trust_new_host_key, progress=report, cancel=cancel)
            except EdgepruneError as exc:
                results[i] = exc
            except Exception as exc:  # one device's surprise must not take the others' results with it
                results[i] = DeviceError(f"device '{dev.name}': unexpected {type(exc).__name__}: {exc}")

    # Ctrl-C: every device's harness is killed, its lock released and run dir removed, then it is raised here
    run_parallel(list(by_device.values()), worker)
    return results
