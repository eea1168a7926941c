"""Which layers of a TensorRT engine really run sparse, per layer of the plan.

TensorRT picks a 2:4 sparse kernel for a layer only when the layer is eligible (its weights are 2:4 as
TensorRT sees them, in an fp16 or int8 engine) and a sparse tactic times faster than every dense one, which
in practice needs large channel counts (~256 in and out, per NVIDIA's answers in TensorRT's issues 4065 and
2169). It says which it picked only in the build log (`--verbose`: "(Sparsity) Layers eligible for sparse
math: ..." and "(Sparsity) TRT inference plan picked sparse implementation for layers: ...") and, with
`--profilingVerbosity=detailed --exportLayerInfo`, per engine layer (its fused name, "TacticName",
"HasSparseWeights").

A plan layer is found in the engine through the ONNX graph: the node that consumes the layer's weight
(`<layer>.weight`, or `<layer>.weight_quantized` behind a DequantizeLinear in an int8 QDQ export: export
keeps PyTorch's names) is named in the engine layer that holds it, alone or fused
("node_Conv_113 + node_relu_1").
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from ..plan import Plan

WEIGHT_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
PASS_THROUGH = {"DequantizeLinear", "QuantizeLinear", "Transpose", "Cast", "Identity", "Reshape"}
SPARSE_WIN_CHANNELS = 256  # where TensorRT's sparse kernels usually beat dense ones (see the module docstring)


@dataclass(frozen=True)
class LayerKernel:
    """One plan layer in the engine: the engine layer that runs it, the tactic TensorRT picked, and whether
    that is a sparse kernel; `reason` says why not, for a 2:4 layer that did not get one."""
    layer: str
    method: str
    onnx_node: Optional[str]
    engine_layer: Optional[str]
    tactic: Optional[str]
    sparse_kernel: bool
    eligible: Optional[bool]  # None: the build log did not say (no --verbose)
    reason: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def weight_nodes(onnx_path: "str | Path") -> dict[str, str]:
    """{plan layer: name of the ONNX node that consumes its weight}."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}

    def source(name: str, hops: int = 4) -> Optional[str]:
        while name not in initializers and hops and name in producer and producer[name].op_type in PASS_THROUGH:
            name, hops = producer[name].input[0], hops - 1
        return name if name in initializers else None

    found = {}
    for node in graph.node:
        if node.op_type not in WEIGHT_OPS:
            continue
        for name in node.input[1:2] if node.op_type != "MatMul" else node.input[:2]:
            weight = source(name)
            # an int8 QDQ export names it `<layer>.weight_quantized`
            m = re.fullmatch(r"(.+)\.weight(?:_quantized)?", weight or "")
            if m:
                found.setdefault(m.group(1), node.name)
    return found


def _engine_layers(layer_info: dict) -> list[dict]:
    layers = layer_info.get("Layers") if isinstance(layer_info, dict) else None
    # without --profilingVerbosity=detailed trtexec lists names only
    return [entry if isinstance(entry, dict) else {"Name": str(entry)} for entry in layers or []]


def _holding(engine_layers: list[dict], node: str) -> Optional[dict]:
    for entry in engine_layers:
        if node in [part.strip() for part in str(entry.get("Name", "")).split(" + ")]:
            return entry
    return None


def _in_list(names: list[str], node: str) -> bool:
    return any(node in [part.strip() for part in name.split(" + ")] for name in names)


def kernels(plan: Plan, onnx_path: "str | Path", layer_info: dict, sparsity: Optional[dict],
            flags: list[str]) -> list[LayerKernel]:
    """One LayerKernel per layer of `plan` (kept ones included), as the engine runs it."""
    nodes = weight_nodes(onnx_path)
    engine_layers = _engine_layers(layer_info)
    low_precision = any(f in ("--fp16", "--int8", "--best") for f in flags)
    rows = []
    for d in plan.layers:
        node = nodes.get(d.layer)
        entry = _holding(engine_layers, node) if node else None
        tactic = entry.get("TacticName") if entry else None
        picked = bool(sparsity) and node is not None and _in_list(sparsity.get("picked", []), node)
        sparse = bool(picked or (entry and (entry.get("HasSparseWeights") == 1 or "sparse" in str(tactic).lower())))
        eligible = None if not sparsity or node is None else _in_list(sparsity.get("eligible", []), node)
        reason = ""
        if d.method == "n:m" and not sparse:
            reason = _why_dense(d, node, entry, eligible, low_precision)
        rows.append(LayerKernel(d.layer, d.method, node, entry.get("Name") if entry else None, tactic, sparse,
                                eligible, reason))
    return rows


def _why_dense(d, node, entry, eligible, low_precision: bool) -> str:
    channels = f"{d.in_channels[1]} in, {d.out_channels[1]} out"
    small = min(d.in_channels[1], d.out_channels[1]) < SPARSE_WIN_CHANNELS
    if node is None:
        return "no ONNX node consumes its weight (the exporter folded or renamed it)"
    if not low_precision:
        return "the engine is fp32: TensorRT's sparse kernels are fp16 and int8 only (build with --fp16 or --int8)"
    if entry is None:
        return f"no engine layer holds ONNX node {node} (TensorRT fused it into a layer under another name)"
    fused = [p.strip() for p in str(entry.get("Name", "")).split(" + ") if p.strip() != node]
    fused_note = f"; fused with {', '.join(fused)}" if fused else ""
    if eligible is False:
        return (f"TensorRT did not find it eligible for sparse math (its weights as the engine holds them are not "
                f"2:4, or no sparse kernel exists for this op and shape; {channels}){fused_note}")
    why = (f"{channels} channels, below the ~{SPARSE_WIN_CHANNELS} where sparse kernels usually win" if small
           else f"{channels} channels")
    head = "eligible, but" if eligible else "TensorRT's log did not say whether it was eligible (build with --verbose);"
    return f"{head} a dense tactic timed faster ({entry.get('TacticName') or 'tactic not reported'}): {why}{fused_note}"
