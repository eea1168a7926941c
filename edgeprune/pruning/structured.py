"""Structured channel pruning: channels physically removed through torch-pruning's dependency graph.

torch-pruning traces the model and couples every tensor dimension that must shrink together (residual
adds, concat/split, depthwise convolutions, LayerNorms, attention's q/k/v and output projection). One
coupled set of output channels is a `ChannelGroup`; the plan decides how many channels leave each group.

Attention groups are pruned by whole heads: the head size stays, so the layer's `scaling` stays right,
and transformers' attention infers the head count from the tensor shape (`view(..., -1, head_dim)`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

import torch
import torch_pruning as tp
from torch import nn

from .._copy import copy_model
from ..costs import PRUNABLE_TYPES
from ..errors import ModelError
from ..inputs import call, main_output, normalize, output_shapes

IMPORTANCES = ("l1", "l2", "bn_scale", "taylor")


def _importance(kind: str) -> tp.importance.Importance:
    if kind == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if kind == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if kind == "bn_scale":
        return tp.importance.BNScaleImportance()
    if kind == "taylor":
        return tp.importance.GroupTaylorImportance()
    raise ValueError(f"unknown importance {kind!r}: expected one of {', '.join(IMPORTANCES)}")


@dataclass(frozen=True)
class ChannelGroup:
    root: str  # the layer whose output channels define the group
    channels: int
    out_layers: tuple[str, ...]  # prunable layers whose output channels shrink
    in_layers: tuple[str, ...]  # prunable layers whose input channels shrink
    head_dim: int = 0  # attention groups: channels = heads * head_dim; whole heads are removed
    attention: str = ""  # attention groups: the module whose query-key and attention-value matmuls lose heads

    @property
    def heads(self) -> int:
        return self.channels // self.head_dim if self.head_dim else 0

    @property
    def unit(self) -> int:
        """The smallest number of channels that can be removed: one head for attention, else one."""
        return self.head_dim or 1


# (query, key, value) attribute names and the head-size attribute of transformers' attention layouts:
# ViT/Llama-style, BERT-style, DistilBERT's MultiHeadSelfAttention
_ATTENTION_LAYOUTS = ((("q_proj", "k_proj", "v_proj"), "head_dim"),
                      (("query", "key", "value"), "attention_head_size"),
                      (("q_lin", "k_lin", "v_lin"), "attention_head_size"))


def _attention_modules(model: nn.Module) -> dict[nn.Module, nn.Module]:
    """q/k/v projections -> the attention module that owns them (transformers' ViT, BERT and DistilBERT)."""
    owners = {}
    for module in model.modules():
        for names, size_attr in _ATTENTION_LAYOUTS:
            projections = [getattr(module, n, None) for n in names]
            if all(isinstance(p, nn.Linear) for p in projections) and isinstance(getattr(module, size_attr, None), int):
                owners.update({p: module for p in projections})
    return owners


def _head_dim(attention: nn.Module) -> int:
    return getattr(attention, "head_dim", None) or attention.attention_head_size


def _query(attention: nn.Module) -> nn.Linear:
    return next(getattr(attention, names[0]) for names, _ in _ATTENTION_LAYOUTS
                if isinstance(getattr(attention, names[0], None), nn.Linear))


def _sync_attention(attention: nn.Module) -> None:
    """Keep the attention module's own head count consistent with its (pruned) projections.

    BERT reshapes with `num_attention_heads`/`all_head_size`; DistilBERT (before transformers 5) with
    `view(bs, -1, n_heads, dim // n_heads)`, so both its `n_heads` and `dim` must follow the projections."""
    width = _query(attention).out_features
    heads = width // _head_dim(attention)
    sizes = {"num_attention_heads": heads, "all_head_size": width}
    if hasattr(attention, "n_heads"):  # DistilBERT: `dim` is its attention width only there
        sizes.update(n_heads=heads, dim=width)
    for attr, value in sizes.items():
        if isinstance(getattr(attention, attr, None), int):
            setattr(attention, attr, value)


class ChannelGraph:
    """torch-pruning's dependency graph over one model, addressed by layer names."""

    def __init__(self, model: nn.Module, example_inputs: Any):
        self.model = model
        self.example_inputs = example_inputs
        self.names = {m: n for n, m in model.named_modules()}
        self.modules = dict(model.named_modules())
        self.attention = _attention_modules(model)
        args, kwargs = normalize(example_inputs)
        self.graph = tp.DependencyGraph()
        try:
            with warnings.catch_warnings():
                # "Unwrapped parameters detected": ViT's cls token, ConvNeXt's layer scale; the defaults are right
                warnings.simplefilter("ignore")
                self.graph.build_dependency(
                    model,
                    example_inputs=kwargs if kwargs else args,
                    output_transform=main_output,
                    verbose=False,
                )
        except Exception as exc:
            raise ModelError(f"torch-pruning cannot trace the model ({type(model).__name__}): {type(exc).__name__}: {exc}") from exc

    def _out_fn(self, module: nn.Module) -> Callable:
        return self.graph.get_pruner_of_module(module).prune_out_channels

    def _describe(self, root: nn.Module, group) -> Optional[ChannelGroup]:
        outs, ins = [], []
        for dep, _ in group:
            module = dep.target.module
            if not isinstance(module, PRUNABLE_TYPES) or module not in self.names:
                continue
            if self.graph.is_out_channel_pruning_fn(dep.handler):
                if not dep.target.outputs:  # feeds the model output: pruning it would change the output shape
                    return None
                outs.append(self.names[module])
            else:
                ins.append(self.names[module])
        attention = next((self.attention[self.modules[n]] for n in outs if self.modules[n] in self.attention), None)
        head_dim = _head_dim(attention) if attention is not None else 0
        channels = len(group[0].idxs)
        return ChannelGroup(self.names[root], channels, tuple(dict.fromkeys(outs)), tuple(dict.fromkeys(ins)), head_dim,
                            self.names[attention] if attention is not None else "")

    def groups(self, frozen: Iterable[str] = ()) -> list[ChannelGroup]:
        """Every coupled channel group whose output layers are all free to shrink.

        `frozen` layers keep their output channels: a group containing one is not offered.
        """
        ignored = [self.modules[n] for n in frozen]
        found = []
        for group in self.graph.get_all_groups(ignored_layers=ignored, root_module_types=list(PRUNABLE_TYPES)):
            root = group[0].dep.target.module
            described = self._describe(root, group)
            if described is not None:
                found.append(described)
        return found

    def input_layers(self) -> set[str]:
        """Conv/Linear layers that see the model's inputs: no other module lies between them and an input,
        only functions (reshapes, arithmetic). A transformer's first projection sees embeddings, not inputs."""
        found = set()
        for module, node in self.graph.module2node.items():
            if not isinstance(module, PRUNABLE_TYPES) or module not in self.names:
                continue
            seen, stack, fed_by_module = set(), list(node.inputs), False
            while stack and not fed_by_module:
                upstream = stack.pop()
                if id(upstream) in seen or upstream.type == tp.ops.OPTYPE.PARAMETER:
                    continue
                seen.add(id(upstream))
                # torch-pruning stands in for functions with its own dummy modules, which the model does not hold
                fed_by_module = upstream.module in self.names
                stack.extend(upstream.inputs)
            if not fed_by_module:
                found.add(self.names[module])
        return found

    def _group(self, root: str, idxs: list[int]):
        module = self.modules[root]
        return self.graph.get_pruning_group(module, self._out_fn(module), idxs)

    def scores(self, group: ChannelGroup, importance: str) -> torch.Tensor:
        """One score per removable unit (channel, or head for attention groups); low = remove first."""
        scores = _importance(importance)(self._group(group.root, list(range(group.channels))))
        if scores is None:  # e.g. BN-scale importance on a group without BatchNorm
            scores = _importance("l2")(self._group(group.root, list(range(group.channels))))
        scores = scores.detach().float()
        if group.head_dim:
            scores = scores.view(group.heads, group.head_dim).mean(1)
        return scores

    def choose(self, group: ChannelGroup, scores: torch.Tensor, remove: int) -> list[int]:
        """The `remove` channels of lowest importance (ties broken by index, so choices are repeatable)."""
        units = remove // group.unit
        order = torch.argsort(scores, stable=True)[:units].tolist()
        if group.head_dim:
            return sorted(h * group.head_dim + i for h in order for i in range(group.head_dim))
        return sorted(order)

    def remove(self, root: str, idxs: list[int]) -> None:
        group = self._group(root, idxs)
        if not self.graph.check_pruning_group(group):
            raise ModelError(f"layer {root}: removing {len(idxs)} channels would leave a layer with none")
        group.prune()
        for n in set(self.attention.values()):
            _sync_attention(n)


def prepare_taylor(model: nn.Module, example_inputs: Any, loss_fn: Optional[Callable] = None) -> None:
    """Taylor importance needs gradients: by default of the mean squared output, a label-free proxy."""
    model.zero_grad(set_to_none=True)
    output = call(model, example_inputs)
    loss = loss_fn(output) if loss_fn else main_output(output).float().pow(2).mean()
    loss.backward()


@dataclass(frozen=True)
class Removal:
    root: str
    idxs: tuple[int, ...]  # channel indices removed, in the root layer's output numbering before pruning


def _check(model: nn.Module, example_inputs: Any, expected: list[tuple[int, ...]]) -> Optional[str]:
    try:
        with torch.no_grad():
            shapes = output_shapes(call(model, example_inputs))
    except Exception as exc:  # any failure of the user's forward counts as "this group broke the model"
        return f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
    if shapes != expected:
        return f"output shapes changed from {expected} to {shapes}"
    return None


def remove_channels(
    model: nn.Module,
    example_inputs: Any,
    removals: dict[str, int],
    importance: str = "l2",
    loss_fn: Optional[Callable] = None,
) -> tuple[nn.Module, list[Removal], dict[str, str]]:
    """Remove `removals[root]` channels from each group, in place on `model` (callers pass a copy).

    Returns the pruned model, what was removed, and the groups that broke the model (rolled back, with
    the error). The returned model always runs on `example_inputs` with unchanged output shapes.
    """
    with torch.no_grad():
        expected = output_shapes(call(model, example_inputs))
    pristine = copy_model(model)
    graph = ChannelGraph(model, example_inputs)
    if importance == "taylor":
        prepare_taylor(model, example_inputs, loss_fn)
    groups = {g.root: g for g in graph.groups()}
    missing = [root for root in removals if root not in groups]
    if missing:
        raise ModelError(f"layer {missing[0]}: not the root of a prunable channel group of this model")
    # Scores come from the unpruned model: groups have independent channel numberings, so indices chosen
    # now stay valid while other groups are removed.
    planned = [
        Removal(root, tuple(graph.choose(groups[root], graph.scores(groups[root], importance), n)))
        for root, n in removals.items()
        if n > 0
    ]
    model.zero_grad(set_to_none=True)

    def replay(target: nn.Module, items: list[Removal]) -> ChannelGraph:
        g = ChannelGraph(target, example_inputs)
        for item in items:
            g.remove(item.root, list(item.idxs))
        return g

    failures: dict[str, str] = {}
    try:
        for item in planned:
            graph.remove(item.root, list(item.idxs))
        error = _check(model, example_inputs, expected)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    if error is None:
        return model, planned, failures

    # Something broke the model: find which group, one at a time, starting again from the pristine copy.
    accepted: list[Removal] = []
    for item in planned:
        trial = copy_model(pristine)
        try:
            replay(trial, accepted + [item])
            error = _check(trial, example_inputs, expected)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        if error is None:
            accepted.append(item)
        else:
            failures[item.root] = error
    model = copy_model(pristine)
    if accepted:
        replay(model, accepted)
    return model, accepted, failures
