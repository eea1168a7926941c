"""What a model costs: multiply-accumulates (MACs) and parameters, in total and per prunable layer.

Totals come from PyTorch's own FlopCounterMode (it sees every aten matmul and convolution, attention
included); per-layer figures from forward hooks on the Conv/Linear layers that pruning changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from .inputs import call

PRUNABLE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _cpu_sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


# FlopCounterMode knows the CUDA attention kernels only; on CPU, scaled_dot_product_attention runs this op.
_EXTRA_OPS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}


@dataclass(frozen=True)
class LayerCost:
    macs: int
    weights: int  # elements of the weight tensor
    nonzero_weights: int
    in_elements: int = 0  # elements of its input and output activations, per call (the largest call)
    out_elements: int = 0


@dataclass(frozen=True)
class ModelCost:
    macs: int  # every MAC the model runs, attention matmuls included
    params: int
    layers: dict[str, LayerCost] = field(default_factory=dict)
    order: tuple[str, ...] = ()  # prunable layers in the order the forward pass ran them
    module_macs: dict[str, int] = field(default_factory=dict)  # MACs run inside each module that holds others

    @property
    def other_macs(self) -> int:
        """MACs outside the prunable layers (attention matmuls, pooling...): channel pruning leaves these,
        except attention's, which shrink with the heads (`macs_outside_layers` of the attention module)."""
        return max(0, self.macs - sum(c.macs for c in self.layers.values()))

    def macs_outside_layers(self, module: str) -> int:
        """MACs that run inside `module` but not in its Conv/Linear layers: an attention module's
        query-key and attention-value matmuls."""
        inner = sum(c.macs for n, c in self.layers.items() if n.startswith(f"{module}."))
        return max(0, self.module_macs.get(module, 0) - inner)


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)}


def _layer_macs(module: nn.Module, output: torch.Tensor) -> int:
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    return output.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)


def _weight(module: nn.Module) -> torch.Tensor:
    return module.weight  # with torch.nn.utils.prune masks applied this is the masked weight


@torch.no_grad()
def measure(model: nn.Module, example_inputs: Any) -> ModelCost:
    layers = prunable_layers(model)
    macs: dict[str, int] = {}
    elements: dict[str, tuple[int, int]] = {}
    order: list[str] = []

    def hook(name):
        def record(module, inputs, output):
            if name not in macs:
                order.append(name)
            macs[name] = macs.get(name, 0) + _layer_macs(module, output)
            seen = elements.get(name, (0, 0))
            first = inputs[0].numel() if inputs and torch.is_tensor(inputs[0]) else 0
            elements[name] = (max(seen[0], first), max(seen[1], output.numel()))

        return record

    counter = FlopCounterMode(display=False, custom_mapping=_EXTRA_OPS)
    inside: dict[str, int] = {}
    started: dict[str, list[int]] = {}

    def enter(name):
        def record(_module, _inputs):
            started.setdefault(name, []).append(counter.get_total_flops())

        return record

    def leave(name):
        def record(_module, _inputs, _output):
            inside[name] = inside.get(name, 0) + (counter.get_total_flops() - started[name].pop()) // 2

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in layers.items()]
    holders = [(n, m) for n, m in model.named_modules() if n and next(m.children(), None) is not None]
    handles += [m.register_forward_pre_hook(enter(n)) for n, m in holders]
    handles += [m.register_forward_hook(leave(n)) for n, m in holders]
    was_training = model.training
    model.eval()
    try:
        with counter:
            call(model, example_inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    per_layer = {}
    for name, module in layers.items():
        w = _weight(module)
        per_layer[name] = LayerCost(macs.get(name, 0), w.numel(), int(torch.count_nonzero(w)),
                                    *elements.get(name, (0, 0)))
    params = sum(p.numel() for p in model.parameters())
    return ModelCost(counter.get_total_flops() // 2, params, per_layer, tuple(order), inside)


BYTES = {"fp32": 4, "fp16": 2, "int8": 1}  # one weight or activation element stored at each precision


def weight_bytes(model: nn.Module, precision: str) -> int:
    """Bytes the model's parameters take stored at `precision`: Conv/Linear weights at its width; at int8
    the biases are int32 and the rest (norm scales) float32, as TFLite stores them. Quantization scales and
    the file format's own overhead come on top."""
    weights = {id(m.weight) for m in prunable_layers(model).values()}
    total = 0
    for p in model.parameters():
        width = BYTES[precision] if id(p) in weights or precision != "int8" else 4
        total += p.numel() * width
    return total


def activation_bytes(cost: ModelCost, precision: str) -> int:
    """The largest input + output of any one Conv/Linear layer at `precision`: both live in memory while it
    runs, so a runtime's activation memory (TFLite-Micro's arena) is at least this. A lower bound: the arena
    also holds what later layers still need (residuals) and scratch buffers."""
    pairs = [c.in_elements + c.out_elements for c in cost.layers.values()]
    return max(pairs, default=0) * BYTES[precision]


def compare_table(dense: ModelCost, pruned: ModelCost, title: str = "dense vs pruned (measured)") -> "Table":
    """MACs, parameters and non-zero prunable weights before and after, as a rich table."""
    from rich.table import Table

    def nonzero(cost: ModelCost) -> int:
        return sum(c.nonzero_weights for c in cost.layers.values())

    table = Table(title=title)
    for col in ("", "dense", "pruned", "kept"):
        table.add_column(col, justify="right")
    for label, a, b in (("MACs", dense.macs, pruned.macs), ("parameters", dense.params, pruned.params),
                        ("non-zero Conv/Linear weights", nonzero(dense), nonzero(pruned))):
        table.add_row(label, f"{a:,}", f"{b:,}", f"{b / a:.3f}" if a else "—")
    return table
