"""The policy: one explained decision per layer, the family's rules, budgets met as measured on the
pruned model, recipes, and errors for bad input."""

from __future__ import annotations

import copy
import sys
from dataclasses import replace

import pytest
import torch
from rich.console import Console

import edgeprune as ep
from edgeprune import zoo
from helpers import (BUDGET_TOLERANCE, ETHOS, GRID, JETSON_SMALL, PI5, STM32, layer_channels,
                     macs_budget, on_grid, run_cli_ok)
from edgeprune.costs import prunable_layers
from edgeprune.inputs import call, output_shapes
from edgeprune.pruning.nm import reduction_size, satisfies_nm


# helpers' grid: every family's representative with each budget kind, and Ethos-U with sparsity
ALL = GRID
MACS = [c for c in ALL if c.values[0][2].kind == "macs_ratio"]
SPARSE = [c for c in ALL if c.values[0][2].kind == "sparsity"]


def _only(cases, *targets):
    return [c for c in cases if c.values[0][1] in targets]


grid = on_grid  # each case as `pruned_case`: (zoo model, plan, pruned model), planned once per session


def input_layers(zm) -> set[str]:
    """The layers that see the model's inputs: the image models' stems; BERT embeds its token ids, so no
    Conv/Linear layer sees them."""
    return set() if zm.name == "tiny_bert" else {ep.measure(zm.model, zm.inputs).order[0]}


def rule_kept(zm) -> set[str]:
    """Layers the rules keep whatever the budget: those seeing the inputs, the head, layers that never run."""
    order = ep.measure(zm.model, zm.inputs).order
    return input_layers(zm) | {order[-1]} | (set(prunable_layers(zm.model)) - set(order))


def effective_macs(cost: ep.ModelCost, plan: ep.Plan) -> float:
    """MACs of a pruned model as the plan counts them: n:m layers at the sparse-kernel rate n/m."""
    rate = {d.layer: 1.0 if d.dense_rate else d.n / d.m for d in plan.by_method("n:m")}
    return cost.other_macs + sum(c.macs * rate.get(name, 1.0) for name, c in cost.layers.items())


def measured_sparsity(zm, pruned) -> float:
    """Fraction of the prunable layers' dense weights that the pruned model zeroed or removed."""
    dense, after = ep.measure(zm.model, zm.inputs), ep.measure(pruned, zm.inputs)
    prunable = set(dense.layers) - rule_kept(zm)
    total = sum(dense.layers[n].weights for n in prunable)
    return 1 - sum(after.layers[n].nonzero_weights for n in prunable) / total


# -- the shape of a plan ---------------------------------------------------------------------------------


@grid(ALL)
def test_plan_has_one_row_per_conv_and_linear_layer(pruned_case):
    zm, plan, _ = pruned_case
    layers = prunable_layers(zm.model)
    assert [d.layer for d in plan.layers] == list(layers)
    assert [d.op for d in plan.layers] == [type(m).__name__ for m in layers.values()]


@grid(ALL)
def test_layers_seeing_the_inputs_and_classifier_head_are_kept_with_reasons(pruned_case):
    zm, plan, _ = pruned_case
    head = plan.layer(ep.measure(zm.model, zm.inputs).order[-1])
    assert (head.method, head.reason.split(":")[0]) == ("keep", "classifier head")
    for name in input_layers(zm):
        assert (plan.layer(name).method, plan.layer(name).reason.split(":")[0]) == ("keep", "first layer")


@grid(ALL)
def test_only_layers_seeing_the_inputs_are_called_first(pruned_case):
    zm, plan, _ = pruned_case
    assert {d.layer for d in plan.layers if d.reason.startswith("first layer")} == input_layers(zm)


def test_a_transformers_first_projection_sees_embeddings_and_is_pruned_like_the_others(tiny_bert, planned):
    plan, _ = planned(tiny_bert, PI5, macs_budget("tiny_bert"))
    query = plan.layer("bert.encoder.layer.0.attention.self.query")
    assert not query.reason.startswith("first layer")
    assert query.group is not None or query.reason.startswith("budget met without it")


@grid(ALL)
def test_every_decision_gives_a_reason(pruned_case):
    _, plan, _ = pruned_case
    assert all(d.reason.strip() for d in plan.layers)


@grid(ALL)
def test_pruned_model_has_the_planned_channel_counts(pruned_case):
    _, plan, pruned = pruned_case
    modules = dict(pruned.named_modules())
    for d in plan.layers:
        assert layer_channels(modules[d.layer]) == (d.out_channels[1], d.in_channels[1]), d.layer


@grid(ALL)
def test_structured_layers_lose_channels(pruned_case):
    _, plan, _ = pruned_case
    for d in plan.by_method("structured"):
        assert d.out_channels[1] < d.out_channels[0], d.layer
        assert d.group is not None and d.amount > 0, d.layer


@grid(ALL)
def test_channel_counts_that_change_are_multiples_of_the_alignment(pruned_case):
    _, plan, _ = pruned_case
    changed = [d for d in plan.layers if d.out_channels[1] != d.out_channels[0]]
    for d in changed:
        assert d.out_channels[1] % plan.alignment == 0, d.layer


# -- the family rules ------------------------------------------------------------------------------------


def _qualifies_for_nm(module, nm) -> bool:
    out_c, in_c = layer_channels(module)
    grouped = not isinstance(module, torch.nn.Linear) and module.groups > 1
    return (not grouped and reduction_size(module) % nm.m == 0
            and in_c >= nm.min_in_channels and out_c >= nm.min_out_channels)


@grid(_only(ALL, JETSON_SMALL))
def test_jetson_uses_nm_only_on_layers_that_qualify(pruned_case, jetson_small):
    zm, plan, _ = pruned_case
    nm = ep.load_target(jetson_small).sparsity.nm
    modules = prunable_layers(zm.model)
    nm_layers = plan.by_method("n:m")
    assert nm_layers, "no layer of the tiny model qualifies: the jetson_small thresholds are too high"
    for d in nm_layers:
        assert _qualifies_for_nm(modules[d.layer], nm), d.layer
        assert (d.n, d.m, d.amount) == (nm.n, nm.m, 1 - nm.n / nm.m)
        assert "sparsity.nm" in d.reason


@grid(_only(ALL, JETSON_SMALL))
def test_jetson_gives_nm_to_every_layer_that_qualifies(pruned_case, jetson_small):
    zm, plan, _ = pruned_case
    nm = ep.load_target(jetson_small).sparsity.nm
    exempt = rule_kept(zm)
    for name, module in prunable_layers(zm.model).items():
        d = plan.layer(name)
        if name in exempt or not _qualifies_for_nm(module, nm):
            continue
        # a qualifying layer whose input dimension channel pruning made a non-multiple of m is kept, saying so
        assert d.method == "n:m" or "after channel pruning" in d.reason, (name, d.method, d.reason)


# -- 2:4 against the shipped Jetson profiles' thresholds (256 channels in and out) -----------------------

SHIPPED_JETSONS = ("jetson-orin-nano-8gb", "jetson-agx-orin-64gb")
WIDE_NM_LAYERS = {"res.0", "res.3", "expand.0", "branch_a.0", "branch_b.0", "fc1"}  # all but stem, depthwise, head


def _wide_cnn(width: int):
    """SmallCNN at `width` channels on 2x2 images: the policy decides by channel counts, and the small
    images keep a 512-wide model's MACs (and the test's time) small."""
    torch.manual_seed(0)
    return zoo.SmallCNN(width=width).eval(), (torch.randn(1, 1, 2, 2, generator=torch.Generator().manual_seed(0)),)


@pytest.fixture(scope="module", params=SHIPPED_JETSONS)
def shipped_jetson(request):
    """(target, model, inputs, plan at 0.7 of the MACs, plan at 0.4) for SmallCNN(width=512): its layers are
    512-1024 channels wide, so 2:4 layers can lose channels and stay above the 256 threshold."""
    model, inputs = _wide_cnn(512)
    loose = ep.plan(model, inputs, request.param, ep.Budget(macs_ratio=0.7))  # 2:4 alone gives ~0.50
    tight = ep.plan(model, inputs, request.param, ep.Budget(macs_ratio=0.4))
    return request.param, model, inputs, loose, tight


@pytest.mark.parametrize("target", SHIPPED_JETSONS)
def test_shipped_jetson_gives_2_4_from_256_channels_in_and_out_and_not_below(target):
    nm = ep.load_target(target).sparsity.nm
    assert (nm.min_in_channels, nm.min_out_channels) == (256, 256)
    model, inputs = _wide_cnn(128)  # fc1 is 256→256, exactly the threshold; every other layer has a side below
    plan = ep.plan(model, inputs, target, ep.Budget(macs_ratio=1.0))
    assert [d.layer for d in plan.by_method("n:m")] == ["fc1"]
    for name in ("res.0", "res.3", "expand.0", "branch_a.0", "branch_b.0"):
        assert plan.layer(name).method != "n:m", name
        assert "channels is below the sparse-kernel threshold 256→256" in plan.layer(name).reason, name


def test_jetson_shrinks_nm_layers_only_when_2_4_alone_misses_the_budget(shipped_jetson):
    _, _, _, loose, tight = shipped_jetson
    assert {d.layer for d in loose.by_method("n:m")} == WIDE_NM_LAYERS
    assert all(d.group is None for d in loose.by_method("n:m")) and not loose.groups
    shrunk = [d for d in tight.by_method("n:m") if d.out_channels[1] < d.out_channels[0]]
    assert shrunk
    assert all("the budget asks for more than 2:4 gives" in d.reason for d in shrunk)
    assert 0.4 - BUDGET_TOLERANCE <= tight.macs_ratio <= 0.4


def test_jetson_keeps_2_4_only_on_layers_still_at_the_threshold_after_channel_pruning(shipped_jetson):
    _, _, _, _, tight = shipped_jetson
    assert {d.layer for d in tight.by_method("n:m")} == WIDE_NM_LAYERS
    for d in tight.by_method("n:m"):
        assert d.in_channels[1] >= 256 and d.out_channels[1] >= 256, d.layer


def test_jetson_2_4_pattern_holds_on_the_pruned_model(shipped_jetson):
    _, model, inputs, _, tight = shipped_jetson
    modules = dict(ep.finalize(ep.prune(model, tight, inputs)).named_modules())
    for d in tight.by_method("n:m"):
        weight = modules[d.layer].weight.detach()
        assert satisfies_nm(weight, 2, 4), d.layer
        assert int(weight.count_nonzero()) == weight.numel() // 2, d.layer  # random weights: no zeros of their own


@grid(_only(ALL, JETSON_SMALL))
def test_jetson_never_uses_unstructured(pruned_case):
    _, plan, _ = pruned_case
    assert not plan.by_method("unstructured")


@grid(_only(ALL, PI5))
def test_arm_cpu_uses_structured_pruning_only(pruned_case):
    _, plan, _ = pruned_case
    assert {d.method for d in plan.layers} <= {"structured", "keep"}
    for d in plan.by_method("structured"):
        assert "unstructured gives no speed-up" in d.reason


@grid(_only(ALL, STM32))
def test_mcu_uses_structured_pruning_only(pruned_case):
    _, plan, _ = pruned_case
    assert plan.by_method("structured")
    assert {d.method for d in plan.layers} <= {"structured", "keep"}
    for d in plan.by_method("structured"):
        assert "int8 has no sparse kernels" in d.reason


@grid(_only(SPARSE, ETHOS))
def test_ethos_u_meets_a_sparsity_budget_with_unstructured_pruning(pruned_case):
    zm, plan, _ = pruned_case
    exempt = rule_kept(zm)
    for d in plan.layers:
        if d.layer not in exempt:
            assert d.method == "unstructured", d.layer
            assert "flash" in d.reason
    assert not plan.groups
    assert plan.macs_after == plan.macs_before  # zeros compress flash; the NPU still runs every MAC


def test_ethos_u_meets_a_macs_budget_with_structured_pruning(small_cnn):
    plan = ep.plan(small_cnn.model, small_cnn.inputs, ETHOS, ep.Budget(macs_ratio=0.7))
    assert plan.by_method("structured") and plan.macs_ratio <= 0.7
    assert {d.method for d in plan.layers} <= {"structured", "keep"}


# -- budgets, checked on the pruned model ----------------------------------------------------------------


@grid(MACS)
def test_macs_budget_is_met(pruned_case):
    _, plan, _ = pruned_case
    assert plan.macs_after / plan.macs_before <= plan.budget.macs_ratio


@grid(ALL)
def test_plan_macs_before_is_the_measured_dense_macs(pruned_case):
    zm, plan, _ = pruned_case
    assert plan.macs_before == ep.measure(zm.model, zm.inputs).macs


@grid(ALL)
def test_plan_macs_after_matches_the_pruned_model(pruned_case):
    zm, plan, pruned = pruned_case
    measured = effective_macs(ep.measure(pruned, zm.inputs), plan)
    assert plan.macs_after == pytest.approx(measured, rel=1e-3)


@grid(MACS)
def test_macs_budget_is_met_on_the_pruned_model(pruned_case):
    zm, plan, pruned = pruned_case
    measured = effective_macs(ep.measure(pruned, zm.inputs), plan)
    assert measured / ep.measure(zm.model, zm.inputs).macs <= plan.budget.macs_ratio + 1e-6


@grid(ALL)
def test_plan_params_after_match_the_pruned_model(pruned_case):
    _, plan, pruned = pruned_case
    assert plan.params_after == sum(p.numel() for p in pruned.parameters())


@grid(ALL)
def test_plan_sparsity_is_measured_on_the_pruned_model(pruned_case):
    zm, plan, pruned = pruned_case
    assert plan.sparsity == pytest.approx(measured_sparsity(zm, pruned), abs=1e-9)


@grid(SPARSE)
def test_sparsity_budget_is_met_on_measured_weights(pruned_case):
    zm, plan, pruned = pruned_case
    assert measured_sparsity(zm, pruned) >= plan.budget.sparsity


# Budgets from both sides: within BUDGET_TOLERANCE (conftest) of the budget, and no pruned group could keep
# one more unit. 2:4 on Jetson is the exception: the rules give it whatever the budget, so a budget looser
# than 2:4 alone is over-met (the grid's Jetson budgets need channels removed on top of 2:4).


@grid(MACS)
def test_macs_budget_is_met_from_below_within_the_tolerance(pruned_case):
    zm, plan, pruned = pruned_case
    kept = effective_macs(ep.measure(pruned, zm.inputs), plan) / plan.macs_before
    assert plan.budget.macs_ratio - BUDGET_TOLERANCE <= kept <= plan.budget.macs_ratio + 1e-6


@grid(_only(SPARSE, PI5, STM32, ETHOS))
def test_sparsity_budget_is_met_from_above_within_the_tolerance(pruned_case):
    zm, plan, pruned = pruned_case
    assert plan.budget.sparsity <= measured_sparsity(zm, pruned) <= plan.budget.sparsity + BUDGET_TOLERANCE


def _one_unit_back(plan: ep.Plan, group: ep.GroupDecision) -> ep.Plan:
    """`plan` with one aligned unit of `group`'s channels (one head for attention) kept instead of removed."""
    unit = group.channels // group.heads if group.heads else plan.alignment
    trial = copy.copy(plan)
    trial.groups = [replace(g, remove=max(0, g.remove - unit)) if g.id == group.id else g for g in plan.groups]
    return trial


def _within(zm, plan: ep.Plan, pruned) -> bool:
    if plan.budget.kind == "macs_ratio":
        return effective_macs(ep.measure(pruned, zm.inputs), plan) <= plan.budget.macs_ratio * plan.macs_before
    return measured_sparsity(zm, pruned) >= plan.budget.sparsity


# the models whose groups prune in well under a second each; ViT and BERT have attention heads
REFILL = [c for c in _only(ALL, PI5, STM32) if c.values[0][0] in ("small_cnn", "tiny_convnext", "tiny_vit", "tiny_bert")]


@grid(REFILL)
def test_no_pruned_group_could_keep_one_more_unit_within_the_budget(pruned_case):
    zm, plan, _ = pruned_case
    assert plan.groups
    for group in plan.groups:
        trial = _one_unit_back(plan, group)
        assert not _within(zm, trial, ep.prune(zm.model, trial)), f"{group.root} could keep one more unit"


# -- the plan as data ------------------------------------------------------------------------------------


@grid(ALL)
def test_plan_json_round_trip(pruned_case):
    _, plan, _ = pruned_case
    loaded = ep.Plan.from_json(plan.to_json())
    assert loaded.layers == plan.layers
    assert loaded.groups == plan.groups
    assert loaded.budget == plan.budget
    assert loaded == plan


def test_plan_from_json_rejects_other_documents():
    with pytest.raises(ValueError, match="not an edgeprune plan"):
        ep.Plan.from_json('{"layers": []}')


@grid(ALL)
def test_plan_table_renders(pruned_case):
    _, plan, _ = pruned_case
    console = Console(record=True, width=240)
    console.print(plan)
    text = console.export_text()
    assert f"plan for {plan.target}" in text
    assert f"budget {plan.budget}" in text
    assert plan.table().row_count == len(plan.layers)


# -- recipes ---------------------------------------------------------------------------------------------


def test_recipe_overrides_a_layers_method_and_amount(small_cnn):
    recipe = {"layers": {"res.0": {"method": "unstructured", "amount": 0.5}}}
    plan = ep.plan(small_cnn.model, small_cnn.inputs, PI5, ep.Budget(macs_ratio=0.8), recipe=recipe)
    d = plan.layer("res.0")
    assert (d.method, d.amount) == ("unstructured", 0.5)
    assert "recipe" in d.reason
    weight = dict(ep.finalize(ep.prune(small_cnn.model, plan)).named_modules())["res.0"].weight
    assert float((weight == 0).float().mean()) == pytest.approx(0.5)


def test_recipe_fixes_a_structured_amount(small_cnn):
    recipe = {"layers": {"branch_b.0": {"method": "structured", "amount": 0.5}}}
    plan = ep.plan(small_cnn.model, small_cnn.inputs, PI5, ep.Budget(macs_ratio=1.0), recipe=recipe)
    d = plan.layer("branch_b.0")
    assert (d.method, d.amount, d.out_channels) == ("structured", 0.5, (32, 16))
    assert "recipe" in d.reason


def test_recipe_keep_overrides_the_policy(small_cnn):
    recipe = {"layers": {"res.0": {"method": "keep"}}}
    plan = ep.plan(small_cnn.model, small_cnn.inputs, PI5, ep.Budget(macs_ratio=0.8), recipe=recipe)
    d = plan.layer("res.0")
    assert (d.method, d.out_channels) == ("keep", (32, 32))
    assert "recipe" in d.reason


def test_recipe_ignore_list_accepts_globs(small_cnn):
    recipe = {"ignore": ["branch_*"]}
    plan = ep.plan(small_cnn.model, small_cnn.inputs, PI5, ep.Budget(macs_ratio=0.8), recipe=recipe)
    for name in ("branch_a.0", "branch_b.0"):
        d = plan.layer(name)
        assert (d.method, d.out_channels[0]) == ("keep", d.out_channels[1])
        assert "ignore list" in d.reason
    assert plan.by_method("structured")


def test_recipe_loads_from_a_toml_file(small_cnn, write_toml):
    path = write_toml("recipe.toml", 'ignore = ["fc1"]\n\n[layers."res.0"]\nmethod = "unstructured"\namount = 0.25\n')
    plan = ep.plan(small_cnn.model, small_cnn.inputs, PI5, ep.Budget(macs_ratio=0.8), recipe=str(path))
    assert plan.layer("fc1").method == "keep"
    assert str(path) in plan.layer("fc1").reason
    assert (plan.layer("res.0").method, plan.layer("res.0").amount) == ("unstructured", 0.25)


def test_recipe_naming_an_unknown_layer_is_an_error(small_cnn):
    recipe = {"layers": {"res.9": {"method": "keep"}}}
    with pytest.raises(ep.RecipeError, match=r"'res\.9'.*does not have; did you mean"):
        ep.plan(small_cnn.model, small_cnn.inputs, PI5, ep.Budget(macs_ratio=0.8), recipe=recipe)


def test_recipe_ignore_pattern_matching_nothing_is_an_error(small_cnn):
    with pytest.raises(ep.RecipeError, match=r"ignore names layer 'head\*'"):
        ep.plan(small_cnn.model, small_cnn.inputs, PI5, ep.Budget(macs_ratio=0.8), recipe={"ignore": ["head*"]})


def test_recipe_toml_with_unknown_key_names_file_and_key(small_cnn, write_toml):
    path = write_toml("recipe.toml", 'ignor = ["fc1"]\n')
    with pytest.raises(ep.RecipeError) as info:
        ep.plan(small_cnn.model, small_cnn.inputs, PI5, ep.Budget(macs_ratio=0.8), recipe=path)
    message = str(info.value)
    assert str(path) in message
    assert "'ignor'" in message and "unknown key" in message and "ignore, layers" in message


def test_recipe_override_with_unknown_key_names_the_key(small_cnn, write_toml):
    path = write_toml("recipe.toml", '[layers."res.0"]\nmethod = "structured"\namout = 0.25\n')
    with pytest.raises(ep.RecipeError, match=r"layers\.res\.0\.amout'.*unknown key"):
        ep.plan(small_cnn.model, small_cnn.inputs, PI5, ep.Budget(macs_ratio=0.8), recipe=path)


def test_recipe_nm_on_a_layer_whose_input_is_not_a_multiple_of_m_is_an_error(small_cnn):
    recipe = {"layers": {"stem.0": {"method": "n:m"}}}  # 1 input channel
    with pytest.raises(ep.RecipeError, match="stem.0: 2:4 needs"):
        ep.plan(small_cnn.model, small_cnn.inputs, PI5, ep.Budget(macs_ratio=0.8), recipe=recipe)


# -- bad input -------------------------------------------------------------------------------------------


def test_unknown_target_name_is_a_target_error(small_cnn):
    with pytest.raises(ep.TargetError, match="unknown target 'pi-zero'"):
        ep.plan(small_cnn.model, small_cnn.inputs, "pi-zero", ep.Budget(macs_ratio=0.5))


def test_model_that_cannot_run_on_its_inputs_is_a_model_error(small_cnn):
    wrong = (torch.randn(1, 3, 8, 8),)  # small_cnn takes 1 channel
    with pytest.raises(ep.ModelError, match=r"does not run on the example inputs \(0: \[1, 3, 8, 8\]\)"):
        ep.plan(small_cnn.model, wrong, PI5, ep.Budget(macs_ratio=0.5))


def test_inputs_that_are_not_tensors_are_a_model_error(small_cnn):
    with pytest.raises(ep.ModelError, match="not a tensor"):
        ep.plan(small_cnn.model, {"x": [1, 2, 3]}, PI5, ep.Budget(macs_ratio=0.5))


def test_unknown_importance_is_an_error(small_cnn):
    with pytest.raises(ep.EdgepruneError, match="unknown importance 'l3'.*l1, l2, bn_scale, taylor"):
        ep.plan(small_cnn.model, small_cnn.inputs, PI5, ep.Budget(macs_ratio=0.5), importance="l3")


def test_unknown_scope_is_an_error(small_cnn):
    with pytest.raises(ep.EdgepruneError, match="unknown scope 'local'.*per-layer, global"):
        ep.plan(small_cnn.model, small_cnn.inputs, PI5, ep.Budget(macs_ratio=0.5), scope="local")


def test_budget_that_is_not_a_budget_is_a_budget_error(small_cnn):
    with pytest.raises(ep.BudgetError, match="must be an edgeprune.Budget"):
        ep.plan(small_cnn.model, small_cnn.inputs, PI5, 0.5)


def test_infeasible_macs_budget_is_a_budget_error(small_cnn):
    with pytest.raises(ep.BudgetError, match=r"Budget\(macs_ratio=0.05\) cannot be met"):
        ep.plan(small_cnn.model, small_cnn.inputs, PI5, ep.Budget(macs_ratio=0.05))


def test_infeasible_sparsity_budget_is_a_budget_error(small_cnn):
    with pytest.raises(ep.BudgetError, match=r"Budget\(sparsity=0.95\) cannot be met"):
        ep.plan(small_cnn.model, small_cnn.inputs, STM32, ep.Budget(sparsity=0.95))


def test_infeasible_flash_budget_says_how_far_over_it_stays(small_cnn):
    with pytest.raises(ep.BudgetError, match=r"Budget\(flash_kib=0.01\) cannot be met.*KiB\), [0-9.]+% over"):
        ep.plan(small_cnn.model, small_cnn.inputs, STM32, ep.Budget(flash_kib=0.01))


@pytest.mark.parametrize("budget", [ep.Budget(latency_ms=2.0), ep.Budget(latency_ratio=0.5)])
def test_latency_budget_without_a_device_is_a_budget_error_that_asks_for_one(small_cnn, budget):
    with pytest.raises(ep.BudgetError, match=r"needs a device to measure on \(device='local'"):
        ep.plan(small_cnn.model, small_cnn.inputs, PI5, budget)


def _dense_estimate(zm, target) -> ep.Estimate:
    return ep.plan(zm.model, zm.inputs, target, ep.Budget(macs_ratio=1.0)).estimate()


@pytest.mark.parametrize(("key", "field", "unit", "model", "fraction"), [
    ("flash_kib", "flash_bytes", 1024, "tiny_mobilenet_v2", 0.6), ("ram_mib", "ram_bytes", 1024 * 1024, "tiny_mobilenet_v2", 0.6),
    # the kept first layer's input and output bound small_cnn's activations: 0.75 of the dense is as low as it goes
    ("sram_kib", "sram_bytes", 1024, "small_cnn", 0.8),
])
def test_memory_budget_plan_lands_just_inside_its_budget(zoo_model, key, field, unit, model, fraction):
    zm = zoo_model(model)
    limit = fraction * getattr(_dense_estimate(zm, STM32), field)
    plan = ep.plan(zm.model, zm.inputs, STM32, ep.Budget(**{key: limit / unit}))
    kept = getattr(plan.estimate(), field)
    assert 0.9 * limit <= kept <= limit, (kept, limit)


def test_flash_estimate_is_the_pruned_models_weight_bytes(tiny_resnet):
    plan = ep.plan(tiny_resnet.model, tiny_resnet.inputs, STM32, ep.Budget(flash_kib=20))
    pruned = ep.prune(tiny_resnet.model, plan)
    from edgeprune.costs import weight_bytes

    assert plan.estimate().flash_bytes == weight_bytes(pruned, "int8")


def test_activation_estimate_is_the_largest_layer_input_and_output_pair(small_cnn):
    from edgeprune.costs import activation_bytes

    plan = ep.plan(small_cnn.model, small_cnn.inputs, STM32, ep.Budget(macs_ratio=1.0))
    cost = ep.measure(small_cnn.model, small_cnn.inputs)
    pairs = [c.in_elements + c.out_elements for c in cost.layers.values()]
    assert plan.activation_bytes == activation_bytes(cost, "int8") == max(pairs) > 0


# -- importance and scope --------------------------------------------------------------------------------


@pytest.mark.parametrize("scope", ["per-layer", "global"])
@pytest.mark.parametrize("importance", ["l1", "l2", "bn_scale", "taylor"])
@pytest.mark.parametrize("model", ["small_cnn", "tiny_resnet"])
def test_importance_and_scope_give_valid_plans(zoo_model, planned, model, importance, scope):
    zm = zoo_model(model)
    budget = macs_budget(model)
    plan, pruned = planned(zm, PI5, budget, importance=importance, scope=scope)
    assert plan.by_method("structured")
    assert budget.macs_ratio - BUDGET_TOLERANCE <= plan.macs_ratio <= budget.macs_ratio
    measured = effective_macs(ep.measure(pruned, zm.inputs), plan)
    assert measured == pytest.approx(plan.macs_after, rel=1e-3)
    with torch.no_grad():
        assert output_shapes(call(pruned, zm.inputs)) == output_shapes(call(zm.model, zm.inputs))


@pytest.mark.parametrize("importance", ["l1", "l2", "bn_scale", "taylor"])
def test_a_plan_loaded_from_json_prunes_the_channels_its_importance_chose(small_cnn, planned, importance):
    plan, pruned = planned(small_cnn, PI5, macs_budget("small_cnn"), importance=importance)
    again = ep.prune(small_cnn.model, ep.Plan.from_json(plan.to_json()), small_cnn.inputs)
    assert ep.record_of(again).removals == ep.record_of(pruned).removals


def test_each_importance_chooses_its_own_channels_on_a_zoo_model(small_cnn, planned):
    """So a plan that lost its importance on the way through JSON (above) would prune other channels."""
    chosen = {importance: ep.record_of(planned(small_cnn, PI5, macs_budget("small_cnn"), importance=importance)[1])
              .removals for importance in ("l1", "l2", "bn_scale", "taylor")}
    assert len({removals for removals in chosen.values()}) == 4


class TwoGroups(torch.nn.Module):
    """`a`'s 32 channels are equally important; `b`'s importance grows with the channel index."""

    def __init__(self):
        super().__init__()
        self.first, self.a = torch.nn.Linear(16, 16), torch.nn.Linear(16, 32)
        self.b, self.head = torch.nn.Linear(32, 32), torch.nn.Linear(32, 4)
        with torch.no_grad():
            self.a.weight.fill_(0.1)
            self.b.weight.copy_(0.1 * torch.arange(1.0, 33.0).view(32, 1).expand(32, 32))
            self.head.weight.fill_(1.0)

    def forward(self, x):
        return self.head(torch.relu(self.b(torch.relu(self.a(self.first(x))))))


@pytest.mark.parametrize(("scope", "removed"), [("per-layer", {"a": 8, "b": 8}), ("global", {"b": 16})])
def test_scope_per_layer_prunes_every_group_alike_and_global_where_importance_is_lowest(scope, removed):
    torch.manual_seed(0)
    model, inputs = TwoGroups().eval(), (torch.randn(4, 16, generator=torch.Generator().manual_seed(1)),)
    plan = ep.plan(model, inputs, PI5, ep.Budget(macs_ratio=0.7), scope=scope)
    assert {g.root: g.remove for g in plan.groups} == removed
    if scope == "global":  # b's 16 least important channels, ranked against a's equal ones
        assert ep.record_of(ep.prune(model, plan)).removals[0].idxs == tuple(range(16))


# -- N:M decisions against the shapes channel pruning leaves (issue 10, items 6 and 7) ---------------------


def test_2_4_is_dropped_where_channel_pruning_narrows_a_layer_below_the_sparse_kernel_threshold():
    # width 128: fc1 is 256→256, exactly the profile's threshold, and the branches feeding it lose channels
    torch.manual_seed(0)
    model, inputs = zoo.SmallCNN(width=128).eval(), zoo.small_cnn.example_inputs()
    plan = ep.plan(model, inputs, "jetson-orin-nano-8gb", ep.Budget(macs_ratio=0.5))
    nm = ep.load_target("jetson-orin-nano-8gb").sparsity.nm
    fc1 = plan.layer("fc1")
    assert fc1.in_channels[1] < nm.min_in_channels
    assert fc1.method != "n:m"
    assert f"after channel pruning {fc1.in_channels[1]}→256 channels is below" in fc1.reason
    for d in plan.by_method("n:m"):
        assert d.in_channels[1] >= nm.min_in_channels and d.out_channels[1] >= nm.min_out_channels, d.layer


def test_2_4_reasons_give_the_channels_left_after_pruning(shipped_jetson):
    _, _, _, _, plan = shipped_jetson
    narrowed = [d for d in plan.by_method("n:m") if d.in_channels[1] < d.in_channels[0]]
    assert narrowed, "no 2:4 layer lost input channels: the case does not exercise the final shapes"
    for d in plan.by_method("n:m"):
        assert f"{d.in_channels[1]}→{d.out_channels[1]} channels ≥" in d.reason, (d.layer, d.reason)


def test_recipe_nm_on_a_target_without_nm_kernels_counts_its_macs_in_full(small_cnn):
    recipe = {"layers": {"fc1": {"method": "n:m"}}}
    with pytest.warns(UserWarning, match=r"N:M sparsity on fc1, a pattern the device does not accelerate") as caught:
        plan = ep.plan(small_cnn.model, small_cnn.inputs, PI5, ep.Budget(macs_ratio=1.0), recipe=recipe)
    assert {w.filename for w in caught} == {__file__}  # warned at the caller's line, not inside edgeprune
    fc1 = plan.layer("fc1")
    assert (fc1.method, fc1.n, fc1.m) == ("n:m", 2, 4)
    assert fc1.macs[1] == fc1.macs[0]
    assert plan.macs_after == plan.macs_before
    assert "raspberry-pi-5 has no N:M sparse kernels" in fc1.reason
    assert any("does not accelerate" in note for note in plan.notes)


def test_recipe_nm_the_target_accelerates_counts_at_the_sparse_rate_without_a_note(small_cnn, jetson_small):
    recipe = {"layers": {"fc1": {"method": "n:m"}}}
    plan = ep.plan(small_cnn.model, small_cnn.inputs, jetson_small, ep.Budget(macs_ratio=1.0), recipe=recipe)
    fc1 = plan.layer("fc1")
    assert fc1.macs[1] == fc1.macs[0] // 2
    assert not plan.notes


# -- recipes against the rules (issue 10, item 8) ---------------------------------------------------------


def test_recipe_glob_applies_only_to_layers_the_rules_leave_free(small_cnn, jetson_small):
    recipe = {"layers": {"*": {"method": "n:m"}}}
    with pytest.warns(UserWarning, match=r"pattern '\*' leaves the rules' kept layers"):
        plan = ep.plan(small_cnn.model, small_cnn.inputs, jetson_small, ep.Budget(macs_ratio=0.9), recipe=recipe)
    assert plan.layer("stem.0").reason.startswith("first layer")
    assert plan.layer("classifier").reason.startswith("classifier head")
    assert plan.layer("fc1").method == "n:m" and "pattern '*'" in plan.layer("fc1").reason
    # a depthwise conv cannot take 2:4 (one input per group): the glob passes it by, saying why
    assert plan.layer("depthwise.0").method != "n:m"
    assert "does not apply" in plan.layer("depthwise.0").reason


def test_recipe_naming_a_layer_overrides_its_rule_and_says_so(small_cnn):
    recipe = {"layers": {"stem.0": {"method": "unstructured", "amount": 0.5}}}
    plan = ep.plan(small_cnn.model, small_cnn.inputs, PI5, ep.Budget(macs_ratio=0.9), recipe=recipe)
    stem = plan.layer("stem.0")
    assert (stem.method, stem.amount) == ("unstructured", 0.5)
    assert "layer 'stem.0') overrides the first layer rule" in stem.reason


def test_recipe_exact_name_wins_over_a_glob_listed_after_it(small_cnn):
    recipe = {"layers": {"res.0": {"method": "keep"}, "*": {"method": "structured", "amount": 0.25}}}
    plan = ep.plan(small_cnn.model, small_cnn.inputs, PI5, ep.Budget(macs_ratio=1.0), recipe=recipe)
    assert plan.layer("res.0").method == "keep" and "layer 'res.0'" in plan.layer("res.0").reason
    assert plan.layer("branch_b.0").method == "structured"


@pytest.mark.parametrize("spelling", ["2:4", "1:4"])
def test_recipe_method_spelled_as_the_pattern_is_n_m(small_cnn, jetson_small, spelling):
    n, m = (int(v) for v in spelling.split(":"))
    recipe = {"layers": {"fc1": {"method": spelling}}}
    plan = ep.plan(small_cnn.model, small_cnn.inputs, jetson_small, ep.Budget(macs_ratio=1.0), recipe=recipe)
    fc1 = plan.layer("fc1")
    assert (fc1.method, fc1.n, fc1.m) == ("n:m", n, m)


def test_recipe_pattern_spelling_that_contradicts_n_is_an_error(small_cnn):
    recipe = {"layers": {"fc1": {"method": "2:4", "n": 1}}}
    with pytest.raises(ep.RecipeError, match=r"layers\.fc1.*method '2:4' says n = 2, but n = 1"):
        ep.plan(small_cnn.model, small_cnn.inputs, PI5, ep.Budget(macs_ratio=1.0), recipe=recipe)


def test_recipe_unknown_method_lists_the_spellings(small_cnn):
    with pytest.raises(ep.RecipeError, match=r"method 'sparse'.*structured, n:m, unstructured, keep.*'2:4'"):
        ep.plan(small_cnn.model, small_cnn.inputs, PI5, ep.Budget(macs_ratio=1.0),
                recipe={"layers": {"fc1": {"method": "sparse"}}})


# -- rollbacks are told (issue 10, item 10) ----------------------------------------------------------------


# Its forward flattens with a fixed channel count, so removing `b`'s channels breaks it. One source serves
# the in-process tests and the CLI's `-m brittle:model`.
BRITTLE_MODULE = '''
import torch


class HardCodedWidth(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(1, 16, 3, padding=1)
        self.a = torch.nn.Conv2d(16, 32, 3, padding=1)
        self.b = torch.nn.Conv2d(32, 16, 3, padding=1)
        self.head = torch.nn.Linear(16 * 64, 10)

    def forward(self, x):
        x = self.b(torch.relu(self.a(torch.relu(self.stem(x)))))
        return self.head(x.reshape(1, 16 * 64))


def model():
    torch.manual_seed(0)
    return HardCodedWidth().eval()


model.example_inputs = lambda: (torch.randn(1, 1, 8, 8),)
'''
_BRITTLE: dict = {}
exec(compile(BRITTLE_MODULE, "brittle.py", "exec"), _BRITTLE)
HardCodedWidth = _BRITTLE["HardCodedWidth"]


def test_a_rolled_back_group_is_listed_in_the_plan_notes_and_warned():
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="rolled back the channel group of b"):
        plan = ep.plan(HardCodedWidth().eval(), (torch.randn(1, 1, 8, 8),), PI5, ep.Budget(macs_ratio=0.6))
    assert plan.layer("b").method == "keep" and plan.layer("b").reason.startswith("rolled back")
    [note] = [n for n in plan.notes if n.startswith("rolled back")]
    assert "channel group of b" in note and "RuntimeError" in note
    assert plan.layer("a").method == "structured"


# -- flash on MCU targets (issue 10, item 2) ---------------------------------------------------------------


def _mlp(hidden: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10)).eval()


def test_plan_for_an_mcu_warns_when_the_planned_model_cannot_fit_flash():
    model = _mlp(2048)  # ~4.3 M parameters: about twice the 2 MiB of flash at int8
    with pytest.warns(UserWarning, match="does not fit flash"):
        plan = ep.plan(model, (torch.randn(1, 1, 8, 8),), STM32, ep.Budget(macs_ratio=0.9))
    flash = ep.load_target(STM32).memory.flash_bytes
    assert plan.weight_bytes > flash
    [note] = [n for n in plan.notes if n.startswith("does not fit flash")]
    assert f"{(plan.weight_bytes - flash) / 1024:.0f} KiB over" in note


def test_plan_for_an_mcu_that_fits_flash_has_no_flash_note(small_cnn):
    plan = ep.plan(small_cnn.model, small_cnn.inputs, STM32, ep.Budget(macs_ratio=0.7))
    assert 0 < plan.weight_bytes < ep.load_target(STM32).memory.flash_bytes
    assert not any("flash" in note for note in plan.notes)




@pytest.mark.parametrize("command", ["plan", "prune"])
def test_cli_prints_each_rollback_under_the_plan(tmp_path, monkeypatch, command):
    name = f"brittle_{tmp_path.name.replace('-', '_')}"  # a module of this test's own, found in the cwd
    (tmp_path / f"{name}.py").write_text(BRITTLE_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    extra = ["--out", tmp_path / "pruned"] if command == "prune" else []
    try:
        with pytest.warns(UserWarning, match="rolled back the channel group of b"):
            result = run_cli_ok(command, "-t", PI5, "-m", f"{name}:model", "--budget", "macs=0.6", *extra)
    finally:
        sys.modules.pop(name, None)
    assert "note: rolled back the channel group of b: pruning it broke the model (RuntimeError" in result.stdout
