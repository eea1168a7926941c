"""Helpers of the remote runner's tests against a real device: OpenSSH (test_remote_ssh, test_remote_faults,
test_remote_trust) and dropbear (test_remote_dropbear) share them: devices in a devices.toml of the test's own,
what is left on the device after a run, device pythons that misbehave on purpose, and Ctrl-C of a real CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import edgeprune as ep
from edgeprune.devices import get_device
from helpers import start_edgeprune
from sshd_server import SSHServer


# A Ctrl-C is answered within this (kill, unlock and remove: a few device commands); the runs it stops
# would take minutes.
PROMPT_S = 30.0


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


def run_dirs(device: ep.Device) -> list[Path]:
    return sorted(Path(device.workdir).glob("run-*")) + sorted(Path(device.workdir).glob("check-*"))


def locked(device: ep.Device) -> bool:
    return (Path(device.workdir) / "lock").exists()


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


cli = start_edgeprune  # `edgeprune ARGS` in a process group of its own: SIGINT to the group is a terminal's Ctrl-C


def wait_for(found, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    """Until `found()` is true (the point of the run the test interrupts) while the CLI runs."""
    end = time.monotonic() + timeout
    while not found():
        if proc.poll() is not None:
            out, err = proc.communicate()  # stderr is None when the caller merged it into stdout
            said = (err or out or b"")[-2000:]
            raise AssertionError(f"the CLI exited early ({proc.returncode}): {said.decode(errors='replace')}")
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


def loopback(server: SSHServer, tmp_path: Path, **settings) -> ep.Device:
    """The server as a device in a devices.toml of this test's own (its own workdir, known_hosts pinned)."""
    settings.setdefault("workdir", str(tmp_path / "device-work"))
    return get_device("loopback", server.write_devices_toml(tmp_path / "devices.toml", **settings))


def nothing_ran(device: ep.Device) -> bool:
    return not Path(device.workdir).exists()


class FakeSysfs:
    """A sysfs for the device state (device_state reads it in place of /sys when EDGEPRUNE_TEST_SYSFS names
    it): cpu0's clock and one thermal zone with a passive trip point at 85 °C."""

    def __init__(self, root: Path):
        self.root = root
        self.cpufreq = root / "devices" / "system" / "cpu" / "cpu0" / "cpufreq"
        self.cpufreq.mkdir(parents=True)
        (self.cpufreq / "scaling_governor").write_text("performance\n")
        (self.cpufreq / "cpuinfo_max_freq").write_text("2400000\n")
        (self.cpufreq / "scaling_cur_freq").write_text("2400000\n")
        self.zone = root / "class" / "thermal" / "thermal_zone0"
        self.zone.mkdir(parents=True)
        (self.zone / "type").write_text("cpu-thermal\n")
        (self.zone / "trip_point_0_type").write_text("passive\n")
        (self.zone / "trip_point_0_temp").write_text("85000\n")
        (self.zone / "temp").write_text("50000\n")

    def clock_per_sample(self, *khz: str) -> threading.Thread:
        """cpu0's clock as a FIFO answering the state's reads in turn, one value each: the harness samples
        the state before its run and after it, so the values are those two samples, whenever they come."""
        fifo = self.cpufreq / "scaling_cur_freq"
        fresh = self.cpufreq / "fresh-fifo"

        def swap_in_a_new_fifo():
            os.mkfifo(fresh)
            os.replace(fresh, fifo)

        def serve():
            for value in khz:
                with open(fifo, "w") as fh:  # waits for the next reader
                    # a new FIFO in its place before this one's EOF: the next write can only reach the next read
                    swap_in_a_new_fifo()
                    fh.write(value + "\n")

        fifo.unlink()
        swap_in_a_new_fifo()

        server = threading.Thread(target=serve, daemon=True)
        server.start()
        return server
