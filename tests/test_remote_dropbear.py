"""The runner's key SSH behaviours against dropbear, the SSH server of OpenWrt and of many Yocto/Buildroot
images (tests/sshd_server.py's DropbearServer on loopback): a full bench, host keys, kills,
Ctrl-C and stale locks. The same behaviours against OpenSSH are in test_remote_ssh.py, test_remote_faults.py
and test_remote_trust.py; all of them use remote_helpers.py. The stale-lock reclaim after a killed runner,
which had no SSH test, runs against both servers here."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import edgeprune as ep
from edgeprune import remote

from helpers import QUICK_BENCH
from remote_helpers import (alive, assert_interrupted_cleanly, cli, detaching_harness, devices_toml, harness_pids,
                            hostile_python, interrupt, locked, LONG_RUN, loopback, measuring, nothing_ran, run_dirs,
                            wait_for)


def test_an_onnx_artifact_is_measured_over_dropbear(dropbear, bench_artifacts, tmp_path):
    device = loopback(dropbear, tmp_path)
    result = ep.bench(bench_artifacts.onnx, device, settings=QUICK_BENCH)  # uploads over dropbear's SFTP too
    assert result.runtime == "onnxruntime" and result.n >= 10 and 0 < result.p50 <= result.p99
    assert run_dirs(device) == [] and not locked(device)


def test_an_unknown_dropbear_host_key_is_refused_before_anything_runs(dropbear, bench_artifacts, tmp_path):
    device = loopback(dropbear, tmp_path, known_hosts=str(tmp_path / "empty_known_hosts"))
    with pytest.raises(ep.HostKeyError, match=r"is not in .*empty_known_hosts; refused before anything ran"):
        ep.bench(bench_artifacts.onnx, device, settings=QUICK_BENCH)
    assert nothing_ran(device)


def test_a_command_longer_than_dropbear_takes_is_refused_before_it_is_sent(dropbear, tmp_path):
    session = remote.open_session(loopback(dropbear, tmp_path))
    try:  # dropbear would drop the whole connection on it (before: "the SSH connection was lost")
        with pytest.raises(ep.DeviceError, match=r"the command for command is 9\d{3} bytes, more than the 9000 every "
                                                 r"SSH server takes .*nothing was sent") as error:
            session.run(["printf", "%s", "x" * 9000], timeout=30)
        assert not isinstance(error.value, ep.ConnectionLostError)
        assert session.run(["printf", "%s", "x" * 8900], timeout=30).stdout == "x" * 8900  # the link is up
    finally:
        session.close()


def test_a_harness_past_its_timeout_is_killed_over_dropbear_with_its_detached_grandchild(dropbear, tmp_path,
                                                                                      bench_artifacts):
    daemon = tmp_path / "daemon.pid"
    # the limit of every step: generous, so that on a loaded machine only the hanging harness reaches it
    _toml, device = devices_toml("loopback", tmp_path, lambda: dropbear, command_timeout_s=10.0,
                                 python=str(hostile_python(tmp_path, detaching_harness(daemon))))
    try:
        with pytest.raises(ep.RemoteTimeoutError, match=r"past its 10 s timeout \(command_timeout_s\) and was killed "
                                                        r"on the device: .*with everything it started \(2 processes\)"):
            ep.bench(bench_artifacts.onnx, device, settings=QUICK_BENCH)
        pid = int(daemon.read_text())
        assert not alive(pid), f"the harness's detached grandchild (pid {pid}) survived the kill"
    finally:
        if daemon.exists() and alive(int(daemon.read_text())):
            subprocess.run(["kill", "-9", daemon.read_text()])
    assert run_dirs(device) == [] and not locked(device)


def test_ctrl_c_during_cli_bench_over_dropbear_stops_the_harness_unlocks_and_exits_130(dropbear, tmp_path,
                                                                                      bench_artifacts):
    toml, device = devices_toml("loopback", tmp_path, lambda: dropbear)
    proc = cli("bench", "--devices", str(toml), "-d", "loopback", str(bench_artifacts.onnx), *LONG_RUN, cwd=tmp_path)
    wait_for(measuring(device), proc)
    pids = harness_pids(device.workdir)
    elapsed, err = interrupt(proc)
    assert_interrupted_cleanly(proc, elapsed, err, pids, [device])
    assert "released the lock and removed the run dir" in err
    assert ep.bench(bench_artifacts.onnx, device, settings=QUICK_BENCH).n >= 10  # lock_wait_s = 0: free at once


# ------------------------------------------------------------------------ a runner killed while holding the lock

KILLED_RUNNER = textwrap.dedent("""
    import os, signal, sys
    import edgeprune as ep
    from edgeprune.devices import get_device

    def die(stage, info):  # killed while its harness measures, holding the lock: no clean-up runs
        if stage == "measure" and info.get("stage") == "measure":
            os.kill(os.getpid(), signal.SIGKILL)

    ep.bench(sys.argv[1], get_device("loopback", sys.argv[2]), progress=die,
             settings=ep.BenchSettings(min_runs=10**9, min_seconds=600))
""")


@pytest.fixture(params=["sshd", "dropbear"])
def server(request):
    return request.getfixturevalue(request.param)


def test_a_killed_runners_lock_is_reclaimed_at_once_over_ssh(server, bench_artifacts, tmp_path):
    """The lock's holder over SSH is the server's process of the runner's connection (sshd's or dropbear's),
    which exits with the connection: the next run takes the lock at once, not after the 30-minute lease."""
    toml = server.write_devices_toml(tmp_path / "devices.toml", workdir=str(tmp_path / "work"), lock_wait_s=2.0)
    killed = subprocess.run([sys.executable, "-c", KILLED_RUNNER, str(bench_artifacts.onnx), str(toml)],
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    lease = json.loads((tmp_path / "work" / "lock" / "lease.json").read_text())
    assert lease["expires"] - lease["since"] >= 1800 and lease.get("holder_pid"), lease
    (stale_run,) = run_dirs(ep.devices.get_device("loopback", toml))

    result = ep.bench(bench_artifacts.onnx, ep.devices.get_device("loopback", toml), settings=QUICK_BENCH)
    gone = [n for n in result.notes if "reclaimed a stale benchmark lock" in n]
    assert gone and re.search(rf"{lease['owner']} \(its holder, pid {lease['holder_pid']} .* has exited", gone[0]), \
        result.notes
    assert run_dirs(ep.devices.get_device("loopback", toml)) == []
    end = time.monotonic() + 60  # the orphaned harness's supervisor saw its host gone and killed it
    while subprocess.run(["pgrep", "-f", str(stale_run)], capture_output=True).returncode == 0:
        assert time.monotonic() < end, "the killed runner's harness is still running"
        time.sleep(0.1)
