"""Faults during a device run (issue 11 items 2 and 3), on `local` and over a real sshd on loopback:

- a command or harness that floods its output: this host keeps a bounded tail (peak memory measured),
  the device's supervisor too, and the error says what was discarded;
- a harness that leaves a detached grandchild (setsid + double fork): the kill gets it too;
- Ctrl-C (SIGINT to the CLI's process group, as a terminal sends it) during `edgeprune bench`, a bench
  on several devices and `devices check`: it stops the harness, releases the lock, removes the run dir
  and exits 130 within seconds, also when a second Ctrl-C comes during that clean-up.

The hostile harness and the slow clean-up come from the device's own `python` (devices.toml), a wrapper
script: the runner, its upload and its checks are the real ones, only the device misbehaves."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import edgeprune as ep
from edgeprune import remote
from edgeprune.devices import get_device, local_device
from helpers import DEVICE_PY, QUICK_BENCH
from remote_helpers import (alive, assert_interrupted_cleanly, cli, detaching_harness, device_python, devices_toml,
                            harness_pids, hostile_python, interrupt, local_toml, locked, LONG_RUN, measuring,
                            PROMPT_S, run_dirs, wait_for)


MiB = 1 << 20


# ------------------------------------------------------------------------------------------------ helpers

def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {key} in /proc/self/status")


def peak_growth(fn):
    """(fn(), how far this process's peak resident memory rose above its resident memory before)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size
    except OSError as exc:
        pytest.skip(f"cannot reset the peak RSS here: {exc}")
    before = _status_kib("VmRSS")
    try:
        value = fn()
    except Exception as exc:  # the error is what some tests look at
        value = exc
    return value, (_status_kib("VmHWM") - before) * 1024


def flood_script(stdout_mib: int, stderr_mib: int, last_out: str = "", last_err: str = "") -> str:
    return ("import os\n"
            "block = (b'x' * 1023 + b'\\n') * 1024\n"
            f"for _ in range({stdout_mib}): os.write(1, block)\n"
            f"for _ in range({stderr_mib}): os.write(2, block)\n"
            f"os.write(1, {last_out.encode()!r}); os.write(2, {last_err.encode()!r})\n")


@pytest.fixture(params=["local", "loopback"])
def where(request):
    return request.param


@pytest.fixture
def sshd_factory(request):
    """The session's sshd, started only by the tests that use it (the `local` cases need none)."""
    return lambda: request.getfixturevalue("sshd")


# ------------------------------------------------------------------------------- item 2: floods (host side)

def test_a_flooding_command_on_local_keeps_only_a_bounded_tail_of_its_output(tmp_path):
    session = remote.open_session(local_device(workdir=str(tmp_path)))
    script = flood_script(256, 256, last_out='{"result": 1}\n', last_err="error: the last line\n")
    done, growth = peak_growth(lambda: session.run([sys.executable, "-c", script], timeout=60))
    assert growth < 64 * MiB, f"this process grew by {growth / MiB:.0f} MiB for 512 MiB of output"
    assert done.rc == 0 and done.stdout.endswith('{"result": 1}\n') and done.stderr.endswith("error: the last line\n")
    assert len(done.stdout) + done.stdout_dropped == 256 * MiB + 14
    assert len(done.stderr) <= 64 * 1024 < done.stderr_dropped
    assert done.truncation().startswith("output truncated on this host: discarded the first 2")


@pytest.mark.parametrize("server", ["sshd", "dropbear"])
def test_a_flooding_command_over_ssh_keeps_only_a_bounded_tail_of_its_output(server, request, tmp_path):
    server = request.getfixturevalue(server)
    session = remote.open_session(get_device("loopback", server.write_devices_toml(tmp_path / "devices.toml")))
    script = flood_script(96, 96, last_out='{"result": 1}\n', last_err="error: the last line\n")
    try:
        done, growth = peak_growth(lambda: session.run(["python3", "-c", script], timeout=60))
    finally:
        session.close()
    assert growth < 48 * MiB, f"this process grew by {growth / MiB:.0f} MiB for 192 MiB of output"
    assert done.rc == 0 and done.stdout.endswith('{"result": 1}\n') and done.stderr.endswith("error: the last line\n")
    assert done.stdout_dropped > 90 * MiB and done.stderr_dropped > 90 * MiB
    assert "output truncated on this host" in done.truncation()


def test_a_command_that_never_stops_writing_still_meets_its_timeout_over_ssh(sshd, tmp_path):
    session = remote.open_session(get_device("loopback", sshd.write_devices_toml(tmp_path / "devices.toml")))
    t0 = time.monotonic()
    try:  # `yes` floods until killed; `timeout 120` ends it should the host never stop reading
        error, growth = peak_growth(lambda: session.run(["timeout", "120", "yes", "flood"], timeout=1.0))
    finally:
        session.close()
    assert isinstance(error, ep.RemoteTimeoutError) and "ran past its 1 s timeout" in str(error)
    assert time.monotonic() - t0 < 60  # generous for a loaded machine; an unmet timeout would take 120 s
    assert growth < 48 * MiB


# ------------------------------------------------------------------------- item 2: floods (through bench)

FLOOD_HARNESS = flood_script(300, 100)  # no result line at all, then exit 0


def test_a_harness_flooding_its_output_fails_with_an_error_naming_the_truncation(where, sshd_factory, tmp_path,
                                                                                  bench_artifacts):
    toml, device = devices_toml(where, tmp_path, sshd_factory, python=str(hostile_python(tmp_path, FLOOD_HARNESS)))
    error, growth = peak_growth(lambda: ep.bench(bench_artifacts.onnx, device, settings=QUICK_BENCH))
    assert growth < 256 * MiB, f"this process grew by {growth / MiB:.0f} MiB for 400 MiB of harness output"
    assert isinstance(error, ep.DeviceError), error
    message = str(error)
    assert "the onnx harness printed no result JSON" in message
    # the device's supervisor kept 32 MiB of stdout and 64 KiB of stderr; SSH never carried the rest
    assert "output truncated on the device: discarded the first 268.0 MiB of 300.0 MiB on stdout" in message
    assert "of 100.0 MiB on stderr" in message
    assert run_dirs(device) == [] and not locked(device)
    assert ep.bench(bench_artifacts.onnx, dataclasses.replace(device, python=sys.executable), settings=QUICK_BENCH).n >= 10


# ------------------------------------------------------------------ item 2: a detached grandchild is killed


def test_a_detached_grandchild_of_the_harness_is_killed_with_it_at_the_timeout(where, sshd_factory, tmp_path,
                                                                                bench_artifacts):
    daemon = tmp_path / "daemon.pid"
    # the limit of every step: generous, so that on a loaded machine only the hanging harness reaches it
    toml, device = devices_toml(where, tmp_path, sshd_factory, command_timeout_s=10.0,
                                python=str(hostile_python(tmp_path, detaching_harness(daemon))))
    try:
        with pytest.raises(ep.RemoteTimeoutError) as error:
            ep.bench(bench_artifacts.onnx, device, settings=QUICK_BENCH)
        pid = int(daemon.read_text())
        assert not alive(pid), f"the harness's detached grandchild (pid {pid}) survived the kill"
        # said only because it is true: the harness and its grandchild
        assert re.search(r"past its 10 s timeout \(command_timeout_s\) and was killed on the device: "
                         r".*with everything it started \(2 processes\)", str(error.value)), error.value
    finally:
        if daemon.exists() and alive(int(daemon.read_text())):
            os.kill(int(daemon.read_text()), signal.SIGKILL)
    assert run_dirs(device) == [] and not locked(device)


def test_device_kill_stops_a_run_and_every_detached_process_of_it(tmp_path):
    daemon = tmp_path / "daemon.pid"
    harness = tmp_path / "harness.py"
    harness.write_text(detaching_harness(daemon))
    pidfile = tmp_path / "run.pid"
    run = subprocess.Popen([sys.executable, str(DEVICE_PY), "exec", "--pidfile", str(pidfile), "--timeout", "60", "--",
                            sys.executable, str(harness)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        end = time.monotonic() + 20
        while not daemon.exists():
            assert time.monotonic() < end and run.poll() is None, run.stderr.read().decode()
            time.sleep(0.02)
        supervisor, child = (int(v) for v in pidfile.read_text().split()[:2])
        killed = subprocess.run([sys.executable, str(DEVICE_PY), "kill", "--pidfile", str(pidfile)], capture_output=True,
                                text=True, timeout=30)
        run.wait(timeout=10)
        grandchild = int(daemon.read_text())
        assert not alive(grandchild), "the detached grandchild survived `device.py kill`"
        assert not alive(child) and not alive(supervisor)
        report = json.loads(killed.stdout)
        assert {supervisor, child, grandchild} <= set(report["killed"]) and report["survivors"] == []
    finally:
        if run.poll() is None:
            run.kill()
        if daemon.exists() and alive(int(daemon.read_text())):
            os.kill(int(daemon.read_text()), signal.SIGKILL)


# ---------------------------------------------------------------------------------------- item 3: Ctrl-C


def slow_unlock_python(tmp_path: Path, marker: Path) -> Path:
    """A device python whose `device.py unlock` announces itself and takes a second: a window in which a
    second Ctrl-C lands in the clean-up."""
    return device_python(tmp_path, "slow-unlock-python", (
        "if 'unlock' in args:\n"
        f"    open({str(marker)!r}, 'w').close()\n"
        "    time.sleep(1.0)\n"))


@pytest.mark.parametrize("second_ctrl_c", [False, True], ids=["once", "again-during-clean-up"])
def test_ctrl_c_during_cli_bench_stops_the_harness_unlocks_and_exits_130(where, sshd_factory, tmp_path,
                                                                          bench_artifacts, second_ctrl_c):
    marker = tmp_path / "unlocking"
    settings = {"python": str(slow_unlock_python(tmp_path, marker))} if second_ctrl_c else {}
    toml, device = devices_toml(where, tmp_path, sshd_factory, **settings)
    proc = cli("bench", "--devices", str(toml), "-d", where, str(bench_artifacts.onnx), *LONG_RUN, cwd=tmp_path)
    wait_for(measuring(device), proc)
    pids = harness_pids(device.workdir)
    elapsed, err = interrupt(proc, marker if second_ctrl_c else None)
    assert_interrupted_cleanly(proc, elapsed, err, pids, [device])
    assert f"device '{where}'" in err and "released the lock and removed the run dir" in err
    assert ep.bench(bench_artifacts.onnx, device, settings=QUICK_BENCH).n >= 10  # lock_wait_s = 0: free at once


def test_ctrl_c_during_a_bench_on_several_devices_stops_and_cleans_every_one(sshd, tmp_path, bench_artifacts):
    toml = sshd.write_devices_toml(tmp_path / "devices.toml", workdir=str(tmp_path / "ssh-work"), lock_wait_s=0)
    local_toml(toml, workdir=str(tmp_path / "local-work"))
    devices = [get_device("loopback", toml), get_device("local", toml)]
    proc = cli("bench", "--devices", str(toml), "-d", "loopback", "-d", "local", str(bench_artifacts.onnx),
               *LONG_RUN, cwd=tmp_path)
    wait_for(measuring(*devices), proc)
    pids = [pid for d in devices for pid in harness_pids(d.workdir)]
    elapsed, err = interrupt(proc)
    assert_interrupted_cleanly(proc, elapsed, err, pids, devices)
    assert "device 'loopback'" in err and "device 'local'" in err
    results = ep.bench_many([(d, bench_artifacts.onnx) for d in devices], settings=QUICK_BENCH)
    assert all(isinstance(r, ep.BenchResult) for r in results), results


def test_ctrl_c_during_devices_check_stops_the_probe_and_removes_its_dir(tmp_path):
    marker = tmp_path / "probing"
    python = device_python(tmp_path, "slow-probe-python", (
        "if 'probe' in args:\n"
        f"    open({str(marker)!r}, 'w').write(str(os.getpid()))\n"
        "    time.sleep(120)\n"))
    toml = local_toml(tmp_path / "devices.toml", workdir=str(tmp_path / "local-work"), python=str(python))
    device = get_device("local", toml)
    proc = cli("devices", "check", "--devices", str(toml), "local", cwd=tmp_path)
    wait_for(marker.exists, proc)
    elapsed, err = interrupt(proc)
    assert_interrupted_cleanly(proc, elapsed, err, [int(marker.read_text())], [device])


def lock_waiters(lockdir: Path) -> list[int]:
    """The device-side `device.py lock` processes waiting for `lockdir` (found by their command line)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if b"device.py" in argv and b"lock" in argv and str(lockdir).encode() in argv and b"--wait-s" in argv:
            pids.append(int(entry.name))
    return pids


def test_ctrl_c_while_waiting_for_the_lock_over_ssh_leaves_no_waiter_and_claims_no_release(sshd, tmp_path,
                                                                                          bench_artifacts):
    toml = sshd.write_devices_toml(tmp_path / "devices.toml", workdir=str(tmp_path / "device-work"), lock_wait_s=30)
    device = get_device("loopback", toml)
    lockdir = Path(device.workdir) / "lock"
    Path(device.workdir).mkdir(mode=0o700)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    waiters: list[int] = []
    try:
        subprocess.run([sys.executable, str(DEVICE_PY), "lock", str(lockdir), "--owner", "alive",
                        "--lease-s", "300", "--holder-pid", str(holder.pid)], check=True, capture_output=True)
        proc = cli("bench", "--devices", str(toml), "-d", "loopback", str(bench_artifacts.onnx), cwd=tmp_path)
        wait_for(lambda: lock_waiters(lockdir), proc)
        waiters = lock_waiters(lockdir)
        elapsed, err = interrupt(proc)
        end = time.monotonic() + 30  # the waiter notices the closed channel within a poll (0.25 s)
        while any(alive(pid) for pid in waiters) and time.monotonic() < end:
            time.sleep(0.05)
        survivors = [pid for pid in waiters if alive(pid)]
        subprocess.run([sys.executable, str(DEVICE_PY), "unlock", str(lockdir), "--owner", "alive"],
                       check=True, capture_output=True)
        end = time.monotonic() + 1.0  # a surviving waiter would take the freed lock within 0.25 s
        taken = False
        while not taken and time.monotonic() < end:
            taken = locked(device)
            time.sleep(0.05)
    finally:
        for pid in waiters:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        holder.kill()
        holder.wait()
    assert proc.returncode == 130 and elapsed < PROMPT_S, f"exit {proc.returncode} {elapsed:.1f} s after Ctrl-C: {err}"
    assert survivors == [], f"`device.py lock` {survivors} still waits for the lock after the host went away"
    assert not taken, "an orphaned `device.py lock` took the lock once its holder released it"
    assert "released the lock" not in err, err
    assert "left the lock alone (held by alive, not by this run)" in err, err
