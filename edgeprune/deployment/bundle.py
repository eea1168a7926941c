"""The bundle `edgeprune deploy` brings back: what an application loads, and the proof it was checked.

    bundle/
      <model>.engine | .pte | .tflite | .onnx   the file the application loads (a TensorRT engine is the
                                                one built on the device)
      deploy.json          device, runtime and version, OS / L4T / JetPack, power mode and clocks, the checks
      reference.npz        the inputs and PyTorch's outputs the device was checked on
      device-outputs.npz   what the device computed on them
      layers.json, build.log   (TensorRT) the engine's layer information and trtexec's build log
      README.md            how to load it in its runtime; nothing in the bundle needs edgeprune

Written into a staging directory beside `out` and renamed into place: a bundle is whole or absent. A run
killed while it swapped an old bundle for a new one is undone by the next: the old bundle is put back.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from .._atomic import abandoned, make_dir, remove_path, sha256_file, temporary_path
from .._warn import warn
from ..errors import ArtifactError
from ..export.reference import Reference

MANIFEST = "deploy.json"
REFERENCE = "reference.npz"
DEVICE_OUTPUTS = "device-outputs.npz"
README = "README.md"
ENGINE = "model.engine"  # what runtimes/bench_onnx.py's deploy build saves


def write(out: Path, artifact: Path, manifest: dict, fetched: Path, reference: Reference, record: dict,
          force: bool) -> tuple[Path, dict]:
    """Write the bundle into `out` (replaced only with `force`); returns the path of the loadable file and
    the manifest as written (with the bundle's files and their sha256)."""
    make_dir(out.parent)
    stage = temporary_path(out, "stage")
    stage.mkdir()
    try:
        if record["runtime"] == "tensorrt":
            loadable = f"{artifact.stem}.engine"
            shutil.copyfile(fetched / ENGINE, stage / loadable)
            for name in ("layers.json", "build.log"):
                if (fetched / name).exists():
                    shutil.copyfile(fetched / name, stage / name)
        else:
            loadable = artifact.name
            shutil.copyfile(artifact, stage / loadable)
        shutil.copyfile(fetched / "outputs.npz", stage / DEVICE_OUTPUTS)
        reference.write(stage / REFERENCE)
        (stage / README).write_text(readme(loadable, record, reference), encoding="utf-8")
        record = dict(record, load=loadable,
                      files={p.name: sha256_file(p) for p in sorted(stage.iterdir()) if p.is_file()})
        (stage / MANIFEST).write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
        _sync(stage)
        _swap(stage, out, force)
    finally:
        if stage.exists():
            remove_path(stage)
    return out / loadable, record


def _sync(directory: Path) -> None:
    """Flush the bundle's files to disk before the rename makes them the bundle."""
    for path in directory.iterdir():
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())


def recover(out: Path) -> None:
    """Undo what a killed deploy into `out` left beside it: its staging dir goes; an old bundle it had moved
    aside comes back if `out` is missing (the kill fell between the two renames), else goes."""
    ours = [left for left in abandoned(out.parent, ("stage", "old")) if left.path.name.startswith(f".{out.name}.")]
    for left in ours:
        if left.kind == "old" and not out.exists():
            os.replace(left.path, out)
            warn(f"{out}: put back the bundle an interrupted deploy had moved aside")
        else:
            remove_path(left.path)


def _swap(stage: Path, out: Path, force: bool) -> None:
    old = None
    if out.exists():
        if any(out.iterdir()) and not force:  # checked before the run; someone wrote there meanwhile
            raise ArtifactError(f"{out}: files appeared there during the deploy; pass force=True to replace them")
        old = temporary_path(out, "old")
        os.replace(out, old)
    try:
        os.replace(stage, out)
    except OSError:
        if old is not None:
            os.replace(old, out)  # the earlier bundle, as it was
        raise
    if old is not None:
        remove_path(old)


def _inputs(reference: Reference) -> str:
    return ", ".join(f"input {k}: {list(x.shape)} {x.dtype}" for k, x in enumerate(reference.inputs[0]))


def _outputs(reference: Reference) -> str:
    return ", ".join(f"output {k}: {list(np.shape(y))}" for k, y in enumerate(reference.outputs[0]))


def readme(loadable: str, record: dict, reference: Reference) -> str:
    runtime, version = record["runtime"], record.get("runtime_version")
    device, system = record["device"], record.get("system") or {}
    checks = record["checks"]
    status = "passed" if record["passed"] else "FAILED: do not ship this bundle"
    lines = [
        f"# {loadable} for {device['name']} ({device['target']})",
        "",
        f"Deployed {record['deployed_at']} by `edgeprune deploy`; on-device verification **{status}**.",
        "",
        f"- runtime: {runtime} {version} ({record.get('engine')})",
        f"- device: {system.get('os') or 'OS unknown'}, kernel {system.get('kernel')}, {system.get('machine')}"
        + (f", L4T {system['l4t']}" if system.get("l4t") else "")
        + (f", JetPack {system['jetpack']}" if system.get("jetpack") else ""),
        f"- inputs: {_inputs(reference)}",
        f"- outputs: {_outputs(reference)}",
        f"- checked on {checks['samples']} sample(s) ({checks['reference']}), compared at {checks['compared_at']}: "
        + "; ".join(f"output {c['output']} {'ok' if c['passed'] else 'FAILED'} ({c['tolerance']})"
                    for c in checks["outputs"]),
        "",
        "The inputs and PyTorch's outputs it was checked on are in `reference.npz` (`input_<sample>_<k>`,",
        "`output_<sample>_<k>`), what the device computed in `device-outputs.npz`; `deploy.json` has the rest.",
        "Nothing here needs edgeprune.",
        "",
        "## Load it",
        "",
    ]
    lines += LOADERS[runtime](loadable, record)
    return "\n".join(lines) + "\n"


def _tensorrt(loadable: str, record: dict) -> list[str]:
    trt = record.get("tensorrt") or {}
    sparse = [r["layer"] for r in trt.get("layers", []) if r.get("sparse_kernel")]
    lines = [
        f"A TensorRT engine, built on this device by `trtexec {' '.join(trt.get('flags') or [])}`. An engine is",
        f"tied to the GPU, the TensorRT version ({record.get('runtime_version')}) and the JetPack release it was",
        "built with: rebuild it (`edgeprune deploy` again) after a JetPack upgrade.",
        "",
        "```python",
        "import tensorrt as trt",
        "",
        "logger = trt.Logger(trt.Logger.WARNING)",
        "runtime = trt.Runtime(logger)",
        f"with open(\"{loadable}\", \"rb\") as f:",
        "    engine = runtime.deserialize_cuda_engine(f.read())",
        "context = engine.create_execution_context()",
        "# bind device buffers per I/O tensor (engine.get_tensor_name(i), context.set_tensor_address) and",
        "# call context.execute_async_v3(stream)",
        "```",
        "",
        "C++: `IRuntime::deserializeCudaEngine` on the file's bytes.",
        f"From the shell: `trtexec --loadEngine={loadable}`.",
        "",
        f"Layers on sparse (2:4) kernels: {', '.join(sparse) if sparse else 'none'}.",
    ]
    for w in trt.get("warnings", []):
        lines.append(f"- warning: {w}")
    return lines


def _executorch(loadable: str, record: dict) -> list[str]:
    return [
        "An ExecuTorch program (XNNPACK delegate). Python (`pip install executorch`):",
        "",
        "```python",
        "import torch",
        "from executorch.runtime import Runtime",
        "",
        f"method = Runtime.get().load_program(\"{loadable}\").load_method(\"forward\")",
        "outputs = method.execute([torch.zeros(...)])  # the inputs' shapes and dtypes are listed above",
        "```",
        "",
        f"C++: `executorch::extension::Module module(\"{loadable}\"); module.forward(inputs);` with the XNNPACK",
        "backend linked in.",
    ]


def _litert(loadable: str, record: dict) -> list[str]:
    return [
        "A LiteRT (TensorFlow Lite) model. Python (`pip install ai-edge-litert`; older images: `tflite-runtime`):",
        "",
        "```python",
        "from ai_edge_litert.interpreter import Interpreter",
        "",
        f"interpreter = Interpreter(model_path=\"{loadable}\", num_threads={record.get('threads') or 4})",
        "interpreter.allocate_tensors()",
        "interpreter.set_tensor(interpreter.get_input_details()[0][\"index\"], x)",
        "interpreter.invoke()",
        "y = interpreter.get_tensor(interpreter.get_output_details()[0][\"index\"])",
        "```",
        "",
        "An int8 model takes and returns int8: quantize inputs and dequantize outputs with the scale and zero point",
        "in `get_input_details()` / `get_output_details()`.",
    ]


def _tflm(loadable: str, record: dict) -> list[str]:
    return [
        "A full-int8 model for TensorFlow Lite for Microcontrollers. On the board, compile the file into the",
        f"firmware (`xxd -i {loadable} > model_data.cc`) and run it with `tflite::MicroInterpreter`",
        "(`tflite::GetModel(model_data)`, an op resolver with the model's ops, and a tensor arena at least as",
        "large as the export manifest's measured arena); CMSIS-NN kernels on Cortex-M. The check here ran",
        "TFLite-Micro's reference kernels through Python (`tflite_micro.python.tflite_micro.runtime`).",
        "For an Ethos-U NPU, compile it with Vela first (the export wrote Vela's output beside the artifact).",
    ]


def _onnxruntime(loadable: str, record: dict) -> list[str]:
    return [
        "An ONNX model for ONNX Runtime (`pip install onnxruntime`):",
        "",
        "```python",
        "import onnxruntime as ort",
        "",
        f"session = ort.InferenceSession(\"{loadable}\", providers=[\"CPUExecutionProvider\"])",
        "outputs = session.run(None, {session.get_inputs()[0].name: x})",
        "```",
    ]


LOADERS = {"tensorrt": _tensorrt, "executorch": _executorch, "litert": _litert, "tflm": _tflm,
           "onnxruntime": _onnxruntime}
