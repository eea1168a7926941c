"""Benchmark an `.onnx` model on this device: in onnxruntime (CPU), or as a TensorRT engine built by
`trtexec` with 2:4 structured sparsity enabled (a Jetson).

    python3 bench_onnx.py MODEL.onnx [--engine auto|onnxruntime|trtexec] [--min-runs 50] [--min-seconds 2.0]
        [--warmup-runs 5] [--warmup-seconds 0.5] [--threads N] [--cores 0,2] [--max-seconds 600] [--seed 0]
        [--inputs-npz FILE] [--trt-precision fp16|int8|fp32|best]   (the last only for trtexec)

--engine auto (the default) uses trtexec when it is on PATH or at JetPack's /usr/src/tensorrt/bin/trtexec,
and onnxruntime otherwise.

onnxruntime: an InferenceSession on the CPUExecutionProvider with intra_op_num_threads = --threads (default:
onnxruntime's own, one per physical core; "threads" in the JSON is then null) and inter_op_num_threads = 1,
sequential execution. The input arrays are prepared once; each timed sample is one `session.run(None,
feeds)` with the same feeds. A dynamic dimension (a dim_param or an unknown size) is given 1.

trtexec: `trtexec --onnx=MODEL --sparsity=enable --fp16 --warmUp=MS --duration=S --iterations=N --avgRuns=1
--exportTimes=FILE --loadInputs=...` (the engine is built on the device). trtexec runs "at least N
iterations" and "at least S seconds" (whole seconds: --min-seconds is rounded up), so both minimums hold.
It warms up by time only (--warmUp, at least its default 200 ms; --warmup-runs cannot be enforced); the
warm-up query count comes from its log ("Warmup completed N queries over M ms"). The samples are the
per-inference "latencyMs" (host-to-device copy + GPU compute + device-to-host copy) of --exportTimes; the
median GPU compute time ("computeMs") goes into the notes. load_s is the time until trtexec logs "Starting
inference" (parsing + engine build). The same seeded inputs are written as raw files for --loadInputs, so
both engines see the same data. --trt-precision: fp16 (default, what Jetson deployments run), int8, fp32
(no precision flag) or best; a QDQ (int8) model gets --int8 in any case. --threads does not apply.

The ONNX file's graph inputs are read by a small protobuf reader in this file, so that the trtexec path
needs no onnx or onnxruntime package.

Output: one JSON line on stdout (schema "edgeprune.bench/1", runtime "onnxruntime" or "tensorrt").
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import struct
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # harness.py beside us, even via runpy

import numpy as np  # noqa: E402

import harness  # noqa: E402

JETPACK_TRTEXEC = "/usr/src/tensorrt/bin/trtexec"
ENGINE, LAYER_INFO, BUILD_LOG = "model.engine", "layers.json", "build.log"  # what deploy brings back
TRT_MIN_WARMUP_MS = 200  # trtexec's own default --warmUp


# ------------------------------------------------------------------------------- minimal ONNX reading
# Field numbers from onnx/onnx.proto: ModelProto.graph = 7; GraphProto.node = 1, initializer = 5,
# input = 11; NodeProto.op_type = 4; TensorProto.name = 8; ValueInfoProto.name = 1, type = 2;
# TypeProto.tensor_type = 1; TypeProto.Tensor.elem_type = 1, shape = 2; TensorShapeProto.dim = 1;
# Dimension.dim_value = 1, dim_param = 2.

_ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64",
                9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64"}


class OnnxFormatError(ValueError):
    pass


def _varint(buf, pos):
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise OnnxFormatError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise OnnxFormatError("varint too long")


def _fields(buf):
    """(field number, wire type, value) of a protobuf message; length-delimited values as memoryview."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > end:
                raise OnnxFormatError("field %d runs past the end of its message" % number)
            value, pos = buf[pos:pos + size], pos + size
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise OnnxFormatError("unsupported protobuf wire type %d" % wire)
        if pos > end:
            raise OnnxFormatError("truncated message")
        yield number, wire, value


def _signed64(value: int) -> int:
    return struct.unpack("<q", struct.pack("<Q", value & 0xFFFFFFFFFFFFFFFF))[0]


def read_onnx_graph(data: bytes):
    """({"inputs": [InputSpec...], "ops": set of op types, "outputs": [names]}) of an ONNX model, reading only what the
    harness needs. Initializers listed among the inputs (older exporters) are left out."""
    buf = memoryview(data)
    graph = None
    for number, wire, value in _fields(buf):
        if number == 7 and wire == 2:
            graph = value
    if graph is None:
        raise OnnxFormatError("no graph")
    initializers, inputs, outputs, ops = set(), [], [], set()
    for number, wire, value in _fields(graph):
        if wire != 2:
            continue
        if number == 1:  # NodeProto
            for n, w, v in _fields(value):
                if n == 4 and w == 2:
                    ops.add(bytes(v).decode("utf-8", "replace"))
        elif number == 5:  # TensorProto
            for n, w, v in _fields(value):
                if n == 8 and w == 2:
                    initializers.add(bytes(v).decode("utf-8", "replace"))
        elif number == 11:  # ValueInfoProto
            inputs.append(_value_info(value))
        elif number == 12:  # ValueInfoProto of an output: its name is all deploy needs
            for n, w, v in _fields(value):
                if n == 1 and w == 2:
                    outputs.append(bytes(v).decode("utf-8", "replace"))
    specs = [spec for spec in inputs if spec.name not in initializers]
    return {"inputs": specs, "ops": ops, "outputs": outputs}


def _value_info(buf):
    name, elem, dims, dim_names = "", 0, [], []
    for number, wire, value in _fields(buf):
        if number == 1 and wire == 2:
            name = bytes(value).decode("utf-8", "replace")
        elif number == 2 and wire == 2:
            for n, w, v in _fields(value):  # TypeProto
                if n != 1 or w != 2:
                    continue
                for n2, w2, v2 in _fields(v):  # TypeProto.Tensor
                    if n2 == 1 and w2 == 0:
                        elem = v2
                    elif n2 == 2 and w2 == 2:
                        for n3, w3, v3 in _fields(v2):  # TensorShapeProto
                            if n3 == 1 and w3 == 2:
                                size, param = None, None
                                for n4, w4, v4 in _fields(v3):  # Dimension
                                    if n4 == 1 and w4 == 0:
                                        size = _signed64(v4)
                                    elif n4 == 2 and w4 == 2:
                                        param = bytes(v4).decode("utf-8", "replace")
                                dims.append(size if size is not None and size >= 0 else None)
                                dim_names.append(param)
    if elem not in _ONNX_DTYPES:
        raise OnnxFormatError("input '%s' has ONNX element type %d, which the harness does not handle" % (name, elem))
    return harness.InputSpec(name, dims, _ONNX_DTYPES[elem], dim_names=dim_names)


# ------------------------------------------------------------------------------------- trtexec report

def parse_trtexec_times(text: str, warmup_ms: float = 0.0):
    """Per-inference latencies (ms) and GPU compute times (ms) from trtexec's --exportTimes JSON.

    The file is a list with one object per inference, keys startEnqMs, endEnqMs, startH2dMs, endH2dMs,
    startComputeMs, endComputeMs, startD2hMs, endD2hMs, h2dMs, computeMs, d2hMs, latencyMs (TensorRT's
    samples/common/sampleReporting.cpp, exportJSONTrace). Current versions leave the warm-up queries out;
    older ones include them and also write "endToEndMs": there, queries whose compute started before
    `warmup_ms` are warm-up (the test trtexec's own report applies) and are dropped here.
    """
    try:
        trace = json.loads(text)
    except ValueError as exc:
        raise ValueError("not JSON (%s)" % exc)
    if not isinstance(trace, list) or not all(isinstance(t, dict) for t in trace):
        raise ValueError("expected a JSON list of objects, one per inference")
    if trace and "endToEndMs" in trace[0] and warmup_ms > 0:
        trace = [t for t in trace if float(t.get("startComputeMs", 0.0)) >= warmup_ms]
    try:
        latency = [float(t["latencyMs"]) for t in trace]
        compute = [float(t["computeMs"]) for t in trace]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError("an entry lacks a numeric latencyMs/computeMs (%s)" % exc)
    return latency, compute


_WARMUP_LINE = re.compile(r"Warmup completed\s+(\d+)\s+queries over\s+([\d.eE+-]+)\s*ms")
_TIMING_LINE = re.compile(r"Timing trace has\s+(\d+)\s+queries over\s+([\d.eE+-]+)\s*s")
_TRT_VERSION = re.compile(r"TensorRT version:\s*([\d.]+)|TensorRT\.trtexec \[TensorRT v(\d+)\]")


def parse_trtexec_log(text: str) -> dict:
    """What trtexec's log says about the run: warm-up queries and ms, timed queries and s, its version."""
    out = {}
    m = _WARMUP_LINE.search(text)
    if m:
        out["warmup_runs"], out["warmup_ms"] = int(m.group(1)), float(m.group(2))
    m = _TIMING_LINE.search(text)
    if m:
        out["queries"], out["measure_s"] = int(m.group(1)), float(m.group(2))
    m = _TRT_VERSION.search(text)
    if m:
        out["version"] = m.group(1) or _trt_version_number(m.group(2))
    return out


_ELIGIBLE = re.compile(r"\(Sparsity\) Layers eligible for sparse math:(.*)$", re.M)
_PICKED = re.compile(r"\(Sparsity\) TRT inference plan picked sparse implementation for layers:(.*)$", re.M)


def parse_sparsity(text: str):
    """What a --verbose build log with --sparsity=enable says: {"eligible": [layer names], "picked": [...]}
    (TensorRT's "(Sparsity) Layers eligible for sparse math: ..." and "... picked sparse implementation for
    layers: ..." lines), or None when the log has neither line."""
    eligible, picked = _ELIGIBLE.findall(text), _PICKED.findall(text)
    if not eligible and not picked:
        return None

    def names(lines):  # a long list may come on several lines
        return [n.strip() for line in lines for n in line.split(",") if n.strip()]
    return {"eligible": names(eligible), "picked": names(picked)}


def parse_trtexec_outputs(text: str):
    """{output name: float32 array} from trtexec's --exportOutput JSON: a list of {"name", "dimensions"
    ("1x10"), "values"}; trtexec writes non-finite values as nan / inf, which JSON lacks."""
    text = re.sub(r"(?<![\w.\"])(-?)(inf|nan)\b", lambda m: '"%s%s"' % (m.group(1), m.group(2)), text)
    result = {}
    for entry in json.loads(text):
        if not isinstance(entry, dict) or "name" not in entry or "values" not in entry:
            raise ValueError("an entry without name and values: %r" % (entry,)[:200])
        dims = [int(d) for d in str(entry.get("dimensions", "")).split("x") if d.strip()]
        values = np.asarray([float(v) for v in entry["values"]], dtype=np.float32)
        if dims and int(np.prod(dims)) != values.size:
            raise ValueError("output '%s': %d values for dimensions %s" % (entry["name"], values.size,
                                                                          entry.get("dimensions")))
        result[entry["name"]] = values.reshape(dims) if dims else values
    return result


def _trt_version_number(code: str) -> str:
    """TensorRT.trtexec [TensorRT v8601] -> 8.6.1 (major*1000 + minor*100 + patch; 10.x: 100300 -> 10.3.0)."""
    n = int(code)
    major, rest = divmod(n, 10000 if n >= 100000 else 1000)
    minor, patch = divmod(rest, 100)
    return "%d.%d.%d" % (major, minor, patch)


def _trt_name(name: str) -> str:
    """trtexec's specs are name:value lists; names with ':' or ',' go in single quotes (which newer
    trtexec versions accept; plain names stay plain for older ones)."""
    return "'%s'" % name if (":" in name or "," in name) else name


def _tail(text: str, lines: int = 5) -> str:
    kept = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in kept if "[E]" in ln or "error" in ln.lower()]
    return " | ".join((errors or kept)[-lines:])[:1500]


# ------------------------------------------------------------------------------------------- backends

def _trtexec_or_missing():
    exe = find_trtexec()
    if exe is None:
        try:
            import tensorrt  # noqa: F401
            bindings = ("; the TensorRT Python bindings are installed, but edgeprune builds and runs engines with "
                        "trtexec only: install it (JetPack's tensorrt package puts it at %s)" % JETPACK_TRTEXEC)
        except ImportError:
            bindings = " and the TensorRT Python bindings are not installed either"
        raise harness.runtime_missing("tensorrt", "trtexec is not on PATH nor at %s%s" % (JETPACK_TRTEXEC, bindings))
    return exe


def _graph(args):
    data = harness.model_bytes(args)
    try:
        if data is None:
            with open(args.artifact, "rb") as f:
                data = f.read()
        return read_onnx_graph(data)
    except (OnnxFormatError, UnicodeDecodeError) as exc:
        raise harness.UsageError("artifact %s: not a readable ONNX model (%s)" % (args.artifact, exc))


def _shape_profile(specs, samples):
    """--minShapes/--optShapes/--maxShapes covering every sample's shape of each dynamic input."""
    flags = []
    for which, pick in (("minShapes", lambda shapes: np.min(shapes, axis=0)), ("optShapes", lambda shapes: shapes[0]),
                        ("maxShapes", lambda shapes: np.max(shapes, axis=0))):
        parts = []
        for k, spec in enumerate(specs):
            if None in spec.shape:
                shape = pick(np.array([s[k].shape for s in samples]))
                parts.append("%s:%s" % (_trt_name(spec.name), "x".join(str(int(d)) for d in shape)))
        flags.append("--%s=%s" % (which, ",".join(parts)))
    return flags


def trt_flags(graph, precision: str):
    """trtexec's build flags for a precision: 2:4 sparse kernels allowed wherever TensorRT finds them faster;
    fp32 without TF32 (TensorRT's default on Ampere rounds fp32 matmuls to TF32)."""
    flags = ["--sparsity=enable"]
    if precision == "fp32":
        flags.append("--noTF32")
    else:
        flags.append("--%s" % precision)
    if "QuantizeLinear" in graph["ops"] and precision not in ("int8", "best"):
        flags.append("--int8")  # explicit (QDQ) int8 needs the int8 builder flag
    return flags


def find_trtexec():
    return shutil.which("trtexec") or (JETPACK_TRTEXEC if os.access(JETPACK_TRTEXEC, os.X_OK) else None)


class Onnx(harness.Backend):
    runtime = "onnxruntime"
    description = "Benchmark an .onnx model in onnxruntime (CPU) or as a TensorRT engine built by trtexec."

    def add_arguments(self, parser):
        parser.add_argument("--engine", choices=("auto", "onnxruntime", "trtexec"), default="auto",
                            help="auto: trtexec if it is installed, else onnxruntime")
        parser.add_argument("--trt-precision", choices=("fp16", "int8", "fp32", "best"), default="fp16",
                            help="trtexec only: the precision flag the engine is built with")

    @staticmethod
    def engine(args) -> str:
        if args.engine == "auto":
            return "trtexec" if find_trtexec() else "onnxruntime"
        return args.engine

    def load(self, args, ctx):
        if self.engine(args) == "trtexec":
            return self._trtexec(args, ctx)
        return self._onnxruntime(args)

    # -- onnxruntime
    def _onnxruntime(self, args):
        _, ort = harness.import_first("onnxruntime", ("onnxruntime",))
        options = ort.SessionOptions()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if args.threads is not None:
            options.intra_op_num_threads = args.threads
        options.log_severity_level = 3  # errors only: warnings would flood stderr
        try:
            session = ort.InferenceSession(harness.model_bytes(args) or args.artifact, sess_options=options,
                                           providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - InvalidProtobuf, Fail, NotImplemented (an op) ...
            raise harness.UsageError("artifact %s: onnxruntime cannot load it (%s)"
                                     % (args.artifact, harness.first_line(exc)))
        specs = []
        for i in session.get_inputs():
            m = re.fullmatch(r"tensor\((\w+)\)", i.type)
            element = m.group(1) if m else None
            dtype = {"float": "float32", "double": "float64"}.get(element, element)
            try:
                if dtype is None:  # not a tensor (a sequence or map input)
                    raise TypeError(i.type)
                np.dtype(dtype)
            except TypeError:
                raise harness.UsageError("artifact %s: input '%s' has type %s, which the harness does not handle"
                                         % (args.artifact, i.name, i.type))
            shape = [d if isinstance(d, int) and d >= 0 else None for d in i.shape]
            names = [d if isinstance(d, str) else None for d in i.shape]
            specs.append(harness.InputSpec(i.name, shape, dtype, dim_names=names))
        names = [s.name for s in specs]

        def bind(arrays):
            feeds = dict(zip(names, arrays))
            return lambda: session.run(None, feeds)

        notes = []
        if args.threads is None:
            notes.append("threads: onnxruntime's default intra-op thread count (one per physical core)")
        cpu_like = ("CPUExecutionProvider", "AzureExecutionProvider")
        others = [p for p in ort.get_available_providers() if p not in cpu_like]
        if others:
            notes.append("onnxruntime also offers %s; this run used the CPU provider" % ", ".join(others))
        return harness.Session("onnxruntime", ort.__version__, "onnxruntime-cpu", specs, threads=args.threads,
                               bind=bind, notes=notes, outputs=lambda returned: [np.asarray(o) for o in returned])

    # -- trtexec
    def _trtexec(self, args, ctx):
        exe = _trtexec_or_missing()
        graph = _graph(args)
        specs = graph["inputs"]
        flags = trt_flags(graph, args.trt_precision)
        notes = ["threads: not applicable (TensorRT runs on the GPU; --threads is ignored)"] if args.threads else []

        def measure(arrays, ctx):
            return self._run_trtexec(exe, flags, specs, arrays, args, ctx)

        return harness.Session("tensorrt", "unknown", "trtexec " + " ".join(flags), specs, threads=None,
                               measure=measure, notes=notes)

    # -- deploy: an engine built on this device, run on the reference inputs
    def deploy_build(self, args, ctx, samples, out):
        """TensorRT (deploy_check.deploy's hook): build the engine here with trtexec, with its layer
        information and build log, and run it on each reference sample. None: onnxruntime runs the .onnx
        as it is, through the generic path."""
        if self.engine(args) != "trtexec":
            return None
        import deploy_check  # beside this file; uploaded with the harness

        exe = _trtexec_or_missing()
        graph = _graph(args)
        specs, flags = graph["inputs"], trt_flags(graph, args.trt_precision)
        work = tempfile.mkdtemp(prefix="trtexec-", dir=out)
        try:
            onnx_path = os.path.join(work, "model.onnx")
            with open(onnx_path, "wb") as f:  # the checked bytes, in a dir of this run's own
                f.write(harness.model_bytes(args) or b"")
            dynamic = any(None in s.shape for s in specs)
            # one inference on trtexec's own inputs after the build (8.5's --buildOnly became 8.6's --skipInference:
            # neither is in every JetPack's trtexec)
            build = [exe, "--onnx=%s" % onnx_path, "--saveEngine=%s" % os.path.join(out, ENGINE)] + flags + [
                "--profilingVerbosity=detailed", "--exportLayerInfo=%s" % os.path.join(out, LAYER_INFO),
                "--verbose", "--iterations=1", "--warmUp=0", "--duration=0", "--avgRuns=1"]
            if dynamic:  # an engine for every reference input's shape, tuned for the first one's
                build += _shape_profile(specs, [deploy_check.fit_inputs(specs, s, i) for i, s in enumerate(samples)])
            ctx.progress("load", 0, force=True)
            started = time.monotonic()
            status, log = ctx.run_child(build, what="trtexec (building the engine)")
            build_s = time.monotonic() - started
            with open(os.path.join(out, BUILD_LOG), "w", encoding="utf-8") as f:
                f.write(log)
            if status != 0:
                raise harness.UsageError("artifact %s: trtexec could not build the engine (exit status %s): %s"
                                         % (args.artifact, status, _tail(log)))
            info = parse_trtexec_log(log)
            outputs = []
            ctx.progress("measure", 0, force=True)
            for i, sample in enumerate(samples):
                arrays = deploy_check.fit_inputs(specs, sample, i)
                outputs.append(self._engine_outputs(exe, graph, specs, arrays, work, args, ctx, i))
                ctx.progress("measure", i + 1)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return {"runtime": "tensorrt", "runtime_version": info.get("version", "unknown"),
                "engine": "trtexec " + " ".join(flags), "threads": None, "outputs": outputs,
                "files": [ENGINE, LAYER_INFO, BUILD_LOG],
                "notes": ["the engine was built on this device by trtexec %s" % " ".join(flags)],
                "tensorrt": {"flags": flags, "build_s": round(build_s, 3), "sparsity": parse_sparsity(log),
                             "engine": ENGINE, "layer_info": LAYER_INFO, "build_log": BUILD_LOG}}

    @staticmethod
    def _engine_outputs(exe, graph, specs, arrays, work, args, ctx, index):
        """The engine's outputs for one sample, in the ONNX graph's output order (trtexec --exportOutput)."""
        load, shapes = [], []
        for k, (spec, x) in enumerate(zip(specs, arrays)):
            path = os.path.join(work, "input_%d.bin" % k)
            x.tofile(path)
            load.append("%s:%s" % (_trt_name(spec.name), path))
            if None in spec.shape:
                shapes.append("%s:%s" % (_trt_name(spec.name), "x".join(str(d) for d in x.shape)))
        exported = os.path.join(work, "outputs_%d.json" % index)
        argv = [exe, "--loadEngine=%s" % os.path.join(args.deploy_out, ENGINE), "--loadInputs=%s" % ",".join(load),
                "--exportOutput=%s" % exported, "--iterations=1", "--warmUp=0", "--duration=0", "--avgRuns=1"]
        if shapes:
            argv.append("--shapes=%s" % ",".join(shapes))
        status, log = ctx.run_child(argv, what="trtexec (running the engine)")
        if status != 0:
            raise harness.UsageError("artifact %s: trtexec could not run the engine on reference sample %d "
                                     "(exit status %s): %s" % (args.artifact, index, status, _tail(log)))
        try:
            with open(exported, "r", encoding="utf-8") as f:
                by_name = parse_trtexec_outputs(f.read())
        except (OSError, ValueError) as exc:
            raise harness.UsageError("artifact %s: cannot read trtexec's --exportOutput report (%s)"
                                     % (args.artifact, exc))
        names = graph["outputs"] or list(by_name)
        missing = [n for n in names if n not in by_name]
        if missing:
            raise harness.UsageError("artifact %s: the engine's outputs %s lack %s"
                                     % (args.artifact, ", ".join(by_name), ", ".join(missing)))
        return [by_name[n] for n in names]

    def _run_trtexec(self, exe, flags, specs, arrays, args, ctx):
        notes = []
        work = tempfile.mkdtemp(prefix="edgeprune-trtexec-")
        try:
            times = os.path.join(work, "times.json")
            load_inputs, shapes = [], []
            for i, (spec, x) in enumerate(zip(specs, arrays)):
                path = os.path.join(work, "input_%d.bin" % i)
                x.tofile(path)  # raw, C order: what --loadInputs reads
                load_inputs.append("%s:%s" % (_trt_name(spec.name), path))
                if None in spec.shape:
                    shapes.append("%s:%s" % (_trt_name(spec.name), "x".join(str(d) for d in x.shape)))
            warmup_ms = max(TRT_MIN_WARMUP_MS, int(round(args.warmup_seconds * 1000)))
            argv = [exe, "--onnx=%s" % args.artifact] + flags + [
                "--warmUp=%d" % warmup_ms,
                # --duration is whole seconds in trtexec ("at least N seconds"), so round up
                "--duration=%d" % max(1, int(math.ceil(args.min_seconds))),
                "--iterations=%d" % args.min_runs,  # "at least N iterations": both minimums hold
                "--avgRuns=1",
                "--exportTimes=%s" % times,
                "--loadInputs=%s" % ",".join(load_inputs),
            ]
            if shapes:
                argv.append("--shapes=%s" % ",".join(shapes))
            started = time.monotonic()
            inference_started = []

            def on_line(line):
                # Everything before "Starting inference" is parsing the ONNX and building the engine: load.
                if "Starting inference" in line and not inference_started:
                    inference_started.append(time.monotonic())
                    ctx.progress("measure", 0, force=True)

            status, log = ctx.run_child(argv, on_line, what="trtexec")
            if status != 0:
                raise harness.UsageError("artifact %s: trtexec failed (exit status %s): %s"
                                         % (args.artifact, status, _tail(log)))
            info = parse_trtexec_log(log)
            try:
                with open(times, "r", encoding="utf-8") as f:
                    latency, compute = parse_trtexec_times(f.read(), info.get("warmup_ms", 0.0))
            except (OSError, ValueError) as exc:
                raise harness.UsageError("artifact %s: cannot read trtexec's --exportTimes report (%s)"
                                         % (args.artifact, exc))
            if not latency:
                raise harness.UsageError("artifact %s: trtexec reported no timed inferences" % args.artifact)
            notes.append("trtexec: samples are its latencyMs (H2D + GPU compute + D2H); GPU compute median %.4f ms"
                         % float(np.median(compute)))
            notes.append("trtexec warms up by time only (--warmUp=%d ms); --warmup-runs is not enforced" % warmup_ms)
            if "warmup_runs" not in info:
                notes.append("trtexec's log has no 'Warmup completed' line: the warm-up count is unknown")
            load_s = (inference_started[0] if inference_started else time.monotonic()) - started
            return harness.Measured(latency, info.get("warmup_runs", 0), info.get("warmup_ms", warmup_ms) / 1000.0,
                                    info.get("measure_s", sum(latency) / 1000.0), load_s=load_s,
                                    runtime_version=info.get("version"), notes=notes)
        finally:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    harness.main(Onnx())
