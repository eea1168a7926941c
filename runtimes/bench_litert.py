"""Benchmark a LiteRT (TensorFlow Lite) `.tflite` model on this device.

    python3 bench_litert.py MODEL.tflite [--min-runs 50] [--min-seconds 2.0] [--warmup-runs 5]
        [--warmup-seconds 0.5] [--threads N] [--cores 0,2] [--max-seconds 600] [--seed 0] [--inputs-npz FILE]

The interpreter comes from the first of `ai_edge_litert.interpreter` (LiteRT), `tflite_runtime.interpreter`
(the older standalone wheel) and `tensorflow.lite` that imports. The model runs with the interpreter's
default delegates (XNNPACK for float and int8 CPU kernels: engine "xnnpack"); --threads is the
interpreter's `num_threads` (without it the interpreter picks its own default and "threads" in the JSON is null). Inputs are set once
with `set_tensor`; each timed sample is one `invoke()`. A dynamic input dimension (shape_signature -1) is
resized to 1.

Output: one JSON line on stdout (schema "edgeprune.bench/1", runtime "litert"); see harness.py.
Needs only the standard library, numpy and one of those interpreters.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # harness.py beside us, even via runpy

import harness  # noqa: E402

_INTERPRETERS = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter", "tensorflow.lite")
_DISTRIBUTIONS = {"ai_edge_litert.interpreter": "ai_edge_litert", "tflite_runtime.interpreter": "tflite_runtime",
                  "tensorflow.lite": "tensorflow"}


def _version(module_name: str) -> str:
    top = __import__(_DISTRIBUTIONS[module_name])
    version = getattr(top, "__version__", None)
    if version is None:
        try:
            from importlib import metadata  # Python 3.8+

            version = metadata.version(_DISTRIBUTIONS[module_name].replace("_", "-"))
        except Exception:  # noqa: BLE001
            version = "unknown"
    return str(version)


class LiteRT(harness.Backend):
    runtime = "litert"
    description = "Benchmark a .tflite model in the LiteRT / TensorFlow Lite interpreter."

    def load(self, args, ctx):
        name, module = harness.import_first("litert", _INTERPRETERS)
        interpreter_class = module.Interpreter
        data = harness.model_bytes(args)
        kwargs = {"model_content": data} if data is not None else {"model_path": args.artifact}
        if args.threads is not None:
            kwargs["num_threads"] = args.threads
        try:
            interpreter = interpreter_class(**kwargs)
        except Exception as exc:  # noqa: BLE001 - ValueError for a corrupt flatbuffer, RuntimeError for ops
            raise harness.UsageError("artifact %s: not a model the LiteRT interpreter can load (%s)"
                                     % (args.artifact, harness.first_line(exc)))
        details = interpreter.get_input_details()
        specs = []
        for d in details:
            signature = list(d.get("shape_signature", d["shape"]))
            scale, zero_point = d.get("quantization", (0.0, 0))
            specs.append(harness.InputSpec(d["name"], [int(s) if s >= 0 else None for s in signature], d["dtype"],
                                           scale=scale, zero_point=zero_point))

        def bind(arrays):
            # A dynamic dimension must be given its size before allocation.
            for d, spec, x in zip(details, specs, arrays):
                if None in spec.shape:
                    interpreter.resize_tensor_input(d["index"], list(x.shape))
            interpreter.allocate_tensors()
            for d, x in zip(details, arrays):
                interpreter.set_tensor(d["index"], x)
            return interpreter.invoke

        def outputs(returned):
            result = []
            for d in interpreter.get_output_details():
                scale, zero_point = d.get("quantization", (0.0, 0))
                result.append(harness.dequantized(interpreter.get_tensor(d["index"]), scale, zero_point))
            return result

        notes = ["interpreter: %s.Interpreter" % name]
        if args.threads is None:
            notes.append("threads: the interpreter's default (num_threads not set)")
        return harness.Session("litert", _version(name), "xnnpack", specs,
                               threads=args.threads, bind=bind, notes=notes, outputs=outputs)


if __name__ == "__main__":
    harness.main(LiteRT())
