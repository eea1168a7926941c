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
from helpers import DEVICE_PY, QUICK_BENCH, start_edgeprune


MiB = 1 << 20
# A Ctrl-C is answered within this (kill, unlock and remove: a few device commands); the runs it stops
# would take minutes.
PROMPT_S = 30.0


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


def alive(pid: int) -> bool:
    """A live process (not a zombie) with this pid."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def device_python(tmp_path: Path, name: str, body: str) -> Path:
    """An executable 'python' for the device: runs `body` (with `args`, `real` and `run_real()` defined),
    then the real python with the same arguments."""
    path = tmp_path / name
    path.write_text(f"#!{sys.executable}\n"
                    "import os, sys, time\n"
                    f"real = {sys.executable!r}\n"
                    "args = sys.argv[1:]\n"
                    "def run_real(*argv):\n"
                    "    os.execv(real, [real, *(argv or args)])\n"
                    f"{body}\n"
                    "run_real()\n")
    path.chmod(0o755)
    return path


def hostile_python(tmp_path: Path, harness_source: str) -> Path:
    """A device python that runs `harness_source` in place of bench_onnx.py, and everything else as is.
    The harness is the command the supervisor starts: bench_onnx.py named in its arguments, no `exec`."""
    harness = tmp_path / "hostile_harness.py"
    harness.write_text(harness_source)
    return device_python(tmp_path, "hostile-python", (
        "is_harness = (args and args[0].endswith('/bench_onnx.py')) or 'bench_onnx.py' in args\n"
        f"if is_harness and 'exec' not in args:\n"
        f"    run_real({str(harness)!r})\n"))


def local_toml(path: Path, **settings) -> Path:
    """Adds a `[devices.local]` table (lock_wait_s = 0: a lock left behind fails the next run at once)."""
    values = {"lock_wait_s": 0, **settings}
    with open(path, "a") as fh:
        fh.write("[devices.local]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
    return path


def devices_toml(where: str, tmp_path: Path, sshd_factory, **settings) -> tuple[Path, ep.Device]:
    """devices.toml with device `where` ("local" or "loopback"), and that device."""
    toml = tmp_path / "devices.toml"
    if where == "local":
        local_toml(toml, workdir=str(tmp_path / "device-work"), **settings)
    else:
        sshd_factory().write_devices_toml(toml, workdir=str(tmp_path / "device-work"), lock_wait_s=0, **settings)
    return toml, get_device(where, toml)


@pytest.fixture(params=["local", "loopback"])
def where(request):
    return request.param


@pytest.fixture
def sshd_factory(request):
    """The session's sshd, started only by the tests that use it (the `local` cases need none)."""
    return lambda: request.getfixturevalue("sshd")


def run_dirs(device: ep.Device) -> list[Path]:
    return sorted(Path(device.workdir).glob("run-*")) + sorted(Path(device.workdir).glob("check-*"))


def locked(device: ep.Device) -> bool:
    return (Path(device.workdir) / "lock").exists()


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

def detaching_harness(pidfile: Path) -> str:
    """Starts a daemon the textbook way (fork, setsid, fork), records its pid, then hangs."""
    return ("import os, sys, time\n"
            "if os.fork() == 0:\n"
            "    os.setsid()\n"
            "    if os.fork() == 0:\n"
            f"        open({str(pidfile)!r} + '.tmp', 'w').write(str(os.getpid()))\n"
            f"        os.rename({str(pidfile)!r} + '.tmp', {str(pidfile)!r})\n"
            "        os.execvp('sleep', ['sleep', '300'])\n"
            "    os._exit(0)\n"
            "time.sleep(300)\n")


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

cli = start_edgeprune  # `edgeprune ARGS` in a process group of its own: SIGINT to the group is a terminal's Ctrl-C


def wait_for(found, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    """Until `found()` is true (the point of the run the test interrupts) while the CLI runs."""
    end = time.monotonic() + timeout
    while not found():
        if proc.poll() is not None:
            raise AssertionError(f"the CLI exited early ({proc.returncode}): {proc.communicate()[1][-2000:]}")
        assert time.monotonic() < end, f"the run did not get there within {timeout:.0f} s"
        time.sleep(0.02)


def measuring(*devices: ep.Device):
    """The harness of each device has started: its supervisor wrote the pid file."""
    return lambda: all(any(Path(d.workdir).glob("run-*/harness.pid")) for d in devices)


def harness_pids(workdir: str) -> list[int]:
    pidfile = next(Path(workdir).glob("run-*/harness.pid"))
    return [int(v) for v in pidfile.read_text().split()[:2]]


def interrupt(proc: subprocess.Popen, marker: "Path | None" = None) -> tuple[float, str]:
    """SIGINT to the CLI's group; with `marker`, a second one once the file appears (during the clean-up).
    Returns (seconds from the first Ctrl-C to its exit, stderr)."""
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    if marker is not None:
        while not marker.exists() and proc.poll() is None and time.monotonic() - t0 < PROMPT_S:
            time.sleep(0.01)
        assert marker.exists(), "the clean-up never started"
        os.killpg(proc.pid, signal.SIGINT)
    try:
        _out, err = proc.communicate(timeout=PROMPT_S * 3)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _out, err = proc.communicate()
        err += f"\n[test: still running {PROMPT_S * 3:.0f} s after Ctrl-C; killed]"
    return time.monotonic() - t0, err


def slow_unlock_python(tmp_path: Path, marker: Path) -> Path:
    """A device python whose `device.py unlock` announces itself and takes a second: a window in which a
    second Ctrl-C lands in the clean-up."""
    return device_python(tmp_path, "slow-unlock-python", (
        "if 'unlock' in args:\n"
        f"    open({str(marker)!r}, 'w').close()\n"
        "    time.sleep(1.0)\n"))


def assert_interrupted_cleanly(proc, elapsed, err, pids, devices) -> None:
    survivors = [pid for pid in pids if alive(pid)]
    for pid in survivors:  # never leave a ten-minute benchmark behind, whatever the outcome
        os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 130, f"exit {proc.returncode} {elapsed:.1f} s after Ctrl-C: {err[-1500:]}"
    assert elapsed < PROMPT_S, f"exited {elapsed:.1f} s after Ctrl-C"
    assert "Traceback" not in err and err.count("interrupted:") == 1, err
    assert survivors == [], f"processes {survivors} of the harness survived Ctrl-C"
    for device in devices:
        assert not locked(device), f"device '{device.name}' is still locked"
        assert run_dirs(device) == [], f"run dir left on '{device.name}': {run_dirs(device)}"


LONG_RUN = ("--min-runs", "1000000000", "--min-seconds", "600", "--warmup-runs", "0", "--warmup-seconds", "0")


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
