"""The runner over SSH, against a real OpenSSH server on 127.0.0.1 (tests/sshd_server.py): host keys,
the full bench path per artifact type, and the faults a lab network produces. No SSH is mocked."""

from __future__ import annotations

import dataclasses
import json
import re
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import edgeprune as ep
from edgeprune import remote
from edgeprune.remote import BenchSettings
from helpers import QUICK_BENCH, bench_flags, run_cli
from remote_helpers import loopback, nothing_ran

from sshd_server import SSHServer


def harness_alive(pid: int) -> bool:
    try:  # by command line, not just the pid, which the system may already have reused
        return b"bench_" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


@pytest.mark.parametrize("kind, runtime", [("pte", "executorch"), ("tflite", "litert"), ("onnx", "onnxruntime")])
def test_an_artifact_is_measured_over_ssh(sshd, bench_artifacts, tmp_path, kind, runtime):
    device = loopback(sshd, tmp_path)
    result = ep.bench(getattr(bench_artifacts, kind), device, settings=QUICK_BENCH)
    assert result.device == "loopback" and result.runtime == runtime
    assert result.n >= 10 and 0 < result.p50 <= result.p99
    assert result.state_before.get("hostname") == socket.gethostname()
    assert list(Path(device.workdir).glob("run-*")) == [] and not (Path(device.workdir) / "lock").exists()


def test_an_unknown_host_key_is_refused_before_anything_runs(sshd, bench_artifacts, tmp_path):
    device = loopback(sshd, tmp_path, known_hosts=str(tmp_path / "empty_known_hosts"))
    with pytest.raises(ep.HostKeyError, match=r"is not in .*empty_known_hosts; refused before anything ran.*"
                                               r"--trust-new-host-key"):
        ep.bench(bench_artifacts.onnx, device, settings=QUICK_BENCH)
    assert nothing_ran(device)


def test_a_changed_host_key_is_refused_even_when_trusting_new_keys(sshd, bench_artifacts, tmp_path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    kind, blob = (tmp_path / "other.pub").read_text().split()[:2]
    known = sshd.write_known_hosts(tmp_path / "known_hosts", f"[127.0.0.1]:{sshd.port} {kind} {blob}\n")
    device = loopback(sshd, tmp_path, known_hosts=str(known))
    for trust in (False, True):
        with pytest.raises(ep.HostKeyError, match="host key CHANGED .* man-in-the-middle"):
            ep.bench(bench_artifacts.onnx, device, settings=QUICK_BENCH, trust_new_host_key=trust)
    assert nothing_ran(device)
    assert known.read_text().split()[2] == blob  # the pinned key is left as it was


def test_trust_new_host_key_records_the_key_for_later_runs(sshd, tmp_path):
    known = tmp_path / "known_hosts"
    device = loopback(sshd, tmp_path, known_hosts=str(known))
    assert ep.check(device, trust_new_host_key=True).reachable
    assert known.read_text().split()[1:3] == sshd.public_host_key_line().split()[1:3]
    assert ep.check(device).error is None  # pinned now: no opt-in needed


def test_a_wrong_key_for_the_user_is_an_authentication_error(sshd, tmp_path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "stranger")], check=True)
    device = loopback(sshd, tmp_path, identity_file=str(tmp_path / "stranger"))
    found = ep.check(device)
    assert not found.reachable and "authentication failed" in found.error


def test_a_silent_server_hits_the_connect_timeout(tmp_path, sshd):
    with socket.socket() as silent:  # accepts TCP, never says a word: a hung device
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        device = loopback(sshd, tmp_path, port=silent.getsockname()[1], connect_timeout_s=1.0)
        t0 = time.monotonic()
        with pytest.raises(ep.RemoteTimeoutError, match=r"no SSH connection .* within 1 s"):
            remote.open_session(device)
        assert time.monotonic() - t0 < 10  # well under paramiko's own 15 s banner timeout


def test_large_output_is_read_while_waiting_and_does_not_hang(sshd, tmp_path):
    session = remote.open_session(loopback(sshd, tmp_path))
    try:
        done = session.run(["python3", "-c", "import sys; sys.stdout.write('x' * 6_000_000); "
                                             "sys.stderr.write('y' * 3_000_000)"], timeout=60)
    finally:
        session.close()
    # all of it was read (a bounded tail kept, the rest counted: tests/test_remote_faults.py)
    assert done.rc == 0 and len(done.stdout) + done.stdout_dropped == 6_000_000
    assert len(done.stderr) + done.stderr_dropped == 3_000_000


def test_output_that_arrives_after_the_exit_status_is_not_lost(sshd, tmp_path):
    session = remote.open_session(loopback(sshd, tmp_path))
    try:
        late = session.run(["sh", "-c", "(sleep 0.3; echo tail) & echo head"], timeout=30)
        rounds = [session.run(["python3", "-c", "print('x' * 200_000); print('END')"], timeout=30) for _ in range(10)]
    finally:
        session.close()
    assert late.stdout == "head\ntail\n"
    assert all(r.stdout.endswith("END\n") and len(r.stdout) == 200_005 for r in rounds)


def test_a_work_dir_with_spaces_quotes_and_dollars_works(sshd, bench_artifacts, tmp_path):
    device = loopback(sshd, tmp_path, workdir=str(tmp_path / "it's a $HOME `dir`"))
    assert ep.bench(bench_artifacts.onnx, device, settings=QUICK_BENCH).n >= 10
    assert list(Path(device.workdir).glob("run-*")) == []


def test_unusual_known_hosts_lines_do_not_hide_the_pinned_key(sshd, tmp_path):
    known = tmp_path / "known_hosts"
    known.write_text("@cert-authority *.lab ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJunk\n"
                     "broken-line-without-a-key\n" + sshd.public_host_key_line())
    assert ep.check(loopback(sshd, tmp_path, known_hosts=str(known))).error is None


def test_a_recorded_key_is_not_glued_to_a_last_line_without_newline(sshd, tmp_path):
    known = tmp_path / "known_hosts"
    known.write_text("other.example ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOtherHostKeyOtherHostKeyOtherHostKeyAAAA")
    device = loopback(sshd, tmp_path, known_hosts=str(known))
    assert ep.check(device, trust_new_host_key=True).error is None
    lines = known.read_text().splitlines()
    assert len(lines) == 2 and lines[0].startswith("other.example ") and lines[1].startswith(f"[127.0.0.1]:{sshd.port} ")


def test_remote_arguments_are_quoted(sshd, tmp_path):
    session = remote.open_session(loopback(sshd, tmp_path))
    try:
        tricky = "a b; touch $HOME/pwned-$$ `id` 'quote\" $(echo no)"
        done = session.run(["printf", "%s", tricky], timeout=30)
    finally:
        session.close()
    assert done.stdout == tricky


def test_an_unwritable_work_dir_is_a_clear_error(sshd, bench_artifacts, tmp_path):
    (tmp_path / "a-file").write_text("")
    device = loopback(sshd, tmp_path, workdir=str(tmp_path / "a-file" / "work"))
    with pytest.raises(ep.DeviceError, match=r"remote work dir '.*a-file/work' \(workdir\) is not writable: .*Not a directory"):
        ep.bench(bench_artifacts.onnx, device, settings=QUICK_BENCH)


def test_a_corrupted_upload_is_caught_by_the_sha256_check(sshd, bench_artifacts, tmp_path, monkeypatch):
    device = loopback(sshd, tmp_path)
    bad = tmp_path / "flipped.onnx"
    data = bytearray(bench_artifacts.onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    real_put = remote.ssh.SSHSession.put

    def put(self, local, remote_path, timeout, on_bytes=None):  # the wire flips a bit in the artifact
        return real_put(self, bad if Path(local) == bench_artifacts.onnx else local, remote_path, timeout, on_bytes)

    monkeypatch.setattr(remote.ssh.SSHSession, "put", put)
    with pytest.raises(ep.ArtifactError, match=r"arrived corrupted: sha256 on the device .* != local .*nothing was run"):
        ep.bench(bench_artifacts.onnx, device, settings=QUICK_BENCH)
    assert list(Path(device.workdir).glob("run-*")) == [] and not (Path(device.workdir) / "lock").exists()


def test_a_benchmark_past_its_timeout_is_killed_on_the_device_and_reported(sshd, bench_artifacts, tmp_path):
    # the limit of every step: generous, so that on a loaded machine only the endless benchmark reaches it
    device = loopback(sshd, tmp_path, command_timeout_s=10.0)
    with pytest.raises(ep.RemoteTimeoutError, match=r"past its 10 s timeout .*killed on the device") as info:
        ep.bench(bench_artifacts.onnx, device, settings=BenchSettings(min_runs=10**9, min_seconds=600))
    assert not harness_alive(int(re.search(r"\(pid (\d+)\)", str(info.value)).group(1)))
    assert list(Path(device.workdir).glob("run-*")) == []


def test_sshd_dying_mid_benchmark_records_nothing_and_the_lock_is_reclaimed_later(sshd_private, bench_artifacts, tmp_path):
    # lock_wait_s = 0: the next run takes the lock at its first try, or fails
    device = loopback(sshd_private, tmp_path, lock_wait_s=0)
    killed = threading.Event()

    def progress(stage, info):
        if stage == "measure" and info.get("stage") == "measure" and not killed.is_set():
            killed.set()
            sshd_private.kill_all()

    with pytest.raises(ep.ConnectionLostError, match="connection was lost during the benchmark; no result recorded"):
        ep.bench(bench_artifacts.onnx, device, settings=BenchSettings(min_runs=10**9, min_seconds=600),
                 progress=progress)
    assert killed.is_set() and (Path(device.workdir) / "lock" / "lease.json").exists()
    stale_runs = list(Path(device.workdir).glob("run-*"))
    assert len(stale_runs) == 1

    lease = json.loads((Path(device.workdir) / "lock" / "lease.json").read_text())
    restarted = SSHServer.start(sshd_private.root, port=sshd_private.port)  # same host key: the device rebooted
    try:  # the lock's holder was the dead connection's sshd process: reclaimed at once, not after the lease
        result = ep.bench(bench_artifacts.onnx, device, settings=QUICK_BENCH)
    finally:
        restarted.stop()
    reclaimed = [note for note in result.notes if "reclaimed a stale benchmark lock" in note]
    assert reclaimed and re.search(rf"{lease['owner']} \(its holder, pid {lease['holder_pid']} .*has exited", reclaimed[0])
    assert list(Path(device.workdir).glob("run-*")) == []
    end = time.monotonic() + 60  # the orphaned harness notices its dead pipe and exits
    while subprocess.run(["pgrep", "-f", str(stale_runs[0])], capture_output=True).returncode == 0:
        assert time.monotonic() < end, "the orphaned harness is still running"
        time.sleep(0.1)


def test_two_runs_on_one_device_take_turns(sshd, bench_artifacts, tmp_path):
    device = loopback(sshd, tmp_path)
    both_asking = threading.Barrier(2, timeout=120)  # both runs ask for the lock at once
    held = threading.Event()
    hold_s = 2.0

    def progress(stage, info):
        if stage == "lock":
            both_asking.wait()
        elif stage == "measure" and info.get("stage") == "start" and not held.is_set():
            held.set()  # the run that took the lock keeps it hold_s longer than the other run has been asking
            time.sleep(hold_s)

    with ThreadPoolExecutor(2) as pool:  # two users benchmarking the same board at once
        results = list(pool.map(lambda _: ep.bench(bench_artifacts.onnx, device, settings=QUICK_BENCH, progress=progress),
                                range(2)))
    first, second = sorted(results, key=lambda r: r.state_before["time"])
    assert first.state_after["time"] <= second.state_before["time"]
    # it waited for the first to finish: all of hold_s but the few statements between its ask and its lock step
    assert second.overhead_s["lock_s"] >= hold_s / 2


def test_several_devices_are_measured_at_once(sshd, bench_artifacts, tmp_path):
    device = loopback(sshd, tmp_path)
    local = ep.devices.local_device(workdir=str(tmp_path / "local-work"))
    both_measuring = threading.Barrier(2, timeout=60)  # breaks (and fails the runs) if they ran one by one

    def progress(name, stage, info):
        if stage == "measure" and info.get("stage") == "start":
            both_measuring.wait()

    results = ep.bench_many([(device, bench_artifacts.onnx), (local, bench_artifacts.onnx)], settings=QUICK_BENCH,
                            progress=progress)
    assert [r.device for r in results] == ["loopback", "local"], results


def test_one_failing_device_does_not_stop_the_others(sshd, bench_artifacts, tmp_path):
    device = loopback(sshd, tmp_path)
    broken = dataclasses.replace(device, name="broken", known_hosts=tmp_path / "nothing-pinned")
    results = ep.bench_many([(broken, bench_artifacts.onnx), (device, bench_artifacts.onnx)], settings=QUICK_BENCH)
    assert isinstance(results[0], ep.HostKeyError) and isinstance(results[1], ep.BenchResult)


def test_devices_check_reports_python_runtimes_and_state(sshd, tmp_path):
    found = ep.check(loopback(sshd, tmp_path))
    assert found.reachable and found.error is None and found.workdir_writable
    assert found.runtimes["onnxruntime"]["version"] and found.python
    assert "loadavg" in found.state


# ---- through the CLI

def test_cli_bench_prints_the_statistics_and_writes_json(sshd, bench_artifacts, tmp_path):
    toml = sshd.write_devices_toml(tmp_path / "devices.toml", workdir=str(tmp_path / "work"))
    out = tmp_path / "result.json"
    done = run_cli("bench", "--devices", toml, "--device", "loopback", bench_artifacts.onnx, "--json", out,
                   *bench_flags(QUICK_BENCH))
    assert done.exit_code == 0, done.output
    assert "latency (ms)" in done.output and "loopback" in done.output
    data = json.loads(out.read_text())
    assert {"p50", "p90", "p99", "cv", "ci95_p50", "samples", "state_before", "state_after"} <= set(data)
    assert data["device"] == "loopback" and data["n"] >= 10


def test_cli_bench_does_not_overwrite_a_result(sshd, bench_artifacts, tmp_path):
    toml = sshd.write_devices_toml(tmp_path / "devices.toml", workdir=str(tmp_path / "work"))
    out = tmp_path / "result.json"
    out.write_text("{}")
    done = run_cli("bench", "--devices", toml, "--device", "loopback", bench_artifacts.onnx, "--json", out)
    assert done.exit_code == 2 and "already exists" in done.output and out.read_text() == "{}"


def test_cli_devices_check_exits_nonzero_when_a_device_is_unreachable(sshd, tmp_path):
    toml = sshd.write_devices_toml(tmp_path / "devices.toml", workdir=str(tmp_path / "work"),
                                   known_hosts=tmp_path / "unpinned")
    done = run_cli("devices", "check", "--devices", toml, "loopback")
    assert done.exit_code == 1 and "loopback" in done.output


def test_cli_devices_check_shows_a_reachable_device(sshd, tmp_path):
    toml = sshd.write_devices_toml(tmp_path / "devices.toml", workdir=str(tmp_path / "work"))
    done = run_cli("devices", "check", "--devices", toml, "loopback")
    assert done.exit_code == 0, done.output
    assert "yes" in done.output and "loopback" in done.output


def test_cli_bench_with_a_malformed_inventory_names_the_key(tmp_path, bench_artifacts):
    toml = tmp_path / "devices.toml"
    toml.write_text('[devices.pi]\nhost = "pi"\ntarget = "raspberry-pi-5"\nport = "twenty-two"\n')
    done = run_cli("bench", "--devices", toml, "--device", "pi", bench_artifacts.onnx)
    assert done.exit_code == 2 and "devices.pi.port" in done.output
