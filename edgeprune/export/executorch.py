"""ExecuTorch export with the XNNPACK delegate: a `.pte` file for the ExecuTorch runtime on ARM/x86 CPUs.

    export(model, example_inputs, path, precision, calibration) -> dict
    run(path, inputs) -> list[np.ndarray]
    weights(path) -> WeightReadback

The pipeline is `torch.export.export` -> (int8 only: PT2E static quantization with the XNNPACK quantizer,
symmetric, per-channel weights, calibrated on every calibration input, then exported again) ->
`executorch.exir.to_edge_transform_and_lower(..., partitioner=[XnnpackPartitioner()])` -> `.to_executorch()`.

Where the weights are in a .pte: the XNNPACK delegate serializes each delegated subgraph as an "XNNGraph"
flatbuffer (schema `executorch/backends/xnnpack/serialization/schema.fbs`) behind a small "XH00" header. Its
constant tensors are not in that flatbuffer: each `ConstantDataOffset` names a key in the program's named
data map (one segment per unique blob, keyed by the SHA-256 of the bytes), or, in older files, an offset
into a constant block appended to the delegate payload. `weights()` parses the program with ExecuTorch's own
Python deserializer, the XNNGraph with the package's `flatc` binary and schema into the package's dataclasses,
and returns the filters of the convolution and fully-connected nodes as stored:

    Conv2d / ConvTranspose2d filter   "ohwi"  (out, kh, kw, in/groups), i.e. PyTorch's oihw permuted (0, 2, 3, 1)
    depthwise Conv2d filter           "1hwo"  (1, kh, kw, out): PyTorch's (out, 1, kh, kw) permuted (1, 2, 3, 0)
    Linear (fully connected)          "oihw"  (out, in), PyTorch's own layout
    mm with a constant right operand  "io"    (in, out)

fp32 filters are float32; int8 filters are the int8 values (per-channel scales are not returned). Batch norms
are folded into the preceding convolution by the delegate, so such filters are scaled per output channel
(zeros stay zero). The names come from a sidecar file `<stem>.weights.json` that `export` writes next to the
.pte (XNNPACK node debug handle -> PyTorch module); without it the names are positional.

`run()` checks the file's structure in Python before the runtime sees it: the ExecuTorch 1.5 runtime aborts
the whole process (a C++ `terminate`) when it logs an error that quotes non-UTF-8 bytes of a corrupt file,
e.g. a damaged program or XNNPACK identifier.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import ArtifactError, ModelError
from .._quiet import TORCH_EXPORT, TORCHAO_IMPORT, XNNPACK_CPUINFO, quiet
from .formats import ExportError, StoredTensor, WeightReadback, first_line

# what torch.export, torchao's import and the runtime's cpuinfo print (edgeprune/_quiet.py)
NOISE = TORCH_EXPORT + TORCHAO_IMPORT + XNNPACK_CPUINFO

BACKEND_ID = "XnnpackBackend"
RUNTIME = "ExecuTorch (XNNPACK)"
QUANTIZER_NAME = "executorch.backends.xnnpack.quantizer.xnnpack_quantizer.XNNPACKQuantizer"
QUANTIZER_CONFIG = "get_symmetric_quantization_config(is_per_channel=True): int8 symmetric per-channel weights, " \
                   "int8 per-tensor static activations (HistogramObserver)"
NAMES_SUFFIX = ".weights.json"
_NAMES_FORMAT = "edgeprune.executorch.weight-names/1"
_PROGRAM_IDENTIFIER = re.compile(rb"ET\d\d")
_XNN_IDENTIFIERS = (b"XN00", b"XN01")
_UINT64_MAX = 2**64 - 1
_FLATC_TIMEOUT_S = 60
# XNNPACK value datatypes (schema.fbs XNNDatatype) -> numpy dtype of the stored bytes.
_XNN_DTYPES = {
    "xnn_datatype_fp32": np.float32,
    "xnn_datatype_fp16": np.float16,
    "xnn_datatype_qint8": np.int8,
    "xnn_datatype_qcint8": np.int8,
    "xnn_datatype_quint8": np.uint8,
    "xnn_datatype_qint32": np.int32,
    "xnn_datatype_qcint32": np.int32,
    "xnn_datatype_int32": np.int32,
}
_XNN_FLAG_TRANSPOSE_WEIGHTS = 0x1
_XNN_INVALID_ID = 2**32 - 1
_XNN_MAX_DIMS = 6
_XNN_BITS = {"xnn_datatype_fp32": 32, "xnn_datatype_fp16": 16, "xnn_datatype_bf16": 16, "xnn_datatype_qint8": 8,
             "xnn_datatype_qcint8": 8, "xnn_datatype_quint8": 8, "xnn_datatype_qint32": 32, "xnn_datatype_qcint32": 32,
             "xnn_datatype_int32": 32, "xnn_datatype_qcint4": 4, "xnn_datatype_qbint4": 4}
# Edge-dialect ops that carry a Conv/Linear weight, and the XNNPACK node types they become.
_WEIGHT_OPS = ("aten.convolution.default", "aten.linear.default", "aten.mm.default", "aten.addmm.default")
_FILTER_LAYOUTS = {"XNNConv2d": "ohwi", "XNNConvTranspose2d": "ohwi", "XNNDepthwiseConv2d": "1hwo"}


# ----------------------------------------------------------------------------------------------- export


@quiet(NOISE)
def export(model: torch.nn.Module, example_inputs: Any, path: str | os.PathLike, precision: str = "fp32",
           calibration: Sequence[Any] | None = None) -> dict:
    """Write `model` as an ExecuTorch .pte (XNNPACK delegate) to `path`; return facts for the manifest."""
    if precision not in ("fp32", "int8"):
        raise ExportError(f"executorch: precision must be 'fp32' or 'int8', not {precision!r}")
    if precision == "int8" and not calibration:
        raise ExportError("executorch: int8 export needs calibration inputs (a non-empty list)")
    path = Path(path)
    args, kwargs = _split_inputs(example_inputs)
    _require_executorch(ExportError)
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    started = time.perf_counter()
    with torch.no_grad():
        program = _torch_export(model, args, kwargs)
        if precision == "int8":
            program = _quantize(program, args, kwargs, calibration)
        try:
            edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        except Exception as exc:  # noqa: BLE001 - every lowering failure becomes an ExportError naming the op
            raise _export_error(exc, "lowering to the XNNPACK delegate (to_edge_transform_and_lower)", program) from exc
        facts = _graph_facts(edge)
        try:
            et_program = edge.to_executorch()
        except Exception as exc:  # noqa: BLE001
            raise _export_error(exc, "emitting the ExecuTorch program (to_executorch)", program) from exc
    _check_kernels(et_program, facts)
    data = et_program.buffer
    path.write_bytes(data)
    names_path = path.with_name(path.stem + NAMES_SUFFIX)
    names_path.write_text(json.dumps({"format": _NAMES_FORMAT, "pte": path.name, "weights": facts.pop("_names")},
                                     indent=1), encoding="utf-8")
    facts.update(
        format="executorch",
        backend=BACKEND_ID,
        precision=precision,
        quantizer=QUANTIZER_NAME if precision == "int8" else None,
        quantizer_config=QUANTIZER_CONFIG if precision == "int8" else None,
        calibration_inputs=len(calibration) if precision == "int8" else 0,
        executorch_version=_executorch_version(),
        pte_bytes=len(data),
        export_seconds=round(time.perf_counter() - started, 3),
        extra_files=[names_path.name],
    )
    return facts


def _split_inputs(inputs: Any) -> tuple[tuple, dict]:
    if isinstance(inputs, dict):
        return (), dict(inputs)
    if isinstance(inputs, torch.Tensor):
        return (inputs,), {}
    if isinstance(inputs, (tuple, list)):
        return tuple(inputs), {}
    raise ExportError(f"executorch: example inputs must be a tuple of tensors or a dict of tensors, "
                      f"not {type(inputs).__name__}")


def _torch_export(model, args: tuple, kwargs: dict):
    try:
        return torch.export.export(model, args, kwargs=kwargs)
    except Exception as exc:  # noqa: BLE001
        raise _export_error(exc, "torch.export.export", None) from exc


def _quantize(program, args: tuple, kwargs: dict, calibration: Sequence[Any]):
    """PT2E static int8: XNNPACK quantizer (symmetric, per-channel weights), calibrated on every input."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    try:
        prepared = prepare_pt2e(program.module(), quantizer)
    except Exception as exc:  # noqa: BLE001
        raise _export_error(exc, "int8 quantization (prepare_pt2e with XNNPACKQuantizer)", program) from exc
    for i, item in enumerate(calibration):
        c_args, c_kwargs = _split_inputs(item)
        try:
            prepared(*c_args, **c_kwargs)
        except Exception as exc:  # noqa: BLE001
            raise ExportError(f"executorch: int8 calibration input {i} does not run through the model: "
                              f"{type(exc).__name__}: {first_line(exc)}") from exc
    try:
        converted = convert_pt2e(prepared)
    except Exception as exc:  # noqa: BLE001
        raise _export_error(exc, "int8 quantization (convert_pt2e)", program) from exc
    try:
        return torch.export.export(converted, args, kwargs=kwargs)
    except Exception as exc:  # noqa: BLE001
        raise _export_error(exc, "torch.export.export of the quantized model", program) from exc


def _op_name(target: Any) -> str:
    """'aten.convolution.default' for an ATen or edge-dialect op overload; the function's name otherwise."""
    if isinstance(target, torch._ops.OpOverload):
        return str(target)
    op = getattr(target, "_op", None)  # an EdgeOpOverload wraps the ATen OpOverload
    if isinstance(op, torch._ops.OpOverload):
        return str(op)
    name = getattr(target, "__name__", str(target))
    if getattr(target, "__module__", None) in ("_operator", "operator"):
        return f"operator.{name}"  # arithmetic on symbolic sizes
    return name


def _graph_facts(edge) -> dict:
    """Delegated subgraphs, the ops inside and outside them, and (for the sidecar) which PyTorch module each
    delegated Conv/Linear node came from, keyed by the node's debug handle (the XNNPACK node carries it)."""
    graph_module = edge.exported_program().graph_module
    outside: Counter[str] = Counter()
    delegated: Counter[str] = Counter()
    subgraphs = 0
    names: list[dict] = []
    for node in graph_module.graph.nodes:
        if node.op != "call_function":
            continue
        name = _op_name(node.target)
        if name == "executorch_call_delegate":
            lowered = getattr(graph_module, node.args[0].target)
            if getattr(lowered, "backend_id", None) == BACKEND_ID:
                subgraphs += 1
            for inner in lowered.original_module.graph.nodes:
                if inner.op != "call_function":
                    continue
                inner_name = _op_name(inner.target)
                delegated[inner_name] += 1
                if inner_name in _WEIGHT_OPS and inner.meta.get("debug_handle") is not None:
                    names.append({"debug_handle": int(inner.meta["debug_handle"]), "op": inner_name,
                                  "name": _weight_name(inner, lowered.original_module)})
        elif name != "operator.getitem":
            outside[name] += 1
    return {
        "xnnpack_subgraphs": subgraphs,
        "delegated_ops": dict(sorted(delegated.items())),
        "non_delegated_ops": dict(sorted(outside.items())),
        "_names": names,
    }


def _weight_name(node, program) -> str:
    """'<module path>.weight' of the Conv/Linear module the node came from, else the lifted parameter's name."""
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path = list(stack.values())[-1][0]
        if path:
            return f"{path}.weight"
    weight = node.args[1] if len(node.args) > 1 else None
    if node.target is not None and _op_name(node.target) == "aten.addmm.default" and len(node.args) > 2:
        weight = node.args[2]
    signature = getattr(program, "graph_signature", None)
    if weight is not None and signature is not None and getattr(weight, "op", "") == "placeholder":
        for mapping in (signature.inputs_to_parameters, signature.inputs_to_buffers,
                        signature.inputs_to_lifted_tensor_constants):
            if weight.name in mapping:
                return mapping[weight.name]
    return node.name


def _check_kernels(et_program, facts: dict) -> None:
    """Ops left outside the delegate run on the runtime's own kernels: each must have one."""
    operators = [f"{op.name}.{op.overload}" if op.overload else op.name
                 for plan in et_program.executorch_program.execution_plan for op in plan.operators]
    facts["runtime_kernels"] = sorted(set(operators))
    registered = _runtime_operator_names()
    missing = sorted({op for op in operators if op not in registered})
    if missing:
        raise ExportError(f"executorch: the ExecuTorch runtime has no kernel for {', '.join(missing)} "
                          f"(left outside the XNNPACK delegate, so the program cannot run)")


def _runtime_operator_names() -> set[str]:
    from executorch.runtime import Runtime

    runtime = Runtime.get()
    _load_quantized_kernels()
    return set(runtime.operator_registry.operator_names)


def _load_quantized_kernels() -> None:
    """Register the quantized_decomposed kernels (needed by q/dq ops left outside the delegate)."""
    try:
        import executorch.kernels.quantized  # noqa: F401
    except ImportError:
        pass


# -------------------------------------------------------------------------------------- export errors

_OP_PATTERNS = (
    re.compile(r"CustomOpDef\(([\w.]+::[\w.]+)\)"),
    re.compile(r"Missing out variants: \{'?([^}']+)'?"),
    re.compile(r"[Oo]perator:? ['`\"]?([\w.:]+)['`\"]? (?:is not|not)"),
    re.compile(r"\b([A-Za-z_]\w*::[A-Za-z_]\w*(?:\.\w+)?)"),
    re.compile(r"\b(?:torch\.ops\.)((?:aten|prims|quantized_decomposed|[A-Za-z_]\w*)\.[A-Za-z_]\w*(?:\.\w+)?)"),
)
_CORE_NAMESPACES = ("aten", "prims", "quantized_decomposed", "higher_order", "dim_order_ops", "executorch_prim")


def _export_error(exc: BaseException, stage: str, program) -> ExportError:
    text = str(exc)
    where = _user_frame(exc, text)
    if _is_data_dependent(exc, text):
        expr = re.search(r"data-dependent expression (.+?) \(", text)
        return ExportError(
            "executorch: data-dependent control flow cannot be exported: a tensor's value decides Python control "
            "flow or a shape (Tensor.item()/bool(tensor), i.e. aten._local_scalar_dense)"
            + (f" at {where}" if where else "")
            + (f"; torch.export could not guard on {expr.group(1)}" if expr else "")
            + f" [{stage}: {type(exc).__name__}]. Use torch.cond, or make the shape static.")
    op = _op_from_message(text)
    custom = _custom_ops(program)
    if op is None and custom:
        op = ", ".join(custom)
    message = f"executorch: {stage} failed"
    if op:
        message += f" at op {op}"
    if custom and op and not any(_base(c) in _base(op) for c in custom):
        message += f" (the model also uses non-ATen ops {', '.join(custom)})"
    if where:
        message += f", from {where}"
    message += f": {type(exc).__name__}: {first_line(exc)}"
    return ExportError(message)


def _base(op: str) -> str:
    """'eptest.myop' for 'eptest::myop', 'eptest.myop.default' or 'eptest::myop.default'."""
    return ".".join(op.replace("::", ".").split(".")[:2])


def _is_data_dependent(exc: BaseException, text: str) -> bool:
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool({"GuardOnDataDependentSymNode", "DataDependentOutputException"} & names) or \
        "data-dependent" in text or "data dependent" in text


def _op_from_message(text: str) -> str | None:
    for pattern in _OP_PATTERNS:
        match = pattern.search(text)
        if match:
            return match.group(1).strip()
    return None


def _custom_ops(program) -> list[str]:
    """Ops in the exported graph outside the ATen/core namespaces (custom ops have no ExecuTorch kernels)."""
    if program is None:
        return []
    found = []
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        namespace = getattr(node.target, "namespace", None)
        if namespace is None:
            continue
        name = _op_name(node.target)
        if namespace not in _CORE_NAMESPACES and name not in found:
            found.append(name)
    return found


def _user_frame(exc: BaseException, text: str) -> str | None:
    """'file.py:12 in forward: `if x.sum() > 0:`', the user's line that raised, outside torch/executorch."""
    match = re.search(r'The following call raised this error:\s*\n\s*File "([^"]+)", line (\d+), in (\S+)\n\s*(.+)',
                      text)
    if match:
        return f"{match.group(1)}:{match.group(2)} in {match.group(3)}: `{match.group(4).strip()}`"
    libs = (os.sep + "torch" + os.sep, os.sep + "executorch" + os.sep, os.sep + "torchao" + os.sep,
            os.sep + "edgeprune" + os.sep + "export" + os.sep, "<frozen", os.sep + "contextlib.py")
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not any(lib in f.filename for lib in libs)]
    frames = [f for f in frames if f.name == "forward" or "forward" in (f.line or "")]
    if frames:
        frame = frames[-1]
        return f"{frame.filename}:{frame.lineno} in {frame.name}: `{(frame.line or '').strip()}`"
    return None


def _executorch_version() -> str:
    try:
        from importlib.metadata import version

        return version("executorch")
    except Exception:  # noqa: BLE001
        return "unknown"


def _require_executorch(error: type[Exception]) -> None:
    try:
        import executorch.exir  # noqa: F401
    except ImportError as exc:
        raise error(f"executorch: the 'executorch' package is not installed ({exc}); pip install executorch") from exc


# ------------------------------------------------------------------------------------------------ run


@quiet(NOISE)
def run(path: str | os.PathLike, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Run the .pte once in the ExecuTorch runtime on `inputs`; outputs as float32 numpy arrays."""
    path = Path(path)
    _require_executorch(ArtifactError)
    _parse_pte(path)  # structure first: the runtime can abort the process on some corrupt files
    from executorch.runtime import Runtime

    runtime = Runtime.get()
    _load_quantized_kernels()
    try:
        program = runtime.load_program(str(path))
        method = program.load_method("forward")
    except Exception as exc:  # noqa: BLE001
        raise ArtifactError(f"{path}: the ExecuTorch runtime cannot load this program: {first_line(exc)}") from exc
    if method is None:
        raise ArtifactError(f"{path}: the program has no 'forward' method")
    tensors = [torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else torch.as_tensor(x)
               for x in inputs]
    _check_inputs(path, method, tensors)
    try:
        outputs = method.execute(tensors)
    except Exception as exc:  # noqa: BLE001
        raise ArtifactError(f"{path}: the ExecuTorch runtime failed to run 'forward' on inputs of the exported "
                            f"shapes (a corrupt program?): {first_line(exc)}") from exc
    return [_to_numpy(out) for out in outputs]


def _check_inputs(path: Path, method, tensors: list[torch.Tensor]) -> None:
    meta = method.metadata
    expected = meta.num_inputs()
    if expected != len(tensors):
        raise ModelError(f"{path}: 'forward' takes {expected} input tensors, got {len(tensors)}")
    for i, tensor in enumerate(tensors):
        sizes = tuple(meta.input_tensor_meta(i).sizes())
        if tuple(tensor.shape) != sizes:
            raise ModelError(f"{path}: input {i} has shape {tuple(tensor.shape)}, the program was exported for "
                             f"{sizes}")


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().to(torch.float32).numpy().copy()
    return np.asarray(value, dtype=np.float32)


# ---------------------------------------------------------------------------------------------- weights


def weights(path: str | os.PathLike) -> WeightReadback:
    """The Conv/Linear filters stored in the .pte's XNNPACK delegates, in their stored layout and dtype."""
    path = Path(path)
    _require_executorch(ArtifactError)
    pte = _parse_pte(path)
    names = _read_names(path)
    tensors: list[StoredTensor] = []
    skipped: list[str] = []
    for d, graph in enumerate(pte.graphs):
        values = [v.xvalue_union for v in graph.graph.xvalues]
        for n, xnode in enumerate(graph.graph.xnodes):
            node = xnode.xnode_union
            kind = type(node).__name__
            if kind in _FILTER_LAYOUTS:
                layout = _FILTER_LAYOUTS[kind]
            elif kind == "XNNFullyConnected":
                layout = "io" if node.flags & _XNN_FLAG_TRANSPOSE_WEIGHTS else "oihw"
            else:
                continue
            recorded = names.get(xnode.debug_handle)
            label = recorded or f"xnnpack{d}.{kind[3:].lower()}{n}"
            value = values[node.filter_id] if node.filter_id < len(values) else None
            tensor_value = getattr(value, "tensor_value", value)
            if tensor_value is None or tensor_value.constant_buffer_idx == 0:
                skipped.append(f"{label} (filter is not a constant)")
                continue
            array, why = _constant_array(path, pte, graph, tensor_value)
            if array is None:
                skipped.append(f"{label} ({why})")
                continue
            layer = recorded.removesuffix(".weight") if recorded and recorded.endswith(".weight") else None
            tensors.append(StoredTensor(name=label, array=array, layout=layout, layer=layer))
    note = ""
    if skipped:
        note = "not read back: " + "; ".join(skipped)
    elif not pte.graphs:
        note = f"{path.name} has no {BACKEND_ID} delegate: every op runs on portable kernels, no weights to read"
    if pte.graphs and not names:
        note = (note + "; " if note else "") + \
            f"names are positional ({path.stem + NAMES_SUFFIX} missing or unreadable)"
    return WeightReadback(tensors=tensors, note=note)


def _read_names(path: Path) -> dict[int, str]:
    sidecar = path.with_name(path.stem + NAMES_SUFFIX)
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
        if data.get("format") != _NAMES_FORMAT:
            return {}
        return {int(entry["debug_handle"]): str(entry["name"]) for entry in data["weights"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _constant_array(path: Path, pte: "_Pte", graph: "_Delegate", tensor_value) -> tuple[np.ndarray | None, str]:
    dtype_name = getattr(tensor_value.datatype, "name", str(tensor_value.datatype))
    dtype = _XNN_DTYPES.get(dtype_name)
    if dtype is None:
        return None, f"stored as {dtype_name}, which has no numpy equivalent here"
    dims = [int(x) for x in tensor_value.dims]
    raw = _constant_bytes(path, pte, graph, tensor_value.constant_buffer_idx)
    count = int(np.prod(dims)) if dims else 1
    if len(raw) < count * np.dtype(dtype).itemsize:
        raise ArtifactError(f"{path}: XNNPACK constant {tensor_value.constant_buffer_idx} has {len(raw)} bytes, "
                            f"its shape {dims} ({dtype_name}) needs {count * np.dtype(dtype).itemsize}")
    return np.frombuffer(raw, dtype=dtype, count=count).reshape(dims).copy(), ""


def _constant_bytes(path: Path, pte: "_Pte", graph: "_Delegate", index: int) -> bytes:
    constants = graph.graph.constant_data
    if index >= len(constants):
        raise ArtifactError(f"{path}: XNNPACK value refers to constant {index}, the delegate has {len(constants)}")
    entry = constants[index]
    if entry.named_key:
        if entry.named_key not in pte.named_data:
            raise ArtifactError(f"{path}: XNNPACK constant '{entry.named_key}' is missing from the named data")
        return pte.named_data[entry.named_key][: entry.size]
    start = graph.constant_offset + entry.offset
    if entry.offset == _UINT64_MAX or start + entry.size > len(graph.payload):
        raise ArtifactError(f"{path}: XNNPACK constant {index} lies outside its delegate payload")
    return graph.payload[start: start + entry.size]


# ------------------------------------------------------------------------------------- parsing a .pte


@dataclass
class _Delegate:
    payload: bytes
    graph: Any  # executorch.backends.xnnpack.serialization.xnnpack_graph_schema.XNNGraph
    constant_offset: int


@dataclass
class _Pte:
    program: Any  # executorch.exir.schema.Program
    named_data: dict[str, bytes]
    graphs: list[_Delegate]


def _parse_pte(path: Path) -> _Pte:
    """Read and check a .pte: header, size against the extended header, program, every XNNPACK payload and
    the named data its constants refer to. Any inconsistency is an ArtifactError naming the file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ArtifactError(f"{path}: no such file") from None
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot be read ({exc})") from exc
    if len(data) < 8 or not _PROGRAM_IDENTIFIER.fullmatch(data[4:8]):
        raise ArtifactError(f"{path}: not an ExecuTorch program (no 'ET..' identifier at byte 4; "
                            f"{len(data)} bytes)")
    from executorch.exir._serialize._program import _ExtendedHeader, deserialize_pte_binary

    if data[8:12] == _ExtendedHeader.EXPECTED_MAGIC:
        try:
            header = _ExtendedHeader.from_bytes(data[8:])
        except ValueError as exc:
            raise ArtifactError(f"{path}: truncated: {exc}") from exc
        if not header.is_valid():
            raise ArtifactError(f"{path}: corrupt extended header")
        expected = header.program_size
        if header.segment_data_size:
            expected = max(expected, header.segment_base_offset + header.segment_data_size)
        if len(data) < expected:
            raise ArtifactError(f"{path}: truncated: the header says {expected} bytes, the file has {len(data)}")
    try:
        pte = deserialize_pte_binary(data)
    except Exception as exc:  # noqa: BLE001 - the deserializer raises many types on corrupt input
        raise ArtifactError(f"{path}: corrupt ExecuTorch program ({type(exc).__name__}: {first_line(exc)})") from exc
    program = pte.program
    named: dict[str, bytes] = {}
    if pte.named_data is not None:
        for key, entry in pte.named_data.pte_data.items():
            buffer = pte.named_data.buffers[entry.buffer_index]
            named[key] = buffer if isinstance(buffer, bytes) else bytes(buffer.to_bytes())
    if not program.execution_plan:
        raise ArtifactError(f"{path}: the program has no methods")
    graphs: list[_Delegate] = []
    for plan in program.execution_plan:
        for index, delegate in enumerate(plan.delegates):
            if delegate.id != BACKEND_ID:
                continue
            reference = delegate.processed
            if reference.index >= len(program.backend_delegate_data):
                raise ArtifactError(f"{path}: delegate {index} of '{plan.name}' points past the delegate data")
            payload = bytes(program.backend_delegate_data[reference.index].data)
            graphs.append(_parse_xnnpack(path, payload, f"delegate {index} of '{plan.name}'", named))
    return _Pte(program=program, named_data=named, graphs=graphs)


def _parse_xnnpack(path: Path, payload: bytes, where: str, named: dict[str, bytes]) -> _Delegate:
    from executorch.backends.xnnpack.serialization.xnnpack_graph_schema import XNNGraph
    from executorch.backends.xnnpack.serialization.xnnpack_graph_serialize import XNNHeader

    if payload[4:8] == XNNHeader.EXPECTED_MAGIC:
        try:
            header = XNNHeader.from_bytes(payload[: XNNHeader.EXPECTED_LENGTH])
        except ValueError as exc:
            raise ArtifactError(f"{path}: XNNPACK {where}: {exc}") from exc
        end = header.flatbuffer_offset + header.flatbuffer_size
        if not header.is_valid() or end > len(payload) or \
                header.constant_data_offset + header.constant_data_size > len(payload):
            raise ArtifactError(f"{path}: XNNPACK {where}: corrupt payload header")
        flatbuffer = payload[header.flatbuffer_offset: end]
        constant_offset = header.constant_data_offset
    else:
        flatbuffer, constant_offset = payload, len(payload)
    if flatbuffer[4:8] not in _XNN_IDENTIFIERS:
        raise ArtifactError(f"{path}: XNNPACK {where}: not an XNNGraph flatbuffer (bad identifier)")
    graph = _xnngraph_from_flatbuffer(path, flatbuffer, where, XNNGraph)
    for i, constant in enumerate(graph.constant_data[1:], start=1):
        if constant.named_key:
            if constant.named_key not in named:
                raise ArtifactError(f"{path}: XNNPACK {where}: constant {i} ('{constant.named_key}') is missing "
                                    f"from the program's named data")
            if len(named[constant.named_key]) < constant.size:
                raise ArtifactError(f"{path}: XNNPACK {where}: constant {i} is shorter than its declared size")
        elif constant.offset == _UINT64_MAX or constant_offset + constant.offset + constant.size > len(payload):
            raise ArtifactError(f"{path}: XNNPACK {where}: constant {i} lies outside the payload")
    _check_xnngraph(path, where, graph)
    return _Delegate(payload=payload, graph=graph, constant_offset=constant_offset)


def _check_xnngraph(path: Path, where: str, graph) -> None:
    """What the XNNPACK runtime trusts without checking (it reads out of bounds, or crashes, otherwise): value
    ids that nodes refer to, dims against the bytes of each constant, extern ids."""
    def fail(what: str):
        raise ArtifactError(f"{path}: XNNPACK {where}: corrupt XNNGraph ({what})")

    ids = set()
    for i, value in enumerate(graph.xvalues):
        tensor_value = getattr(value.xvalue_union, "tensor_value", value.xvalue_union)
        dims = list(tensor_value.dims)
        if tensor_value.num_dims != len(dims) or len(dims) > _XNN_MAX_DIMS or any(not 0 <= d < 2**31 for d in dims):
            fail(f"value {i} has dims {dims[:8]}")
        if tensor_value.id_out in ids or not 0 <= tensor_value.id_out < len(graph.xvalues):
            fail(f"value {i} has id {tensor_value.id_out}")
        ids.add(tensor_value.id_out)
        if tensor_value.external_id != _XNN_INVALID_ID and not 0 <= tensor_value.external_id < graph.num_externs:
            fail(f"value {i} has extern id {tensor_value.external_id} of {graph.num_externs}")
        index = tensor_value.constant_buffer_idx
        if not 0 <= index < max(len(graph.constant_data), 1):
            fail(f"value {i} refers to constant {index}, there are {len(graph.constant_data)}")
        if index:
            dtype_name = getattr(tensor_value.datatype, "name", str(tensor_value.datatype))
            bits = _XNN_BITS.get(dtype_name)
            elements = int(np.prod(dims, dtype=np.float64)) if dims else 1
            if bits is not None and elements * bits > graph.constant_data[index].size * 8:
                fail(f"value {i} ({dtype_name}, dims {dims}) needs more than the "
                     f"{graph.constant_data[index].size} bytes of its constant")
        quant = getattr(value.xvalue_union, "quant_params", None)
        scale_index = getattr(quant, "scale_buffer_idx", -1)
        if quant is not None and hasattr(quant, "channel_dim") and not 0 <= quant.channel_dim < len(dims):
            fail(f"value {i} is quantized along axis {quant.channel_dim} of {len(dims)}")
        if scale_index is not None and scale_index >= 0:
            width = 2 if type(quant).__name__ == "PerChannelGroupQuant" else 4
            if scale_index >= len(graph.constant_data) or \
                    graph.constant_data[scale_index].size < max(quant.num_scales, 0) * width or \
                    (type(quant).__name__ == "PerChannelQuant" and quant.num_scales != dims[quant.channel_dim]):
                fail(f"value {i} has inconsistent per-channel scales")
    for n, xnode in enumerate(graph.xnodes):
        node = xnode.xnode_union
        for field, ref in vars(node).items():
            if field.endswith("_id") and field != "debug_handle" and isinstance(ref, int) \
                    and ref != _XNN_INVALID_ID and ref not in ids:
                fail(f"node {n} ({type(node).__name__}) refers to value {ref} through {field}")
    for ref in list(graph.input_ids) + list(graph.output_ids):
        if ref not in ids:
            fail(f"graph input/output refers to value {ref}")
    dims_of = {}
    for value in graph.xvalues:
        tensor_value = getattr(value.xvalue_union, "tensor_value", value.xvalue_union)
        dims_of[tensor_value.id_out] = list(tensor_value.dims)
    for n, xnode in enumerate(graph.xnodes):
        problem = _weight_node_problem(xnode.xnode_union, dims_of)
        if problem:
            fail(f"node {n} ({type(xnode.xnode_union).__name__}): {problem}")


def _weight_node_problem(node, dims_of: dict[int, list[int]]) -> str | None:
    """Conv/FC parameters that disagree with their filter: XNNPACK packs the filter from them unchecked."""
    kind = type(node).__name__
    if kind in _FILTER_LAYOUTS:
        filt = dims_of.get(node.filter_id, [])
        if len(filt) != 4:
            return f"filter dims {filt}"
        outputs = node.groups * node.group_output_channels
        if kind == "XNNDepthwiseConv2d":
            expected = [1, node.kernel_height, node.kernel_width, outputs]
        else:
            expected = [outputs, node.kernel_height, node.kernel_width, node.group_input_channels]
        if filt != expected:
            return f"filter dims {filt} disagree with the node's kernel/channels {expected}"
        steps = (node.subsampling_height, node.subsampling_width, node.dilation_height, node.dilation_width)
        pads = (node.padding_top, node.padding_right, node.padding_bottom, node.padding_left,
                node.adjustment_height, node.adjustment_width)
        if any(not 1 <= v < 2**16 for v in steps) or any(not 0 <= v < 2**16 for v in pads):
            return f"stride/dilation {steps} or padding {pads} out of range"
        bias = dims_of.get(node.bias_id) if node.bias_id != _XNN_INVALID_ID else [outputs]
        if bias != [outputs]:
            return f"bias dims {bias}, expected [{outputs}]"
    elif kind == "XNNFullyConnected":
        filt = dims_of.get(node.filter_id, [])
        if len(filt) != 2:
            return f"filter dims {filt}"
        outputs = filt[1] if node.flags & _XNN_FLAG_TRANSPOSE_WEIGHTS else filt[0]
        bias = dims_of.get(node.bias_id) if node.bias_id != _XNN_INVALID_ID else [outputs]
        if bias != [outputs]:
            return f"bias dims {bias}, expected [{outputs}]"
    return None


def _xnngraph_from_flatbuffer(path: Path, flatbuffer: bytes, where: str, graph_class):
    """flatbuffer -> JSON with the package's flatc and XNNPACK schema -> the package's XNNGraph dataclasses."""
    from executorch.backends.xnnpack.serialization.xnnpack_graph_serialize import _get_schema_bytes
    from executorch.exir._serialize._dataclass import _json_to_dataclass
    from executorch.exir._serialize._flatbuffer import _get_flatc_path

    with tempfile.TemporaryDirectory() as tmp:
        schema = os.path.join(tmp, "schema.fbs")
        binary = os.path.join(tmp, "graph.bin")
        Path(schema).write_bytes(_get_schema_bytes())
        Path(binary).write_bytes(flatbuffer)
        try:
            result = subprocess.run([_get_flatc_path(), "--json", "--defaults-json", "--strict-json", "-o", tmp,
                                     schema, "--", binary], capture_output=True, timeout=_FLATC_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            raise ArtifactError(f"{path}: XNNPACK {where}: flatc did not finish reading the graph") from exc
        output = Path(tmp) / "graph.json"
        if result.returncode != 0 or not output.exists():
            message = (result.stderr or result.stdout).decode("utf-8", "replace").strip().splitlines()
            raise ArtifactError(f"{path}: XNNPACK {where}: corrupt XNNGraph flatbuffer "
                                f"({message[-1] if message else 'flatc failed'})")
        try:
            text = output.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ArtifactError(f"{path}: XNNPACK {where}: corrupt XNNGraph flatbuffer (invalid text)") from exc
    # flatc writes non-finite floats (a ReLU's output_max) as bare inf/nan, which JSON does not have.
    text = re.sub(r"(:\s*)(-?)inf(?=\s*[,}\]])", r"\1\2Infinity", text)
    text = re.sub(r"(:\s*)-?nan(?=\s*[,}\]])", r"\1NaN", text)
    try:
        return _json_to_dataclass(json.loads(text), graph_class)
    except Exception as exc:  # noqa: BLE001
        raise ArtifactError(f"{path}: XNNPACK {where}: corrupt XNNGraph ({type(exc).__name__}: "
                            f"{first_line(exc)})") from exc
