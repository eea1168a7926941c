"""Pruning masks while training: held in force after every optimizer step, and recomputed by magnitude.

Masks are enforced twice: the prune hook computes weight = weight_orig * weight_mask, and after every
optimizer step `weight_orig` is zeroed at masked positions, so weight decay or momentum cannot revive a
pruned weight when the mask is later folded or removed.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from ..costs import measure, prunable_layers
from ..errors import ModelError

__all__ = ["masked", "enforce_masks", "refresh_weight", "sparsity", "ensure_mask", "resolve_layers", "magnitude_mask"]


def masked(model: nn.Module):
    """(module, tensor name) of every torch.nn.utils.prune mask on `model`."""
    for module in model.modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, torch_prune.BasePruningMethod):
                yield module, hook._tensor_name


def enforce_masks(model: nn.Module) -> None:
    with torch.no_grad():
        for module, name in masked(model):
            getattr(module, name + "_orig").mul_(getattr(module, name + "_mask"))


def refresh_weight(module: nn.Module) -> None:
    """Recompute `weight` = weight_orig * mask after a mask changed (the hook does it on the next forward)."""
    with torch.no_grad():
        module.weight = module.weight_orig * module.weight_mask


def sparsity(model: nn.Module) -> float:
    zeros = total = 0
    for m in prunable_layers(model).values():
        w = m.weight_orig * m.weight_mask if hasattr(m, "weight_mask") else m.weight
        zeros += int((w == 0).sum())
        total += w.numel()
    return zeros / total if total else 0.0


def ensure_mask(module: nn.Module) -> None:
    if not hasattr(module, "weight_mask"):
        torch_prune.identity(module, "weight")


def _default_layers(model: nn.Module, inputs: Any) -> list[str]:
    order = measure(model, inputs if isinstance(inputs, dict) else (inputs,)).order
    return list(order[1:-1])


def resolve_layers(model: nn.Module, names: Optional[Sequence[str]], sample_inputs: Any) -> list[str]:
    layers = prunable_layers(model)
    if names is None:
        return _default_layers(model, sample_inputs)
    unknown = [n for n in names if n not in layers]
    if unknown:
        raise ModelError(f"layers {unknown} are not Conv/Linear layers of {type(model).__name__} "
                         f"(it has {', '.join(layers)})")
    return list(names)


def magnitude_mask(module: nn.Module, sparsity: float) -> torch.Tensor:
    """Per-layer magnitude mask with exactly round(sparsity·numel) zeros (already-masked weights go first)."""
    w = (module.weight_orig * module.weight_mask).detach().abs().flatten()
    k = int(round(sparsity * w.numel()))
    mask = torch.ones_like(w)
    if k > 0:
        mask[w.topk(k, largest=False).indices] = 0
    return mask.view_as(module.weight_mask) * module.weight_mask
