"""Copying models: every stage works on a copy, so the caller's model is never changed."""

from __future__ import annotations

import copy

from torch import nn
from torch.nn.utils import prune as torch_prune


def copy_model(model: nn.Module) -> nn.Module:
    """`copy.deepcopy`, also of a model with pruning masks attached. `torch.nn.utils.prune` keeps `weight` as
    `weight_orig * weight_mask` computed with autograd on (by `prune` and by every training forward), a
    non-leaf tensor that deepcopy refuses; the copy gets it detached (the hook recomputes it anyway)."""
    memo = {}
    for module in model.modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, torch_prune.BasePruningMethod):
                masked = getattr(module, hook._tensor_name)
                if not masked.is_leaf:
                    memo[id(masked)] = masked.detach().clone()
    return copy.deepcopy(model, memo)
