"""ONNX for Jetson: the device builds a TensorRT engine from it with sparsity enabled.

fp32 is exported as is (TensorRT picks fp16/int8 kernels itself); int8 is QDQ (quantize/dequantize pairs
around each weight and activation, symmetric per-channel weights) from onnxruntime's static quantizer,
the form TensorRT reads explicit int8 from. Verified with onnxruntime on this machine.
"""

from __future__ import annotations

import io
import os
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ArtifactError
from ..inputs import normalize
from .._quiet import TORCH_EXPORT, TORCH_ONNX, quiet
from .formats import ExportError, StoredTensor, WeightReadback, first_line

# what torch.export and torch.onnx's op registration print (edgeprune/_quiet.py)
NOISE = TORCH_EXPORT + TORCH_ONNX
RUNTIME = "onnxruntime"


def _names(example_inputs: Any) -> tuple[tuple, dict, list[str]]:
    args, kwargs = normalize(example_inputs)
    names = [f"input_{i}" for i in range(len(args))] + list(kwargs)
    return args, kwargs, names


def _to_numpy(example_inputs: Any) -> dict[str, np.ndarray]:
    args, kwargs, names = _names(example_inputs)
    return {n: t.detach().cpu().numpy() for n, t in zip(names, list(args) + list(kwargs.values()))}


@quiet(NOISE)
def export(model: torch.nn.Module, example_inputs: Any, path: Path, precision: str, calibration: list) -> dict:
    args, kwargs, names = _names(example_inputs)
    float_path = path if precision == "fp32" else path.with_name(path.stem + ".fp32.onnx")
    try:
        with redirect_stdout(io.StringIO()):  # the exporter prints its progress
            program = torch.onnx.export(model, args, kwargs=kwargs or None, input_names=names, dynamo=True,
                                        external_data=False, optimize=True, verbose=False)
        program.save(str(float_path))
    except Exception as exc:
        raise ExportError(f"ONNX export failed: {first_line(exc, lines=3, with_type=True)}") from exc
    facts: dict = {"exporter": "torch.onnx (dynamo)", "opset": _opset(float_path)}
    if precision == "int8":
        facts.update(_quantize(float_path, path, calibration))
        float_path.unlink()
    facts["ops"] = _op_counts(path)
    return facts


def _opset(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _op_counts(path: Path) -> dict[str, int]:
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def _quantize(float_path: Path, path: Path, calibration: list) -> dict:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._items = iter([_to_numpy(item) for item in calibration])

        def get_next(self):
            return next(self._items, None)

    try:
        quantize_static(str(float_path), str(path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QInt8,
                        extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
    except Exception as exc:
        raise ExportError(f"ONNX int8 quantization failed: {first_line(exc, lines=3, with_type=True)}") from exc
    return {"quantizer": "onnxruntime.quantization.quantize_static (QDQ, per-channel symmetric int8 weights)",
            "calibration_samples": len(calibration)}


def _session(path: Path):
    import onnx
    import onnxruntime as ort

    try:
        onnx.checker.check_model(str(path))
        options = ort.SessionOptions()
        options.log_severity_level = 3
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ArtifactError(f"{path}: not a loadable ONNX model ({first_line(exc, lines=3, with_type=True)})") from None


def run(path: Path, inputs: list[np.ndarray]) -> list[np.ndarray]:
    session = _session(Path(path))
    feeds = {i.name: x for i, x in zip(session.get_inputs(), inputs)}
    return [np.asarray(o, dtype=np.float32) for o in session.run(None, feeds)]


def _layout_of(consumer, position: int) -> str:
    if consumer is None:
        return "oihw"
    if consumer.op_type == "MatMul" and position == 1:
        return "io"
    if consumer.op_type == "Gemm":
        trans_b = next((a.i for a in consumer.attribute if a.name == "transB"), 0)
        return "oihw" if trans_b else "io"
    return "oihw"


def weights(path: Path) -> WeightReadback:
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(str(path))
    except Exception as exc:
        raise ArtifactError(f"{path}: cannot be read as ONNX ({first_line(exc, lines=3, with_type=True)})") from None
    consumers: dict[str, tuple[Any, int, int]] = {}
    for index, node in enumerate(model.graph.node):  # ONNX keeps nodes in topological order
        for position, name in enumerate(node.input):
            consumers.setdefault(name, (node, position, index))

    def final_consumer(name: str):
        node, position, index = consumers.get(name, (None, 0, -1))
        # QDQ: weight -> DequantizeLinear -> Conv/Gemm/MatMul; look through the DequantizeLinear
        while node is not None and node.op_type in ("DequantizeLinear", "Transpose", "Identity"):
            node, position, index = consumers.get(node.output[0], (None, 0, -1))
        return node, position, index

    found = []
    for init in model.graph.initializer:
        if len(init.dims) < 2:
            continue  # biases, scales, zero points, shapes
        node, position, index = final_consumer(init.name)
        if node is None or node.op_type not in ("Conv", "Gemm", "MatMul", "ConvTranspose"):
            continue
        found.append((index, StoredTensor(init.name, numpy_helper.to_array(init), _layout_of(node, position),
                                          layer=_layer_of(init.name))))
    # initializers are listed in the model's parameter order; formats.py asks for graph order
    return WeightReadback([tensor for _, tensor in sorted(found, key=lambda item: item[0])])


def _layer_of(initializer: str) -> str | None:
    """'res.0' for 'res.0.weight' (torch.onnx keeps parameter names) or its quantized copy 'res.0.weight' +
    onnxruntime's suffix; None for a constant the exporter made (folded or renamed: 'val_12')."""
    from onnxruntime.quantization.quant_utils import TENSOR_NAME_QUANT_SUFFIX

    name = initializer.removesuffix(TENSOR_NAME_QUANT_SUFFIX)
    return name.removesuffix(".weight") if name.endswith(".weight") else None


def file_size(path: Path) -> int:
    return os.path.getsize(path)
