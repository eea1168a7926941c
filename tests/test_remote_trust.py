"""The device's work dir is trusted only when the benchmarking user alone can write it, only the bytes whose
sha256 was checked run, and a run deletes nothing it did not create (issue 11 item 1). Against the real
loopback sshd, with a second local account (`other_user`) as the other user of a shared board."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

import edgeprune as ep
from edgeprune.devices import get_device, local_device
from edgeprune.remote.trust import program, remove_argv
from edgeprune.remote.upload import HASHER
from helpers import DEVICE_PY, QUICK_BENCH
from remote_helpers import device_python

from sshd_server import SSHServer, SSHServerUnavailable



def loopback(server, tmp_path: Path, **settings) -> ep.Device:
    settings.setdefault("workdir", str(tmp_path / "device-work"))  # workdir=None: the device's default
    return get_device("loopback", server.write_devices_toml(tmp_path / "devices.toml", **settings))


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() if p.is_file() else b"" for p in sorted(path.rglob("*"))}


def device_python_for_others(folder: Path) -> str:
    """A python3 the second user can run, with this environment's numpy and runtimes: the venv's own
    interpreter may live where only we can reach it (e.g. under /root)."""
    ours = f"{sys.version_info[0]}.{sys.version_info[1]}"
    system = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")
    found = subprocess.run([system, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                           capture_output=True, text=True).stdout.strip() if system else None
    if found != ours:
        message = f"the second user needs a system python{ours} (found {found or 'none'}) to run our packages"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI=true but {message}")
        pytest.skip(message)
    wrapper = folder / "device-python"
    wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={sysconfig.get_paths()['purelib']} exec {system} \"$@\"\n")
    wrapper.chmod(0o755)
    return str(wrapper)


@pytest.fixture(scope="module")
def sshd_two_users(other_user):
    """An sshd that `other_user` can log into too: its root must be traversable by that user."""
    shadow = subprocess.run(["getent", "shadow", other_user.name], capture_output=True, text=True).stdout
    if shadow.split(":")[1:2] and shadow.split(":")[1].startswith("!"):
        # sshd without PAM refuses any login, keys included, to an account whose password is locked ("!");
        # "*" is no password at all, and still no way to log in with one
        subprocess.run(["usermod", "-p", "*", other_user.name], check=True)
    root = Path(tempfile.mkdtemp(prefix="edgeprune-sshd-"))
    root.chmod(0o711)
    try:
        server = SSHServer.start(root / "sshd")
    except (SSHServerUnavailable, OSError) as exc:
        shutil.rmtree(root, ignore_errors=True)
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI=true but the loopback sshd is unavailable: {exc}")
        pytest.skip(f"loopback sshd unavailable: {exc}")
    (root / "sshd").chmod(0o711)
    server.authorize(other_user.name, other_user.uid, other_user.gid)
    server.python = device_python_for_others(root)
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------------------- the work dir's checks

def test_a_workdir_owned_by_another_user_is_refused_before_anything_runs(sshd, bench_artifacts, tmp_path,
                                                                          other_user):
    work = tmp_path / "shared-work"  # the other user made it first, as anyone can under /tmp
    work.mkdir(mode=0o700)
    (work / "their-notes.txt").write_text("theirs")
    (work / "run-theirs").mkdir()
    for path in (work, work / "their-notes.txt", work / "run-theirs"):
        os.chown(path, other_user.uid, other_user.gid)
    before = tree(work)
    device = loopback(sshd, tmp_path, workdir=str(work))
    with pytest.raises(ep.WorkdirError, match=rf"work dir {work} is owned by uid {other_user.uid} "
                                              rf"\({other_user.name}\), not by you.*devices\.loopback\.workdir"):
        ep.bench(bench_artifacts.onnx, device, settings=QUICK_BENCH)
    assert tree(work) == before  # nothing uploaded, nothing deleted


@pytest.mark.parametrize("mode", [0o775, 0o757])
def test_a_workdir_writable_by_group_or_others_is_refused_with_the_fix(sshd, bench_artifacts, tmp_path, mode):
    work = tmp_path / "open-work"
    work.mkdir()
    work.chmod(mode)
    device = loopback(sshd, tmp_path, workdir=str(work))
    with pytest.raises(ep.WorkdirError, match=rf"work dir {work} is writable by group/others \(mode 0{mode:o}\).*"
                                              rf"`chmod 700 {work}`"):
        ep.bench(bench_artifacts.onnx, device, settings=QUICK_BENCH)
    assert list(work.iterdir()) == []


def test_a_workdir_under_a_directory_others_can_write_is_refused(sshd, bench_artifacts, tmp_path):
    above = tmp_path / "open"
    above.mkdir()
    above.chmod(0o777)  # no sticky bit: anyone could rename our work dir away and put theirs in its place
    device = loopback(sshd, tmp_path, workdir=str(above / "work"))
    with pytest.raises(ep.WorkdirError, match=rf"{above} \(above the work dir\) is writable by group/others"):
        ep.bench(bench_artifacts.onnx, device, settings=QUICK_BENCH)
    assert list(above.iterdir()) == []


def test_a_workdir_reached_through_another_users_symlink_is_refused(other_user, sshd, bench_artifacts, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o700)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # sticky, like /tmp: passes as an ancestor, but anyone may put a link in it
    (shared / "x").symlink_to(mine)
    os.lchown(shared / "x", other_user.uid, other_user.gid)  # the other user's link (pytest's tmp is 0700 to them)
    device = loopback(sshd, tmp_path, workdir=str(shared / "x" / "edgeprune"))
    with pytest.raises(ep.WorkdirError, match=rf"{shared / 'x'} \(on the way to the work dir\) is a symlink owned by "
                                              rf"uid {other_user.uid} \({other_user.name}\)"):
        ep.bench(bench_artifacts.onnx, device, settings=QUICK_BENCH)
    assert list(mine.iterdir()) == []  # nothing made or run behind the link


def test_a_workdir_reached_through_ones_own_symlink_runs_from_the_resolved_path(sshd, bench_artifacts, tmp_path):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    device = loopback(sshd, tmp_path, workdir=str(tmp_path / "link" / "edgeprune"))
    ep.bench(bench_artifacts.onnx, device, settings=QUICK_BENCH)
    assert (real / "edgeprune").is_dir() and list((real / "edgeprune").glob("run-*")) == []


@pytest.mark.parametrize("which", ["workdir", "lock"])
def test_a_symlinked_workdir_or_lock_is_refused(sshd, bench_artifacts, tmp_path, which):
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    (target / "keep.txt").write_text("keep")
    work = tmp_path / "work"
    if which == "workdir":
        work.symlink_to(target)
    else:
        work.mkdir(mode=0o700)
        (work / "lock").symlink_to(target)
    device = loopback(sshd, tmp_path, workdir=str(work))
    with pytest.raises(ep.WorkdirError, match=rf"{'work' if which == 'workdir' else 'lock'} dir \S+ is a symlink"):
        ep.bench(bench_artifacts.onnx, device, settings=QUICK_BENCH)
    assert tree(target) == {"keep.txt": b"keep"}
    assert list(tmp_path.glob("**/run-*")) == []


# ------------------------------------------------------------------------------ what runs is what was checked

# Every file a run of an ONNX artifact uploads, by its name in the run dir ("artifact": the model file).
UPLOADED = ("bootstrap.py", "device.py", "device_state.py", "supervisor.py", "harness.py", "interleave.py", "deploy_check.py",
            "bench_onnx.py",
            "artifact")
CODE = [name for name in UPLOADED if name.endswith(".py")]


def the_run_dir(device: ep.Device) -> Path:
    (run,) = Path(device.workdir).glob("run-*")
    return run


def test_the_sha256_tests_cover_every_uploaded_file(sshd, bench_artifacts, tmp_path):
    device = loopback(sshd, tmp_path)
    arrived: list[str] = []

    def look(stage, info):  # everything is uploaded, nothing checked or run yet
        if stage == "verify":
            arrived.extend(p.name for p in the_run_dir(device).iterdir())

    ep.bench(bench_artifacts.onnx, device, settings=QUICK_BENCH, progress=look)
    assert sorted(arrived) == sorted(bench_artifacts.onnx.name if n == "artifact" else n for n in UPLOADED)


@pytest.mark.parametrize("changed", UPLOADED)
def test_a_file_changed_on_the_device_before_its_sha256_check_is_refused_naming_it(sshd, bench_artifacts, tmp_path,
                                                                                   changed):
    device = loopback(sshd, tmp_path)
    name = bench_artifacts.onnx.name if changed == "artifact" else changed
    marker = tmp_path / "the-changed-code-ran"

    def tamper(stage, info):  # on the device, between the upload and the sha256 check
        if stage == "verify":
            path = the_run_dir(device) / name
            if changed == "artifact":  # one weight byte: still a model the harness would measure
                data = bytearray(path.read_bytes())
                data[len(data) // 2] ^= 0xFF
                path.write_bytes(bytes(data))
            else:
                path.write_text(f"open({str(marker)!r}, 'w').write('ran')\n")

    with pytest.raises(ep.ArtifactError, match=rf"device 'loopback': {re.escape(name)} arrived corrupted: sha256 on "
                                               rf"the device [0-9a-f]{{16}}… != local [0-9a-f]{{16}}…; nothing was run"):
        ep.bench(bench_artifacts.onnx, device, settings=QUICK_BENCH, progress=tamper)
    assert not marker.exists()
    assert list(Path(device.workdir).glob("run-*")) == [] and not (Path(device.workdir) / "lock").exists()


@pytest.mark.parametrize("swapped", CODE)
def test_a_file_replaced_after_its_sha256_check_does_not_run(sshd, bench_artifacts, tmp_path, swapped):
    device = loopback(sshd, tmp_path)
    marker = tmp_path / "the-replaced-code-ran"
    evil = f"open({str(marker)!r}, 'w').write('ran')\n"

    def swap(stage, info):  # after the sha256 check, before device.py or the harness runs
        if stage == "lock":
            (run,) = Path(device.workdir).glob("run-*")
            (run / swapped).write_text(evil)

    with pytest.raises(ep.WorkdirError, match=rf"{swapped} in \S+ changed after its sha256 check.*refused to run it"):
        ep.bench(bench_artifacts.onnx, device, settings=QUICK_BENCH, progress=swap)
    assert not marker.exists()
    assert list(Path(device.workdir).glob("run-*")) == []
    assert ep.bench(bench_artifacts.onnx, device, settings=QUICK_BENCH).n >= 10  # the next run is clean


# --------------------------------------------------------------------------- nothing deleted it did not make

def test_a_forged_lease_cannot_make_a_run_delete_another_directory(sshd, bench_artifacts, tmp_path):
    victim = tmp_path / "run-victim"  # named like a run dir, outside the work dir
    victim.mkdir()
    (victim / "data.bin").write_bytes(b"precious")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "data.bin").write_bytes(b"precious too")
    work = tmp_path / "work"
    work.mkdir(mode=0o700)
    (work / "run-forger").symlink_to(elsewhere)  # run-<owner> itself a link out of the work dir
    (work / "lock").mkdir(mode=0o700)
    (work / "lock" / "lease.json").write_text(json.dumps(
        {"owner": "forger", "host": "nowhere", "pid": 1, "rundir": str(victim), "since": 0, "expires": 0}))
    device = loopback(sshd, tmp_path, workdir=str(work))
    result = ep.bench(bench_artifacts.onnx, device, settings=QUICK_BENCH)
    assert (victim / "data.bin").read_bytes() == b"precious"
    assert (elsewhere / "data.bin").read_bytes() == b"precious too" and (work / "run-forger").is_symlink()
    notes = " ".join(result.notes)
    assert "reclaimed a stale benchmark lock: forger" in notes
    assert f"not removed: '{victim}'" in notes and f"not removed: {work / 'run-forger'} (a symlink)" in notes


# ---------------------------------------------------------------------------------------- per-user defaults

def test_the_default_workdir_is_private_in_the_login_users_home(sshd_two_users, bench_artifacts, tmp_path,
                                                                 other_user):
    cache = other_user.home / ".cache"
    shutil.rmtree(cache / "edgeprune", ignore_errors=True)
    device = loopback(sshd_two_users, tmp_path, user=other_user.name, workdir=None, python=sshd_two_users.python)
    assert device.workdir == "~/.cache/edgeprune"
    try:
        result = ep.bench(bench_artifacts.onnx, device, settings=QUICK_BENCH)  # measured as the second user
        work = (cache / "edgeprune").lstat()
        assert result.n >= 10
        assert stat.S_ISDIR(work.st_mode) and work.st_uid == other_user.uid and stat.S_IMODE(work.st_mode) == 0o700
        assert [p.name for p in (cache / "edgeprune").iterdir()] in ([], ["lock.guard"])
    finally:
        shutil.rmtree(cache / "edgeprune", ignore_errors=True)


def test_the_local_devices_default_workdir_is_private_in_the_users_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    device = local_device()
    assert device.workdir == str(tmp_path / "cache" / "edgeprune-local")
    assert ep.check(device).error is None
    work = Path(device.workdir).lstat()
    assert stat.S_IMODE(work.st_mode) == 0o700 and work.st_uid == os.geteuid()


# ------------------------------------------------------------------------------------------- stale locks

KILLED_RUN = textwrap.dedent("""
    import os, signal, sys
    import edgeprune as ep
    from edgeprune.devices import local_device

    def die(stage, info):  # killed while measuring, holding the lock: no clean-up runs
        if stage == "measure":
            os.kill(os.getpid(), signal.SIGKILL)

    ep.bench(sys.argv[1], local_device(workdir=sys.argv[2]), progress=die,
             settings=ep.BenchSettings(min_runs=10**9, min_seconds=600))
""")


def test_a_killed_runs_lock_is_reclaimed_at_once_not_after_its_lease(bench_artifacts, tmp_path):
    work = tmp_path / "work"
    killed = subprocess.run([sys.executable, "-c", KILLED_RUN, str(bench_artifacts.onnx), str(work)],
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    lease = json.loads((work / "lock" / "lease.json").read_text())
    assert lease["expires"] - lease["since"] >= 1800  # the default lease: half an hour of waiting, before
    device = local_device(workdir=str(work), lock_wait_s=2.0)
    result = ep.bench(bench_artifacts.onnx, device, settings=QUICK_BENCH)
    assert any("has exited" in n and lease["owner"] in n for n in result.notes), result.notes
    assert list(work.glob("run-*")) == [] and not (work / "lock").exists()


def test_a_second_run_waits_the_whole_lock_wait_for_a_live_holder(bench_artifacts, tmp_path):
    work = tmp_path / "work"
    work.mkdir(mode=0o700)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    asked: dict = {}

    def progress(stage, info):
        if stage == "lock":
            asked.update(info, at=time.monotonic())

    try:
        subprocess.run([sys.executable, str(DEVICE_PY), "lock", str(work / "lock"), "--owner", "alive",
                        "--lease-s", "300", "--holder-pid", str(holder.pid)], check=True, capture_output=True)
        with pytest.raises(ep.DeviceBusyError, match=r"waited 3 s"):
            ep.bench(bench_artifacts.onnx, local_device(workdir=str(work), lock_wait_s=3.0), settings=QUICK_BENCH,
                     progress=progress)
        waited = time.monotonic() - asked["at"]
    finally:
        holder.kill()
        holder.wait()
    assert asked["wait_s"] == 3.0 and waited >= 3.0  # the whole lock_wait_s, not lock_wait_s - 5 s


def test_a_live_holders_lock_is_still_waited_for(bench_artifacts, tmp_path):
    work = tmp_path / "work"
    work.mkdir(mode=0o700)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        subprocess.run([sys.executable, str(DEVICE_PY), "lock", str(work / "lock"), "--owner", "alive",
                        "--lease-s", "300", "--holder-pid", str(holder.pid)], check=True, capture_output=True)
        with pytest.raises(ep.DeviceBusyError, match=rf"held by alive \(pid {holder.pid} "):
            ep.bench(bench_artifacts.onnx, local_device(workdir=str(work), lock_wait_s=0.5), settings=QUICK_BENCH)
    finally:
        holder.kill()
        holder.wait()


# --------------------------------------------------------------- the work dir check and the sha256 check, step by step

def whole(message: str) -> str:
    return "^" + re.escape(message) + "$"


def python_that_at(tmp_path: Path, step: str, then: str) -> str:
    """A device python that does `then` in place of `step` ("prepare": the work dir check, "sha256": the sha256
    check of the upload) and runs everything else as the real python does."""
    when = "args[2:3] == ['prepare']" if step == "prepare" else f"args[1:2] == [{HASHER!r}]"
    return str(device_python(tmp_path, f"python-{step}", f"if {when}:\n" + textwrap.indent(then, "    ")))


@pytest.mark.parametrize("step, named", [("prepare", "mkdir"), ("sha256", "the sha256 check")])
def test_a_device_check_whose_step_hangs_names_that_step_in_its_timeout(tmp_path, step, named):
    python = python_that_at(tmp_path, step, "time.sleep(60)")
    found = ep.check(local_device(workdir=str(tmp_path / "work"), python=python, command_timeout_s=1))
    assert re.fullmatch(rf"device 'local': {named} ran past its 1 s timeout; killed \(pid \d+\)", found.error), \
        found.error


def test_a_device_python_gone_by_the_sha256_check_is_named_with_the_fix(tmp_path):
    python = python_that_at(tmp_path, "sha256", "sys.stderr.write('sh: 1: python3: not found\\n')\nos._exit(127)")
    found = ep.check(local_device(workdir=str(tmp_path / "work"), python=python))
    assert found.error == (f"device 'local': cannot run python '{python}' there (sh: 1: python3: not found); "
                           "set `python` in devices.toml")


def test_a_sha256_check_that_prints_no_json_is_reported_with_the_end_of_its_output(tmp_path):
    python = python_that_at(tmp_path, "sha256", "print('Welcome to pi5-lab')\nprint('.' * 300)\nsys.exit(0)")
    found = ep.check(local_device(workdir=str(tmp_path / "work"), python=python))
    # the last 200 characters of stdout, and the stderr's last line
    assert found.error == ("device 'local': the sha256 check printed no result JSON (stdout ends '" + "." * 199
                           + "\\n'; stderr: no error output)")


def test_a_work_dir_check_that_prints_json_but_no_object_is_refused(tmp_path):
    python = python_that_at(tmp_path, "prepare", "print('[1, 2]')\nsys.exit(0)")
    found = ep.check(local_device(workdir=str(tmp_path / "work"), python=python))
    assert found.error == "device 'local': the work dir check printed list, not a JSON object"


def test_a_file_gone_before_its_sha256_check_is_an_error_with_the_devices_reason(bench_artifacts, tmp_path):
    device = local_device(workdir=str(tmp_path / "work"))
    gone: list[Path] = []

    def remove(stage, info):  # on the device, between the upload and the sha256 check
        if stage == "verify":
            gone.append(the_run_dir(device) / bench_artifacts.onnx.name)
            gone[0].unlink()

    with pytest.raises(ep.DeviceError) as raised:
        ep.bench(bench_artifacts.onnx, device, settings=QUICK_BENCH, progress=remove)
    assert str(raised.value) == (f"device 'local': cannot checksum the upload: FileNotFoundError: [Errno 2] No such "
                                 f"file or directory: '{gone[0]}'")


def test_an_artifact_changed_here_after_it_was_hashed_is_refused_not_measured(bench_artifacts, tmp_path):
    artifact = tmp_path / "model.onnx"
    shutil.copy(bench_artifacts.onnx, artifact)
    changed = bytearray(artifact.read_bytes())
    changed[len(changed) // 2] ^= 0xFF
    hashed, uploaded = hashlib.sha256(artifact.read_bytes()).hexdigest(), hashlib.sha256(changed).hexdigest()
    stages: list[str] = []

    def change(stage, info):  # the run hashed the artifact when it started; it is uploaded now
        stages.append(stage)
        if stage == "upload" and info["file"] == artifact.name:
            artifact.write_bytes(bytes(changed))

    with pytest.raises(ep.ArtifactError, match=whole(
            f"device 'local': model.onnx arrived corrupted: sha256 on the device {uploaded[:16]}… != local "
            f"{hashed[:16]}…; nothing was run")):
        ep.bench(artifact, local_device(workdir=str(tmp_path / "work")), settings=QUICK_BENCH, progress=change)
    assert "measure" not in stages


def test_each_uploaded_file_is_reported_with_its_size_and_progress_before_the_sha256_check(bench_artifacts, tmp_path):
    events: list = []
    ep.bench(bench_artifacts.onnx, local_device(workdir=str(tmp_path / "work")), settings=QUICK_BENCH,
             progress=lambda stage, info: events.append((stage, dict(info))))
    stages = [stage for stage, _ in events]
    uploads = events[stages.index("upload"):stages.index("verify")]
    assert [stage for stage, _ in uploads] == ["upload", "upload-progress"] * len(UPLOADED)
    files = [info for _, info in uploads[::2]]
    assert sorted(f["file"] for f in files) == sorted(bench_artifacts.onnx.name if n == "artifact" else n
                                                     for n in UPLOADED)
    assert {"file": bench_artifacts.onnx.name, "bytes": bench_artifacts.onnx.stat().st_size} in files
    assert [info for _, info in uploads[1::2]] == [{"done": f["bytes"], "total": f["bytes"]} for f in files]
    assert events[stages.index("verify")] == ("verify", {})


def test_a_runs_overhead_is_reported_stage_by_stage(bench_artifacts, tmp_path):
    # the stages bench/runner_overhead.py reads, and the totals
    result = ep.bench(bench_artifacts.onnx, local_device(workdir=str(tmp_path / "work")), settings=QUICK_BENCH)
    assert set(result.overhead_s) == {"connect_s", "setup_s", "upload_s", "verify_s", "lock_s", "run_s", "cleanup_s",
                                      "total_s", "outside_window_s"}


@pytest.mark.parametrize("stage, step", [("upload", "upload"), ("verify", "sha256")])
def test_a_deadline_passed_before_the_upload_or_the_sha256_check_names_that_step(bench_artifacts, tmp_path, stage,
                                                                                  step):
    device = local_device(workdir=str(tmp_path / "work"), deadline_s=3.0)
    seen: dict = {}

    def late(now, info):
        if now == "connect":  # the deadline started just before this report
            seen["connect"] = time.monotonic()
        elif now == stage and "slept" not in seen:
            seen["slept"] = True
            time.sleep(max(0.0, seen["connect"] + device.deadline_s + 0.05 - time.monotonic()))

    with pytest.raises(ep.RemoteTimeoutError, match=whole(
            f"device 'local': the overall deadline of 3 s (deadline_s) passed before {step}")):
        ep.bench(bench_artifacts.onnx, device, settings=QUICK_BENCH, progress=late)


@pytest.mark.parametrize("rundir, workdir, name", [("/w/run-a1", "/w", "run-a1"), ("/w/run-a1/", "/w", "run-a1"),
                                                   ("/w/check-X//", "/w", "check-X")])
def test_a_run_dir_is_removed_by_its_name_in_its_work_dir_whatever_its_trailing_slashes(rundir, workdir, name):
    device = local_device(workdir="/w")
    assert remove_argv(device, rundir) == [device.python, "-c", program("workdir.py"), "remove", workdir, name]
