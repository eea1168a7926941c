"""Verifying an artifact against the PyTorch model it came from, in the artifact's own runtime.

Outputs: fp32 must agree element-wise within |a - b| <= ATOL + RTOL * |b|; int8 must keep the cosine
similarity of every output at COSINE_MIN or above and the top-1 class of at least TOP1_MIN of the inputs.

Weights: each pruned layer's weight is looked for *inside the artifact* — a stored tensor of the same shape
(after undoing the format's layout) whose zeros include the PyTorch weight's zeros. Exporters fold
BatchNorm into convolutions and quantize, which changes values but keeps zeros zero, so the zero pattern
is what identifies a layer. Then: the N:M pattern must hold on it exactly, the unstructured zero fraction
must be at least the plan's, and a structurally pruned layer's channel counts must be the plan's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import nn

from ..costs import prunable_layers
from ..plan import Plan
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


@dataclass
class _Candidate:
    name: str
    array: np.ndarray  # in PyTorch's (out, in, *kernel) layout
    used: bool = False


def _match(weight: np.ndarray, candidates: list[_Candidate]) -> Optional[_Candidate]:
    zeros = weight == 0
    best = None
    for c in candidates:
        if c.used or c.array.shape != weight.shape:
            continue
        stored_zeros = c.array == 0
        if not np.all(stored_zeros[zeros]):
            continue
        if np.array_equal(stored_zeros, zeros):
            return c
        best = best or c  # quantization may zero a few more tiny weights
    if best is None:  # zeros lost (or never there): still check the same-shaped tensor, to say what broke
        best = next((c for c in candidates if not c.used and c.array.shape == weight.shape), None)
    return best


def check_weights(plan: Optional[Plan], model: nn.Module, readback: WeightReadback) -> dict:
    """Per-layer results of checking the plan's sparsity and channel counts inside the artifact."""
    if plan is None:
        return {"checked": False, "note": "no plan: the model was not pruned by edgeprune.prune"}
    if not readback.tensors:
        return {"checked": False, "note": readback.note or "the artifact's weights could not be read back"}
    candidates = [_Candidate(t.name, as_oihw(t)) for t in readback.tensors]
    modules = prunable_layers(model)
    layers = {}
    # layers with zeros first: their patterns identify them; plain structured layers match on shape after
    order = sorted(plan.layers, key=lambda d: d.method not in ("n:m", "unstructured"))
    for d in order:
        if d.method == "keep" or d.layer not in modules:
            continue
        weight = modules[d.layer].weight.detach().cpu().numpy()
        match = _match(weight, candidates)
        if match is None:
            layers[d.layer] = {"passed": False, "error": f"no weight of shape {list(weight.shape)} in the artifact "
                                                         "whose zeros match the model's"}
            continue
        match.used = True
        result = {"stored_as": match.name, "shape": list(match.array.shape)}
        if d.method == "n:m":
            ok = satisfies_nm(torch.from_numpy(match.array.copy()), d.n, d.m)
            result.update(check=f"{d.n}:{d.m} along the input dimension", passed=bool(ok))
        elif d.method == "unstructured":
            fraction = float(np.mean(match.array == 0))
            result.update(check=f"zero fraction >= {d.amount:.4f}", zero_fraction=fraction,
                          passed=fraction + 1e-9 >= d.amount)
        else:
            out_c = match.array.shape[0]
            result.update(check=f"{d.out_channels[1]} output channels", passed=out_c == d.out_channels[1])
        if not result["passed"]:
            result["error"] = f"{result['check']} does not hold in the artifact"
        layers[d.layer] = result
    return {"checked": True, "layers": layers, "passed": all(r["passed"] for r in layers.values())}
