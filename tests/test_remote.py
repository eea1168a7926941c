"""The runner on the built-in `local` device: the same flow as over SSH (run dir, upload, lock, sha256,
supervised harness, clean-up), in subprocesses on this machine."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import edgeprune as ep
from edgeprune.devices import local_device
from edgeprune.remote import BenchResult, BenchSettings, harness_for
from helpers import DEVICE_PY, QUICK_BENCH



@pytest.fixture
def local(tmp_path):
    return local_device(workdir=str(tmp_path / "work"), lock_wait_s=0.5)


def run_dirs(device) -> list[Path]:
    return sorted(Path(device.workdir).glob("run-*"))


def test_a_pte_is_measured_on_the_local_device(bench_artifacts, local):
    result = ep.bench(bench_artifacts.pte, local, settings=QUICK_BENCH)
    assert result.runtime == "executorch" and result.device == "local"
    assert result.n >= 10 and len(result.samples) == result.n
    assert result.min <= result.p50 <= result.p90 <= result.p99 <= result.max
    assert result.ci95_p50[0] <= result.p50 <= result.ci95_p50[1]
    assert result.state_before["hostname"] == result.state_after["hostname"] == socket.gethostname()
    assert result.state_before["time"] < result.state_after["time"]
    assert {"connect_s", "upload_s", "verify_s", "run_s", "cleanup_s", "total_s"} <= set(result.overhead_s)


def test_an_artifact_exported_for_another_target_is_labelled_a_proxy(bench_artifacts, local):
    result = ep.bench(bench_artifacts.pte, local, settings=QUICK_BENCH)
    assert result.artifact_target == "raspberry-pi-5" and result.device_target == "x86-64-host"
    assert result.proxy and any("not raspberry-pi-5's latency" in n for n in result.notes)


def test_a_microcontroller_tflite_runs_in_tflite_micro(bench_artifacts, local):
    assert harness_for(bench_artifacts.mcu) == "tflm"
    assert ep.bench(bench_artifacts.mcu, local, settings=QUICK_BENCH).runtime == "tflm"


def test_the_harness_is_chosen_from_the_artifact_type(bench_artifacts, tmp_path):
    assert harness_for(bench_artifacts.pte) == "executorch"
    assert harness_for(bench_artifacts.onnx) == "onnx"
    assert harness_for(bench_artifacts.tflite) == "litert"
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(ep.ArtifactError, match=r"model.bin: no harness for '.bin'"):
        harness_for(tmp_path / "model.bin")


def test_the_run_dir_and_lock_are_gone_after_a_run(bench_artifacts, local):
    ep.bench(bench_artifacts.onnx, local, settings=QUICK_BENCH)
    assert run_dirs(local) == [] and not (Path(local.workdir) / "lock").exists()


def test_a_harness_failure_names_the_device_and_still_cleans_up(bench_artifacts, local):
    with pytest.raises(ep.DeviceError, match=r"device 'local': the executorch harness failed \(exit 2\)"):
        ep.bench(bench_artifacts.onnx, local, settings=QUICK_BENCH, runtime="executorch")
    assert run_dirs(local) == [] and not (Path(local.workdir) / "lock").exists()


def test_an_artifact_changed_after_export_is_refused_before_anything_runs(bench_artifacts, local, tmp_path):
    for src in (bench_artifacts.onnx, bench_artifacts.onnx.with_name(bench_artifacts.onnx.name + ".manifest.json")):
        shutil.copy(src, tmp_path / src.name)
    copy = tmp_path / bench_artifacts.onnx.name
    copy.write_bytes(copy.read_bytes() + b"\0")
    with pytest.raises(ep.ArtifactError, match="changed after export"):
        ep.bench(copy, local, settings=QUICK_BENCH)
    assert not Path(local.workdir).exists()


def test_a_busy_device_is_waited_for_then_reported_with_its_holder(bench_artifacts, local):
    Path(local.workdir).mkdir(parents=True)
    subprocess.run([sys.executable, str(DEVICE_PY), "lock", f"{local.workdir}/lock", "--owner", "someone-else",
                    "--lease-s", "300"], check=True, capture_output=True)
    with pytest.raises(ep.DeviceBusyError, match="held by someone-else"):
        ep.bench(bench_artifacts.onnx, local, settings=QUICK_BENCH)
    assert json.loads((Path(local.workdir) / "lock" / "lease.json").read_text())["owner"] == "someone-else"
    assert run_dirs(local) == []


def test_a_benchmark_past_the_command_timeout_is_killed_and_reported(bench_artifacts, local):
    # the limit of every step: generous, so that on a loaded machine only the endless benchmark reaches it
    slow = dataclasses.replace(local, command_timeout_s=10)
    with pytest.raises(ep.RemoteTimeoutError, match=r"past its 10 s timeout .* killed on the device") as info:
        ep.bench(bench_artifacts.onnx, slow, settings=BenchSettings(min_runs=10**9, min_seconds=600))
    pid = int(re.search(r"\(pid (\d+)\)", str(info.value)).group(1))
    cmdline = Path(f"/proc/{pid}/cmdline")
    assert not cmdline.exists() or b"bench_" not in cmdline.read_bytes()
    assert run_dirs(local) == []


def test_a_missing_device_python_is_named(bench_artifacts, local):
    broken = dataclasses.replace(local, python="/nonexistent/python3")
    with pytest.raises(ep.DeviceError, match=r"cannot run python '/nonexistent/python3'"):
        ep.bench(bench_artifacts.onnx, broken, settings=QUICK_BENCH)


def test_a_result_survives_a_json_round_trip(bench_artifacts, local):
    result = ep.bench(bench_artifacts.onnx, local, settings=QUICK_BENCH)
    data = json.loads(result.to_json())
    assert {"p50", "p90", "p99", "cv", "mean", "std", "min", "max", "ci95_p50", "samples", "valid"} <= set(data)
    assert BenchResult.from_dict(data) == result


def test_settings_reach_the_harness(bench_artifacts, local):
    result = ep.bench(bench_artifacts.onnx, local, settings=dataclasses.replace(QUICK_BENCH, threads=1, cores=(0,), min_runs=33))
    assert result.n >= 33 and result.threads == 1 and result.cores == (0,)



def test_the_noise_limits_in_the_settings_judge_the_run(bench_artifacts, local):
    strict = ep.bench(bench_artifacts.onnx, local, settings=dataclasses.replace(QUICK_BENCH, max_cv=1e-9))
    assert any(f.startswith("noisy: CV") and f.endswith("> 0.0 %") for f in strict.flags) and not strict.valid
    lenient = ep.bench(bench_artifacts.onnx, local, settings=dataclasses.replace(QUICK_BENCH, max_cv=1e6, max_busy=1e6))
    assert not [f for f in lenient.flags if f.startswith(("noisy", "busy"))]


@pytest.mark.parametrize("limit", [float("nan"), -0.1, 0, "5%", True])
def test_noise_limits_must_be_positive_fractions(limit):
    with pytest.raises(ep.SettingsError, match="max_cv"):
        BenchSettings(max_cv=limit)

def test_check_reports_the_runtimes_present_on_the_local_device(local):
    found = ep.check(local)
    assert found.reachable and found.error is None and found.workdir_writable
    assert found.runtimes["onnxruntime"]["version"] and found.runtimes["executorch"]["version"]
    assert found.state.get("hostname")


def test_bench_many_gives_each_device_its_own_threads_unless_the_settings_set_them(bench_artifacts, tmp_path):
    one = local_device(name="one-thread", workdir=str(tmp_path / "a"), threads=1)
    two = local_device(name="two-threads", workdir=str(tmp_path / "b"), threads=2)
    jobs = [(one, bench_artifacts.onnx), (two, bench_artifacts.onnx)]
    results = ep.bench_many(jobs, settings=QUICK_BENCH)
    assert [r.threads for r in results] == [1, 2]
    forced = ep.bench_many(jobs, settings=dataclasses.replace(QUICK_BENCH, threads=2))
    assert [r.threads for r in forced] == [2, 2]


def test_bench_many_returns_a_missing_artifact_as_an_artifact_error(tmp_path, local):
    missing = tmp_path / "nowhere.onnx"
    [result] = ep.bench_many([(local, missing)], settings=QUICK_BENCH)
    assert isinstance(result, ep.ArtifactError) and "unexpected" not in str(result)
