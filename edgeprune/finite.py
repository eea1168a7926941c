"""NaN and inf in a model, its inputs or its outputs: found before planning, pruning, sensitivity or
fine-tuning starts, and named. Left alone they pass every stage silently (a NaN weight has a magnitude
like any other to the pruner) and surface only at export, as "max abs err nan", naming no layer.

One check for every entry point (`policy.plan`, `pruning.prune`, `sensitivity`, `finetune`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .errors import ModelError
from .inputs import normalize

__all__ = ["check_finite", "check_finite_outputs"]


def _count(tensor: torch.Tensor) -> str:
    """'' when every value is finite, else how many NaN and inf it holds."""
    if not (tensor.is_floating_point() or tensor.is_complex()):
        return ""  # integer tensors (token ids, BatchNorm's num_batches_tracked) cannot hold NaN
    t = tensor.detach()
    nan = int(torch.isnan(t).sum())
    inf = int(torch.isinf(t).sum())
    if not nan and not inf:
        return ""
    parts = [f"{nan} NaN" if nan else "", f"{inf} inf" if inf else ""]
    return f"{' and '.join(p for p in parts if p)} of its {t.numel()} values"


def check_finite(model: nn.Module, example_inputs: Any = None, *, role: str = "model") -> None:
    """Raise ModelError naming the first parameter or buffer (and its layer) of `model`, or the example
    input, that holds NaN or inf. `role` says which model in the message ("teacher")."""
    for kind, named in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, tensor in named:
            found = _count(tensor)
            if found:
                layer, _, _ = name.rpartition(".")
                where = f" (layer {layer!r})" if layer else ""
                raise ModelError(f"the {role} {type(model).__name__} has non-finite weights: {kind} {name!r}{where} "
                                 f"holds {found}; nothing can be pruned or exported from it faithfully — load "
                                 "the weights again, or check the training run that wrote them")
    if example_inputs is not None:
        args, kwargs = normalize(example_inputs)
        for key, tensor in [*enumerate(args), *kwargs.items()]:
            found = _count(tensor)
            if found:
                raise ModelError(f"example_inputs[{key!r}] holds {found}: the model's outputs on it mean nothing")


def check_finite_outputs(model: nn.Module, output: Any) -> None:
    """Raise ModelError when `model`'s output on finite inputs with finite weights holds NaN or inf (an
    overflow, a log of zero inside the model): each output tensor is named by its position."""
    if hasattr(output, "to_tuple"):  # transformers' ModelOutput
        output = output.to_tuple()
    if isinstance(output, dict):
        items = list(output.items())
    elif isinstance(output, (list, tuple)):
        items = list(enumerate(output))
    else:
        items = [(0, output)]
    for key, value in items:
        if isinstance(value, (dict, list, tuple)) or hasattr(value, "to_tuple"):
            check_finite_outputs(model, value)
        elif isinstance(value, torch.Tensor):
            found = _count(value)
            if found:
                raise ModelError(f"{type(model).__name__}'s output {key!r} on the example inputs holds {found}, "
                                 "though its weights and inputs are finite: the model overflows or divides by "
                                 "zero on them")
