"""Unstructured magnitude sparsity through `torch.nn.utils.prune` (masks stay until `finalize`)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune


def apply_unstructured(module: nn.Module, amount: float) -> None:
    torch_prune.l1_unstructured(module, "weight", amount=amount)


def global_amounts(modules: dict[str, nn.Module], sparsity: float) -> dict[str, float]:
    """Per-layer fractions that zero the `sparsity` smallest-magnitude weights across all `modules`.

    Equivalent to `torch.nn.utils.prune.global_unstructured`, but expressed per layer so the plan can
    show (and a recipe can override) each layer's share.
    """
    if not modules or sparsity <= 0:
        return {name: 0.0 for name in modules}
    magnitudes = torch.cat([m.weight.detach().abs().flatten() for m in modules.values()])
    # at least the asked fraction (rounding down could fall a weight short of the budget)
    k = min(magnitudes.numel(), math.ceil(sparsity * magnitudes.numel() - 1e-9))
    if k == 0:
        return {name: 0.0 for name in modules}
    threshold = magnitudes.kthvalue(k).values
    amounts = {}
    for name, m in modules.items():
        w = m.weight.detach().abs()
        amounts[name] = float((w <= threshold).sum()) / w.numel()
    return amounts
