"""Benchmark an ExecuTorch `.pte` program (e.g. with the XNNPACK delegate) on this device.

    python3 bench_executorch.py PROGRAM.pte [--method forward] [--min-runs 50] [--min-seconds 2.0]
        [--warmup-runs 5] [--warmup-seconds 0.5] [--threads N] [--cores 0,2] [--max-seconds 600] [--seed 0]
        [--inputs-npz FILE]

Runs the program's method (default "forward") through `executorch.runtime.Runtime`: the inputs are made
into torch tensors once (the ExecuTorch Python runtime takes torch tensors, and imports torch itself), and
each timed sample is one `method.execute(inputs)` with the same tensors.

Threads: ExecuTorch's CPU backends (XNNPACK and the optimized kernels) share one process-wide threadpool.
The Python bindings of executorch 1.x can resize it: `executorch.extension.pybindings.portable_lib.
_unsafe_reset_threadpool(n)` ("unsafe": no method may be running, and a delegate keeps the pool it was
initialized with, so it is called before the method is loaded) and `_threadpool_get_thread_count()` reads it
back. --threads N resizes it; without --threads the pool keeps its default size (one thread per core the
runtime detects, which ignores --cores). "threads" in the JSON is the count read back. In an executorch
build without these bindings --threads exits 2 and "threads" is null.

Before the runtime sees the file, its structure is checked in Python: the ExecuTorch 1.5 runtime aborts the
whole process (C++ terminate) when a corrupt file makes it log non-UTF-8 bytes, which must become an exit 2
with a message instead. The check is the 'ET..' identifier at byte 4 and, where executorch's exir package
is installed (the full pip wheel), its program deserializer.

Output: one JSON line on stdout (schema "edgeprune.bench/1", runtime "executorch"); see harness.py.
Needs the standard library, numpy and executorch (which brings torch).
"""

from __future__ import annotations

import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # harness.py beside us, even via runpy

import numpy as np  # noqa: E402

import harness  # noqa: E402

# ExecuTorch ScalarType codes (executorch/runtime/core/portable_type/scalar_type.h) -> numpy dtypes
_SCALAR_TYPES = {0: "uint8", 1: "int8", 2: "int16", 3: "int32", 4: "int64", 5: "float16", 6: "float32",
                 7: "float64", 11: "bool"}
_PROGRAM_IDENTIFIER = re.compile(rb"ET\d\d")


def check_identifier(path: str) -> None:
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8 or not _PROGRAM_IDENTIFIER.fullmatch(head[4:8]):
        raise harness.UsageError("artifact %s: not an ExecuTorch program (no 'ET..' identifier at byte 4)" % path)


def inspect_program(path: str, method: str):
    """Reject what would crash the runtime. (notes about what could not be checked, engine name)."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        from executorch.exir._serialize._program import deserialize_pte_binary
    except Exception:  # noqa: BLE001 - a runtime-only install has no exir
        engine = "xnnpack" if b"XnnpackBackend" in data else "executorch"
        return ["the program's structure was not pre-checked (executorch.exir is not installed); a corrupt "
                "file may crash the runtime"], engine
    try:
        program = deserialize_pte_binary(data).program
        backends = {d.id for plan in program.execution_plan if plan.name == method for d in plan.delegates}
    except Exception as exc:  # noqa: BLE001 - the deserializer raises many types on corrupt input
        raise harness.UsageError("artifact %s: corrupt ExecuTorch program (%s: %s)"
                                 % (path, type(exc).__name__, harness.first_line(exc)))
    # "XnnpackBackend" -> "xnnpack"; a program without delegates runs on the portable CPU kernels
    engine = "+".join(sorted(b[: -len("Backend")].lower() if b.endswith("Backend") else b for b in backends))
    return [], engine or "portable"


def _threadpool():
    """(reset, get) of the ExecuTorch threadpool bindings, or (None, None) where this build lacks them."""
    try:
        from executorch.extension.pybindings import portable_lib
    except Exception:  # noqa: BLE001
        return None, None
    return (getattr(portable_lib, "_unsafe_reset_threadpool", None),
            getattr(portable_lib, "_threadpool_get_thread_count", None))


def _version() -> str:
    try:
        from importlib import metadata

        return metadata.version("executorch")
    except Exception:  # noqa: BLE001
        import executorch

        return str(getattr(executorch, "__version__", "unknown"))


class ExecuTorch(harness.Backend):
    runtime = "executorch"
    description = "Benchmark an ExecuTorch .pte program."

    def add_arguments(self, parser):
        parser.add_argument("--method", default="forward", help="the program's method to run")

    def load(self, args, ctx):
        check_identifier(args.artifact)  # cheap, and needs no runtime: before the slow import
        _, runtime_module = harness.import_first("executorch", ("executorch.runtime",))
        notes, engine = inspect_program(args.artifact, args.method)
        try:  # registers the quantized_decomposed kernels that q/dq ops outside the delegate need
            import executorch.kernels.quantized  # noqa: F401
        except Exception:  # noqa: BLE001
            pass
        import torch  # executorch imported it already: its runtime takes torch tensors

        reset, get = _threadpool()
        if args.threads is not None:
            if reset is None:
                raise harness.UsageError("--threads: this executorch build has no _unsafe_reset_threadpool, so the "
                                         "thread count cannot be set; leave --threads out")
            reset(args.threads)  # before load_method: a delegate binds the pool when it is initialized
        runtime = runtime_module.Runtime.get()
        try:
            program = runtime.load_program(harness.model_bytes(args) or args.artifact)
            if args.method not in program.method_names:
                raise harness.UsageError("artifact %s: the program has no method '%s' (it has: %s)"
                                         % (args.artifact, args.method, ", ".join(sorted(program.method_names))))
            method = program.load_method(args.method)
        except harness.HarnessError:
            raise
        except Exception as exc:  # noqa: BLE001 - RuntimeError("Failed to load program, error: 0x..")
            raise harness.UsageError("artifact %s: the ExecuTorch runtime cannot load it (%s)"
                                     % (args.artifact, harness.first_line(exc)))
        meta = method.metadata
        specs = []
        for i in range(meta.num_inputs()):
            info = meta.input_tensor_meta(i)
            code = int(info.dtype())
            if code not in _SCALAR_TYPES:
                raise harness.UsageError("artifact %s: input %d has ExecuTorch scalar type %d, which the harness "
                                         "does not handle" % (args.artifact, i, code))
            specs.append(harness.InputSpec("input_%d" % i, [int(s) for s in info.sizes()], _SCALAR_TYPES[code]))

        def bind(arrays):
            tensors = [torch.from_numpy(a) for a in arrays]
            return lambda: method.execute(tensors)

        threads = int(get()) if get is not None else None
        if args.threads is None:
            size = "unknown" if threads is None else threads
            notes.append("threads: ExecuTorch's default threadpool size (%s)" % size)
        def outputs(returned):
            return [t.detach().numpy() if hasattr(t, "detach") else np.asarray(t) for t in returned]

        return harness.Session("executorch", _version(), engine, specs, threads=threads,
                               bind=bind, notes=notes, outputs=outputs)


if __name__ == "__main__":
    harness.main(ExecuTorch())
