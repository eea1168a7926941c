"""Verifying an artifact against the PyTorch model it came from, in the artifact's own runtime.

Outputs: fp32 must agree element-wise within |a - b| <= ATOL + RTOL * |b| (an fp16 engine within
FP16_ATOL + FP16_RTOL * |b|); int8 must keep the cosine
similarity of every output at COSINE_MIN or above and the top-1 class of at least TOP1_MIN of the inputs.

Weights: each pruned layer's weight is read *inside the artifact*, from the tensor that is that layer's:
the one the artifact names after it (ONNX keeps PyTorch's parameter names, the .pte's sidecar and
litert-torch's tensor names record the module), else the one unnamed tensor of its shape whose values are
its weights (row by row, up to the per-channel scale that BatchNorm folding and quantization apply). Never
by shape alone: layers of equal shape are common (a kept stem and a pruned depthwise conv), and a check
run on another layer's tensor proves nothing. A layer that neither singles out fails as ambiguous. Then,
on its tensor (after undoing the format's layout; folding and quantization change values but keep zeros
zero): its shape must be the pruned model's, the N:M pattern must hold exactly, the unstructured zero
fraction must be at least the plan's, and a structurally pruned layer's channel counts must be the plan's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import nn

from ..costs import prunable_layers
from ..plan import LayerDecision, Plan
from ..pruning.nm import satisfies_nm
from .formats import StoredTensor, WeightReadback

ATOL, RTOL = 1e-3, 1e-3
# an fp16 engine (TensorRT on a Jetson) against fp32 PyTorch: half precision keeps ~3 significant digits
# per operation, so its outputs are held to ten times fp32's bound
FP16_ATOL, FP16_RTOL = 1e-2, 1e-2
COSINE_MIN, TOP1_MIN = 0.97, 0.75
TOLERANCES = {"fp32": (ATOL, RTOL), "fp16": (FP16_ATOL, FP16_RTOL)}


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
            atol, rtol = TOLERANCES[precision]
            result["tolerance"] = f"|a-b| <= {atol} + {rtol}*|b|"
            result["passed"] = bool(np.all(np.abs(r - o) <= atol + rtol * np.abs(r)))
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


LIKENESS_MIN = 0.9  # mean |cosine| of matching rows above which a stored tensor holds a layer's weights


def likeness(weight: np.ndarray, stored: np.ndarray) -> float:
    """Mean |cosine| between the output-channel rows of `weight` and of `stored` (same shape): ~1 for the
    layer's own tensor, whatever BatchNorm folding (a scale per output channel, possibly negative) and
    per-channel int8 quantization did to it; near 1/sqrt(fan-in) for another layer's."""
    w = weight.reshape(weight.shape[0], -1).astype(np.float64)
    t = stored.reshape(stored.shape[0], -1).astype(np.float64)
    norms = np.linalg.norm(w, axis=1) * np.linalg.norm(t, axis=1)
    rows = norms > 0
    if not rows.any():
        return 0.0
    return float(np.mean(np.abs(np.sum(w * t, axis=1)[rows]) / norms[rows]))


@dataclass
class _Match:
    tensors: list[StoredTensor]  # the layer's weight as stored (more than one if the artifact repeats it)
    by: str  # "name" | "values"


def _identify(modules: dict[str, nn.Module], readback: WeightReadback,
              aliases: dict[str, str]) -> tuple[dict[str, _Match], dict[str, str]]:
    """Which stored tensor is each layer's weight. The tensors the artifact names after a layer are that
    layer's. A layer without one gets the unnamed tensor of its shape whose values are its weights
    (`likeness` >= LIKENESS_MIN), if exactly one is and no other layer claims it; graph order is no guide
    (the TFLite converter reorders a ViT's q/k/v projections). Otherwise it is ambiguous, never guessed.
    Returns (matches, {layer: why it has no match})."""
    named: dict[str, list[StoredTensor]] = {}
    unnamed: dict[tuple, list[StoredTensor]] = {}
    for t in readback.tensors:
        layer = t.layer if t.layer in modules else aliases.get(t.layer or "")
        if layer in modules:
            named.setdefault(layer, []).append(t)
        else:
            unnamed.setdefault(as_oihw(t).shape, []).append(t)
    matches = {name: _Match(tensors, "name") for name, tensors in named.items()}
    missing: dict[str, str] = {}
    claims: dict[int, list[str]] = {}
    for name, module in modules.items():
        if name in named:
            continue
        weight = module.weight.detach().cpu().numpy()
        stored = unnamed.get(weight.shape, [])
        alike = [t for t in stored if likeness(weight, as_oihw(t)) >= LIKENESS_MIN]
        if len(alike) == 1:
            matches[name] = _Match(alike, "values")
            claims.setdefault(id(alike[0]), []).append(name)
        elif not stored:
            missing[name] = f"no weight of shape {list(weight.shape)} in the artifact"
        elif not alike:
            missing[name] = (f"none of the {len(stored)} unnamed tensor(s) of shape {list(weight.shape)} in the "
                             f"artifact ({', '.join(t.name for t in stored)}) holds this layer's weights")
        else:
            missing[name] = (f"ambiguous: {len(alike)} unnamed tensors of shape {list(weight.shape)} in the artifact "
                             f"({', '.join(t.name for t in alike)}) hold weights like this layer's: nothing tells "
                             f"which is its")
    for layers in claims.values():
        if len(layers) > 1:  # layers with (nearly) the same weights: one tensor cannot be both
            for name in layers:
                del matches[name]
                missing[name] = (f"ambiguous: layers {', '.join(layers)} have the same weights and the artifact "
                                 f"names neither: nothing tells which tensor is whose")
    return matches, missing


def check_weights(plan: Optional[Plan], model: nn.Module, readback: WeightReadback,
                  aliases: Optional[dict[str, str]] = None) -> dict:
    """Per-layer results of checking the plan's sparsity and channel counts inside the artifact.

    `aliases`: {layer path as the artifact records it: the model's layer path}."""
    if plan is None:
        return {"checked": False, "note": "no plan: the model was not pruned by edgeprune.prune"}
    if not readback.tensors:
        return {"checked": False, "note": readback.note or "the artifact's weights could not be read back"}
    modules = prunable_layers(model)
    matches, missing = _identify(modules, readback, aliases or {})
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
