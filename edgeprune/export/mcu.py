"""Microcontroller artifacts: run an int8 .tflite in TensorFlow Lite for Microcontrollers, measure the
tensor arena it needs, and compile it for an Arm Ethos-U NPU with Vela.

    tflm_run(path, inputs, arena_size=None) -> list[np.ndarray]
    tflm_arena_bytes(path) -> int
    vela_compile(path, accelerator_config, out_dir, ...) -> dict

TFLite-Micro runs through its Python interpreter (`tflite_micro.python.tflite_micro.runtime.Interpreter
.from_bytes(model, arena_size=...)`: `set_input(array, i)`, `invoke()`, `get_output(i)`,
`get_input_details(i)` / `get_output_details(i)`), on TFLM's reference kernels on the host (the device
uses CMSIS-NN; the arena a model needs is the same memory plan, kernel scratch aside).

Every TFLM call runs in a child Python process: TFLM does not check everything a bad call can get wrong
(an arena of a few hundred bytes or less makes it write outside the arena, and one a few bytes short of
what a model needs can crash its memory planner: the process dies with SIGSEGV), and a crash must not
take the caller down; it becomes an `ExportError` naming the op TFLM's log names. The child imports only numpy and tflite_micro
(~0.3 s). Inputs and outputs travel as .npy files, loaded with `allow_pickle=False`.

Vela runs as `python -m ethosu.vela` (the same interpreter that runs edgeprune) with a timeout.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import litert
from ..errors import ArenaTooSmallError, ExportError


TFLM_TIMEOUT_S = 300
VELA_TIMEOUT_S = 600
# Below about 500 bytes TFLM's allocator writes outside the arena (SIGSEGV, seen with tflite-micro
# 0.dev20261023, every model); nothing real fits there anyway. Smaller requests are refused before TFLM
# sees them. (Larger arenas that are still too small can crash it too: see tflm_run.)
MIN_ARENA_BYTES = 1024
MAX_ARENA_BYTES = 1 << 30  # the arena tried when the default is not enough

# The child process. argv[1]: request JSON path. Writes result.json (+ out_<i>.npy) next to it.
_WORKER = r'''
import json, os, re, sys
import numpy as np
from tflite_micro.python.tflite_micro import runtime

req_path = sys.argv[1]
work = os.path.dirname(req_path)
req = json.load(open(req_path))
model = open(req["model"], "rb").read()
result = {}

def interpreter(arena):
    return runtime.Interpreter.from_bytes(model, arena_size=int(arena))

def details(it, getter, count):
    out = []
    for i in range(count):
        d = getter(it, i)
        qp = d.get("quantization_parameters") or {}
        scales = np.asarray(qp.get("scales", []), dtype=np.float64).ravel()
        zps = np.asarray(qp.get("zero_points", []), dtype=np.int64).ravel()
        out.append({"dtype": np.dtype(d["dtype"]).name, "shape": [int(s) for s in np.asarray(d["shape"]).ravel()],
                    "scale": float(scales[0]) if scales.size == 1 else 0.0,
                    "zero_point": int(zps[0]) if zps.size == 1 else 0})
    return out

def quantized_inputs(ins, arrays):
    prepared = []
    for d, x in zip(ins, arrays):
        dt = np.dtype(d["dtype"])
        if np.issubdtype(dt, np.integer) and d["scale"] and np.issubdtype(x.dtype, np.floating):
            info = np.iinfo(dt)
            x = np.clip(np.round(x.astype(np.float64) / d["scale"]) + d["zero_point"], info.min, info.max)
        prepared.append(np.ascontiguousarray(x.astype(dt)))
    return prepared

def invoke(it, arrays):
    for i, x in enumerate(arrays):
        it.set_input(x, i)
    it.invoke()

try:
    if req["mode"] == "run":
        it = interpreter(req["arena"])
        ins = details(it, lambda it, i: it.get_input_details(i), req["n_inputs"])
        outs = details(it, lambda it, i: it.get_output_details(i), req["n_outputs"])
        arrays = [np.load(os.path.join(work, f"in_{i}.npy"), allow_pickle=False) for i in range(req["n_inputs"])]
        invoke(it, quantized_inputs(ins, arrays))
        for i, d in enumerate(outs):
            y = np.asarray(it.get_output(i))
            if d["scale"] and np.issubdtype(y.dtype, np.integer):
                y = (y.astype(np.float64) - d["zero_point"]) * d["scale"]
            np.save(os.path.join(work, f"out_{i}.npy"), y.astype(np.float32), allow_pickle=False)
        result = {"ok": True, "n_outputs": len(outs), "inputs": ins, "outputs": outs}
    elif req["mode"] == "arena":
        # 1. the recording allocator (the interpreter's default config) reports what it allocated
        it = interpreter(req["arena"])
        ins = details(it, lambda it, i: it.get_input_details(i), req["n_inputs"])
        zeros = [np.zeros(d["shape"], dtype=np.dtype(d["dtype"])) for d in ins]
        invoke(it, zeros)
        sys.stderr.flush()
        fd = os.dup(2)
        log_path = os.path.join(work, "allocations.txt")
        with open(log_path, "w") as log:
            os.dup2(log.fileno(), 2)
            try:
                it.print_allocations()
            finally:
                sys.stderr.flush()
                os.dup2(fd, 2)
                os.close(fd)
        text = open(log_path).read()
        m = re.search(r"Arena allocation total (\d+) bytes", text)
        if not m:
            raise RuntimeError("print_allocations() reported no arena total: " + text[:500])
        recorded = int(m.group(1))
        result = {"ok": True, "recorded": recorded, "allocations": text}
        # 2. check that an arena of exactly that size allocates and runs; if not, search upward.
        # The recorded total leaves out temporary allocations (the memory planner's scratch, the
        # kernels' temp tensors while they prepare), so the search probes arenas that are slightly too
        # small, and TFLM does not survive all of them: when the planner's scratch does not fit it
        # carries on and crashes in GreedyMemoryPlanner::CalculateOffsetsIfNeeded (SIGSEGV; an MLP
        # 64-256-256-10 fails cleanly at 8064 bytes, crashes at 8096, runs at 8104). Each probe therefore
        # runs in a forked copy of this process, and a crash counts as "does not run in n bytes".
        def runs_here(n):
            try:
                invoke(interpreter(n), zeros)
                return True
            except Exception:
                return False

        def runs(n):
            if not hasattr(os, "fork"):
                return runs_here(n)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    quiet = os.open(os.devnull, os.O_WRONLY)  # a failed probe's log is not the model's
                    os.dup2(quiet, 1)
                    os.dup2(quiet, 2)
                    code = 0 if runs_here(n) else 1
                finally:
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
            return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        lo, hi = recorded, recorded
        if not runs(hi):
            step = 16
            while not runs(hi + step):
                step *= 2
                if hi + step > req["arena"]:
                    raise RuntimeError(f"the model ran in {req['arena']} bytes but not near {recorded}")
            lo, hi = hi + 1, hi + step
            while lo < hi:
                mid = (lo + hi) // 2
                if runs(mid):
                    hi = mid
                else:
                    lo = mid + 1
        result["verified"] = hi
except Exception as err:
    result = {"ok": False, "error": f"{type(err).__name__}: {err}"}
json.dump(result, open(os.path.join(work, "result.json"), "w"))
'''


def _child(request: dict, work: Path, arrays: Sequence[np.ndarray] = (), timeout: float = TFLM_TIMEOUT_S) -> dict:
    for i, array in enumerate(arrays):
        np.save(work / f"in_{i}.npy", array, allow_pickle=False)
    req_path = work / "request.json"
    req_path.write_text(json.dumps(request))
    result_path = work / "result.json"
    result_path.unlink(missing_ok=True)
    try:
        proc = subprocess.run([sys.executable, "-c", _WORKER, str(req_path)], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as err:
        raise ExportError(f"{request['model']}: TFLite-Micro did not finish in {timeout:.0f} s") from err
    if proc.returncode != 0 or not result_path.exists():
        # A crash is a result like any other failure: `_tflm_failure` turns it into an error naming the op.
        how = (f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit status {proc.returncode}")
        return {"ok": False, "crashed": how, "error": f"the TFLite-Micro process died ({how})", "stderr": proc.stderr}
    result = json.loads(result_path.read_text())
    result["stderr"] = proc.stderr
    return result


def _tail(text: str, lines: int = 6) -> str:
    kept = [ln.strip() for ln in (text or "").splitlines() if ln.strip() and "RecordingMicroAllocator" not in ln]
    return " | ".join(kept[-lines:])[:1200]


# TFLM's MicroInterpreter names the node whose kernel failed: "Node FULLY_CONNECTED (number 2) failed to prepare"
_NODE_RE = re.compile(r"Node (\S+) \(number (\d+)\) failed to (prepare|invoke)")
_NO_KERNEL_RE = re.compile(r"Didn't find op for builtin opcode '([A-Z0-9_]+)'|Failed to get registration from op code (\S+)")


def _tflm_failure(path, result: dict, arena: int, facts: dict) -> ExportError:
    """The error for a failed (or crashed) TFLM run, naming the op when TFLM's log does. Whether the arena
    was too small is decided by the callers, by trying a larger one: TFLM's messages do not say."""
    error = result.get("error", "")
    log = _tail(result.get("stderr", ""), 12)
    op = _missing_kernel(result)
    if op:
        if op == "CUSTOM":
            customs = sorted(name.split(":", 1)[1] for name in facts["ops"] if name.startswith("CUSTOM:"))
            op = f"CUSTOM ({', '.join(customs)})" if customs else op
        return ExportError(f"{path}: TFLite-Micro has no kernel for op {op} ({log})")
    if result.get("crashed"):
        return ExportError(f"{path}: TFLite-Micro crashed ({result['crashed']}){_failed_op(log)} with an arena of "
                           f"{arena} bytes: {log or 'it printed nothing'}")
    return ExportError(f"{path}: TFLite-Micro failed{_failed_op(log)} with an arena of {arena} bytes: "
                       f"{error} {log}".strip())


def _missing_kernel(result: dict) -> str | None:
    m = _NO_KERNEL_RE.search(result.get("stderr", "") or "")
    return (m.group(1) or m.group(2)) if m else None


def _failed_op(log: str) -> str:
    node = _NODE_RE.search(log)
    return f" at op {node.group(1)} (node {node.group(2)}, {node.group(3)})" if node else ""


def _too_small(path, arena: int, result: dict, runs_with: int) -> ArenaTooSmallError:
    log = _tail(result.get("stderr", ""), 12)
    how = f"crashed ({result['crashed']})" if result.get("crashed") else "failed"
    return ArenaTooSmallError(f"{path}: TFLite-Micro {how}{_failed_op(log)} with an arena of {arena} bytes and "
                              f"runs with {runs_with}: the arena is too small ({log})")


def _default_arena(path) -> int:
    # The TFLM Python interpreter's own default is 10x the model size; keep at least 1 MiB.
    return max(10 * Path(path).stat().st_size, 1 << 20)


def tflm_run(path, inputs: Sequence[Any], arena_size: int | None = None) -> list[np.ndarray]:
    """Run the .tflite once in TFLite-Micro and return its outputs as float32 (int8 outputs dequantized
    with the output tensor's scale/zero point). Float inputs to an int8 input are quantized with that
    input's scale/zero point. `arena_size` defaults to 10x the file size (at least 1 MiB), or
    `MAX_ARENA_BYTES` when the model needs more.

    Raises `ArtifactError` for a missing/corrupt file, `ArenaTooSmallError` (an `ExportError`) when the
    given arena is too small (a larger one runs), and `ExportError` naming the op when TFLM has no kernel
    for it or fails or crashes in it (a crash is reported, never raised as anything but `ExportError`).
    """
    facts = litert.inspect(path)  # checks the file first: ArtifactError, and TFLM never sees a bad one
    arena = _default_arena(path) if arena_size is None else int(arena_size)
    if arena < MIN_ARENA_BYTES:
        raise ArenaTooSmallError(f"{path}: an arena of {arena} bytes is below the {MIN_ARENA_BYTES} bytes TFLite-"
                                 f"Micro needs for its own bookkeeping (smaller arenas crash it)")
    arrays = [np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x) for x in inputs]
    expected = facts["inputs"]
    if len(arrays) != len(expected):
        raise ExportError(f"{path}: the model takes {len(expected)} inputs {[t['name'] for t in expected]}, "
                          f"got {len(arrays)}")
    for spec, array in zip(expected, arrays):
        if list(array.shape) != spec["shape"]:
            raise ExportError(f"{path}: input {spec['name']!r} has shape {tuple(spec['shape'])}, got {array.shape}")
    request = {"mode": "run", "model": str(Path(path).resolve()), "n_inputs": len(arrays),
               "n_outputs": len(facts["outputs"])}
    with tempfile.TemporaryDirectory(prefix="edgeprune-tflm-") as tmp:
        work = Path(tmp)
        while True:
            result = _child({**request, "arena": arena}, work, arrays)
            if result.get("ok"):
                break
            if _missing_kernel(result):
                raise _tflm_failure(path, result, arena, facts)
            if arena_size is None:
                # the default may be too small for this model's activations: one run with the largest
                # arena tells that apart from a model TFLM cannot run (whose failure it then reports)
                if arena >= MAX_ARENA_BYTES:
                    raise _tflm_failure(path, result, arena, facts)
                arena = MAX_ARENA_BYTES
                continue
            # the caller's arena: too small if a larger one runs, else the model is at fault and the
            # larger run's failure says where
            big = max(_default_arena(path), 4 * arena)
            probe = _child({**request, "arena": big}, work, arrays)
            if probe.get("ok"):
                raise _too_small(path, arena, result, big)
            raise _tflm_failure(path, probe, big, facts)
        return [np.load(work / f"out_{i}.npy", allow_pickle=False) for i in range(result["n_outputs"])]


def tflm_arena_bytes(path) -> int:
    """The tensor arena (bytes) the model needs in TFLite-Micro, measured, not estimated.

    How: TFLM's Python interpreter uses the RecordingMicroAllocator by default; after one `invoke()` on
    zero inputs, `print_allocations()` prints "Arena allocation total N bytes" (head: the planned
    activation and scratch buffers; tail: persistent tensor structs, kernel data, node registrations).
    That printout is the only way the interpreter exposes it (to the C stderr, which the child captures).
    N is then checked: an interpreter with an arena of exactly N bytes must allocate and run; if it does
    not (alignment), the smallest arena that does is found by bisection above N and returned instead.
    Host numbers: TFLM's reference kernels on x86-64 (64-bit pointers make the tail's structs larger than
    on a 32-bit Cortex-M; CMSIS-NN kernels may ask for extra scratch), so keep some margin on the device.
    """
    facts = litert.inspect(path)
    arena = _default_arena(path)
    with tempfile.TemporaryDirectory(prefix="edgeprune-tflm-") as tmp:
        while True:
            result = _child({"mode": "arena", "model": str(Path(path).resolve()), "arena": arena,
                             "n_inputs": len(facts["inputs"])}, Path(tmp))
            if result.get("ok"):
                return int(result["verified"])
            if _missing_kernel(result) or arena >= MAX_ARENA_BYTES:
                raise _tflm_failure(path, result, arena, facts)
            arena = MAX_ARENA_BYTES  # too small for this model's activations, or the model is at fault: this says


# ----------------------------------------------------------------------------------------------- Vela

_VELA_LINE_PATTERNS = {
    "system_config": re.compile(r"^System configuration\s+(\S+)", re.M),
    "memory_mode": re.compile(r"^Memory mode\s+(\S+)", re.M),
    "accelerator_clock_mhz": re.compile(r"^Accelerator clock\s+(\d+)\s*MHz", re.M),
    "cpu_ops": re.compile(r"^CPU operators = (\d+)", re.M),
    "npu_ops": re.compile(r"^NPU operators = (\d+)", re.M),
    "macs": re.compile(r"^Neural network macs\s+(\d+)", re.M),
    "estimated_cycles_total": re.compile(r"^Total cycles\s+(\d+)", re.M),
    "estimated_inference_ms": re.compile(r"^Batch Inference time\s+([\d.]+) ms", re.M),
}
_MEMORY_USED_RE = re.compile(r"^Total (SRAM|DRAM|On-chip Flash|Off-chip Flash) used\s+([\d.]+) KiB", re.M)
_WARNING_RE = re.compile(r"^Warning \(supported operators\) operator: ([A-Z0-9_]+), ofm: '(.*)'\s*\nReason: (.*)$", re.M)


def vela_compile(path, accelerator_config: str, out_dir, *, system_config: str | None = None,
                 memory_mode: str | None = None, config_file: str | None = None, optimise: str | None = None,
                 timeout: float = VELA_TIMEOUT_S) -> dict:
    """Compile an int8 .tflite with Arm Vela for `accelerator_config` (e.g. "ethos-u55-128") into `out_dir`.

    Returns (memory in bytes; every cycle and time figure is Vela's estimate from its performance model,
    not a measurement):
      vela_tflite            path of the compiled `<name>_vela.tflite` (the NPU part is one ethos-u custom op)
      vela_tflite_bytes      its size: what the firmware stores (flash_bytes counts only what Vela placed
                             there, the NPU's weights and command stream: 0 when no op runs on the NPU)
      summary_csv            path of Vela's summary CSV (None if Vela wrote none, e.g. no NPU op)
      accelerator_config, system_config, memory_mode, core_clock_hz
      sram_bytes, off_chip_flash_bytes, on_chip_flash_bytes, dram_bytes    memory Vela allocated
      flash_bytes            off-chip + on-chip flash used
      npu_ops, cpu_ops       Vela's summary counts ("NPU operators = N"), of its own operators after its graph
                             rewrites (a MEAN may count as two), not of the input file's ops. (Vela 5.2 counts
                             fused activations separately when run with --show-cpu-operations; not used here.)
      input_ops              ops in the input file
      cpu_op_names           {op: count} of the ops left to the CPU in the compiled file (TFLite builtin names)
      npu_subgraphs          ethos-u custom ops in the compiled file
      cpu_fallback           [{"op", "tensor", "reason"}] Vela's reasons for each CPU fallback
      estimated_cycles, estimated_npu_cycles, estimated_inference_s, estimated_inferences_per_second
      macs, original_weights_bytes, npu_encoded_weights_bytes
      estimate_note          says the above are Vela's estimates
    `system_config`/`memory_mode`/`config_file` default to Vela's (for Ethos-U55: Arm/vela.ini,
    Ethos_U55_High_End_Embedded, Shared_Sram). Vela errors raise `ExportError` naming the op when Vela does.
    """
    source = Path(path)
    litert.read_checked(source)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in [out / f"{source.stem}_vela.tflite", *out.glob(f"{source.stem}_summary_*.csv")]:
        stale.unlink(missing_ok=True)  # a previous run's outputs must not pass for this one's
    cmd = [sys.executable, "-m", "ethosu.vela", str(source), "--accelerator-config", accelerator_config,
           "--output-dir", str(out), "--verbose-cycle-estimate"]
    if config_file:
        cmd += ["--config", config_file]
    if system_config:
        cmd += ["--system-config", system_config]
    if memory_mode:
        cmd += ["--memory-mode", memory_mode]
    if optimise:
        cmd += ["--optimise", optimise]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        raise ExportError(f"{source}: Vela did not finish in {timeout:.0f} s") from err
    except OSError as err:
        raise ExportError(f"Vela could not be started ({' '.join(cmd[:3])}): {err}") from err
    text = proc.stdout + "\n" + proc.stderr
    compiled = out / f"{source.stem}_vela.tflite"
    if proc.returncode != 0 or not compiled.exists():
        raise ExportError(f"{source}: Vela failed for {accelerator_config}{_vela_op(text)}: {_vela_error(text)}")

    facts: dict[str, Any] = {"vela_tflite": str(compiled), "vela_tflite_bytes": compiled.stat().st_size,
                             "accelerator_config": accelerator_config, "vela_version": _vela_version()}
    for key, pattern in _VELA_LINE_PATTERNS.items():
        m = pattern.search(proc.stdout)
        if m:
            value = m.group(1)
            facts[key] = float(value) if "." in value else (int(value) if value.isdigit() else value)
    memory = {label: round(float(kib) * 1024) for label, kib in _MEMORY_USED_RE.findall(proc.stdout)}
    facts["cpu_fallback"] = [{"op": op, "tensor": tensor, "reason": reason.strip()}
                             for op, tensor, reason in _WARNING_RE.findall(proc.stdout)]
    named = out / f"{source.stem}_summary_{facts.get('system_config', '')}.csv"
    csv_path = named if named.is_file() else next(iter(sorted(out.glob(f"{source.stem}_summary_*.csv"))), None)
    row = _read_summary(csv_path) if csv_path else {}
    facts["summary_csv"] = str(csv_path) if csv_path else None

    def kib(key, label):
        if key in row:
            return round(float(row[key]) * 1024)  # the CSV's *_memory_used columns are KiB
        return memory.get(label, 0)

    facts["sram_bytes"] = kib("sram_memory_used", "SRAM")
    facts["off_chip_flash_bytes"] = kib("off_chip_flash_memory_used", "Off-chip Flash")
    facts["on_chip_flash_bytes"] = kib("on_chip_flash_memory_used", "On-chip Flash")
    facts["dram_bytes"] = kib("dram_memory_used", "DRAM")
    facts["flash_bytes"] = facts["off_chip_flash_bytes"] + facts["on_chip_flash_bytes"]
    if row:
        facts.update({
            "system_config": row.get("system_config", facts.get("system_config")),
            "memory_mode": row.get("memory_mode", facts.get("memory_mode")),
            "core_clock_hz": _num(row.get("core_clock")),
            "estimated_cycles": _int(row.get("cycles_total")),
            "estimated_npu_cycles": _int(row.get("cycles_npu")),
            "estimated_inference_s": _num(row.get("inference_time")),
            "estimated_inferences_per_second": _num(row.get("inferences_per_second")),
            "macs": _int(row.get("nn_macs")) if row.get("nn_macs") else facts.get("macs"),
            "original_weights_bytes": _int(row.get("total_original_weights")),
            "npu_encoded_weights_bytes": _int(row.get("total_npu_encoded_weights")),
        })
    else:
        ms = facts.pop("estimated_inference_ms", None)
        facts.update({"estimated_cycles": facts.pop("estimated_cycles_total", None), "estimated_npu_cycles": None,
                      "estimated_inference_s": ms / 1000 if isinstance(ms, (int, float)) else None,
                      "estimated_inferences_per_second": None, "original_weights_bytes": None,
                      "npu_encoded_weights_bytes": None,
                      "core_clock_hz": facts["accelerator_clock_mhz"] * 1e6 if "accelerator_clock_mhz" in facts else None})
    facts.pop("estimated_inference_ms", None)
    facts.pop("estimated_cycles_total", None)
    facts.pop("accelerator_clock_mhz", None)
    ops = litert.inspect(compiled)["ops"]
    facts["cpu_op_names"] = {op: n for op, n in ops.items() if op != "CUSTOM:ethos-u"}
    facts["npu_subgraphs"] = ops.get("CUSTOM:ethos-u", 0)
    facts["input_ops"] = sum(litert.inspect(source)["ops"].values())
    facts.setdefault("npu_ops", 0)
    facts.setdefault("cpu_ops", sum(facts["cpu_op_names"].values()))
    facts["estimate_note"] = ("estimated_* figures are Vela's performance-model estimates for "
                              f"{facts.get('system_config')} at {facts.get('core_clock_hz')} Hz, not measurements")
    return facts


def _read_summary(path: Path) -> dict:
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error):
        return {}
    return rows[-1] if rows else {}


def _num(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None  # Vela writes nan inferences/s when it estimates 0 s


def _int(value) -> int | None:
    number = _num(value)
    return None if number is None else int(round(number))


def _vela_version() -> str:
    try:
        from importlib.metadata import version

        return version("ethos-u-vela")
    except Exception:  # noqa: BLE001
        return "unknown"


def _vela_error(text: str) -> str:
    errors = [ln.strip() for ln in text.splitlines() if re.match(r"(Error\b|.*\berror:)", ln.strip())]
    if errors:
        return " | ".join(errors)[:1500]
    return _tail(text, 8)


def _vela_op(text: str) -> str:
    from ai_edge_litert import schema_py_generated as schema

    names = {k for k in vars(schema.BuiltinOperator) if not k.startswith("_")}
    for ln in text.splitlines():
        if "Error" in ln or "operator" in ln.lower():
            for token in re.findall(r"\b[A-Z][A-Z0-9_]{2,}\b", ln):
                if token in names:
                    return f" at op {token}"
    return ""
