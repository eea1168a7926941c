"""The device-side benchmark harnesses (runtimes/bench_*.py, harness.py, device_state.py).

The harnesses run as real subprocesses on the small-CNN artifacts of the `bench_artifacts` fixture, with
small settings, exactly as the remote runner starts them; the runner depends on their command line, exit
codes and JSON. Pure functions (statistics, trtexec report parsing, the ONNX reader, state flags) are tested
in process.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import DATA_DIR, RUNTIMES_DIR

sys.path.insert(0, str(RUNTIMES_DIR))

import bench_onnx  # noqa: E402
import device_state  # noqa: E402
import harness  # noqa: E402

HARNESSES = ("executorch", "litert", "onnx", "tflm")
LIGHT = ("litert", "onnx", "tflm")  # quick to start (no torch import): for behaviour the harnesses share
FAST = ["--min-runs", "20", "--min-seconds", "0.2", "--warmup-runs", "2", "--warmup-seconds", "0.05"]
CONTRACT_KEYS = {
    "schema", "runtime", "runtime_version", "engine", "artifact", "artifact_bytes", "python", "numpy", "unit", "n",
    "warmup_runs", "warmup_s", "measure_s", "p50", "p90", "p99", "mean", "std", "cv", "min", "max", "ci95_p50",
    "samples", "threads", "cores", "settings", "inputs", "load_s", "state_before", "state_after", "flags", "notes",
}
STATE_KEYS = {"time", "hostname", "machine", "kernel", "cpu_count", "governor", "cur_mhz", "max_mhz", "thermal",
              "loadavg", "nvpmodel", "throttled"}
RUNTIME_NAMES = {"executorch": "executorch", "litert": "litert", "onnx": "onnxruntime", "tflm": "tflm"}
# What makes each runtime unimportable (sys.modules[name] = None), to play a device without it.
RUNTIME_MODULES = {"executorch": ["executorch"], "litert": ["ai_edge_litert", "tflite_runtime", "tensorflow"],
                   "onnx": ["onnxruntime"], "tflm": ["tflite_micro"]}


def script(rt: str) -> str:
    return str(RUNTIMES_DIR / f"bench_{rt}.py")


def run_harness(rt: str, artifact, *args: str, env=None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script(rt), str(artifact), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def run_blocked(rt: str, artifact, *args: str, blocked=("torch", "edgeprune")) -> subprocess.CompletedProcess:
    """Run a harness in a Python where the `blocked` modules cannot be imported (sys.modules[name] = None)."""
    code = textwrap.dedent(f"""
        import runpy, sys
        for name in {list(blocked)!r}:
            sys.modules[name] = None
        sys.argv = {[script(rt), str(artifact), *args]!r}
        runpy.run_path(sys.argv[0], run_name="__main__")
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def result_of(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert lines, f"no 'error:' line in stderr: {proc.stderr[-2000:]}"
    return lines[-1]


@pytest.fixture(scope="module")
def artifacts(bench_artifacts) -> dict:
    return {"executorch": bench_artifacts.pte, "litert": bench_artifacts.tflite, "onnx": bench_artifacts.onnx,
            "tflm": bench_artifacts.mcu}


@pytest.fixture(scope="module")
def runs(artifacts) -> dict:
    """One run per harness with --threads 1: (completed process, parsed JSON)."""
    runs = {}
    for rt in HARNESSES:
        proc = run_harness(rt, artifacts[rt], *FAST, "--threads", "1")
        runs[rt] = (proc, result_of(proc))
    return runs


@pytest.fixture(scope="module")
def pinned_core() -> int:
    """The last CPU this process may use: pinning to it changes the affinity of a default run (all CPUs).
    Skipped on a single CPU, where pinning cannot be told apart from the default; with CI=true it fails
    instead, as the SSH tests do, so that CI can never pass by skipping it."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        message = f"pinning cannot be told apart from the default with a single CPU (this process may use {cores})"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI=true but {message}")
        pytest.skip(message)
    return cores[-1]


# ------------------------------------------------------------------------------------------ the JSON

@pytest.mark.parametrize("rt", HARNESSES)
def test_json_has_every_contract_key(runs, artifacts, rt):
    _, result = runs[rt]
    assert CONTRACT_KEYS <= set(result), CONTRACT_KEYS - set(result)
    assert result["schema"] == "edgeprune.bench/1" and result["unit"] == "ms"
    assert result["runtime"] == RUNTIME_NAMES[rt]
    assert result["artifact"] == Path(artifacts[rt]).name
    assert result["artifact_bytes"] == Path(artifacts[rt]).stat().st_size
    assert STATE_KEYS <= set(result["state_before"]) and STATE_KEYS <= set(result["state_after"])
    assert result["inputs"] == [{"name": result["inputs"][0]["name"], "shape": [1, 1, 8, 8],
                                 "dtype": "int8" if rt == "tflm" else "float32"}]
    assert result["settings"]["min_runs"] == 20 and result["settings"]["warmup_seconds"] == 0.05


@pytest.mark.parametrize("rt", HARNESSES)
def test_statistics_agree_with_the_samples(runs, rt):
    _, r = runs[rt]
    x = np.asarray(r["samples"])
    assert r["n"] == len(x) >= 20 and (x > 0).all()
    assert r["p50"] == pytest.approx(np.median(x))
    assert [r["p90"], r["p99"]] == pytest.approx(np.percentile(x, [90, 99]).tolist())
    assert r["mean"] == pytest.approx(x.mean())
    assert r["std"] == pytest.approx(x.std(ddof=1))
    assert r["cv"] == pytest.approx(x.std(ddof=1) / x.mean())
    assert (r["min"], r["max"]) == (x.min(), x.max())
    lo, hi = r["ci95_p50"]
    assert x.min() <= lo <= r["p50"] <= hi <= x.max()
    # the measuring stage lasted at least as long as its samples together
    assert r["measure_s"] >= x.sum() / 1000 * 0.999


@pytest.mark.parametrize("rt", HARNESSES)
def test_stdout_is_exactly_one_json_line(runs, rt):
    proc, _ = runs[rt]
    assert proc.stdout.endswith("\n") and proc.stdout.count("\n") == 1
    assert isinstance(json.loads(proc.stdout), dict)


@pytest.mark.parametrize("rt", HARNESSES)
def test_progress_lines_go_to_stderr_for_each_stage(runs, rt):
    proc, _ = runs[rt]
    events = [json.loads(ln[len("PROGRESS "):]) for ln in proc.stderr.splitlines() if ln.startswith("PROGRESS ")]
    assert [e["stage"] for e in events][0] == "load"
    assert {"load", "warmup", "measure"} <= {e["stage"] for e in events}
    assert all(isinstance(e["n"], int) and isinstance(e["elapsed_s"], float) for e in events)
    elapsed = [e["elapsed_s"] for e in events]
    assert elapsed == sorted(elapsed)


# ---------------------------------------------------------------------------------------- settings

@pytest.mark.parametrize("rt", HARNESSES)
def test_cores_pins_the_process(artifacts, pinned_core, rt):
    result = result_of(run_harness(rt, artifacts[rt], *FAST, "--cores", str(pinned_core), "--threads", "1"))
    assert result["cores"] == [pinned_core]  # the affinity the process had once pinned, read back
    assert result["settings"]["cores"] == [pinned_core]
    assert result["load"]["cpus"] == [pinned_core]  # the load is judged on that CPU alone


@pytest.mark.parametrize("rt", ["executorch", "litert", "onnx"])
def test_threads_are_recorded(runs, rt):
    _, result = runs[rt]
    assert result["threads"] == 1 and result["settings"]["threads"] == 1


def test_tflm_records_one_thread_whatever_threads_asks(artifacts):
    result = result_of(run_harness("tflm", artifacts["tflm"], *FAST, "--threads", "3"))
    assert result["threads"] == 1
    assert any("single-threaded" in note for note in result["notes"])


@pytest.mark.parametrize("rt", LIGHT)
def test_min_seconds_holds_when_min_runs_is_reached_first(artifacts, rt):
    result = result_of(run_harness(rt, artifacts[rt], "--min-runs", "3", "--min-seconds", "0.3",
                                   "--warmup-runs", "0", "--warmup-seconds", "0"))
    assert result["measure_s"] >= 0.3
    assert result["n"] > 3


@pytest.mark.parametrize("rt", LIGHT)
def test_min_runs_holds_when_min_seconds_is_reached_first(artifacts, rt):
    result = result_of(run_harness(rt, artifacts[rt], "--min-runs", "40", "--min-seconds", "0",
                                   "--warmup-runs", "0", "--warmup-seconds", "0"))
    assert result["n"] == 40 == len(result["samples"])


def test_warmup_runs_until_both_its_minimums_hold(artifacts):
    by_runs = result_of(run_harness("litert", artifacts["litert"], "--min-runs", "1", "--min-seconds", "0",
                                    "--warmup-runs", "30", "--warmup-seconds", "0"))
    by_time = result_of(run_harness("litert", artifacts["litert"], "--min-runs", "1", "--min-seconds", "0",
                                    "--warmup-runs", "1", "--warmup-seconds", "0.2"))
    assert by_runs["warmup_runs"] == 30
    assert by_time["warmup_s"] >= 0.2 and by_time["warmup_runs"] > 1


def test_inputs_npz_arrays_are_used_in_input_order(artifacts, tmp_path):
    npz = tmp_path / "inputs.npz"
    np.savez(npz, np.ones((1, 1, 8, 8), dtype=np.float64))  # float64 is cast to the input's float32
    result = result_of(run_harness("onnx", artifacts["onnx"], *FAST, "--inputs-npz", str(npz)))
    assert result["inputs"] == [{"name": "input_0", "shape": [1, 1, 8, 8], "dtype": "float32"}]
    assert result["settings"]["inputs_npz"] == str(npz)


def test_inputs_npz_float_arrays_are_quantized_for_an_int8_input(artifacts, tmp_path):
    npz = tmp_path / "inputs.npz"
    np.savez(npz, np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype(np.float32))
    result = result_of(run_harness("tflm", artifacts["tflm"], *FAST, "--inputs-npz", str(npz)))
    assert result["inputs"][0]["dtype"] == "int8"


def test_inputs_npz_with_the_wrong_shape_exits_2_naming_the_array(artifacts, tmp_path):
    npz = tmp_path / "inputs.npz"
    np.savez(npz, np.zeros((1, 3, 8, 8), dtype=np.float32))
    proc = run_harness("litert", artifacts["litert"], *FAST, "--inputs-npz", str(npz))
    assert proc.returncode == 2
    assert str(npz) in error_line(proc) and "arr_0" in error_line(proc)


def test_a_dynamic_dimension_is_run_at_1_and_noted(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])])
    path = tmp_path / "dynamic.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    result = result_of(run_harness("onnx", path, *FAST))
    assert result["inputs"] == [{"name": "x", "shape": [1, 4], "dtype": "float32"}]
    assert any("dynamic dimension 'batch'" in note for note in result["notes"])


@pytest.mark.parametrize("rt", ["executorch", "onnx"])
def test_a_series_measures_each_artifact_in_turn_with_its_own_result(artifacts, tmp_path, rt):
    first = Path(artifacts[rt])
    second = tmp_path / f"second{first.suffix}"
    shutil.copyfile(first, second)
    result = result_of(run_harness(rt, first, *FAST, "--threads", "1", "--series", str(second), str(first)))
    assert set(result) == {"schema", "series"}
    assert [r["artifact"] for r in result["series"]] == [first.name, second.name, first.name]
    for one in result["series"]:
        assert CONTRACT_KEYS <= set(one) and one["n"] >= 20 and one["threads"] == 1


def test_a_missing_artifact_in_a_series_exits_2_naming_it(artifacts, tmp_path):
    missing = tmp_path / "gone.onnx"
    proc = run_harness("onnx", artifacts["onnx"], *FAST, "--series", str(missing))
    assert proc.returncode == 2 and error_line(proc) == f"error: artifact {missing}: no such file"
    assert proc.stdout == ""


# ------------------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("rt", HARNESSES)
def test_missing_artifact_exits_2_naming_it(tmp_path, rt):
    missing = tmp_path / "nowhere" / "model.bin"
    proc = run_harness(rt, missing, *FAST)
    assert proc.returncode == 2
    assert error_line(proc) == f"error: artifact {missing}: no such file"
    assert proc.stdout == "" and "Traceback" not in proc.stderr


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
@pytest.mark.parametrize("rt", HARNESSES)
def test_corrupt_artifact_exits_2_naming_it(artifacts, tmp_path, rt, damage):
    original = Path(artifacts[rt])
    bad = tmp_path / original.name
    if damage == "garbage":
        bad.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    else:
        bad.write_bytes(original.read_bytes()[: original.stat().st_size // 2])
    proc = run_harness(rt, bad, *FAST)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert error_line(proc).startswith(f"error: artifact {bad}: ")
    assert proc.stdout == "" and "Traceback" not in proc.stderr


@pytest.mark.parametrize("argv, names", [
    (["--min-runs", "0"], "--min-runs"),
    (["--min-seconds", "-1"], "--min-seconds"),
    (["--cores", "4096"], "--cores"),
    (["--cores", "zero"], "--cores"),
    (["--no-such-option"], "--no-such-option"),
])
def test_bad_arguments_exit_2_naming_the_argument(artifacts, argv, names):
    proc = run_harness("litert", artifacts["litert"], *argv)
    assert proc.returncode == 2
    assert names in error_line(proc) and proc.stdout == ""


def test_tflm_arena_too_small_exits_2_instead_of_crashing(artifacts):
    # 4096 bytes makes TFLite-Micro write outside the arena for this model (SIGSEGV) or fail to allocate:
    # either way the harness must answer with exit 2, not die with the process.
    proc = run_harness("tflm", artifacts["tflm"], *FAST, "--arena-bytes", "4096")
    assert proc.returncode == 2
    assert "arena of 4096 bytes" in error_line(proc)


@pytest.mark.parametrize("rt", LIGHT)
def test_harness_runs_without_torch_or_edgeprune(artifacts, rt):
    result = result_of(run_blocked(rt, artifacts[rt], *FAST))
    assert result["n"] >= 20


def test_executorch_harness_runs_without_edgeprune(artifacts):
    # torch stays: the ExecuTorch Python runtime imports it itself
    result = result_of(run_blocked("executorch", artifacts["executorch"], *FAST, blocked=("edgeprune",)))
    assert result["n"] >= 20


@pytest.mark.parametrize("rt", HARNESSES)
def test_missing_runtime_exits_3_naming_it(artifacts, rt):
    args = [*FAST, "--engine", "onnxruntime"] if rt == "onnx" else FAST
    proc = run_blocked(rt, artifacts[rt], *args, blocked=RUNTIME_MODULES[rt])
    assert proc.returncode == 3, proc.stderr[-2000:]
    line = error_line(proc)
    assert line.startswith(f"error: runtime '{RUNTIME_NAMES[rt]}' is not installed on this device (")
    assert line.endswith("install it or export for another runtime")
    assert "Traceback" not in proc.stderr


def test_max_seconds_exceeded_exits_4(artifacts):
    started = time.monotonic()
    proc = run_harness("litert", artifacts["litert"], "--min-seconds", "60", "--max-seconds", "1")
    assert proc.returncode == 4
    assert error_line(proc).startswith("error: deadline exceeded: --max-seconds 1 ")
    assert time.monotonic() - started < 20 and proc.stdout == ""


def test_a_runtime_call_that_never_returns_still_exits_4(artifacts, tmp_path):
    # the watchdog's case: the main thread is stuck inside one inference and never checks the clock
    hang = tmp_path / "bench_hang.py"
    hang.write_text(textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(RUNTIMES_DIR)!r})
        import harness

        class Hang(harness.Backend):
            runtime = "hang"
            def load(self, args, ctx):
                spec = harness.InputSpec("x", [1], "float32")
                return harness.Session("hang", "0", "sleep", [spec], threads=1,
                                       bind=lambda arrays: (lambda: time.sleep(3600)))

        harness.main(Hang())
    """))
    started = time.monotonic()
    proc = subprocess.run([sys.executable, str(hang), str(artifacts["litert"]), "--max-seconds", "1"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 4
    assert "a runtime call did not return" in error_line(proc)
    assert time.monotonic() - started < 20


def test_lost_stderr_exits_5_promptly(artifacts):
    proc = subprocess.Popen([sys.executable, script("litert"), str(artifacts["litert"]), "--min-seconds", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stderr.readline().startswith(b"PROGRESS ")
        proc.stderr.close()  # the SSH channel is gone
        assert proc.wait(timeout=20) == 5
    finally:
        if proc.poll() is None:
            proc.kill()


# ------------------------------------------------------------------------------------ trtexec path

SAMPLE_TIMES = DATA_DIR / "trtexec_export_times.json"
# tests/data/trtexec_export_times.json is laid out exactly as trtexec's --exportTimes writes it: TensorRT's
# samples/common/sampleReporting.cpp, exportJSONTrace() (NVIDIA/TensorRT on GitHub): a JSON list, one object
# per timed inference, "  " before the first and ", " before the others, keys startEnqMs, endEnqMs,
# startH2dMs, endH2dMs, startComputeMs, endComputeMs, startD2hMs, endD2hMs, h2dMs, computeMs, d2hMs,
# latencyMs, numbers in C++ ostream's default format. The values are synthetic (no Jetson here), consistent:
# latencyMs = h2dMs + computeMs + d2hMs.


def test_trtexec_export_times_give_the_latency_of_each_inference():
    latency, compute = bench_onnx.parse_trtexec_times(SAMPLE_TIMES.read_text())
    raw = json.loads(SAMPLE_TIMES.read_text())
    assert latency == [t["latencyMs"] for t in raw] and compute == [t["computeMs"] for t in raw]
    assert len(latency) == 8 and max(latency) == 0.530659


def test_trtexec_export_times_of_older_versions_drop_the_warmup_queries():
    # older trtexec wrote the warm-up queries too (and an "endToEndMs" key); compute before --warmUp ms is warm-up
    trace = [{"startComputeMs": start, "computeMs": 0.3, "latencyMs": lat, "endToEndMs": lat}
             for start, lat in [(10.0, 9.0), (150.0, 8.0), (200.0, 0.4), (201.0, 0.5)]]
    latency, _ = bench_onnx.parse_trtexec_times(json.dumps(trace), warmup_ms=200)
    assert latency == [0.4, 0.5]


@pytest.mark.parametrize("text, why", [
    ("", "not JSON"),
    ("{}", "expected a JSON list of objects, one per inference"),
    ('[{"computeMs": 1}]', "an entry lacks a numeric latencyMs/computeMs"),
    ('[{"latencyMs": "fast", "computeMs": 1}]', "an entry lacks a numeric latencyMs/computeMs"),
])
def test_trtexec_export_times_that_are_not_a_trace_are_rejected_saying_why(text, why):
    with pytest.raises(ValueError, match=why):
        bench_onnx.parse_trtexec_times(text)


def test_trtexec_log_gives_warmup_count_and_version():
    log = ("&&&& RUNNING TensorRT.trtexec [TensorRT v8601] # trtexec --onnx=m.onnx\n"
           "[11/23/2026-10:00:00] [I] Warmup completed 52 queries over 200 ms\n"
           "[11/23/2026-10:00:00] [I] Timing trace has 9001 queries over 3.00091 s\n")
    assert bench_onnx.parse_trtexec_log(log) == {"warmup_runs": 52, "warmup_ms": 200.0, "queries": 9001,
                                                 "measure_s": 3.00091, "version": "8.6.1"}
    newer = "&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec --onnx=m.onnx"
    assert bench_onnx.parse_trtexec_log(newer)["version"] == "10.3.0"


@pytest.fixture
def fake_trtexec(tmp_path) -> Path:
    """A `trtexec` on PATH that logs like the real one, copies the sample --exportTimes report and records
    its arguments (argv.json) and the --loadInputs files it was given."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "trtexec"
    exe.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import json, os, shutil, sys
        args = sys.argv[1:]
        opts = dict(a[2:].split("=", 1) for a in args if "=" in a)
        inputs = {{}}
        for spec in opts.get("loadInputs", "").split(","):
            name, path = spec.rsplit(":", 1)
            inputs[name] = os.path.getsize(path)
        json.dump({{"args": args, "input_bytes": inputs}}, open({str(tmp_path / "argv.json")!r}, "w"))
        print("&&&& RUNNING TensorRT.trtexec [TensorRT v8601] # trtexec " + " ".join(args))
        print("[I] Engine built in 1.2 sec.")
        print("[I] Starting inference")
        shutil.copy({str(SAMPLE_TIMES)!r}, opts["exportTimes"])
        print("[I] Warmup completed 52 queries over 200 ms")
        print("[I] Timing trace has 8 queries over 3.00091 s")
        print("&&&& PASSED TensorRT.trtexec [TensorRT v8601]")
    """))
    exe.chmod(0o755)
    return bin_dir


def test_trtexec_engine_builds_with_sparsity_and_reports_its_samples(artifacts, fake_trtexec, tmp_path):
    env = dict(os.environ, PATH=f"{fake_trtexec}{os.pathsep}{os.environ['PATH']}")
    result = result_of(run_harness("onnx", artifacts["onnx"], *FAST, env=env))  # --engine auto finds trtexec
    called = json.loads((tmp_path / "argv.json").read_text())
    assert "--sparsity=enable" in called["args"] and "--fp16" in called["args"]
    assert f"--onnx={artifacts['onnx']}" in called["args"]
    assert "--iterations=20" in called["args"] and "--duration=1" in called["args"]
    assert called["input_bytes"] == {"input_0": 1 * 1 * 8 * 8 * 4}  # the harness's float32 inputs, raw
    raw = json.loads(SAMPLE_TIMES.read_text())
    assert result["runtime"] == "tensorrt" and result["runtime_version"] == "8.6.1"
    assert result["engine"] == "trtexec --sparsity=enable --fp16"
    assert result["samples"] == [t["latencyMs"] for t in raw]
    assert result["warmup_runs"] == 52 and result["warmup_s"] == 0.2 and result["measure_s"] == 3.00091
    assert result["p50"] == pytest.approx(np.median(result["samples"]))
    assert any(note.startswith("trtexec: samples are its latencyMs") for note in result["notes"])


def test_trtexec_engine_without_trtexec_exits_3(artifacts):
    env = dict(os.environ, PATH=str(Path(sys.executable).parent))
    if shutil.which("trtexec", path=env["PATH"]) or Path(bench_onnx.JETPACK_TRTEXEC).exists():
        pytest.skip("this machine has trtexec")
    proc = run_harness("onnx", artifacts["onnx"], *FAST, "--engine", "trtexec", env=env)
    assert proc.returncode == 3
    assert error_line(proc).startswith("error: runtime 'tensorrt' is not installed on this device (trtexec")


# ---------------------------------------------------------------------------------- ONNX reading

def test_onnx_reader_finds_the_graph_inputs_as_onnx_does(artifacts):
    onnx = pytest.importorskip("onnx")
    data = Path(artifacts["onnx"]).read_bytes()
    model = onnx.load_from_string(data)
    initializers = {t.name for t in model.graph.initializer}
    expected = [(i.name, [d.dim_value for d in i.type.tensor_type.shape.dim]) for i in model.graph.input
                if i.name not in initializers]
    graph = bench_onnx.read_onnx_graph(data)
    assert [(s.name, s.shape) for s in graph["inputs"]] == expected
    assert [s.dtype for s in graph["inputs"]] == [np.dtype("float32")]
    assert graph["ops"] == {n.op_type for n in model.graph.node}


def test_onnx_reader_rejects_a_truncated_file(artifacts):
    data = Path(artifacts["onnx"]).read_bytes()
    with pytest.raises(bench_onnx.OnnxFormatError):
        bench_onnx.read_onnx_graph(data[: len(data) // 2])


# ------------------------------------------------------------------------------------- statistics

def test_bootstrap_medians_match_resampling_with_replacement():
    # the O(1) order-statistic draw must give the distribution that resampling n values gives
    for n in (31, 40):  # odd and even n (np.median averages the two middle values)
        x = np.sort(np.random.default_rng(n).gamma(2.0, 1.0, n))
        fast = harness.bootstrap_medians(x, np.random.default_rng(1), 40000)
        rng = np.random.default_rng(2)
        slow = np.median(x[rng.integers(0, n, size=(40000, n))], axis=1)
        assert np.percentile(fast, [2.5, 25, 50, 75, 97.5]) == pytest.approx(
            np.percentile(slow, [2.5, 25, 50, 75, 97.5]), rel=0.03)


def test_summary_of_one_sample_has_no_spread():
    s = harness.summarize([1.5], seed=0)
    assert (s["n"], s["p50"], s["std"], s["cv"], s["ci95_p50"]) == (1, 1.5, None, None, [1.5, 1.5])


def test_ci95_of_the_median_is_reproducible_with_the_seed():
    x = np.random.default_rng(0).normal(5, 1, 500)
    assert harness.summarize(x, seed=7)["ci95_p50"] == harness.summarize(x, seed=7)["ci95_p50"]
    assert harness.summarize(x, seed=7)["ci95_p50"] != harness.summarize(x, seed=8)["ci95_p50"]


# ----------------------------------------------------------------------------------- device state

def test_sample_state_works_here_and_is_json(tmp_path):
    state = device_state.sample_state()
    assert STATE_KEYS <= set(state)
    assert json.loads(json.dumps(state)) == state
    assert state["cpu_count"] == os.cpu_count() and len(state["loadavg"]) == 3


def test_sample_state_reads_cpufreq_and_thermal_zones(tmp_path, monkeypatch):
    cpu, thermal = tmp_path / "devices" / "system" / "cpu", tmp_path / "class" / "thermal"
    for n, (gov, cur, top) in enumerate([("performance", "2400000", "2400000"), ("ondemand", "1500000", "2400000")]):
        d = cpu / f"cpu{n}" / "cpufreq"
        d.mkdir(parents=True)
        (d / "scaling_governor").write_text(gov + "\n")
        (d / "scaling_cur_freq").write_text(cur + "\n")
        (d / "cpuinfo_max_freq").write_text(top + "\n")
    zone = thermal / "thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "type").write_text("cpu-thermal\n")
    (zone / "temp").write_text("51234\n")
    for i, (kind, temp) in enumerate([("passive", "85000"), ("critical", "110000")]):
        (zone / f"trip_point_{i}_type").write_text(kind + "\n")
        (zone / f"trip_point_{i}_temp").write_text(temp + "\n")
    monkeypatch.setenv(device_state.SYSFS_ENV, str(tmp_path))  # read in place of /sys
    state = device_state.sample_state()
    assert state["governor"] == {"cpu0": "performance", "cpu1": "ondemand"}
    assert state["cur_mhz"] == {"cpu0": 2400.0, "cpu1": 1500.0}
    assert state["max_mhz"] == {"cpu0": 2400.0, "cpu1": 2400.0}
    assert state["thermal"] == [{"zone": 0, "type": "cpu-thermal", "temp_c": 51.234,
                                 "trips": [{"type": "passive", "temp_c": 85.0}, {"type": "critical", "temp_c": 110.0}]}]


def _state(mhz=None, temp=None, trips=(("passive", 85.0),), throttled=None) -> dict:
    thermal = [] if temp is None else [{"zone": 0, "type": "cpu-thermal", "temp_c": temp,
                                        "trips": [{"type": k, "temp_c": t} for k, t in trips]}]
    return {"cur_mhz": mhz or {}, "thermal": thermal, "throttled": throttled}


def test_state_flags_a_frequency_drop_of_more_than_10_percent():
    flags = device_state.state_flags(_state({"cpu2": 2400.0}), _state({"cpu2": 1500.0}))
    assert flags == ["cpu2 frequency dropped 2400 → 1500 MHz during the run"]


def test_state_flags_ignore_a_small_frequency_change():
    assert device_state.state_flags(_state({"cpu0": 2400.0}), _state({"cpu0": 2200.0})) == []


def test_state_flags_only_the_pinned_cores():
    before, after = _state({"cpu0": 2400.0, "cpu1": 2400.0}), _state({"cpu0": 1200.0, "cpu1": 2400.0})
    assert device_state.state_flags(before, after, cores=[1]) == []
    assert device_state.state_flags(before, after, cores=[0]) == [
        "cpu0 frequency dropped 2400 → 1200 MHz during the run"]


def test_state_flags_a_thermal_zone_that_crossed_its_trip_point():
    flags = device_state.state_flags(_state(temp=70.0), _state(temp=85.0))
    assert flags == ["thermal zone 0 (cpu-thermal) reached 85.0 °C, its passive trip point 85.0 °C"]


def test_state_flags_the_most_severe_trip_point_reached():
    trips = (("passive", 85.0), ("hot", 95.0), ("critical", 105.0), ("active", 50.0))
    flags = device_state.state_flags(_state(temp=90.0, trips=trips), _state(temp=96.5, trips=trips))
    assert flags == ["thermal zone 0 (cpu-thermal) reached 96.5 °C, its hot trip point 95.0 °C"]


def test_state_flags_ignore_fan_trips_and_cool_zones():
    trips = (("active", 50.0), ("passive", 85.0))
    assert device_state.state_flags(_state(temp=60.0, trips=trips), _state(temp=70.0, trips=trips)) == []


def test_state_flags_name_the_raspberry_pi_throttling_bits():
    flags = device_state.state_flags(_state(throttled="0x0"), _state(throttled="0x50005"))
    assert flags[0] == "Raspberry Pi reports under-voltage detected, currently throttled (get_throttled=0x50005)"
    assert "under-voltage has occurred, throttling has occurred during the run" in flags[1]


def test_state_flags_a_zone_that_was_past_its_trip_point_when_the_run_started_and_cooled_since():
    flags = device_state.state_flags(_state(temp=88.25), _state(temp=70.0))
    assert flags == ["thermal zone 0 (cpu-thermal) was at 88.2 °C when the run started, at or above its passive "
                     "trip point 85.0 °C"]


@pytest.mark.parametrize("trips", [(("passive", 0.0),), (("passive", -273.0),), (("passive", None),)],
                         ids=["zero", "negative", "unreadable"])
def test_state_flags_ignore_a_disabled_trip_point(trips):
    assert device_state.state_flags(_state(temp=40.0, trips=trips), _state(temp=45.0, trips=trips)) == []


def test_state_flags_ignore_a_zone_whose_temperature_cannot_be_read():
    before, after = _state(temp=90.0), _state(temp=90.0)
    after["thermal"][0]["temp_c"] = before["thermal"][0]["temp_c"] = None
    assert device_state.state_flags(before, after) == []


def test_state_flags_a_drop_of_exactly_10_percent_is_not_a_drop_and_a_cpu_new_in_the_run_is_not_judged():
    assert device_state.state_flags(_state({"cpu0": 2000.0}), _state({"cpu0": 1800.0})) == []
    assert device_state.state_flags(_state({"cpu0": 2000.0}), _state({"cpu0": 1799.0})) == [
        "cpu0 frequency dropped 2000 → 1799 MHz during the run"]
    assert device_state.state_flags(_state({}), _state({"cpu1": 600.0})) == []


def test_state_flags_list_drops_in_cpu_order_with_small_clocks_to_a_tenth():
    before = _state({"cpu10": 2000.0, "cpu2": 99.0})
    after = _state({"cpu10": 1000.0, "cpu2": 49.5})
    assert device_state.state_flags(before, after) == ["cpu2 frequency dropped 99.0 → 49.5 MHz during the run",
                                                       "cpu10 frequency dropped 2000 → 1000 MHz during the run"]


@pytest.mark.parametrize("throttled", [None, "not hex", "0x0"])
def test_state_flags_nothing_for_a_pi_that_reports_no_throttling_or_nothing_readable(throttled):
    assert device_state.state_flags(_state(throttled="0x0"), _state(throttled=throttled)) == []


def test_state_flags_only_the_sticky_pi_bits_that_are_new_in_this_run():
    flags = device_state.state_flags(_state(throttled="0x10000"), _state(throttled="0x30000"))
    assert flags == ["Raspberry Pi: ARM frequency capping has occurred during the run (get_throttled 0x10000 → 0x30000)"]


# ------------------------------------------------------------------------------------- portability

@pytest.mark.parametrize("name", sorted(p.name for p in RUNTIMES_DIR.glob("*.py")))  # all of them run on the device
def test_runtime_files_parse_as_python_3_8(name):
    source = (RUNTIMES_DIR / name).read_text(encoding="utf-8")
    ast.parse(source, filename=name, feature_version=(3, 8))
