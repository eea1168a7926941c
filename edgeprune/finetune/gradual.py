"""Gradual pruning (`GradualSchedule`): masks that grow during fine-tuning.

Unstructured: per-layer magnitude masks recomputed every k steps following `cubic_sparsity`. "n:m": the
N:M mask is exact from the start for each layer, and the ramp is over *which* layers are sparsified: at
step t the first ceil(L·s_t/s_final) of the L layers (in module order) carry N:M masks, s_t following the
cubic schedule with s_final = 1 - n/m.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ..errors import EdgepruneError
from ..pruning.nm import nm_mask
from ..schedules import cubic_sparsity
from .masks import enforce_masks, magnitude_mask, refresh_weight

__all__ = ["GradualSchedule", "apply_gradual"]


@dataclass(frozen=True, kw_only=True)
class GradualSchedule:
    final_sparsity: float
    begin_step: int
    end_step: int
    every_k_steps: int = 1
    initial_sparsity: float = 0.0
    method: str = "unstructured"  # "unstructured" | "n:m"
    n: int = 2
    m: int = 4
    layers: Optional[tuple[str, ...]] = None  # default: every Conv/Linear except the first and the last

    def __post_init__(self):
        if self.method not in ("unstructured", "n:m"):
            raise EdgepruneError(f"GradualSchedule(method={self.method!r}): expected 'unstructured' or 'n:m'")
        if self.end_step <= self.begin_step or self.every_k_steps < 1:
            raise EdgepruneError(f"GradualSchedule: need begin_step < end_step and every_k_steps >= 1 "
                                 f"(got {self.begin_step}, {self.end_step}, {self.every_k_steps})")
        if not 0 <= self.initial_sparsity <= self.final_sparsity < 1:
            raise EdgepruneError(f"GradualSchedule: need 0 <= initial_sparsity <= final_sparsity < 1 "
                                 f"(got {self.initial_sparsity}, {self.final_sparsity})")


def apply_gradual(model: nn.Module, schedule: GradualSchedule, layers: list[str], step: int) -> None:
    if step < schedule.begin_step or (step - schedule.begin_step) % schedule.every_k_steps and step < schedule.end_step:
        return
    s = cubic_sparsity(step, initial=schedule.initial_sparsity, final=schedule.final_sparsity,
                       begin=schedule.begin_step, end=schedule.end_step)
    modules = dict(model.named_modules())
    with torch.no_grad():
        if schedule.method == "unstructured":
            for name in layers:
                module = modules[name]
                module.weight_mask.copy_(magnitude_mask(module, s))
                refresh_weight(module)
        else:
            count = math.ceil(len(layers) * s / schedule.final_sparsity) if schedule.final_sparsity else len(layers)
            for name in layers[:count]:
                module = modules[name]
                mask = nm_mask(module.weight_orig * module.weight_mask, schedule.n, schedule.m)
                module.weight_mask.mul_(mask.to(module.weight_mask.dtype))
                refresh_weight(module)
    enforce_masks(model)
