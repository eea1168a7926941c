"""Shared benchmark loop of the device harnesses (`bench_executorch.py`, `bench_litert.py`, `bench_onnx.py`,
`bench_tflm.py`). Each harness runs on the device with the device's own python3 (3.8+) and needs only the
standard library, numpy and its one runtime; this module and `device_state.py` travel with it.

Command line (the same for every harness; runtime-specific options are added by the harness):

    python3 runtimes/bench_<rt>.py ARTIFACT [--min-runs 50] [--min-seconds 2.0] [--warmup-runs 5]
        [--warmup-seconds 0.5] [--threads N] [--cores 0,2] [--max-seconds 600] [--seed 0] [--inputs-npz FILE]
        [--max-cv 0.05] [--max-busy 0.25] [--series ARTIFACT ...]

What it does, in order (the practice of TFLite's benchmark_model and trtexec):

 1. checks the arguments and the artifact file; pins the process to --cores (os.sched_setaffinity) before
    the runtime is imported, so every thread the runtime starts inherits the affinity;
 2. samples the device state (device_state.sample_state), loads the runtime and the artifact ("load");
 3. prepares the inputs once: seeded random arrays of the artifact's input shapes and dtypes (float:
    standard normal; int8/uint8: uniform over the dtype's range; other ints: 0..9; a dynamic dimension
    becomes 1, noted) or the arrays arr_0, arr_1, ... of --inputs-npz, in input order;
 4. warms up until BOTH --warmup-runs and --warmup-seconds are reached, then measures until BOTH --min-runs
    and --min-seconds are reached; each sample is time.perf_counter_ns() around the inference call alone;
    the CPU counters are read just before and just after the measuring stage (device_state.cpu_snapshot),
    outside the timed calls;
 5. samples the device state again and prints ONE line of JSON on stdout (schema "edgeprune.bench/1"):
    the samples in ms, n, p50/p90/p99 (numpy's linear percentiles; p50 is the median), mean, std (ddof=1),
    cv, min, max, ci95_p50 (percentile bootstrap of the median, 2000 resamples, seeded with --seed),
    ci95_p50_batches (batch means: see batch_ci), ci95_p50_scope ("within-run": what both CIs cover),
    threads, cores, settings, inputs, load_s, load (what other processes took of the benchmark's CPUs
    during the measuring stage: device_state.window_load), state_before/state_after, flags and notes.
    With --series A B ...: ARTIFACT, then A, B, ... each measured so in turn in this one process (the
    runtime imported once: profiling many small layers), and the line is {"schema", "series": [one result
    per artifact, in order]}.

Flags (`flags`: the run is not to be trusted as the device's latency; the runner's `valid` is False):
the device state's (a clock that dropped, a thermal trip point, Pi throttling) and the measurement's own,
from `noise_flags`: "noisy" when the CV exceeds --max-cv, "busy" when other processes took more than
--max-busy of the benchmark's CPUs during the measuring stage. Why these defaults: README, "How far to
trust a measurement".

Progress goes to stderr, at most about 4 lines a second:

    PROGRESS {"stage": "load"|"warmup"|"measure", "n": <runs done in this stage>, "elapsed_s": <since start>}

Exit codes: 0 ok; 2 bad arguments or an unreadable/invalid artifact (or one its runtime cannot run);
3 the runtime is not installed; 4 --max-seconds passed; 5 stderr/stdout lost (the SSH connection died);
1 a bug in the harness itself. Every failure ends with one stderr line `error: ...` naming the file,
runtime or argument at fault; expected failures print no traceback.

Robustness, because the harness runs unattended on a remote device:
 - stdout carries the JSON line only: file descriptor 1 is pointed at stderr for the whole run (runtimes
   print from C++ too), and the JSON goes to a duplicate of the original stdout at the end;
 - --max-seconds bounds everything: the loops check it; a watchdog thread exits with 4 if a runtime call
   does not return in time (killing any child process, e.g. trtexec); and a SIGALRM at --max-seconds + 30 s
   kills the process outright if even the watchdog cannot run (a runtime call holding the GIL);
 - the watchdog polls stderr and stdout: when the reading end is gone (POLLERR/POLLHUP, the SSH channel
   closed) the harness exits with 5 at once, and so does any failed write to them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import select
import signal
import subprocess
import sys
import threading
import time

import numpy as np

import device_state

SCHEMA = "edgeprune.bench/1"
EXIT_INTERNAL, EXIT_USAGE, EXIT_NO_RUNTIME, EXIT_DEADLINE, EXIT_LOST_OUTPUT = 1, 2, 3, 4, 5
PROGRESS_INTERVAL_S = 0.25       # at most ~4 progress lines a second
BOOTSTRAP_RESAMPLES = 2000
ALARM_GRACE_S = 30               # SIGALRM backstop after --max-seconds, should the watchdog be stuck
WATCHDOG_GRACE_S = 0.5           # the loops' own deadline check (with its clearer message) comes first
# A run is flagged "noisy" above this CV (std/mean of its samples). Evidence (README, "How far to trust a
# measurement"): ms-scale models on a quiet machine show 1-2 % (ResNet-18 in ExecuTorch, BENCHMARKS.md); every
# ResNet-18 run measured beside busy processes showed 6-25 %, and the overloaded run of issue 11 8.2 %.
MAX_CV = 0.05
# A run is flagged "busy" when other processes (and, in a VM, steal) took more than this share of the CPUs the
# benchmark may use during its measuring stage. Evidence: idle machine 0-2 % (daemons); one busy process on a
# 2-core machine takes 50 %, and runs beside busy processes measured 25-86 % with p50 up to 3.5x the quiet one.
# A quarter sits between, and on a 4-core board lets one stray process on another core pass.
MAX_BUSY = 0.25
# batch_ci: the run is cut into this many consecutive batches, each of at least MIN_BATCH samples, so that the
# default 50 runs already get the interval.
BATCHES = 10
MIN_BATCH = 5
T975 = 2.262                     # Student's t, 97.5 % quantile, BATCHES - 1 = 9 degrees of freedom
CI_SCOPE = "within-run"


# ----------------------------------------------------------------------------------------------- errors

class HarnessError(Exception):
    """An expected failure: printed as one `error: ...` line, exit code `exit_code`."""
    exit_code = EXIT_INTERNAL


class UsageError(HarnessError):
    """Bad arguments, or an artifact that is missing, unreadable, invalid or cannot be run."""
    exit_code = EXIT_USAGE


class RuntimeMissing(HarnessError):
    """The runtime the artifact needs is not installed on this device."""
    exit_code = EXIT_NO_RUNTIME


class DeadlineExceeded(HarnessError):
    exit_code = EXIT_DEADLINE


def first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:500]


def runtime_missing(runtime: str, detail: str) -> RuntimeMissing:
    return RuntimeMissing("runtime '%s' is not installed on this device (%s); install it or export for another "
                          "runtime" % (runtime, detail))


def import_first(runtime: str, modules):
    """Import the first of `modules` that imports; (module name, module). Raises RuntimeMissing naming
    `runtime` and why each failed. Any exception counts as missing: a runtime whose shared library is
    absent raises OSError or ImportError, and one made unimportable raises ImportError."""
    import importlib

    failures = []
    for name in modules:
        try:
            return name, importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001
            failures.append("%s: %s" % (name, first_line(exc)) if len(modules) > 1 else first_line(exc))
    raise runtime_missing(runtime, "; ".join(failures))


# ------------------------------------------------------------------------------------------------ model

class InputSpec:
    """One input of the artifact. `shape` entries are ints, or None for a dynamic dimension (`dim_names`
    keeps the artifact's name for it, if any). `scale`/`zero_point`: quantization of an integer input, so
    that float arrays from --inputs-npz can be quantized the way the model expects."""

    def __init__(self, name, shape, dtype, scale=0.0, zero_point=0, dim_names=None):
        self.name = str(name)
        self.shape = [None if d is None or (isinstance(d, int) and d < 0) else d for d in shape]
        self.dtype = np.dtype(dtype)
        self.scale = float(scale or 0.0)
        self.zero_point = int(zero_point or 0)
        self.dim_names = dim_names or [None] * len(self.shape)


class Session:
    """A loaded artifact, as a backend returns it.

    bind(arrays) -> invoke: sets the prepared inputs (or captures them, for runtimes that take inputs per
        call) and returns a zero-argument callable running one inference; only that call is timed.
    measure(arrays, ctx) -> Measured: instead of bind, for engines that time themselves (trtexec).
    outputs(returned) -> [float arrays]: the outputs of the inference just run, given what invoke returned
        (dequantized where the artifact's outputs are quantized); what `edgeprune deploy` compares.
    threads: the thread count in effect (None where it cannot be known); notes: observations to report.
    """

    def __init__(self, runtime, runtime_version, engine, inputs, threads=None, bind=None, measure=None,
                 notes=None, outputs=None):
        self.runtime = runtime
        self.runtime_version = runtime_version
        self.engine = engine
        self.inputs = inputs
        self.threads = threads
        self.bind = bind
        self.measure = measure
        self.outputs = outputs
        self.notes = list(notes or [])


class Measured:
    """What the warm-up and measuring stages produced: samples in ms, in order. An engine that times itself
    also says how long its own loading took (`load_s`, added to the harness's) and its version.
    `cpu_window`: device_state.cpu_snapshot() just before and just after the measuring stage (None: the
    harness takes them around the whole `Session.measure` call)."""

    def __init__(self, samples_ms, warmup_runs, warmup_s, measure_s, load_s=None, runtime_version=None, notes=(),
                 cpu_window=None):
        self.samples_ms = list(samples_ms)
        self.cpu_window = cpu_window
        self.notes = list(notes)
        self.warmup_runs = int(warmup_runs)
        self.warmup_s = float(warmup_s)
        self.measure_s = float(measure_s)
        self.load_s = load_s
        self.runtime_version = runtime_version


class Backend:
    """Each harness subclasses this: `runtime` names it in messages, `load` returns a Session."""
    runtime = "?"
    description = ""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        pass

    def check_arguments(self, args) -> None:
        pass

    def load(self, args, ctx: "Context") -> Session:
        raise NotImplementedError


# ------------------------------------------------------------------------------------------- arguments

class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one `error:` line and exit 2, instead of argparse's usage + "prog: error:"
        raise UsageError("bad arguments: %s (see --help)" % message)


def parse_cores(text: str):
    """"0,2" or "0-3,6" -> [0, 2] / [0, 1, 2, 3, 6]."""
    cores = set()
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise UsageError("--cores %r: expected CPU numbers like 0,2 or 0-3" % text)
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise UsageError("--cores %r: the range %s is empty" % (text, part))
        cores.update(range(lo, hi + 1))
    return sorted(cores)


def build_parser(backend: Backend) -> argparse.ArgumentParser:
    parser = _Parser(prog=os.path.basename(sys.argv[0] or "bench"), description=backend.description,
                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("artifact", help="the model file to benchmark")
    parser.add_argument("--min-runs", type=int, default=50, help="measure at least this many inferences...")
    parser.add_argument("--min-seconds", type=float, default=2.0, help="...and for at least this long")
    parser.add_argument("--warmup-runs", type=int, default=5, help="warm up with at least this many runs...")
    parser.add_argument("--warmup-seconds", type=float, default=0.5, help="...and for at least this long")
    parser.add_argument("--threads", type=int, default=None,
                        help="the runtime's thread count (None: the runtime's own default)")
    parser.add_argument("--cores", default=None, help="pin to these CPUs, e.g. 0,2 or 2-3 (None: no pinning)")
    parser.add_argument("--max-seconds", type=float, default=600.0,
                        help="give up (exit 4) if load + warm-up + measurement take longer")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs and the bootstrap")
    parser.add_argument("--inputs-npz", default=None,
                        help="inputs as arr_0, arr_1, ... (np.savez), in input order (None: seeded random inputs)")
    parser.add_argument("--max-cv", type=float, default=MAX_CV,
                        help="flag the run 'noisy' when the CV of its samples is above this")
    parser.add_argument("--max-busy", type=float, default=MAX_BUSY,
                        help="flag the run 'busy' when other processes took more than this share of its CPUs")
    ab = parser.add_argument_group("A/B", "time a baseline and ARTIFACT alternately in one process "
                                          "(runtimes/interleave.py)")
    ab.add_argument("--ab-baseline", default=None, help="the baseline artifact: turns A/B mode on")
    ab.add_argument("--rounds", type=int, default=20, help="rounds to run")
    ab.add_argument("--round-runs", type=int, default=5, help="inferences of each artifact per round")
    ab.add_argument("--first-round", type=int, default=0,
                    help="index of the first round (even: the baseline first), to continue an earlier batch")
    series = parser.add_argument_group("series", "benchmark ARTIFACT, then each of these in turn, in this one "
                                                 "process: the runtime starts once for many small models")
    series.add_argument("--series", nargs="+", default=None, metavar="ARTIFACT",
                        help="more artifacts of the same runtime; the JSON holds one result per artifact")
    deploy = parser.add_argument_group("deploy", "run ARTIFACT once per reference input and write its outputs "
                                                 "(edgeprune deploy; see deploy_check.py)")
    deploy.add_argument("--deploy-reference", default=None,
                        help="an .npz of reference inputs (input_<sample>_<k>): turns deploy mode on")
    deploy.add_argument("--deploy-sha256", default=None,
                        help="the sha256 ARTIFACT must have; it is loaded from the very bytes checked")
    deploy.add_argument("--deploy-out", default=None, help="the directory the outputs (and an engine) go to")
    backend.add_arguments(parser)
    return parser


def parse_args(backend: Backend, argv):
    args = build_parser(backend).parse_args(argv)
    for name, low in (("min_runs", 1), ("warmup_runs", 0), ("rounds", 1), ("round_runs", 1), ("first_round", 0)):
        if getattr(args, name) < low:
            raise UsageError("--%s must be at least %d, got %d" % (name.replace("_", "-"), low, getattr(args, name)))
    for name in ("min_seconds", "warmup_seconds"):
        value = getattr(args, name)
        if not (value >= 0 and math.isfinite(value)):
            raise UsageError("--%s must be a finite number >= 0, got %s" % (name.replace("_", "-"), value))
    for name in ("max_cv", "max_busy"):
        value = getattr(args, name)
        if not (value >= 0 and math.isfinite(value)):
            raise UsageError("--%s must be a finite number >= 0, got %s" % (name.replace("_", "-"), value))
    if not (args.max_seconds > 0 and math.isfinite(args.max_seconds)):
        raise UsageError("--max-seconds must be a finite number > 0, got %s" % args.max_seconds)
    if args.threads is not None and args.threads < 1:
        raise UsageError("--threads must be at least 1, got %d" % args.threads)
    args.cores = parse_cores(args.cores) if args.cores is not None else None
    backend.check_arguments(args)
    return args


def check_artifact(path: str) -> int:
    """The artifact's size; UsageError naming it if it is missing, not a file, unreadable or empty."""
    if not os.path.exists(path):
        raise UsageError("artifact %s: no such file" % path)
    if not os.path.isfile(path):
        raise UsageError("artifact %s: not a regular file" % path)
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise UsageError("artifact %s: cannot be read (%s)" % (path, exc.strerror or exc))
    size = os.path.getsize(path)
    if size == 0:
        raise UsageError("artifact %s: the file is empty" % path)
    return size


def model_bytes(args):
    """The artifact's bytes when deploy mode checked them (load from these, never from the path again: a file
    swapped after the check must not run), else None."""
    return getattr(args, "artifact_bytes", None)


def _fmt_cpus(cpus) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def pin_cores(cores):
    """Pin this process (and the threads the runtime will start) to `cores`; the effective set."""
    if cores is None:
        return current_cores()
    if not hasattr(os, "sched_setaffinity"):
        raise UsageError("--cores: this platform (%s) cannot pin a process to CPUs (no os.sched_setaffinity)"
                         % platform.system())
    allowed = os.sched_getaffinity(0)
    missing = [c for c in cores if c not in allowed]
    if missing:
        raise UsageError("--cores: CPU %s is not available to this process (available: %s)"
                         % (_fmt_cpus(missing), _fmt_cpus(allowed)))
    try:
        os.sched_setaffinity(0, cores)
    except OSError as exc:
        raise UsageError("--cores %s: cannot pin to these CPUs (%s)" % (_fmt_cpus(cores), exc))
    return current_cores()


def current_cores():
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return None


def limit_thread_env(threads) -> None:
    """Runtimes built on OpenMP / BLAS size their pools from these when they are imported."""
    if threads is not None:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(threads)


# ------------------------------------------------------------------------------------------------ inputs

def _random_array(rng, shape, dtype: np.dtype, label: str):
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, size=shape).astype(bool)
    if dtype.kind in "iu":
        if dtype.itemsize == 1:  # int8/uint8: quantized activations use the whole range
            info = np.iinfo(dtype)
            return rng.integers(int(info.min), int(info.max) + 1, size=shape, dtype=dtype)
        return rng.integers(0, 10, size=shape).astype(dtype)  # ids, indices, lengths: keep them small
    raise UsageError("%s has dtype %s, for which the harness makes no random data; pass --inputs-npz" % (label, dtype))


def _label(i: int, spec: InputSpec) -> str:
    return "input %d '%s'" % (i, spec.name)


def make_inputs(specs, args, notes):
    """The arrays to feed, one per input spec (see the module docstring)."""
    if args.inputs_npz:
        return _npz_inputs(specs, args.inputs_npz)
    rng = np.random.default_rng(args.seed)
    arrays = []
    for i, spec in enumerate(specs):
        shape = []
        for d, dim_name in zip(spec.shape, spec.dim_names):
            if d is None:
                notes.append("%s has a dynamic dimension%s; the harness used 1"
                             % (_label(i, spec), " '%s'" % dim_name if dim_name else ""))
                d = 1
            shape.append(int(d))
        arrays.append(np.ascontiguousarray(_random_array(rng, tuple(shape), spec.dtype, _label(i, spec))))
    return arrays


def _npz_inputs(specs, path):
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {key: npz[key] for key in npz.files}
    except FileNotFoundError:
        raise UsageError("--inputs-npz %s: no such file" % path)
    except Exception as exc:  # noqa: BLE001 - a bad zip, a pickled object array, ...
        raise UsageError("--inputs-npz %s: cannot be read as an .npz of arrays (%s)" % (path, first_line(exc)))
    expected = ["arr_%d" % i for i in range(len(specs))]
    if sorted(data) != sorted(expected):
        raise UsageError("--inputs-npz %s: has arrays %s; the model has %d input(s), so it needs %s"
                         % (path, ", ".join(sorted(data)) or "none", len(specs), ", ".join(expected)))
    arrays = []
    for i, spec in enumerate(specs):
        x = data["arr_%d" % i]
        where = "--inputs-npz %s: arr_%d" % (path, i)
        fits = x.ndim == len(spec.shape) and all(d is None or d == s for d, s in zip(spec.shape, x.shape))
        if not fits:
            want = "(%s)" % ", ".join("?" if d is None else str(d) for d in spec.shape)
            raise UsageError("%s has shape %s; %s needs %s" % (where, tuple(x.shape), _label(i, spec), want))
        arrays.append(np.ascontiguousarray(convert_input(x, spec, where, _label(i, spec))))
    return arrays


def convert_input(x, spec: InputSpec, where: str, label: str):
    """`x` as the dtype `spec` takes: float data for a quantized input is quantized with its scale."""
    if x.dtype == spec.dtype:
        return x
    if spec.dtype.kind in "iu" and spec.scale and x.dtype.kind == "f":  # float data for a quantized input
        info = np.iinfo(spec.dtype)
        q = np.round(x.astype(np.float64) / spec.scale) + spec.zero_point
        return np.clip(q, info.min, info.max).astype(spec.dtype)
    if spec.dtype.kind == x.dtype.kind or (spec.dtype.kind == "f" and x.dtype.kind in "iu"):
        return x.astype(spec.dtype)
    raise UsageError("%s has dtype %s; %s is %s" % (where, x.dtype, label, spec.dtype))


def dequantized(x, scale, zero_point):
    """A quantized output as float32 ((q - zero_point) * scale); anything else as it is."""
    x = np.asarray(x)
    if x.dtype.kind in "iu" and scale:
        return ((x.astype(np.float64) - float(zero_point)) * float(scale)).astype(np.float32)
    return x


def describe_inputs(specs, arrays):
    return [{"name": s.name, "shape": [int(d) for d in a.shape], "dtype": str(a.dtype)} for s, a in zip(specs, arrays)]


# ---------------------------------------------------------------------------------------------- context

class Context:
    """Deadline, progress, child processes and the output channel of one harness run."""

    def __init__(self, args, started: float, json_fd: int):
        self.args = args
        self.started = started
        self.deadline = started + args.max_seconds
        self.json_fd = json_fd
        self.stage = "load"
        self.children = []
        self._last_progress = None
        self._last_stage = None
        self._done = threading.Event()      # measurement over: the deadline no longer applies
        self._stop = threading.Event()      # stop watching the output pipes too
        self._exit_lock = threading.Lock()

    # -- time
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def deadline_error(self, what: str) -> DeadlineExceeded:
        return DeadlineExceeded("deadline exceeded: --max-seconds %g passed %s (%.1f s since start)"
                                % (self.args.max_seconds, what, self.elapsed()))

    def check_deadline(self, what: str) -> None:
        if time.monotonic() > self.deadline:
            raise self.deadline_error(what)

    # -- progress
    def progress(self, stage: str, n: int, force: bool = False) -> None:
        """One PROGRESS line on stderr; rate-limited, except for the first line of a stage."""
        now = time.monotonic()
        self.stage = stage
        if not force and stage == self._last_stage and self._last_progress is not None \
                and now - self._last_progress < PROGRESS_INTERVAL_S:
            return
        self._last_progress, self._last_stage = now, stage
        line = "PROGRESS " + json.dumps({"stage": stage, "n": int(n), "elapsed_s": round(now - self.started, 3)})
        self.write_stderr(line + "\n")

    def write_stderr(self, text: str) -> None:
        try:
            sys.stderr.write(text)
            sys.stderr.flush()
        except (OSError, ValueError):  # EPIPE (BrokenPipeError), EIO on a dead tty, a closed stream
            self.lost_output()

    def lost_output(self) -> None:
        self.exit(EXIT_LOST_OUTPUT, None)

    # -- children (trtexec): killed on any exit, so that nothing outlives the harness
    def run_child(self, argv, on_line=None, what="a child process"):
        """Run `argv` (stdout+stderr merged), calling on_line(line) per output line and emitting progress;
        killed at the deadline. Returns (exit status, output text)."""
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, bufsize=1, universal_newlines=True,
                                    errors="replace")
        except OSError as exc:
            raise RuntimeMissing("cannot start %s (%s)" % (argv[0], exc))
        self.children.append(proc)
        lines = []

        def reader():
            for line in proc.stdout:
                lines.append(line)
                if on_line is not None:
                    on_line(line)

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        try:
            while True:
                try:
                    proc.wait(timeout=PROGRESS_INTERVAL_S)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if time.monotonic() > self.deadline:
                    proc.kill()
                    proc.wait()
                    raise self.deadline_error("while %s was running" % what)
                self.progress(self.stage, 0)
            thread.join(timeout=5)
        finally:
            if proc.poll() is None:
                proc.kill()
            self.children.remove(proc)
        return proc.returncode, "".join(lines)

    def _kill_children(self) -> None:
        for proc in list(self.children):
            try:
                proc.kill()
            except OSError:
                pass

    # -- exit
    def exit(self, code: int, message) -> None:
        """Print `error: message` (if any) and end the process now, from any thread; only the first caller
        gets through (the watchdog and the main thread may both decide to stop)."""
        if not self._exit_lock.acquire(blocking=True, timeout=10):
            os._exit(code)
        self._kill_children()
        if message:
            try:
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            try:
                os.write(2, ("error: %s\n" % message).encode("utf-8", "replace"))
            except OSError:
                pass  # nobody is listening any more; the exit code still tells
        os._exit(code)

    # -- watchdog
    def start_watchdog(self) -> None:
        if hasattr(signal, "alarm") and threading.current_thread() is threading.main_thread():
            # Backstop with the default action (terminate): works even if no Python code can run any more.
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.alarm(int(math.ceil(self.args.max_seconds)) + ALARM_GRACE_S)
        threading.Thread(target=self._watch, name="harness-watchdog", daemon=True).start()

    def measurement_done(self) -> None:
        self._done.set()

    def stop_watchdog(self) -> None:
        self._stop.set()
        if hasattr(signal, "alarm") and threading.current_thread() is threading.main_thread():
            signal.alarm(0)

    def _watch(self) -> None:
        poller = None
        if hasattr(select, "poll"):
            poller = select.poll()
            for fd in (2, self.json_fd):
                poller.register(fd, 0)  # no events asked for: only POLLERR/POLLHUP (always reported)
        while not self._stop.is_set():
            if poller is not None:
                for _fd, events in poller.poll(int(PROGRESS_INTERVAL_S * 1000)):
                    if events & (select.POLLERR | select.POLLHUP):
                        self.lost_output()
            else:
                time.sleep(PROGRESS_INTERVAL_S)
            if not self._done.is_set() and time.monotonic() > self.deadline + WATCHDOG_GRACE_S:
                self.exit(EXIT_DEADLINE, "deadline exceeded: --max-seconds %g passed during %s (a runtime call did "
                                         "not return)" % (self.args.max_seconds, self.stage))


# -------------------------------------------------------------------------------------------- measuring

def timed_loop(invoke, stage: str, min_runs: int, min_seconds: float, ctx: Context, samples=None):
    """Run `invoke` until both `min_runs` runs and `min_seconds` have passed; (runs, seconds). Appends each
    run's duration in ns to `samples` when given. Zero runs if both minimums are zero (warm-up off)."""
    perf = time.perf_counter_ns
    min_ns = int(min_seconds * 1e9)
    check_every = int(PROGRESS_INTERVAL_S * 1e9)
    n = 0
    ctx.progress(stage, 0, force=True)
    begin = end = perf()
    next_check = begin + check_every
    record = samples.append if samples is not None else None
    if min_runs <= 0 and min_ns <= 0:
        return 0, 0.0
    try:
        while True:
            t0 = perf()
            invoke()
            end = perf()
            if record is not None:
                record(end - t0)
            n += 1
            if n >= min_runs and end - begin >= min_ns:
                break
            if end >= next_check:  # bookkeeping only a few times a second, outside the timed region
                next_check = end + check_every
                ctx.check_deadline("during %s after %d runs" % (stage, n))
                ctx.progress(stage, n)
    except HarnessError:
        raise
    except Exception as exc:  # noqa: BLE001 - the runtime failed to run the model
        raise UsageError("artifact %s: the runtime failed to run it (%s run %d): %s"
                         % (ctx.args.artifact, stage, n + 1, first_line(exc)))
    ctx.progress(stage, n, force=True)
    return n, (end - begin) / 1e9


def run_loops(invoke, args, ctx: Context) -> Measured:
    warm_n, warm_s = timed_loop(invoke, "warmup", args.warmup_runs, args.warmup_seconds, ctx)
    samples = []
    start = device_state.cpu_snapshot()
    n, measure_s = timed_loop(invoke, "measure", args.min_runs, args.min_seconds, ctx, samples)
    end = device_state.cpu_snapshot()
    return Measured([ns / 1e6 for ns in samples], warm_n, warm_s, measure_s, cpu_window=(start, end))


# ------------------------------------------------------------------------------------------- statistics

def bootstrap_medians(sorted_x, rng, resamples: int):
    """Medians of `resamples` bootstrap resamples (n draws with replacement) of the sorted samples.

    Drawing n indices and taking their median costs O(n) per resample (seconds on a Pi for 1e5 samples).
    This draws the same distribution in O(1): n uniform indices are floor(n*U_i) with U_i uniform on [0, 1),
    and floor is monotone, so the k-th smallest index is floor(n*U_(k)), where the k-th order statistic of
    n uniforms is U_(k) ~ Beta(k, n-k+1); given U_(k) = u, the k-1 smaller ones are uniform on [0, u), so
    U_(k-1) = u * V**(1/(k-1)) with V uniform. Sorted samples map the index ranks to value ranks. np.median
    is the middle value for odd n, the mean of the two middle values for even n.
    """
    x = np.asarray(sorted_x, dtype=np.float64)
    n = x.size
    k = n // 2 + 1  # 1-based rank of the upper middle value (the median itself when n is odd)
    u_hi = rng.beta(k, n - k + 1, size=resamples)
    hi = x[np.minimum((u_hi * n).astype(np.int64), n - 1)]
    if n % 2:
        return hi
    u_lo = u_hi * rng.random(resamples) ** (1.0 / (k - 1))
    lo = x[np.minimum((u_lo * n).astype(np.int64), n - 1)]
    return (lo + hi) / 2.0


def batch_ci(samples_ms, p50: float):
    """A 95 % CI of the median that allows for correlation between neighbouring samples (batch means):
    the samples, in the order they were taken, are cut into BATCHES consecutive batches; the median's
    standard error is the spread of the batch medians / sqrt(BATCHES), and the interval is p50 ± t × that.

    The percentile bootstrap (ci95_p50) treats every sample as independent; a burst of slow runs (another
    process, a clock change) makes neighbours alike, and then it is too narrow. Batches of consecutive
    samples carry such bursts whole, so this interval widens with them, as long as they are shorter than
    a batch. None below BATCHES × MIN_BATCH samples. Like the bootstrap, it covers this run only."""
    x = np.asarray(samples_ms, dtype=np.float64)
    if x.size < BATCHES * MIN_BATCH:
        return None
    medians = np.array([np.median(batch) for batch in np.array_split(x, BATCHES)])
    half = T975 * float(medians.std(ddof=1)) / math.sqrt(BATCHES)
    return [p50 - half, p50 + half]


def summarize(samples_ms, seed: int) -> dict:
    x = np.asarray(samples_ms, dtype=np.float64)
    n = int(x.size)
    p50, p90, p99 = (float(v) for v in np.percentile(x, [50, 90, 99]))
    mean = float(x.mean())
    std = float(x.std(ddof=1)) if n > 1 else None
    medians = bootstrap_medians(np.sort(x), np.random.default_rng(seed), BOOTSTRAP_RESAMPLES)
    lo, hi = (float(v) for v in np.percentile(medians, [2.5, 97.5]))
    return {"n": n, "p50": p50, "p90": p90, "p99": p99, "mean": mean, "std": std,
            "cv": (std / mean) if std is not None and mean > 0 else None,
            "min": float(x.min()), "max": float(x.max()), "ci95_p50": [lo, hi],
            "ci95_p50_batches": batch_ci(x, p50), "ci95_p50_scope": CI_SCOPE}


# ---------------------------------------------------------------------------------------------- flags

def _pct(share: float) -> str:
    return "%.1f %%" % (100.0 * share)


def noise_flags(cv, load: dict, max_cv: float = MAX_CV, max_busy: float = MAX_BUSY) -> list:
    """Why the samples cannot stand for the device's latency: "noisy" when the CV of the samples is above
    `max_cv`, "busy" when other processes took more than `max_busy` of the benchmark's CPUs during the
    measuring stage (`load`: device_state.window_load; {} where it could not be read)."""
    flags = []
    if cv is not None and cv > max_cv:
        flags.append("noisy: CV %s > %s" % (_pct(cv), _pct(max_cv)))
    share = (load or {}).get("others_share")
    if share is not None and share > max_busy:
        cpus = load.get("cpus") or []
        flags.append("busy: other processes took %s of the %d CPU(s) the benchmark may use (%s) during the "
                     "measurement > %s" % (_pct(share), len(cpus), _fmt_cpus(cpus), _pct(max_busy)))
    return flags


# ---------------------------------------------------------------------------------------------- notes

def state_notes(state: dict, cores) -> list:
    """Non-fatal observations about the device state at the start of the run."""
    notes = []
    governors = state.get("governor") or {}
    if cores is not None:
        governors = {cpu: g for cpu, g in governors.items() if cpu in {"cpu%d" % c for c in cores}}
    slow = sorted({g for g in governors.values() if g != "performance"})
    if slow:
        cpus = [cpu for cpu, g in sorted(governors.items(), key=lambda kv: int(kv[0][3:])) if g != "performance"]
        notes.append("CPU frequency governor is %s on %s, not 'performance': the clock may change during the run"
                     % ("/".join("'%s'" % g for g in slow), ",".join(cpus)))
    load, count = state.get("loadavg"), state.get("cpu_count")
    if load and count and load[0] > count:
        notes.append("load average %.2f (1 min) is above the %d CPUs: other processes compete with the benchmark"
                     % (load[0], count))
    return notes


# ------------------------------------------------------------------------------------------------ main

def _redirect_stdout() -> int:
    """Point fd 1 at stderr for the whole run and return a duplicate of the original stdout for the JSON:
    runtimes print from C/C++ (and Python) while loading and running, which would corrupt the one JSON line."""
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
    json_fd = os.dup(1)
    os.dup2(2, 1)
    return json_fd


def _emit(json_fd: int, text: str) -> None:
    data = (text + "\n").encode("utf-8")
    while data:
        written = os.write(json_fd, data)
        data = data[written:]


def benchmark_series(backend: Backend, args, ctx: Context) -> dict:
    """ARTIFACT and each --series artifact measured in turn, each as `benchmark` measures one alone (its own
    load, warm-up, measurement and device state), under the one deadline of the whole run."""
    results = []
    paths = [args.artifact] + list(args.series)
    for k, path in enumerate(paths):
        ctx.args = argparse.Namespace(**{**vars(args), "artifact": path, "series": None})
        results.append(benchmark(backend, ctx.args, ctx, last=k == len(paths) - 1))
    ctx.args = args
    return {"schema": SCHEMA, "series": results}


def benchmark(backend: Backend, args, ctx: Context, last: bool = True) -> dict:
    artifact_bytes = check_artifact(args.artifact)
    cores = pin_cores(args.cores)
    limit_thread_env(args.threads)
    state_before = device_state.sample_state()

    ctx.progress("load", 0, force=True)
    t0 = time.perf_counter()
    session = backend.load(args, ctx)
    notes = list(session.notes)
    arrays = make_inputs(session.inputs, args, notes)
    if session.measure is not None:  # the engine times itself (trtexec): it loads the model itself too
        load_s = time.perf_counter() - t0
        start = device_state.cpu_snapshot()
        measured = session.measure(arrays, ctx)
        end = device_state.cpu_snapshot()
        measured.cpu_window = measured.cpu_window or (start, end)
        load_s += measured.load_s or 0.0
        notes += measured.notes
        session.runtime_version = measured.runtime_version or session.runtime_version
    else:
        try:
            invoke = session.bind(arrays)
        except HarnessError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise UsageError("artifact %s: %s cannot take the prepared inputs %s: %s"
                             % (args.artifact, session.runtime, describe_inputs(session.inputs, arrays),
                                first_line(exc)))
        load_s = time.perf_counter() - t0
        ctx.check_deadline("while loading the artifact")
        measured = run_loops(invoke, args, ctx)
    if last:
        ctx.measurement_done()

    state_after = device_state.sample_state()
    stats = summarize(measured.samples_ms, args.seed)
    notes += state_notes(state_before, args.cores)
    if session.threads is not None and cores and session.threads > len(cores):
        notes.append("%d threads share %d CPU(s): threads will preempt each other" % (session.threads, len(cores)))
    elif session.threads is None and session.measure is None and args.cores is not None and args.threads is None:
        notes.append("--cores without --threads: the runtime's default thread count may exceed the %d pinned CPU(s)"
                     % len(cores))
    load = device_state.window_load(measured.cpu_window[0], measured.cpu_window[1], cores)
    settings = dict(vars(args))
    result = {
        "schema": SCHEMA,
        "runtime": session.runtime,
        "runtime_version": session.runtime_version,
        "engine": session.engine,
        "artifact": os.path.basename(args.artifact),
        "artifact_bytes": artifact_bytes,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "unit": "ms",
        "warmup_runs": measured.warmup_runs,
        "warmup_s": measured.warmup_s,
        "measure_s": measured.measure_s,
    }
    result.update(stats)
    result.update({
        "samples": measured.samples_ms,
        "threads": session.threads,
        "cores": cores,
        "settings": settings,
        "inputs": describe_inputs(session.inputs, arrays),
        "load_s": load_s,
        "load": load,
        "state_before": state_before,
        "state_after": state_after,
        "flags": device_state.state_flags(state_before, state_after, args.cores)
                 + noise_flags(stats["cv"], load, args.max_cv, args.max_busy),
        "notes": notes,
    })
    return result


def main(backend: Backend, argv=None) -> None:
    """Run the harness for `backend` and end the process (os._exit: a runtime's teardown must not turn a
    finished benchmark into a crash)."""
    started = time.monotonic()
    try:
        # Before stdout is redirected, so that --help goes to stdout (argparse exits through SystemExit).
        args = parse_args(backend, sys.argv[1:] if argv is None else argv)
    except HarnessError as err:
        _fail(None, err.exit_code, str(err))
    json_fd = _redirect_stdout()
    ctx = Context(args, started, json_fd)
    try:
        ctx.start_watchdog()
        if args.deploy_reference is not None:
            import deploy_check  # travels beside this file; only deploy runs need it

            result = deploy_check.deploy(backend, args, ctx)
        elif args.ab_baseline is not None:
            import interleave  # travels beside this file; only A/B runs need it

            result = interleave.benchmark_ab(backend, args, ctx)
        elif args.series:
            result = benchmark_series(backend, args, ctx)
        else:
            result = benchmark(backend, args, ctx)
        text = json.dumps(result, allow_nan=False, ensure_ascii=False)
        ctx.stop_watchdog()
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            _emit(json_fd, text)
        except (OSError, ValueError):
            os._exit(EXIT_LOST_OUTPUT)
        os._exit(0)
    except HarnessError as err:
        _fail(ctx, err.exit_code, str(err))
    except KeyboardInterrupt:
        _fail(ctx, 130, "interrupted")
    except BaseException as exc:  # noqa: BLE001 - a bug: keep the traceback, then the error line
        import traceback

        traceback.print_exc()
        _fail(ctx, EXIT_INTERNAL, "internal error in the %s harness: %s: %s"
              % (backend.runtime, type(exc).__name__, first_line(exc)))


def _fail(ctx, code: int, message: str) -> None:
    if ctx is not None:
        ctx.exit(code, message)
    try:
        sys.stderr.flush()
        os.write(2, ("error: %s\n" % message).encode("utf-8", "replace"))
    except OSError:
        pass
    os._exit(code)
