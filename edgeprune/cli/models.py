"""`--model`, `--weights` and `--input-*`: the dense model a command starts from, and its example inputs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

from ..errors import ModelError
from ..factory import build, default_inputs
from ..inputs import check_size


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in re.split(r"[,x×]", text.strip()))
    except ValueError:
        raise ModelError(f"--input-shape {text!r}: expected integers separated by commas, e.g. 1,3,224,224") from None
    if not shape or any(d <= 0 for d in shape):
        raise ModelError(f"--input-shape {text!r}: every dimension must be a positive integer")
    return shape


def example_inputs(model_spec: str, shape: Optional[str], name: Optional[str], dtype: str) -> Any:
    import torch

    if shape is None:
        inputs = default_inputs(model_spec)
        if inputs is None:
            raise ModelError(f"{model_spec} has no example_inputs(); pass --input-shape (and --input-name for keywords)")
        return inputs
    torch_dtype = getattr(torch, dtype, None)
    if not isinstance(torch_dtype, torch.dtype):
        raise ModelError(f"--input-dtype {dtype!r} is not a torch dtype")
    dims = parse_shape(shape)
    check_size(dims, torch_dtype, f"--input-shape {shape}")  # refused before allocating, not killed by the kernel
    gen = torch.Generator().manual_seed(0)
    tensor = (torch.randn(dims, generator=gen).to(torch_dtype) if torch_dtype.is_floating_point
              else torch.zeros(dims, dtype=torch_dtype))
    return {name: tensor} if name else (tensor,)


def dense(model_spec: str, weights: Optional[Path]):
    """The factory's dense model, with trained weights from `--weights F.safetensors` when given."""
    from ..serialization import load_weights

    return build(model_spec) if weights is None else load_weights(model_spec, weights)
