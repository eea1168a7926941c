"""Verifying an artifact against the PyTorch model it came from, in the artifact's own runtime.

Outputs: fp32 must agree element-wise within |a - b| <= ATOL + RTOL * |b|; int8 must keep the cosine
similarity of every output at COSINE_MIN or above and the top-1 class of at least TOP1_MIN of the inputs.

Weights: each pruned layer's weight is read *inside the artifact*, from the tensor that is that layer's:
the one the artifact names after it (ONNX keeps PyTorch's parameter names, the .pte's sidecar and
litert-torch's tensor names record the module), else the one at the same place in the graph (the k-th
stored tensor of a shape, in graph order, is the k-th layer of that shape in the model's execution order).
Never by shape alone: layers of equal shape are common (a kept stem and a pruned depthwise conv), and a
check run on another layer's tensor proves nothing. A layer no name or position singles out fails as
ambiguous. Then, on its tensor (after undoing the format's layout; exporters fold BatchNorm and quantize,
which changes values but keeps zeros zero): its shape must be the pruned model's, the N:M pattern must
hold exactly, the unstructured zero fraction must be at least the plan's, and a structurally pruned
layer's channel counts must be the plan's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from ..costs import prunable_layers
from ..inputs import call
from ..plan import LayerDecision, Plan
from ..pruning.nm import satisfies_nm
from .formats import StoredTensor, WeightReadback

ATOL, RTOL = 1e-3, 1e-3
COSINE_MIN, TOP1_MIN = 0.97, 0.75


def compare_outputs(expected: list[list[np.ndarray]], got: list[list[np.ndarray]], precision: str) -> list[dict]:
    """One result per model output, over all verification inputs (`expected[i][k]`: input i, output k)."""
    results = []
    for k in range(len(expected[0])):
        ref = [np.asarray(e[k], dtype=np.float64) for e in expected]
        out = [np.asarray(g[k], dtype=np.float64).reshape(r.shape) for g, r in zip(got, ref)]
        r, o = np.concatenate([x.ravel() for x in ref]), np.concatenate([x.ravel() for x in out])
        cosine = float(np.dot(r, o) / (np.linalg.norm(r) * np.linalg.norm(o) + 1e-30))
        top1 = float(np.mean([np.argmax(a.reshape(a.shape[0], -1)[0]) == np.argmax(b.reshape(b.shape[0], -1)[0])
                              for a, b in zip(ref, out)]))
        result = {"output": k, "inputs": len(ref), "max_abs_err": float(np.max(np.abs(r - o))),
                  "max_rel_err": float(np.max(np.abs(r - o) / (np.abs(r) + 1e-12))), "cosine": cosine,
                  "top1_agreement": top1}
        if precision == "int8":
            result["tolerance"] = f"cosine >= {COSINE_MIN}, top-1 agreement >= {TOP1_MIN}"
            result["passed"] = cosine >= COSINE_MIN and top1 >= TOP1_MIN
        else:
            result["tolerance"] = f"|a-b| <= {ATOL} + {RTOL}*|b|"
            result["passed"] = bool(np.all(np.abs(r - o) <= ATOL + RTOL * np.abs(r)))
        results.append(result)
    return results


def as_oihw(t: StoredTensor) -> np.ndarray:
    a = t.array
    if t.layout == "ohwi" and a.ndim == 4:
        return a.transpose(0, 3, 1, 2)
    if t.layout == "1hwo" and a.ndim == 4:
        return a.transpose(3, 0, 1, 2)
    if t.layout == "io" and a.ndim == 2:
        return a.T
    return a


def execution_order(model: nn.Module, example_inputs: Any) -> list[str]:
    """The model's Conv/Linear layers in the order its forward pass first calls them (one pass, no grad);
    layers it never calls come last, in definition order."""
    modules = prunable_layers(model)
    order: list[str] = []
    handles = [m.register_forward_pre_hook(lambda _m, _a, name=name: order.append(name) if name not in order else None)
               for name, m in modules.items()]
    try:
        with torch.no_grad():
            call(model, example_inputs)
    finally:
        for handle in handles:
            handle.remove()
    return order + [name for name in modules if name not in order]


@dataclass
class _Match:
    tensors: list[StoredTensor]  # the layer's weight as stored (more than one if the artifact repeats it)
    by: str  # "name" | "position"


def _identify(modules: dict[str, nn.Module], readback: WeightReadback, order: list[str],
              aliases: dict[str, str]) -> tuple[dict[str, _Match], dict[str, str]]:
    """Which stored tensor is each layer's weight: the tensors the artifact names after a layer are that
    layer's; the rest are matched by position, the k-th unnamed tensor of a shape in graph order to the
    k-th layer of that shape (among layers without a named tensor) in execution order. Where the two
    counts differ nothing tells the tensors apart, and those layers are ambiguous, never guessed.
    Returns (matches, {layer: why it has no match})."""
    named: dict[str, list[StoredTensor]] = {}
    unnamed: dict[tuple, list[StoredTensor]] = {}
    for t in readback.tensors:
        layer = t.layer if t.layer in modules else aliases.get(t.layer or "")
        if layer in modules:
            named.setdefault(layer, []).append(t)
        else:
            unnamed.setdefault(as_oihw(t).shape, []).append(t)
    by_shape: dict[tuple, list[str]] = {}
    for name in order:
        if name not in named:
            by_shape.setdefault(tuple(modules[name].weight.shape), []).append(name)
    matches = {name: _Match(tensors, "name") for name, tensors in named.items()}
    missing = {}
    for shape, layers in by_shape.items():
        stored = unnamed.get(shape, [])
        if len(stored) == len(layers):
            matches.update((layer, _Match([t], "position")) for layer, t in zip(layers, stored))
        elif not stored:
            missing.update((layer, f"no weight of shape {list(shape)} in the artifact") for layer in layers)
        else:
            why = (f"ambiguous: {len(stored)} unnamed tensor(s) of shape {list(shape)} in the artifact "
                   f"({', '.join(t.name for t in stored)}) for {len(layers)} layer(s) of that shape "
                   f"({', '.join(layers)}): nothing tells which is which")
            missing.update((layer, why) for layer in layers)
    return matches, missing


def check_weights(plan: Optional[Plan], model: nn.Module, readback: WeightReadback, order: Optional[list[str]] = None,
                  aliases: Optional[dict[str, str]] = None) -> dict:
    """Per-layer results of checking the plan's sparsity and channel counts inside the artifact.

    `order`: the model's layers in execution order (`execution_order`), for the tensors the artifact does
    not name; `aliases`: {layer path as the artifact records it: the model's layer path}."""
    if plan is None:
        return {"checked": False, "note": "no plan: the model was not pruned by edgeprune.prune"}
    if not readback.tensors:
        return {"checked": False, "note": readback.note or "the artifact's weights could not be read back"}
    modules = prunable_layers(model)
    matches, missing = _identify(modules, readback, list(order) if order is not None else list(modules), aliases or {})
    layers = {}
    for d in plan.layers:
        if d.method == "keep" or d.layer not in modules:
            continue
        if d.layer not in matches:
            layers[d.layer] = {"passed": False, "error": missing.get(d.layer, "no weight in the artifact")}
            continue
        weight_shape = tuple(modules[d.layer].weight.shape)
        results = [_check(d, t, weight_shape, matches[d.layer].by) for t in matches[d.layer].tensors]
        layers[d.layer] = next((r for r in results if not r["passed"]), results[0])
    return {"checked": True, "layers": layers, "passed": all(r["passed"] for r in layers.values())}


def _check(d: LayerDecision, tensor: StoredTensor, weight_shape: tuple, by: str) -> dict:
    array = as_oihw(tensor)
    result = {"stored_as": tensor.name, "matched_by": by, "shape": list(array.shape)}
    if array.shape != weight_shape:
        # the layer's own tensor in another shape: the pruning did not survive the export
        return {**result, "check": f"shape {list(weight_shape)}", "passed": False,
                "error": f"stored as {tensor.name} with shape {list(array.shape)}, the model's weight is "
                         f"{list(weight_shape)}"}
    if d.method == "n:m":
        ok = satisfies_nm(torch.from_numpy(array.copy()), d.n, d.m)
        result.update(check=f"{d.n}:{d.m} along the input dimension", passed=bool(ok))
    elif d.method == "unstructured":
        fraction = float(np.mean(array == 0))
        result.update(check=f"zero fraction >= {d.amount:.4f}", zero_fraction=fraction,
                      passed=fraction + 1e-9 >= d.amount)
    else:
        out_c = array.shape[0]
        result.update(check=f"{d.out_channels[1]} output channels", passed=out_c == d.out_channels[1])
    if not result["passed"]:
        result["error"] = f"{result['check']} does not hold in {tensor.name}"
    return result
