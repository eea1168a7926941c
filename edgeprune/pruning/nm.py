"""N:M semi-structured sparsity: in every group of M consecutive weights along the input (reduction)
dimension at most N are non-zero — the pattern Ampere's sparse tensor cores run (2:4).

For a convolution the groups run along input channels at each (output channel, kernel position), which
is how TensorRT lays the weights out (K, R, S, C) for its sparse kernels. The mask keeps the N weights of
largest magnitude in each group, exactly; it is attached with `torch.nn.utils.prune` so it stays in force
during fine-tuning until `finalize` folds it in.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune


def _grouped_view(weight: torch.Tensor, m: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Weights as rows of M consecutive input-dimension values, and the permuted shape to undo it."""
    if weight.dim() == 2:  # Linear: (out, in)
        permuted = weight
    else:  # ConvNd: (out, in, *kernel) -> (out, *kernel, in)
        permuted = weight.movedim(1, -1)
    return permuted.reshape(-1, m), tuple(permuted.shape)


def _ungroup(rows: torch.Tensor, permuted_shape: tuple[int, ...], dim: int) -> torch.Tensor:
    permuted = rows.reshape(permuted_shape)
    return permuted if dim == 2 else permuted.movedim(-1, 1)


def reduction_size(module: nn.Module) -> int:
    """Length of the input dimension the N:M groups run along."""
    return module.in_features if isinstance(module, nn.Linear) else module.in_channels // module.groups


def nm_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    if weight.dim() < 2 or weight.shape[1] % m:
        raise ValueError(f"input dimension {tuple(weight.shape)}[1] is not a multiple of {m}")
    rows, permuted_shape = _grouped_view(weight.detach().abs(), m)
    keep = rows.topk(n, dim=1).indices
    mask = torch.zeros_like(rows, dtype=torch.bool).scatter_(1, keep, True)
    return _ungroup(mask, permuted_shape, weight.dim())


def satisfies_nm(weight: torch.Tensor, n: int, m: int) -> bool:
    """True when every group of M along the input dimension has at most N non-zeros."""
    if weight.dim() < 2 or weight.shape[1] % m:
        return False
    rows, _ = _grouped_view(weight.detach(), m)
    return bool(((rows != 0).sum(dim=1) <= n).all())


def apply_nm(module: nn.Module, n: int, m: int) -> None:
    torch_prune.custom_from_mask(module, "weight", nm_mask(module.weight, n, m))
