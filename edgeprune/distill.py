"""Knowledge distillation loss (Hinton et al. 2015)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .errors import ModelError

__all__ = ["kd_loss"]


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: Optional[torch.Tensor], *,
            alpha: float, temperature: float) -> torch.Tensor:
    """alpha·T²·KL(softmax(t/T) || softmax(s/T)) + (1 - alpha)·CE(s, labels), KL averaged over the batch."""
    if tuple(student_logits.shape) != tuple(teacher_logits.shape):
        raise ModelError(f"teacher output shape {tuple(teacher_logits.shape)} differs from the student's "
                         f"{tuple(student_logits.shape)}: the teacher must predict the same classes")
    if not 0.0 <= alpha <= 1.0 or temperature <= 0:
        raise ModelError(f"kd_loss: alpha={alpha} must be in [0, 1] and temperature={temperature} > 0")
    t = temperature
    kl = F.kl_div(F.log_softmax(student_logits / t, dim=-1), F.log_softmax(teacher_logits.detach() / t, dim=-1),
                  reduction="batchmean", log_target=True)
    loss = alpha * t * t * kl
    if alpha < 1.0:
        if labels is None:
            raise ModelError("kd_loss: labels are needed when alpha < 1")
        loss = loss + (1.0 - alpha) * F.cross_entropy(student_logits, labels)
    return loss
