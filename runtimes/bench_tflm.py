"""Benchmark a full-int8 `.tflite` model in TensorFlow Lite for Microcontrollers' Python interpreter.

    python3 bench_tflm.py MODEL.tflite [--arena-bytes 16777216] [--min-runs 50] [--min-seconds 2.0]
        [--warmup-runs 5] [--warmup-seconds 0.5] [--threads N] [--cores 0,2] [--max-seconds 600] [--seed 0]
        [--inputs-npz FILE]

The interpreter is `tflite_micro.python.tflite_micro.runtime.Interpreter.from_bytes(model, arena_size=N)`:
inputs are set once with `set_input(array, i)`, each timed sample is one `invoke()`. It runs TFLM's reference
kernels on the host CPU: useful to compare artifacts with each other, not a microcontroller's latency.

TFLM is single-threaded: "threads" is always 1 (--threads other than 1 is ignored, with a note).

--arena-bytes is the tensor arena (default 16 MiB, generous: TFLM writes outside an arena that is too small
and the process dies with SIGSEGV instead of raising). Because of that crash, the model is first loaded and
run once in a forked child process; if the child crashes, the harness reports the arena or the file and exits
2 instead of dying. Arenas under 1024 bytes are refused outright. Float arrays from --inputs-npz are quantized
with the input's scale and zero point.

Output: one JSON line on stdout (schema "edgeprune.bench/1", runtime "tflm"); see harness.py.
Needs only the standard library, numpy and tflite_micro.
"""

from __future__ import annotations

import os
import signal
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # harness.py beside us, even via runpy

import numpy as np  # noqa: E402

import harness  # noqa: E402

DEFAULT_ARENA_BYTES = 16 << 20
MIN_ARENA_BYTES = 1024  # below ~500 bytes TFLM's own bookkeeping overflows the arena (a crash, every model)
_MAX_INPUTS = 1024


def _version() -> str:
    try:
        from importlib import metadata

        return metadata.version("tflite_micro")
    except Exception:  # noqa: BLE001
        import tflite_micro

        return str(getattr(tflite_micro, "__version__", "unknown"))


def _input_specs(runtime, model: bytes, interpreter):
    """Input specs from the interpreter, names from the flatbuffer (TFLM's details carry no name)."""
    try:
        subgraph = runtime.convert_bytearray_to_object(bytearray(model)).subgraphs[0]
        names = []
        for index in subgraph.inputs:
            name = subgraph.tensors[index].name
            names.append(name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name))
    except Exception:  # noqa: BLE001 - without the flatbuffer, count the inputs by asking past the end
        names = None
    specs = []
    for i in range(_MAX_INPUTS if names is None else len(names)):
        try:
            d = interpreter.get_input_details(i)
        except IndexError:  # past the last input
            break
        qp = d.get("quantization_parameters") or {}
        scales = np.asarray(qp.get("scales", []), dtype=np.float64).ravel()
        zero_points = np.asarray(qp.get("zero_points", []), dtype=np.int64).ravel()
        specs.append(harness.InputSpec(names[i] if names is not None else "input_%d" % i,
                                       [int(s) for s in np.asarray(d["shape"]).ravel()], d["dtype"],
                                       scale=float(scales[0]) if scales.size == 1 else 0.0,
                                       zero_point=int(zero_points[0]) if zero_points.size == 1 else 0))
    return specs


def _probe_in_child(run_once, args, ctx) -> None:
    """Run `run_once()` in a forked child first: a crash there (SIGSEGV from a small arena or a corrupt
    file) becomes an error message here. Python exceptions in the child are reported the same way."""
    if not hasattr(os, "fork"):
        return
    read_fd, write_fd = os.pipe()
    with warnings.catch_warnings():  # Python 3.12+ warns about fork() with threads (ours: the watchdog)
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # child: no cleanup handlers, no output besides the pipe
        os.close(read_fd)
        code = 0
        try:
            run_once()
        except BaseException as exc:  # noqa: BLE001
            os.write(write_fd, harness.first_line(exc).encode("utf-8", "replace")[:2000])
            code = 1
        os._exit(code)
    os.close(write_fd)
    ctx.children.append(_ForkedChild(pid))
    try:
        chunks = []
        while True:
            chunk = os.read(read_fd, 4096)
            if not chunk:
                break
            chunks.append(chunk)
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(read_fd)
        ctx.children.pop()
    message = b"".join(chunks).decode("utf-8", "replace")
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = "signal %d" % sig
        raise harness.UsageError("artifact %s: TFLite-Micro crashed (%s) loading and running it with an arena of %d "
                                 "bytes: the arena is probably too small (try a larger --arena-bytes) or the file "
                                 "is corrupt" % (args.artifact, name, args.arena_bytes))
    if os.WEXITSTATUS(status) != 0:
        raise harness.UsageError("artifact %s: TFLite-Micro cannot load or run it with an arena of %d bytes (%s)"
                                 % (args.artifact, args.arena_bytes, message or "no message"))


class _ForkedChild:
    """Lets the harness's deadline/lost-output exits kill the probe child like any other child process."""

    def __init__(self, pid):
        self.pid = pid

    def kill(self):
        os.kill(self.pid, signal.SIGKILL)


class TFLM(harness.Backend):
    runtime = "tflm"
    description = "Benchmark an int8 .tflite model in the TensorFlow Lite for Microcontrollers interpreter."

    def add_arguments(self, parser):
        parser.add_argument("--arena-bytes", type=int, default=DEFAULT_ARENA_BYTES,
                            help="TFLM tensor arena size in bytes")

    def check_arguments(self, args):
        if args.arena_bytes < MIN_ARENA_BYTES:
            raise harness.UsageError("--arena-bytes %d: below the %d bytes TFLite-Micro needs for its own bookkeeping "
                                     "(smaller arenas crash it)" % (args.arena_bytes, MIN_ARENA_BYTES))

    def load(self, args, ctx):
        _, runtime = harness.import_first("tflm", ("tflite_micro.python.tflite_micro.runtime",))
        model = harness.model_bytes(args)
        if model is None:
            with open(args.artifact, "rb") as f:
                model = f.read()
        if model[4:8] != b"TFL3":
            raise harness.UsageError("artifact %s: not a TFLite flatbuffer (no 'TFL3' identifier at byte 4)"
                                     % args.artifact)

        def create():
            return runtime.Interpreter.from_bytes(model, arena_size=args.arena_bytes)

        def run_once():  # in the probe child: everything the benchmark will do, once, with zero inputs
            it = create()
            for i, spec in enumerate(_input_specs(runtime, model, it)):
                it.set_input(np.zeros([d or 1 for d in spec.shape], dtype=spec.dtype), i)
            it.invoke()

        _probe_in_child(run_once, args, ctx)
        try:
            interpreter = create()
            specs = _input_specs(runtime, model, interpreter)
        except Exception as exc:  # noqa: BLE001 - struct.error/RuntimeError on a corrupt file or small arena
            raise harness.UsageError("artifact %s: TFLite-Micro cannot load it with an arena of %d bytes (%s)"
                                     % (args.artifact, args.arena_bytes, harness.first_line(exc)))

        def bind(arrays):
            for i, x in enumerate(arrays):
                interpreter.set_input(x, i)
            return interpreter.invoke

        def outputs(returned):
            result, i = [], 0
            while True:  # TFLM says how many outputs only by refusing the index past the last
                try:
                    d = interpreter.get_output_details(i)
                except (IndexError, ValueError, RuntimeError):
                    break
                qp = d.get("quantization_parameters") or {}
                scales = np.asarray(qp.get("scales", []), dtype=np.float64).ravel()
                zero_points = np.asarray(qp.get("zero_points", []), dtype=np.int64).ravel()
                result.append(harness.dequantized(interpreter.get_output(i), scales[0] if scales.size == 1 else 0.0,
                                                  zero_points[0] if zero_points.size == 1 else 0))
                i += 1
            return result

        notes = ["TFLite-Micro's reference kernels on this CPU (not a microcontroller); arena %d bytes"
                 % args.arena_bytes]
        if args.threads not in (None, 1):
            notes.append("--threads %d ignored: TFLite-Micro is single-threaded" % args.threads)
        return harness.Session("tflm", _version(), "tflm-reference-kernels", specs, threads=1, bind=bind, notes=notes,
                               outputs=outputs)


if __name__ == "__main__":
    harness.main(TFLM())
