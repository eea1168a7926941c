"""Carrying out a plan: `prune` copies, masks hold through training, `finalize` gives plain modules that
export, broken channel groups are rolled back, and the N:M mask has the layout sparse tensor cores run."""

from __future__ import annotations

import warnings
from typing import Optional

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils import prune as torch_prune

import edgeprune as ep
from helpers import (ETHOS, JETSON_SMALL, PI5, TINY_MODELS, grid_budget, grid_cases, layer_channels, macs_budget,
                     on_grid)
from edgeprune import zoo
from edgeprune.inputs import call, main_output, normalize, output_shapes
from edgeprune.pruning.nm import apply_nm, nm_mask, reduction_size, satisfies_nm
from edgeprune.pruning.structured import IMPORTANCES

# (target, budget kind) of helpers' grid: structured + 2:4 on Jetson, structured only on the Pi, unstructured
# on Ethos-U
KINDS = {
    "jetson-nm": (JETSON_SMALL, "macs"),
    "pi5-structured": (PI5, "macs"),
    "ethos-unstructured": (ETHOS, "sparsity"),
}


def _budget(model: str, kind: str) -> ep.Budget:
    return grid_budget(model, *KINDS[kind])


def _target(kind: str, jetson_small):
    target = KINDS[kind][0]
    return jetson_small if target == JETSON_SMALL else target


def grid(kinds=tuple(KINDS)):
    """The grid's cases of these kinds, for the `pruned_case` fixture (conftest)."""
    return on_grid([case for kind in kinds for case in grid_cases([KINDS[kind][0]], [KINDS[kind][1]])])


def _groups_of_m(weight: torch.Tensor, m: int) -> torch.Tensor:
    """Rows of M consecutive input channels at each (output channel, kernel position)."""
    if weight.dim() > 2:
        weight = weight.movedim(1, -1)  # (out, in, *k) -> (out, *k, in)
    return weight.reshape(-1, m)


def _snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "structure": [(n, type(m).__name__, repr(m)) for n, m in model.named_modules()],
        "params": [(n, p.shape, p.requires_grad) for n, p in model.named_parameters()],
        "hooks": sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules()),
        "training": [m.training for m in model.modules()],
    }


# -- prune copies and leaves the caller's model alone ----------------------------------------------------


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("model", TINY_MODELS)
def test_plan_prune_and_finalize_leave_the_callers_model_bit_identical(model, kind, jetson_small):
    factory = getattr(zoo, model)
    dense, inputs = factory(), factory.example_inputs()  # a fresh model: the session's ones are shared
    before = _snapshot(dense)
    plan = ep.plan(dense, inputs, _target(kind, jetson_small), _budget(model, kind))
    ep.finalize(ep.prune(dense, plan))
    after = _snapshot(dense)
    assert after["structure"] == before["structure"]
    assert after["params"] == before["params"]
    assert (after["hooks"], after["training"]) == (before["hooks"], before["training"])
    assert after["state"].keys() == before["state"].keys()
    for key, tensor in before["state"].items():
        assert torch.equal(after["state"][key], tensor), key


@grid()
def test_prune_returns_a_new_module(pruned_case):
    zm, _, pruned = pruned_case
    assert pruned is not zm.model
    assert not {id(m) for m in pruned.modules()} & {id(m) for m in zm.model.modules()}
    assert not {id(p) for p in pruned.parameters()} & {id(p) for p in zm.model.parameters()}


@grid()
def test_pruned_model_keeps_its_output_shapes(pruned_case):
    zm, _, pruned = pruned_case
    with torch.no_grad():
        assert output_shapes(call(pruned, zm.inputs)) == output_shapes(call(zm.model, zm.inputs))


@grid()
def test_prune_records_the_plan_it_carried_out(pruned_case):
    _, plan, pruned = pruned_case
    record = ep.record_of(pruned)
    assert record.plan == plan  # nothing rolled back on the zoo models
    assert {r.root: len(r.idxs) for r in record.removals} == {g.root: g.remove for g in plan.groups}


@grid(["pi5-structured"])
def test_attention_groups_lose_whole_heads(pruned_case):
    _, plan, pruned = pruned_case
    for g in plan.groups:
        if g.heads:
            assert g.remove % (g.channels // g.heads) == 0
    for module in pruned.modules():
        if hasattr(module, "attention_head_size") and hasattr(module, "query"):
            assert module.query.out_features % module.attention_head_size == 0
            assert module.query.out_features == module.key.out_features == module.value.out_features


# -- which channels leave: the importance the plan names, lowest first --------------------------------------


class Ranked(nn.Module):
    """`first` sees the inputs and `head` is the classifier (both kept by the rules): `mid`'s 32 output
    channels, coupled to `bn` and to `head`'s inputs, are the one group the policy can shrink."""

    def __init__(self):
        super().__init__()
        self.first = nn.Linear(16, 16)
        self.mid = nn.Linear(16, 32)
        self.bn = nn.BatchNorm1d(32)
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.mid(self.first(x)))))


def _ranked(rows: dict[int, torch.Tensor], gamma: Optional[dict[int, float]] = None,
            beta: Optional[dict[int, float]] = None) -> Ranked:
    """A `Ranked` whose `mid` rows, BatchNorm scales and shifts are set per channel; every other parameter
    the importances read is the same for all channels (`head`'s columns alike, no biases), so the rows and
    the BatchNorm decide the ranking. A large shift keeps a channel's ReLU open on the inputs."""
    torch.manual_seed(0)
    model = Ranked().eval()
    with torch.no_grad():
        model.mid.bias.zero_()
        model.head.weight.fill_(0.1)
        model.head.bias.zero_()
        for c in range(32):
            model.mid.weight[c] = rows[c]
            model.bn.weight[c] = (gamma or {}).get(c, 1.0)
            model.bn.bias[c] = (beta or {}).get(c, 10.0)
    return model


RANKED_INPUTS = (torch.randn(4, 16, generator=torch.Generator().manual_seed(1)),)
# Ranked's MACs: first 256, mid 512, head 128. One aligned unit (8 channels) off mid leaves 0.82 of them,
# two 0.64, three 0.46: these budgets each take exactly that many units.
BUDGET_FOR_REMOVING = {8: 0.83, 16: 0.7, 24: 0.5}


def _removed(model: nn.Module, plan: ep.Plan) -> dict[str, tuple[int, ...]]:
    return {r.root: r.idxs for r in ep.record_of(ep.prune(model, plan)).removals}


@pytest.mark.parametrize("remove", sorted(BUDGET_FOR_REMOVING))
def test_structured_pruning_removes_the_channels_of_lowest_magnitude(remove):
    # channel c's row has every weight equal to magnitude[c] / 16: a known, distinct L2 (and L1) ranking
    magnitude = torch.randperm(32, generator=torch.Generator().manual_seed(2)).float() + 1
    model = _ranked({c: torch.full((16,), float(magnitude[c]) / 16) for c in range(32)})
    plan = ep.plan(model, RANKED_INPUTS, PI5, ep.Budget(macs_ratio=BUDGET_FOR_REMOVING[remove]))
    weakest = sorted(magnitude.argsort()[:remove].tolist())
    assert _removed(model, plan) == {"mid": tuple(weakest)}
    kept = [c for c in range(32) if c not in weakest]
    pruned = ep.prune(model, plan)
    assert torch.equal(pruned.mid.weight, model.mid.weight[kept])
    assert torch.equal(pruned.bn.weight, model.bn.weight[kept])


# Four sets of 8 of mid's channels, each the lowest under one importance and not under the others:
#   l2       rows of 16 × 0.25      (L1 4.0, L2² 1.0: lowest L2)
#   l1       rows with one 1.2      (L1 1.2, L2² 1.44: lowest L1)
#   bn_scale rows of 0.5, γ = 0.01  (lowest BatchNorm scale; large rows keep their L1 and L2 high)
#   taylor   rows of 0.5, β = -100  (ReLU shut on every input: no gradient, Taylor score 0)
KIND_SETS = dict(zip(("l2", "l1", "bn_scale", "taylor"), torch.randperm(32, generator=torch.Generator().manual_seed(0)).view(4, 8)
                     .sort(dim=1).values.tolist()))


def _disagreeing() -> Ranked:
    one_large = torch.zeros(16)
    one_large[0] = 1.2
    row = {**{c: torch.full((16,), 0.25) for c in KIND_SETS["l2"]}, **{c: one_large for c in KIND_SETS["l1"]},
           **{c: torch.full((16,), 0.5) for c in KIND_SETS["bn_scale"] + KIND_SETS["taylor"]}}
    return _ranked(row, gamma={c: 0.01 for c in KIND_SETS["bn_scale"]}, beta={c: -100.0 for c in KIND_SETS["taylor"]})


@pytest.mark.parametrize("scope", ["per-layer", "global"])
@pytest.mark.parametrize("importance", IMPORTANCES)
def test_each_importance_removes_the_channels_it_ranks_lowest(importance, scope):
    model = _disagreeing()
    plan = ep.plan(model, RANKED_INPUTS, PI5, ep.Budget(macs_ratio=BUDGET_FOR_REMOVING[8]), importance=importance,
                   scope=scope)
    assert _removed(model, plan) == {"mid": tuple(KIND_SETS[importance])}


# -- the masks -------------------------------------------------------------------------------------------


@grid(["jetson-nm"])
def test_nm_pattern_holds_exactly_on_every_nm_layer(pruned_case):
    _, plan, pruned = pruned_case
    modules = dict(ep.finalize(pruned).named_modules())
    nm_layers = plan.by_method("n:m")
    assert nm_layers
    for d in nm_layers:
        weight = modules[d.layer].weight.detach()
        assert satisfies_nm(weight, d.n, d.m), d.layer
        # random weights are never exactly zero: each group keeps exactly n
        assert ((_groups_of_m(weight, d.m) != 0).sum(dim=1) == d.n).all(), d.layer


@grid(["ethos-unstructured"])
def test_unstructured_amounts_match_the_plan(pruned_case):
    _, plan, pruned = pruned_case
    modules = dict(ep.finalize(pruned).named_modules())
    layers = plan.by_method("unstructured")
    assert layers
    for d in layers:
        weight = modules[d.layer].weight.detach()
        assert float((weight == 0).sum()) == pytest.approx(d.amount * weight.numel(), abs=0.5), d.layer


@pytest.mark.parametrize("kind", ["jetson-nm", "ethos-unstructured"])
@pytest.mark.parametrize("model", ["small_cnn", "tiny_bert"])
def test_masks_survive_a_training_step(zoo_model, planned, jetson_small, model, kind):
    zm = zoo_model(model)
    plan, _ = planned(zm, _target(kind, jetson_small), _budget(model, kind))
    pruned = ep.prune(zm.model, plan)  # its own copy: this test trains it
    masked = [d.layer for d in plan.layers if d.method in ("n:m", "unstructured")]
    modules = dict(pruned.named_modules())
    masks = {n: modules[n].weight_mask.clone() for n in masked}
    originals = {n: modules[n].weight_orig.detach().clone() for n in masked}

    pruned.train()
    optimizer = torch.optim.SGD(pruned.parameters(), lr=0.1, momentum=0.9)
    for _ in range(2):
        optimizer.zero_grad()
        main_output(call(pruned, zm.inputs)).float().pow(2).mean().backward()
        optimizer.step()

    finalized = dict(ep.finalize(pruned).named_modules())
    assert any(not torch.equal(modules[n].weight_orig, originals[n]) for n in masked), "training changed nothing"
    for name in masked:
        weight = finalized[name].weight.detach()
        assert (weight[~masks[name].bool()] == 0).all(), name


# -- finalize --------------------------------------------------------------------------------------------


@grid()
def test_finalize_leaves_no_hooks_masks_or_parametrizations(pruned_case):
    _, _, pruned = pruned_case
    finalized = ep.finalize(pruned)
    for name, module in finalized.named_modules():
        assert not module._forward_pre_hooks, name
        assert not parametrize.is_parametrized(module), name
    names = [n for n, _ in finalized.named_parameters()] + [n for n, _ in finalized.named_buffers()]
    assert not [n for n in names if n.endswith(("weight_orig", "weight_mask"))]


@grid()
def test_finalize_leaves_the_pruned_model_as_it_was(pruned_case):
    _, plan, pruned = pruned_case
    ep.finalize(pruned)
    modules = dict(pruned.named_modules())
    for d in plan.layers:
        if d.method in ("n:m", "unstructured") and d.amount:
            assert any(isinstance(h, torch_prune.BasePruningMethod) for h in modules[d.layer]._forward_pre_hooks.values())


@grid()
def test_finalized_model_computes_what_the_pruned_model_does(pruned_case):
    zm, _, pruned = pruned_case
    with torch.no_grad():
        expected = main_output(call(pruned, zm.inputs))
        got = main_output(call(ep.finalize(pruned), zm.inputs))
    torch.testing.assert_close(got, expected)


@grid()
def test_finalized_model_exports_and_the_export_computes_what_the_pruned_model_does(pruned_case):
    zm, _, pruned = pruned_case
    args, kwargs = normalize(zm.inputs)  # transformers models take keyword inputs
    exported = torch.export.export(ep.finalize(pruned), args, kwargs)
    with torch.no_grad():
        torch.testing.assert_close(main_output(exported.module()(*args, **kwargs)),
                                   main_output(call(pruned, zm.inputs)))


# -- rollback of a channel group that breaks the model ---------------------------------------------------


class Reshaper(nn.Module):
    """`mid`'s outputs go through `view(b, 32, -1)`: with `rigid`, removing any of its channels breaks the
    forward (torch-pruning cannot see a hard-coded count). `expand` can be pruned either way."""

    def __init__(self, rigid: bool = True):
        super().__init__()
        self.rigid = rigid
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.mid = nn.Conv2d(32, 32, 3, padding=1)
        self.expand = nn.Conv2d(32, 64, 1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        x = torch.relu(self.stem(x))
        y = torch.relu(self.mid(x))
        y = y.view(b, 32 if self.rigid else y.shape[1], -1).view(b, -1, h, w)
        return self.fc(torch.relu(self.expand(y)).mean((2, 3)))


@pytest.fixture(scope="module")
def reshapers():
    torch.manual_seed(0)
    rigid, flexible = Reshaper(rigid=True).eval(), Reshaper(rigid=False).eval()
    flexible.load_state_dict(rigid.state_dict())
    return rigid, flexible, (torch.randn(1, 3, 5, 5),)  # 5x5: 24 * 25 values cannot be viewed as 32 rows


def test_plan_rolls_back_a_group_that_breaks_the_model(reshapers):
    rigid, _, inputs = reshapers
    plan = ep.plan(rigid, inputs, PI5, ep.Budget(macs_ratio=0.95))
    mid = plan.layer("mid")
    assert (mid.method, mid.out_channels) == ("keep", (32, 32))
    assert mid.reason.startswith("rolled back: pruning broke the model (RuntimeError")
    assert plan.layer("expand").method == "structured"
    assert plan.macs_ratio <= 0.95


def test_model_pruned_after_a_rollback_runs(reshapers):
    rigid, _, inputs = reshapers
    pruned = ep.prune(rigid, ep.plan(rigid, inputs, PI5, ep.Budget(macs_ratio=0.95)))
    with torch.no_grad():
        assert pruned(*inputs).shape == (1, 10)
    assert pruned.mid.out_channels == 32 and pruned.expand.out_channels < 64


def test_prune_rolls_back_a_planned_group_that_breaks_the_model(reshapers):
    rigid, flexible, inputs = reshapers
    plan = ep.plan(flexible, inputs, PI5, ep.Budget(macs_ratio=0.5))  # the twin without the hard-coded 32
    assert plan.layer("mid").method == "structured"
    with pytest.warns(UserWarning, match="rolled back channel groups that broke the model: mid"):
        pruned = ep.prune(rigid, plan)
    executed = ep.record_of(pruned).plan
    mid = executed.layer("mid")
    assert (mid.method, mid.out_channels) == ("keep", (32, 32))
    assert mid.reason.startswith("rolled back: pruning broke the model")
    assert "mid" not in {g.root for g in executed.groups}
    assert executed.layer("expand").method == "structured"
    with torch.no_grad():
        assert pruned(*inputs).shape == (1, 10)
    assert pruned.mid.out_channels == 32 and pruned.expand.out_channels < 64


def test_plan_recorded_after_a_rollback_has_the_pruned_channel_counts(reshapers):
    rigid, flexible, inputs = reshapers
    plan = ep.plan(flexible, inputs, PI5, ep.Budget(macs_ratio=0.5))
    with pytest.warns(UserWarning):
        pruned = ep.prune(rigid, plan)
    modules = dict(pruned.named_modules())
    for d in ep.record_of(pruned).plan.layers:  # `expand` reads mid's outputs: its inputs stay at 32 too
        assert layer_channels(modules[d.layer]) == (d.out_channels[1], d.in_channels[1]), d.layer


def test_prune_without_rollback_issues_no_warning(small_cnn, planned):
    plan, _ = planned(small_cnn, PI5, macs_budget("small_cnn"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        ep.prune(small_cnn.model, plan)


# -- the N:M mask ----------------------------------------------------------------------------------------


def test_nm_mask_linear_keeps_the_largest_magnitudes_of_each_group_of_m_inputs():
    weight = torch.tensor([[1.0, -4.0, 3.0, 2.0, -0.5, 0.1, 0.2, 0.3],
                           [9.0, 8.0, -7.0, 6.0, 1.0, -2.0, 3.0, -4.0]])
    expected = torch.tensor([[0, 1, 1, 0, 1, 0, 0, 1],
                             [1, 1, 0, 0, 0, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(nm_mask(weight, 2, 4), expected)


def test_nm_mask_conv_groups_run_along_input_channels_at_each_kernel_position():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(3, 8, 2, 3, generator=generator)  # (out, in, kh, kw)
    mask = nm_mask(weight, 2, 4)
    expected = torch.zeros_like(weight, dtype=torch.bool)
    for o in range(3):
        for i in range(2):
            for j in range(3):
                for start in (0, 4):
                    channels = weight[o, start:start + 4, i, j].abs()
                    expected[o, start + channels.topk(2).indices, i, j] = True
    assert torch.equal(mask, expected)


def test_nm_mask_conv_differs_from_grouping_along_the_kernel():
    # magnitudes grow along the kernel row and not across channels: groups of 4 channels at one position
    # must keep 2 of those 4 channels, whatever the kernel position
    weight = torch.arange(1.0, 5.0).repeat(4, 4, 1, 1)  # (4 out, 4 in, 1, 4): w[o, c, 0, k] = k + 1
    mask = nm_mask(weight, 2, 4)
    assert (mask.sum(dim=1) == 2).all()  # per (out, kernel position): 2 of the 4 input channels


@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 4), (4, 8), (1, 2)])
@pytest.mark.parametrize("shape", [(16, 32), (8, 16, 3, 3), (4, 8, 5)], ids=["linear", "conv2d", "conv1d"])
def test_nm_mask_keeps_exactly_n_of_every_m(shape, n, m):
    weight = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    mask = nm_mask(weight, n, m)
    assert mask.shape == weight.shape and mask.dtype == torch.bool
    assert (_groups_of_m(mask, m).sum(dim=1) == n).all()
    assert satisfies_nm(weight * mask, n, m)


@pytest.mark.parametrize("shape", [(4, 6), (4, 6, 3, 3)], ids=["linear", "conv2d"])
def test_nm_mask_input_dimension_not_a_multiple_of_m_is_an_error(shape):
    with pytest.raises(ValueError, match="not a multiple of 4"):
        nm_mask(torch.randn(shape), 2, 4)


@pytest.mark.parametrize("layer, size", [(nn.Linear(12, 4), 12), (nn.Conv2d(8, 8, 3), 8),
                                         (nn.Conv2d(8, 8, 3, groups=2), 4), (nn.Conv2d(6, 6, 1, groups=6), 1)])
def test_reduction_size_is_the_whole_number_of_inputs_each_output_sums_over(layer, size):
    # an int, not 4.0: it is printed in reasons and errors ("input dimension 4 is not a multiple of ...")
    assert reduction_size(layer) == size and type(reduction_size(layer)) is int


def test_satisfies_nm_rejects_a_dense_weight():
    assert not satisfies_nm(torch.ones(4, 8), 2, 4)


def test_satisfies_nm_rejects_an_input_dimension_not_a_multiple_of_m():
    assert not satisfies_nm(torch.zeros(4, 6), 2, 4)


def test_apply_nm_mask_stays_in_force_after_the_weights_change():
    layer = nn.Linear(8, 4)
    apply_nm(layer, 2, 4)
    with torch.no_grad():
        layer.weight_orig.fill_(1.0)
    layer(torch.randn(1, 8))  # the pre-hook recomputes weight = weight_orig * weight_mask
    assert satisfies_nm(layer.weight, 2, 4)
    assert int(layer.weight.count_nonzero()) == 16


def test_a_pruned_model_with_masks_can_be_planned_and_pruned_again(small_cnn):
    model, inputs = small_cnn.model, small_cnn.inputs
    first = ep.prune(model, ep.plan(model, inputs, "corstone-300-ethos-u55-128", ep.Budget(sparsity=0.3)))
    first.train()
    first(*inputs).sum().backward()  # masked weights are now non-leaf tensors
    again = ep.prune(first, ep.plan(first, inputs, "raspberry-pi-5", ep.Budget(macs_ratio=0.8)))
    assert again(*inputs).shape == model(*inputs).shape
    second = ep.record_of(again)
    assert second.removals and second.plan.macs_ratio <= 0.8
    assert second.plan.sparsity >= 0.3  # the first prune's zeros were folded in and counted, not dropped


# -- attention modules after their heads are pruned ---------------------------------------------------------


def _attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """transformers' attention modules by name: ViT's (q_proj, head_dim) and BERT's (query, attention_head_size)."""
    return {name: m for name, m in model.named_modules()
            if isinstance(getattr(m, "q_proj", getattr(m, "query", None)), nn.Linear)}


@pytest.mark.parametrize("model", ["tiny_vit", "tiny_bert"])
def test_pruned_attention_modules_count_the_heads_their_projections_hold(zoo_model, planned, model):
    """transformers 5 reshapes by the head size, so a stale head count still runs; code that reads
    `num_attention_heads` or `all_head_size` (older transformers reshape with them) would then be wrong."""
    zm = zoo_model(model)
    plan, pruned = planned(zm, PI5, ep.Budget(macs_ratio=0.5))
    heads_left = {g.root.rsplit(".", 1)[0]: g.heads - g.remove // (g.channels // g.heads)
                  for g in plan.groups if g.heads}
    attentions = _attention_modules(pruned)
    assert heads_left and set(heads_left) <= set(attentions)
    assert min(heads_left.values()) < 4, "no attention module lost a head: the case tests nothing"
    for name, attention in attentions.items():
        query = getattr(attention, "q_proj", None) or attention.query
        head_size = getattr(attention, "head_dim", None) or attention.attention_head_size
        assert attention.num_attention_heads == heads_left.get(name, 4), name
        assert attention.num_attention_heads * head_size == query.out_features, name
        assert getattr(attention, "all_head_size", query.out_features) == query.out_features, name
    with torch.no_grad():
        assert output_shapes(call(pruned, zm.inputs)) == output_shapes(call(zm.model, zm.inputs))


# -- DistilBERT's attention (issue 10, item 10) ----------------------------------------------------------

DISTILBERT_HEAD = 16  # dim 64 over 4 heads


@pytest.fixture(scope="module")
def distilbert():
    """transformers' DistilBertForSequenceClassification from a small config (nothing downloaded), its
    plan for the Pi and the pruned copy."""
    import transformers

    torch.manual_seed(0)
    config = transformers.DistilBertConfig(vocab_size=100, dim=64, n_layers=2, n_heads=4, hidden_dim=128,
                                           max_position_embeddings=64, num_labels=3)
    model = transformers.DistilBertForSequenceClassification(config).eval()
    inputs = {"input_ids": torch.randint(0, 100, (1, 16), generator=torch.Generator().manual_seed(0)),
              "attention_mask": torch.ones(1, 16, dtype=torch.long)}
    plan = ep.plan(model, inputs, PI5, ep.Budget(macs_ratio=0.6))
    return model, inputs, plan, ep.prune(model, plan)


def test_distilbert_attention_loses_whole_heads_in_every_layer(distilbert):
    _, _, plan, _ = distilbert
    for layer in range(2):
        for projection in ("q_lin", "k_lin", "v_lin"):
            d = plan.layer(f"distilbert.transformer.layer.{layer}.attention.{projection}")
            assert (d.method, d.reason.endswith(f"whole attention heads ({DISTILBERT_HEAD} channels each)")) == \
                ("structured", True), (d.layer, d.reason)
            assert d.out_channels[1] % DISTILBERT_HEAD == 0 and d.out_channels[1] < d.out_channels[0]
    assert not [d.layer for d in plan.layers if d.reason.startswith("rolled back")]


def test_pruned_distilbert_attention_knows_its_head_count(distilbert):
    # DistilBERT before transformers 5 reshapes with view(bs, -1, n_heads, dim // n_heads)
    _, _, _, pruned = distilbert
    attentions = [m for m in pruned.modules() if hasattr(m, "q_lin")]
    assert len(attentions) == 2
    for attention in attentions:
        assert attention.n_heads == attention.q_lin.out_features // attention.attention_head_size < 4
        assert attention.dim == attention.q_lin.out_features


def test_pruned_distilbert_runs_with_unchanged_output_shapes(distilbert):
    model, inputs, _, pruned = distilbert
    with torch.no_grad():
        assert output_shapes(call(pruned, inputs)) == output_shapes(call(model, inputs))
