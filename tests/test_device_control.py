"""runtimes/device.py, the control script the runner runs on a device: the benchmark lock with its
lease, and the supervised launch that kills at a timeout. Run as real subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from helpers import DEVICE_PY


def device(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(DEVICE_PY), *args], capture_output=True, text=True, timeout=timeout)


def lock(lockdir: Path, owner: str, lease_s: float = 60, wait_s: float = 0, rundir: Path | None = None):
    args = ["lock", str(lockdir), "--owner", owner, "--lease-s", str(lease_s), "--wait-s", str(wait_s)]
    return device(*args, *(["--rundir", str(rundir)] if rundir else []))


def wait_until(found, what: str, timeout: float = 60.0) -> None:
    """Until `found()` is true: an event, never a guess at how long it takes (the bound only ends a hang)."""
    end = time.monotonic() + timeout
    while not found():
        assert time.monotonic() < end, f"{what} did not happen within {timeout:.0f} s"
        time.sleep(0.02)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie has exited; only its parent has not collected it yet
    return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()


def test_the_first_runner_takes_the_lock(tmp_path):
    done = lock(tmp_path / "lock", "a")
    assert done.returncode == 0 and json.loads(done.stdout)["acquired"] is True
    assert json.loads((tmp_path / "lock" / "lease.json").read_text())["owner"] == "a"


def test_a_second_runner_gives_up_after_its_wait_naming_the_holder(tmp_path):
    lock(tmp_path / "lock", "first-runner")
    t0 = time.monotonic()
    done = lock(tmp_path / "lock", "second", wait_s=0.5)
    assert done.returncode == 6 and time.monotonic() - t0 >= 0.5
    assert "device busy" in done.stderr and "first-runner" in done.stderr


def test_a_waiting_runner_gets_the_lock_once_it_is_released(tmp_path):
    lock(tmp_path / "lock", "a")
    waiter = subprocess.Popen([sys.executable, str(DEVICE_PY), "lock", str(tmp_path / "lock"), "--owner", "b",
                               "--lease-s", "60", "--wait-s", "120"], stdout=subprocess.PIPE, text=True)
    # the guard file is made by the first look at a lock someone holds: b has found it taken
    wait_until(lambda: (tmp_path / "lock.guard").exists() or waiter.poll() is not None, "b's first try")
    assert waiter.poll() is None  # still waiting
    assert json.loads(device("unlock", str(tmp_path / "lock"), "--owner", "a").stdout)["released"]
    out, _ = waiter.communicate(timeout=120)
    assert waiter.returncode == 0 and json.loads(out)["acquired"]


def test_an_expired_lease_is_reclaimed_with_the_crashed_runs_directory(tmp_path):
    crashed_run = tmp_path / "run-crashed"
    crashed_run.mkdir()
    lock(tmp_path / "lock", "crashed", lease_s=0.2, rundir=crashed_run)
    time.sleep(0.4)
    done = lock(tmp_path / "lock", "next")
    assert done.returncode == 0
    assert json.loads(done.stdout)["reclaimed"][0]["owner"] == "crashed"
    assert not crashed_run.exists()


def test_only_the_holder_can_release_the_lock(tmp_path):
    lock(tmp_path / "lock", "a")
    assert json.loads(device("unlock", str(tmp_path / "lock"), "--owner", "b").stdout)["released"] is False
    assert json.loads((tmp_path / "lock" / "lease.json").read_text())["owner"] == "a"


def test_of_many_simultaneous_runners_exactly_one_gets_the_lock(tmp_path):
    procs = [subprocess.Popen([sys.executable, str(DEVICE_PY), "lock", str(tmp_path / "lock"), "--owner", f"r{i}",
                               "--lease-s", "60", "--wait-s", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for i in range(8)]
    codes = [p.wait(timeout=30) for p in procs]
    assert sorted(codes) == [0] + [6] * 7


def test_exec_kills_the_command_and_its_children_at_the_timeout(tmp_path):
    pidfile = tmp_path / "pid"
    script = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"
    t0 = time.monotonic()
    done = device("exec", "--pidfile", str(pidfile), "--timeout", "1", "--", sys.executable, "-c", script, timeout=90)
    assert done.returncode == 124 and time.monotonic() - t0 < 30  # generous; the command would sleep 60 s
    assert "past its 1 s timeout" in done.stderr
    child = int(pidfile.read_text().split()[1])
    assert not alive(child)
    leftovers = subprocess.run(["pgrep", "-g", str(child)], capture_output=True, text=True).stdout.split()
    assert leftovers == []


def test_exec_returns_the_commands_exit_code(tmp_path):
    done = device("exec", "--pidfile", str(tmp_path / "pid"), "--timeout", "30", "--", sys.executable, "-c",
                  "import sys; print('out'); sys.exit(3)")
    assert done.returncode == 3 and done.stdout == "out\n"


def test_kill_stops_a_supervised_command(tmp_path):
    pidfile = tmp_path / "pid"
    supervisor = subprocess.Popen([sys.executable, str(DEVICE_PY), "exec", "--pidfile", str(pidfile), "--timeout",
                                   "60", "--", sys.executable, "-c", "import time; time.sleep(60)"])
    wait_until(pidfile.exists, "the supervisor's pid file")  # renamed into place whole
    child = int(pidfile.read_text().split()[1])
    assert json.loads(device("kill", "--pidfile", str(pidfile)).stdout)["killed"] == [supervisor.pid, child]
    supervisor.wait(timeout=10)
    assert not alive(child)


def test_of_many_runners_reclaiming_one_expired_lock_exactly_one_gets_it(tmp_path):
    lock(tmp_path / "lock", "crashed", lease_s=0.1)
    time.sleep(0.3)
    procs = [subprocess.Popen([sys.executable, str(DEVICE_PY), "lock", str(tmp_path / "lock"), "--owner", f"r{i}",
                               "--lease-s", "60", "--wait-s", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for i in range(8)]
    codes = [p.wait(timeout=30) for p in procs]
    assert sorted(codes) == [0] + [6] * 7


def test_probe_finds_runtimes_without_importing_them_unless_asked(tmp_path):
    """A plain probe only looks for the runtime's files (importing executorch takes seconds); --imports runs them."""
    (tmp_path / "onnxruntime").mkdir()
    (tmp_path / "onnxruntime" / "__init__.py").write_text("raise RuntimeError('onnxruntime was imported')\n")
    (tmp_path / "tflite_runtime").mkdir()  # the package without its interpreter module; a regular package
    (tmp_path / "tflite_runtime" / "__init__.py").write_text("")  # so it wins over an installed tflite_runtime
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    probe = [sys.executable, str(DEVICE_PY), "probe"]
    quick = json.loads(subprocess.run(probe, capture_output=True, text=True, env=env, timeout=60).stdout)
    assert quick["imported"] is False
    assert quick["runtimes"]["onnxruntime"]["error"] is None and quick["runtimes"]["onnxruntime"]["version"]
    assert quick["runtimes"]["tflite_runtime"] == {
        "version": None, "error": "ModuleNotFoundError: No module named 'tflite_runtime.interpreter'"}
    full = json.loads(subprocess.run([*probe, "--imports"], capture_output=True, text=True, env=env,
                                     timeout=120).stdout)
    assert full["imported"] is True
    assert full["runtimes"]["onnxruntime"] == {"version": None, "error": "RuntimeError: onnxruntime was imported"}
