"""Example inputs: a tuple of positional tensors or a dict of keyword tensors.

transformers models take keywords (`pixel_values=`, `input_ids=`), plain modules positionals; every
stage calls the model through `call`, so both work everywhere. `InputSpec` describes the inputs in JSON
so a saved plan can rebuild inputs of the same shape (to trace the model again) without pickling data.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence, Union

import torch
from torch import nn

from . import host
from .errors import ModelError

ExampleInputs = Union[tuple, dict]


def normalize(example_inputs: Any) -> tuple[tuple, dict]:
    """(args, kwargs) from a tensor, a tuple/list of tensors or a dict of tensors."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, Mapping):
        bad = [k for k, v in example_inputs.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise ModelError(f"example_inputs[{bad[0]!r}] is not a tensor")
        return (), dict(example_inputs)
    if isinstance(example_inputs, Sequence) and not isinstance(example_inputs, str):
        for i, v in enumerate(example_inputs):
            if not isinstance(v, torch.Tensor):
                raise ModelError(f"example_inputs[{i}] is a {type(v).__name__}, expected a tensor")
        return tuple(example_inputs), {}
    raise ModelError(
        f"example_inputs must be a tuple of tensors or a dict of keyword tensors, got {type(example_inputs).__name__}"
    )


def call(model: nn.Module, example_inputs: Any) -> Any:
    args, kwargs = normalize(example_inputs)
    return model(*args, **kwargs)


def main_output(output: Any) -> torch.Tensor:
    """The tensor that stands for the model's result (logits for transformers' heads)."""
    if isinstance(output, torch.Tensor):
        return output
    for name in ("logits", "last_hidden_state", "pooler_output"):
        value = getattr(output, name, None)
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(output, Mapping):
        for value in output.values():
            if isinstance(value, torch.Tensor):
                return value
    if isinstance(output, Sequence):
        for value in output:
            if isinstance(value, torch.Tensor):
                return value
    raise ModelError(f"cannot find a tensor in the model's output of type {type(output).__name__}")


def output_shapes(output: Any) -> list[tuple[int, ...]]:
    """Shapes of every tensor in the output, in order: pruning must leave these unchanged."""
    if isinstance(output, torch.Tensor):
        return [tuple(output.shape)]
    if hasattr(output, "to_tuple"):  # transformers' ModelOutput
        output = output.to_tuple()
    if isinstance(output, Mapping):
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        return [shape for item in output for shape in output_shapes(item)]
    return []


def check_size(shape: Sequence[int], dtype: torch.dtype, what: str) -> None:
    """Refuse, before allocating, a tensor larger than the memory this machine has free: a typo such as
    1,3,100000,100000 would otherwise be killed by the kernel, or swap, with no word about the shape."""
    need = math.prod(shape) * dtype.itemsize
    free = host.memory_available()
    if free and need > free:
        raise ModelError(f"{what} of shape {tuple(shape)} ({str(dtype).removeprefix('torch.')}) would take "
                         f"{_bytes(need)}, more than the {_bytes(free)} of memory available here")


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


@dataclass(frozen=True)
class TensorSpec:
    name: str  # keyword name, or "" for a positional input
    shape: tuple[int, ...]
    dtype: str
    low: float = 0.0  # integer inputs (token ids) are drawn from [low, high]
    high: float = 0.0

    def make(self, generator: torch.Generator) -> torch.Tensor:
        dtype = getattr(torch, self.dtype)
        check_size(self.shape, dtype, f"input {self.name!r}" if self.name else "a positional input")
        if dtype.is_floating_point:
            return torch.randn(self.shape, generator=generator, dtype=dtype)
        if dtype == torch.bool:
            return torch.ones(self.shape, dtype=dtype)
        return torch.randint(int(self.low), int(self.high) + 1, self.shape, generator=generator, dtype=dtype)


@dataclass(frozen=True)
class InputSpec:
    tensors: tuple[TensorSpec, ...]

    @classmethod
    def of(cls, example_inputs: Any) -> "InputSpec":
        args, kwargs = normalize(example_inputs)
        items = [("", t) for t in args] + list(kwargs.items())
        specs = []
        for name, t in items:
            low = high = 0.0
            if not t.dtype.is_floating_point and t.numel() and t.dtype != torch.bool:
                low, high = float(t.min()), float(t.max())
            specs.append(TensorSpec(name, tuple(t.shape), str(t.dtype).removeprefix("torch."), low, high))
        return cls(tuple(specs))

    def make(self, seed: int = 0) -> ExampleInputs:
        generator = torch.Generator().manual_seed(seed)
        tensors = [(s.name, s.make(generator)) for s in self.tensors]
        if any(name for name, _ in tensors):
            return {name: t for name, t in tensors}
        return tuple(t for _, t in tensors)

    def to_json(self) -> list[dict]:
        return [asdict(s) for s in self.tensors]

    @classmethod
    def from_json(cls, data: list[dict]) -> "InputSpec":
        return cls(tuple(TensorSpec(d["name"], tuple(d["shape"]), d["dtype"], d["low"], d["high"]) for d in data))
