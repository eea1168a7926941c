"""LiteRT (TFLite) export: a `.tflite` flatbuffer written by litert-torch, run by ai-edge-litert.

    export(model, example_inputs, path, precision, calibration) -> dict     (see formats.py)
    run(path, inputs) -> list[np.ndarray]
    weights(path) -> WeightReadback
    inspect(path) -> dict       op counts, input/output dtypes and quantization, full-int8 check

fp32: `litert_torch.convert(model, sample_args, sample_kwargs)`, then `.export(path)`.

int8: post-training static quantization through litert-torch's PT2E quantizer:
`torch.export.export(...).module()` -> `torchao.quantization.pt2e.quantize_pt2e.prepare_pt2e(m, quantizer)`
-> one forward pass per calibration item -> `convert_pt2e(m, fold_quantize=False)` ->
`litert_torch.convert(m, ..., quant_config=QuantConfig(pt2e_quantizer=quantizer))`. The quantizer is
`litert_torch.quantize.pt2e_quantizer.PT2EQuantizer().set_global(get_symmetric_quantization_config(
is_per_channel=True))` with a few annotations added (`_full_int8_quantizer`): weights int8, symmetric,
per output channel; activations int8, per tensor (histogram observer). When every op is annotated,
litert-torch 0.10 emits a full-integer model with int8 input and output tensors (no QUANTIZE/DEQUANTIZE
at the boundary: callers quantize with the input's scale/zero point), which is what TFLite-Micro and
Vela need; no converter flag is involved. Ops left unannotated stay float between DEQUANTIZE/QUANTIZE;
`inspect` lists them (`float_ops`) and `export(..., require_full_int8=True)` refuses such a model.

Inputs keep PyTorch's layout (NCHW): litert-torch adds the transposes inside the graph. The subgraph's
inputs are the flattened sample inputs in order (positional `args_0, args_1, ...`, then keyword inputs
in the dict's order); its outputs are the flattened model outputs in order. (The SignatureDef lists
inputs sorted by name, so `run` uses the subgraph order, not the signature's.)
"""

from __future__ import annotations

import contextlib
import os
import re
import traceback
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import ArtifactError
from .._quiet import TFLITE, TORCH_EXPORT, TORCHAO_IMPORT, quiet
from .formats import ExportError, StoredTensor, WeightReadback, first_line

# what torch.export, torchao's import, TensorFlow's converter and LiteRT print (edgeprune/_quiet.py)
NOISE = TORCH_EXPORT + TORCHAO_IMPORT + TFLITE

RUNTIME = "LiteRT"
FILE_IDENTIFIER = b"TFL3"  # bytes 4..8 of every TFLite flatbuffer

# The weight operand (input 1) of these builtin ops, and the layout TFLite stores it in.
_WEIGHT_LAYOUTS = {"CONV_2D": "ohwi", "DEPTHWISE_CONV_2D": "1hwo", "FULLY_CONNECTED": "oihw"}
_LEAF_CLASS = {"CONV_2D": "Conv", "DEPTHWISE_CONV_2D": "Conv", "FULLY_CONNECTED": "Linear"}


# ----------------------------------------------------------------------------------------------- export

@quiet(NOISE)
def export(model, example_inputs, path, precision: str = "fp32", calibration: Sequence[Any] | None = None,
           *, require_full_int8: bool = False) -> dict:
    """Convert `model` to a .tflite at `path` and return manifest facts (see the module docstring).

    `require_full_int8=True` (for MCU targets: TFLite-Micro with CMSIS-NN, Ethos-U) raises `ExportError`
    unless the int8 artifact has int8 inputs/outputs and no float op.
    """
    import torch

    if precision not in ("fp32", "int8"):
        raise ExportError(f"LiteRT export: precision must be 'fp32' or 'int8', not {precision!r}")
    if require_full_int8 and precision != "int8":
        raise ExportError("LiteRT export: require_full_int8 needs precision='int8'")
    args, kwargs = _split_inputs(example_inputs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    import litert_torch

    facts: dict[str, Any] = {"format": "tflite", "converter": f"litert-torch {litert_torch.__version__}",
                             "precision": precision}
    with _quiet_litert_torch(), torch.no_grad():
        if precision == "fp32":
            edge = _convert(litert_torch.convert, model, args, kwargs)
        else:
            if not calibration:
                raise ExportError("LiteRT int8 export needs calibration inputs (a non-empty list)")
            from litert_torch.quantize.quant_config import QuantConfig

            quantizer = _full_int8_quantizer()
            quantized = _pt2e_quantize(model, args, kwargs, quantizer, calibration)
            edge = _convert(litert_torch.convert, quantized, args, kwargs,
                            quant_config=QuantConfig(pt2e_quantizer=quantizer))
            facts["quantizer"] = ("litert_torch PT2EQuantizer + edgeprune's extra annotations (padding, dropout, "
                                  "residual add/mul, softmax, tanh/gelu/hardswish/silu): int8 symmetric "
                                  "per-channel weights, int8 per-tensor activations (histogram observer), static")
            facts["calibration_samples"] = len(calibration)
        try:
            edge.export(str(path))
        except Exception as err:  # noqa: BLE001 - the MLIR -> flatbuffer step fails with assorted types
            raise ExportError(f"LiteRT export: writing the flatbuffer failed: {first_line(err)}") from err

    facts.update(inspect(path))
    facts["weight_names"] = recorded_weight_names(model, example_inputs)
    if require_full_int8 and not facts["full_int8"]:
        raise ExportError(
            f"LiteRT int8 export of {type(model).__name__} is not full-integer, and TFLite-Micro and Vela run "
            f"int8 only: {_describe_layers(facts['float_layers'])} stay float (the int8 quantizer has no "
            f"integer form for them): float ops {facts['float_ops']}, inputs "
            f"{[t['dtype'] for t in facts['inputs']]}, outputs {[t['dtype'] for t in facts['outputs']]}")
    return facts


def _describe_layers(layers: dict[str, str], examples: int = 3) -> str:
    """{'stem.1': 'LayerNorm', ...} -> 'LayerNorm layers (2: stem.1, head.0)'."""
    if not layers:
        return "some ops"
    parts = []
    for cls, n in Counter(layers.values()).most_common():
        paths = sorted(p for p, c in layers.items() if c == cls)
        shown = ", ".join(paths[:examples]) + (", ..." if n > examples else "")
        parts.append(f"{cls} layers ({n}: {shown})")
    return "; ".join(parts)


def _split_inputs(example_inputs) -> tuple[tuple, dict | None]:
    import torch

    def as_tensor(x):
        return torch.from_numpy(np.asarray(x)) if isinstance(x, np.ndarray) else x

    if isinstance(example_inputs, dict):
        return (), {k: as_tensor(v) for k, v in example_inputs.items()}
    if isinstance(example_inputs, (list, tuple)):
        return tuple(as_tensor(x) for x in example_inputs), None
    return (as_tensor(example_inputs),), None


def _full_int8_quantizer():
    """litert-torch's PT2EQuantizer (symmetric int8, per-channel weights) plus annotations for ops its
    annotators leave out, so that more models come out full-integer.

    litert-torch 0.10 annotates conv/linear (+relu), add/mul matched by source function, max/avg pool,
    cat, sigmoid and `_softmax`, and lets view/permute/mean/hardtanh share their input's parameters.
    Anything else stays float between DEQUANTIZE/QUANTIZE, and some of that breaks conversion outright
    (transformers' MobileNetV2 pads with `aten.pad` before its convs: "Attempting to convert non-NHWC
    compatible node to NHWC"). After litert-torch's own annotation this also annotates, in graph order:
    padding, dropout, clone, relu/relu6 and reshapes as sharing their input's parameters (the values
    they output are a subset or copy of their input's); add/sub/mul of two activations that are both
    int8 already, with fresh int8 parameters; softmax with TFLite's fixed int8 output parameters (1/256, -128); and tanh, gelu,
    hardswish, silu, leaky_relu, elu with fresh int8 output parameters (TFLite has int8 kernels for each).
    LayerNorm and other decomposed normalizations stay float: `inspect` reports them as `float_ops`.
    """
    from litert_torch.quantize import pt2e_quantizer as pq
    from litert_torch.quantize import pt2e_quantizer_utils as qu

    class FullInt8Quantizer(pq.PT2EQuantizer):
        def annotate(self, model):
            model = super().annotate(model)
            _annotate_remaining(model, self.global_config, qu)
            qu.propagate_annotation(model)
            return model

    return FullInt8Quantizer().set_global(pq.get_symmetric_quantization_config(is_per_channel=True))


def _annotate_remaining(model, config, qu) -> None:
    import torch
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, SharedQuantizationSpec

    aten = torch.ops.aten
    share = {aten.pad.default, aten.constant_pad_nd.default, aten.dropout.default, aten.dropout_.default,
             aten.clone.default, aten.contiguous.default, aten.relu.default, aten.relu_.default,
             aten.hardtanh.default, aten.hardtanh_.default, aten.reshape.default, aten.view.default,
             aten.flatten.using_ints, aten.squeeze.dim, aten.squeeze.dims, aten.unsqueeze.default,
             aten.permute.default, aten.transpose.int, aten.max_pool2d.default}
    binary = {aten.add.Tensor, aten.add_.Tensor, aten.sub.Tensor, aten.mul.Tensor, aten.mul_.Tensor}
    unary = {aten.tanh.default, aten.gelu.default, aten.hardswish.default, aten.hardswish_.default,
             aten.silu.default, aten.silu_.default, aten.leaky_relu.default, aten.elu.default}
    softmax = {aten.softmax.int, aten._softmax.default}
    act_in, act_out = qu.get_input_act_qspec(config), qu.get_output_act_qspec(config)
    fixed = qu.get_fixed_qparams_qspec(config)
    if act_in is None or act_out is None:
        return

    def annotated(node) -> bool:
        ann = node.meta.get("quantization_annotation")
        return ann is not None and ann._annotated

    def has_output_qspec(node) -> bool:
        ann = node.meta.get("quantization_annotation")
        return ann is not None and ann.output_qspec is not None

    def float_activation(node) -> bool:
        val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
        return isinstance(val, torch.Tensor) and val.is_floating_point() and node.op != "get_attr"

    for node in model.graph.nodes:
        if node.op != "call_function" or annotated(node) or not node.args:
            continue
        first = node.args[0]
        if not isinstance(first, torch.fx.Node) or not float_activation(first):
            continue
        if node.target in share:
            if has_output_qspec(first):
                spec = SharedQuantizationSpec(first)
                node.meta["quantization_annotation"] = QuantizationAnnotation(
                    input_qspec_map={first: spec}, output_qspec=spec, _annotated=True)
        elif node.target in binary:
            second = node.args[1] if len(node.args) > 1 else None
            # Only between two activations that are already int8: quantizing the adds that join a
            # float path (a transformer's residual stream beside a float LayerNorm) costs accuracy
            # (tiny ViT: cosine 0.998 -> 0.97) and makes nothing full-integer.
            if (isinstance(second, torch.fx.Node) and float_activation(second) and has_output_qspec(first)
                    and has_output_qspec(second)):
                node.meta["quantization_annotation"] = QuantizationAnnotation(
                    input_qspec_map={first: act_in, second: act_in}, output_qspec=act_out, _annotated=True)
        elif node.target in unary:
            node.meta["quantization_annotation"] = QuantizationAnnotation(
                input_qspec_map={first: act_in}, output_qspec=act_out, _annotated=True)
        elif node.target in softmax and fixed is not None:
            node.meta["quantization_annotation"] = QuantizationAnnotation(
                input_qspec_map={first: act_in}, output_qspec=fixed, _annotated=True)


def _pt2e_quantize(model, args, kwargs, quantizer, calibration):
    import torch
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    try:
        graph = torch.export.export(model, args, kwargs or None).module()
        prepared = prepare_pt2e(graph, quantizer)
    except Exception as err:  # noqa: BLE001
        raise ExportError(f"LiteRT int8 export: torch.export / PT2E prepare failed{_op_of(err)}: "
                          f"{first_line(err)}") from err
    for i, item in enumerate(calibration):
        c_args, c_kwargs = _split_inputs(item)
        try:
            prepared(*c_args, **(c_kwargs or {}))
        except Exception as err:  # noqa: BLE001
            raise ExportError(f"LiteRT int8 export: calibration input {i} does not run through the model: "
                              f"{first_line(err)}") from err
    try:
        converted = convert_pt2e(prepared, fold_quantize=False)
        move_exported_model_to_eval(converted)
        converted.training = False  # the graph is already in eval form; keeps litert-torch from warning
    except Exception as err:  # noqa: BLE001
        raise ExportError(f"LiteRT int8 export: PT2E convert failed{_op_of(err)}: {first_line(err)}") from err
    return converted


def _convert(convert, module, args, kwargs, **options):
    try:
        return convert(module, args, kwargs, **options)
    except Exception as err:  # noqa: BLE001 - litert-torch raises RuntimeError/AssertionError/ValueError/...
        raise ExportError(f"LiteRT export: litert-torch cannot convert {type(module).__name__}{_op_of(err)}: "
                          f"{first_line(err)}") from err


_LOWERING_RE = re.compile(r"Lowering not found: (\S+)")
_TARGET_RE = re.compile(r"call_function\[target=([^\]]+)\]")


def _op_of(err: BaseException) -> str:
    """' at op aten.xxx (node %name)' when the failing op can be found, else ''."""
    text = "\n".join([str(err), *getattr(err, "__notes__", [])])
    m = _LOWERING_RE.search(text) or _TARGET_RE.search(text)
    op = m.group(1) if m else None
    failing = None
    # torch.fx interpreters keep the node being run in a local called `node`: take the innermost one.
    for frame, _ in traceback.walk_tb(err.__traceback__):
        node = frame.f_locals.get("node")
        if getattr(node, "op", None) == "call_function" and hasattr(node, "target"):
            failing = node
    if failing is not None:
        op = op or str(failing.target)
    if op is None:
        return ""
    return f" at op {op}" + (f" (node %{failing.name})" if failing is not None else "")


@contextlib.contextmanager
def _quiet_litert_torch():
    """litert-torch prints a progress tree to the console unless LITERT_TORCH_SHOW_PROGRESS is off."""
    key = "LITERT_TORCH_SHOW_PROGRESS"
    old = os.environ.get(key)
    os.environ[key] = "n"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


# ------------------------------------------------------------------------------------ reading the file

def _schema():
    from ai_edge_litert import schema_py_generated as schema

    return schema


def _enum_names(enum_cls) -> dict[int, str]:
    return {v: k for k, v in vars(enum_cls).items() if not k.startswith("_") and isinstance(v, int)}


def read_checked(path) -> bytes:
    """The bytes of a .tflite file, after checking its flatbuffer identifier and that LiteRT's verifier
    accepts it. Raises `ArtifactError` naming the file otherwise; never crashes the process."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ArtifactError(f"{path}: cannot read the LiteRT artifact: {err.strerror or err}") from err
    if len(data) < 8 or data[4:8] != FILE_IDENTIFIER:
        raise ArtifactError(f"{path}: not a TFLite flatbuffer (file identifier {data[4:8]!r}, expected "
                            f"{FILE_IDENTIFIER!r}; {len(data)} bytes)")
    _verify(path, data)
    return data


def _verify(path: Path, data: bytes) -> None:
    # Interpreter construction runs the flatbuffer verifier (tflite::Verify) before anything else and
    # raises ValueError on a truncated or corrupt buffer. No delegate, no tensor allocation.
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    try:
        Interpreter(model_content=data,
                    experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    except (ValueError, RuntimeError) as err:
        msg = str(err)
        if "unresolved custom op" in msg or "Didn't find op" in msg:
            return  # structurally valid; an op this interpreter lacks (e.g. Vela's ethos-u) is not corruption
        raise ArtifactError(f"{path}: corrupt or truncated TFLite flatbuffer: {msg.strip()[:300]}") from err


def _model(path, data: bytes | None = None):
    data = read_checked(path) if data is None else data
    try:
        return _schema().ModelT.InitFromPackedBuf(data, 0), data
    except Exception as err:  # noqa: BLE001 - a malformed flatbuffer fails with IndexError/struct.error/...
        raise ArtifactError(f"{path}: cannot parse the TFLite flatbuffer: {first_line(err)}") from err


def _op_name(model, op, builtin_names) -> str:
    code = model.operatorCodes[op.opcodeIndex]
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
    name = builtin_names.get(builtin, f"BUILTIN_{builtin}")
    if name == "CUSTOM":
        custom = code.customCode.decode() if isinstance(code.customCode, bytes) else str(code.customCode)
        return f"CUSTOM:{custom}"
    return name


def _decode(name) -> str:
    return name.decode("utf-8", "replace") if isinstance(name, (bytes, bytearray)) else str(name or "")


def _tensor_facts(tensor, type_names) -> dict:
    q = tensor.quantization
    scales = [] if q is None or q.scale is None else [float(s) for s in np.asarray(q.scale).ravel()]
    zps = [] if q is None or q.zeroPoint is None else [int(z) for z in np.asarray(q.zeroPoint).ravel()]
    facts = {"name": _decode(tensor.name), "shape": [int(d) for d in np.asarray(tensor.shape).ravel()],
             "dtype": type_names.get(tensor.type, str(tensor.type)).lower()}
    if scales:
        facts["scale"] = scales[0] if len(scales) == 1 else scales
        facts["zero_point"] = zps[0] if len(zps) == 1 else zps
    return facts


def inspect(path) -> dict:
    """Facts about a .tflite: op counts by builtin op name (as stored, before any delegate), the inputs
    and outputs (name, shape, dtype, scale, zero_point), `full_int8` (int8 inputs and outputs and no op
    touching a float tensor), `float_ops` (the ops that do) and `float_layers` ({PyTorch module path: class}
    of the modules those ops came from, as litert-torch recorded them in tensor names), and the file size."""
    schema = _schema()
    model, data = _model(path)
    builtin_names = _enum_names(schema.BuiltinOperator)
    type_names = _enum_names(schema.TensorType)
    float_types = {schema.TensorType.FLOAT32, schema.TensorType.FLOAT16, schema.TensorType.FLOAT64,
                   getattr(schema.TensorType, "BFLOAT16", -1)}
    ops: Counter = Counter()
    float_ops: list[str] = []
    float_layers: dict[str, str] = {}
    for sg in model.subgraphs or []:
        for op in sg.operators or []:
            name = _op_name(model, op, builtin_names)
            ops[name] += 1
            outs = [i for i in (op.outputs if op.outputs is not None else []) if i >= 0]
            touched = [i for i in (op.inputs if op.inputs is not None else []) if i >= 0] + outs
            if any(sg.tensors[i].type in float_types for i in touched):
                float_ops.append(name)
                if name not in ("QUANTIZE", "DEQUANTIZE"):  # the boundaries, named after their neighbours
                    for i in outs:
                        found = _torch_module(_decode(sg.tensors[i].name))
                        if found:
                            float_layers.setdefault(*found)
    sg = model.subgraphs[0]
    inputs = [_tensor_facts(sg.tensors[i], type_names) for i in sg.inputs]
    outputs = [_tensor_facts(sg.tensors[i], type_names) for i in sg.outputs]
    int_io = all(t["dtype"] == "int8" for t in inputs + outputs)
    return {"ops": dict(sorted(ops.items())), "inputs": inputs, "outputs": outputs,
            "full_int8": int_io and not float_ops, "float_ops": sorted(set(float_ops)),
            "float_layers": dict(sorted(float_layers.items())), "size_bytes": len(data)}


# ------------------------------------------------------------------------------------------------- run

@quiet(NOISE)
def run(path, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Run the .tflite once in ai-edge-litert's interpreter (default op resolver, with XNNPACK) and return
    the outputs as float32. `inputs` are in the model's flattened positional-then-keyword order. Float
    inputs to an int8 input tensor are quantized with its scale/zero point; quantized outputs are
    dequantized."""
    from ai_edge_litert.interpreter import Interpreter

    read_checked(path)
    try:
        interp = Interpreter(model_path=str(path))
        interp.allocate_tensors()
    except (ValueError, RuntimeError) as err:
        raise ArtifactError(f"{path}: LiteRT cannot load the model: {first_line(err)}") from err
    details = interp.get_input_details()
    arrays = _prepare_inputs(path, details, inputs)
    for detail, array in zip(details, arrays):
        interp.set_tensor(detail["index"], array)
    try:
        interp.invoke()
    except RuntimeError as err:
        raise ArtifactError(f"{path}: LiteRT invoke failed: {first_line(err)}") from err
    return [dequantize(interp.get_tensor(d["index"]), *_scale_zp(d)) for d in interp.get_output_details()]


def _scale_zp(detail: dict) -> tuple[float, int]:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    if not scale:
        qp = detail.get("quantization_parameters") or {}
        scales = np.asarray(qp.get("scales", []))
        zps = np.asarray(qp.get("zero_points", []))
        if scales.size == 1:
            return float(scales[0]), int(zps[0]) if zps.size else 0
    return float(scale), int(zero_point)


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype) -> np.ndarray:
    """float -> integer tensor with the given affine parameters (round half to even, saturating)."""
    info = np.iinfo(dtype)
    q = np.round(np.asarray(x, dtype=np.float64) / scale) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    x = np.asarray(x)
    if scale and np.issubdtype(x.dtype, np.integer):
        return ((x.astype(np.float64) - zero_point) * scale).astype(np.float32)
    return np.array(x, dtype=np.float32)


def _prepare_inputs(path, details: list[dict], inputs: Iterable) -> list[np.ndarray]:
    inputs = [np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x) for x in inputs]
    if len(inputs) != len(details):
        names = [d["name"] for d in details]
        raise ExportError(f"{path}: the model takes {len(details)} inputs {names}, got {len(inputs)}")
    arrays = []
    for detail, x in zip(details, inputs):
        shape = tuple(int(d) for d in detail["shape"])
        if tuple(x.shape) != shape:
            raise ExportError(f"{path}: input {detail['name']!r} has shape {shape}, got {tuple(x.shape)}")
        dtype = np.dtype(detail["dtype"])
        scale, zero_point = _scale_zp(detail)
        if np.issubdtype(dtype, np.integer) and scale and np.issubdtype(x.dtype, np.floating):
            x = quantize(x, scale, zero_point, dtype)
        arrays.append(np.ascontiguousarray(x.astype(dtype, copy=False)))
    return arrays


# --------------------------------------------------------------------------------------------- weights

def weights(path) -> WeightReadback:
    """The constant weight operands of CONV_2D ("ohwi"), DEPTHWISE_CONV_2D ("1hwo") and FULLY_CONNECTED
    ((out, in): "oihw") as stored in the flatbuffer's buffers: int8 in an int8 model, float32 in an fp32
    one. A weight stored as a constant behind a DEQUANTIZE op is read at its stored dtype.

    Names: the PyTorch layer path litert-torch recorded in the tensor names (`stem.0.weight`) where it
    can be recovered, else the flatbuffer tensor name. That path leaves out ModuleList/ModuleDict names
    (see `recorded_weight_names`, whose mapping `export` returns as `weight_names`). litert-torch may fold BatchNorm into a conv's
    weights (values scale per output channel; zeros stay zero) and turns a conv with one input channel
    into a DEPTHWISE_CONV_2D.
    """
    schema = _schema()
    model, data = _model(path)
    builtin_names = _enum_names(schema.BuiltinOperator)
    dtypes = {schema.TensorType.FLOAT32: np.float32, schema.TensorType.FLOAT16: np.float16,
              schema.TensorType.INT8: np.int8, schema.TensorType.UINT8: np.uint8,
              schema.TensorType.INT16: np.int16, schema.TensorType.INT32: np.int32}
    tensors: list[StoredTensor] = []
    skipped: list[str] = []
    seen: set[tuple[int, int]] = set()
    used_names: Counter = Counter()
    for s, sg in enumerate(model.subgraphs or []):
        producer = {int(o): op for op in (sg.operators or []) for o in (op.outputs if op.outputs is not None else [])}
        for op in sg.operators or []:
            name = _op_name(model, op, builtin_names)
            layout = _WEIGHT_LAYOUTS.get(name)
            if layout is None or op.inputs is None or len(op.inputs) < 2 or op.inputs[1] < 0:
                continue
            index = int(op.inputs[1])
            source = producer.get(index)
            if source is not None and _op_name(model, source, builtin_names) == "DEQUANTIZE":
                index = int(source.inputs[0])
            if (s, index) in seen:
                continue
            seen.add((s, index))
            tensor = sg.tensors[index]
            raw = _buffer_bytes(model, tensor.buffer, data)
            dtype = dtypes.get(tensor.type)
            label = _decode(tensor.name)
            if raw is None or dtype is None:
                skipped.append(f"{name} weight {label!r} ({'not constant' if raw is None else 'dtype ' + str(tensor.type)})")
                continue
            shape = [int(d) for d in np.asarray(tensor.shape).ravel()]
            try:
                array = np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
            except ValueError as err:
                raise ArtifactError(f"{path}: weight tensor {label!r} has {len(raw)} bytes for shape {shape}") from err
            # The weight's own name, else the bias's, else the op output's: whichever names one layer.
            others = [int(i) for i in op.inputs[2:] if i >= 0] + [int(o) for o in (op.outputs if op.outputs is not None else [])]
            candidates = [label] + [_decode(sg.tensors[i].name) for i in others]
            layer = next((p for p in (_torch_layer(n, _LEAF_CLASS[name]) for n in candidates) if p), None)
            stored_name = f"{layer}.weight" if layer else label
            used_names[stored_name] += 1
            if used_names[stored_name] > 1:
                stored_name = f"{stored_name}#{used_names[stored_name] - 1}"
            tensors.append(StoredTensor(stored_name, array, layout, layer=layer))
    note = ""
    if skipped:
        note = "not read back: " + "; ".join(skipped)
    elif not tensors:
        note = "the model has no CONV_2D, DEPTHWISE_CONV_2D or FULLY_CONNECTED op with a constant weight"
    return WeightReadback(tensors=tensors, note=note)


def _buffer_bytes(model, buffer_index: int, data: bytes) -> bytes | None:
    if buffer_index <= 0 or buffer_index >= len(model.buffers):
        return None
    buf = model.buffers[buffer_index]
    if buf.data is not None and len(buf.data):
        return np.asarray(buf.data, dtype=np.uint8).tobytes()
    offset, size = int(getattr(buf, "offset", 0) or 0), int(getattr(buf, "size", 0) or 0)
    if offset > 1 and size > 0:  # buffers stored after the flatbuffer (models > 2 GB)
        if offset + size > len(data):
            raise ArtifactError(f"buffer {buffer_index} lies past the end of the file (truncated?)")
        return data[offset:offset + size]
    return None


def recorded_weight_names(model, example_inputs) -> dict[str, str]:
    """{name `weights()` gives a Conv/Linear weight: the model's parameter name}, from one forward pass.

    litert-torch names a tensor after the modules on the call stack (torch.export's nn_module_stack),
    keeping only the last part of each module's name, so containers that are iterated rather than called
    drop out: transformers' `resnet.encoder.stages.0.layers.0.layer.0.convolution` is stored as
    `resnet.encoder.0.0.layer.0.convolution`. This replays that with forward hooks. A recorded name two
    layers would share is left out.
    """
    import torch
    from torch import nn

    names = {id(m): n for n, m in model.named_modules()}
    stack: list[str] = []
    found: dict[str, str] = {}
    clashes: set[str] = set()

    def pre(module, _args):
        name = names.get(id(module), "")
        stack.append(name)
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)) and name:
            recorded = ".".join(n.split(".")[-1] for n in stack if n) + ".weight"
            if found.get(recorded, f"{name}.weight") != f"{name}.weight":
                clashes.add(recorded)
            found[recorded] = f"{name}.weight"

    def post(_module, _args, _out):
        stack.pop()

    handles = []
    try:
        for module in model.modules():
            handles.append(module.register_forward_pre_hook(pre))
            handles.append(module.register_forward_hook(post))
        args, kwargs = _split_inputs(example_inputs)
        with torch.no_grad():
            model(*args, **(kwargs or {}))
    finally:
        for handle in handles:
            handle.remove()
    return {k: v for k, v in found.items() if k not in clashes}


_SEGMENT_RE = re.compile(r"^(?:[\w.]+\.)?([A-Za-z0-9]+)_([\w]+)$")


def _torch_module(name: str) -> tuple[str, str] | None:
    """'pkg.Net/torch.nn.modules.container.Sequential_stem/torch.nn.modules.normalization.LayerNorm_1;3' ->
    ('stem.1', 'LayerNorm'): the innermost PyTorch module litert-torch recorded in a tensor's name."""
    for part in name.split(";"):
        attrs = []
        for seg in [s for s in part.split("/") if s][1:]:  # the first segment is the root module's class
            m = _SEGMENT_RE.match(seg)
            if not m:
                attrs = []
                break
            attrs.append((m.group(1), m.group(2)))
        if attrs:
            return ".".join(a for _, a in attrs), attrs[-1][0]
    return None


def _torch_layer(name: str, leaf_class: str) -> str | None:
    """'pkg.Net/torch.nn.modules.container.Sequential_stem/torch.nn.modules.conv.Conv2d_0;1' -> 'stem.0'
    when the last module of a ';'-separated part is a `leaf_class` (Conv*/Linear) module. None when the
    parts name several such layers: the converter fuses the locations of constants it merges (a ViT's
    k_proj weight is named after q_proj and k_proj), so such a name does not say whose weight it is."""
    found = set()
    for part in name.split(";"):
        segments = [s for s in part.split("/") if s]
        if len(segments) < 2:
            continue
        attrs = []
        for seg in segments[1:]:  # the first segment is the root module's class
            m = _SEGMENT_RE.match(seg)
            if not m:
                attrs = []
                break
            attrs.append((m.group(1), m.group(2)))
        if attrs and attrs[-1][0].startswith(leaf_class):
            found.add(".".join(a for _, a in attrs))
    return found.pop() if len(found) == 1 else None
