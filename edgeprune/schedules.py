"""Schedules for fine-tuning: pure functions of the step number."""

from __future__ import annotations

import math

from .errors import EdgepruneError

__all__ = ["cubic_sparsity", "cosine_lr"]


def cubic_sparsity(step: int, *, initial: float, final: float, begin: int, end: int) -> float:
    """Zhu & Gupta (2017): s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n·Δt))³ for t0 <= t <= t0 + n·Δt, with
    n·Δt = end - begin. `initial` before `begin`, `final` from `end` on."""
    if not (0.0 <= initial < 1.0 and 0.0 <= final < 1.0):
        raise EdgepruneError(f"cubic_sparsity: initial={initial}, final={final} must be in [0, 1)")
    if end <= begin:
        raise EdgepruneError(f"cubic_sparsity: end={end} must be after begin={begin}")
    if step <= begin:
        return float(initial)
    if step >= end:
        return float(final)
    frac = (step - begin) / (end - begin)
    return float(final + (initial - final) * (1.0 - frac) ** 3)


def cosine_lr(step: int, *, total: int, warmup: int, base_lr: float, min_lr: float = 0.0) -> float:
    """Linear warm-up over `warmup` steps (step 0 gets base_lr/warmup, step warmup-1 gets base_lr), then
    cosine decay from base_lr at step `warmup` to min_lr at step `total`."""
    if total <= 0 or warmup < 0:
        raise EdgepruneError(f"cosine_lr: total={total} must be > 0 and warmup={warmup} >= 0")
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))
