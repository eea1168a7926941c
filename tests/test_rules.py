"""The target's rules have one home (`edgeprune.rules`): one object per family, and the same kept layers and
channel counts for the policy, the sensitivity analysis and iterative fine-tuning."""

from __future__ import annotations

import pytest

import edgeprune as ep
from edgeprune import rules
from edgeprune.costs import measure, prunable_layers
from edgeprune.sensitivity import _eligible
from helpers import ETHOS, PI5, STM32


@pytest.mark.parametrize(("target", "kind"), [
    ("jetson-orin-nano-8gb", rules.JetsonRules), ("jetson-agx-orin-64gb", rules.JetsonRules),
    ("raspberry-pi-5", rules.CpuRules), ("x86-64-host", rules.CpuRules), ("stm32h743", rules.McuRules),
    ("corstone-300-ethos-u55-128", rules.McuRules),
])
def test_each_family_has_its_own_rules_object(target, kind):
    assert type(rules.rules_for(ep.load_target(target))) is kind


def _choices(zm, target, budget):
    target = ep.load_target(target)
    cost = measure(zm.model, zm.inputs)
    align = target.alignment.multiple(target.precision.default)
    return rules.rule_choices(zm.model, zm.inputs, target, budget, cost, prunable_layers(zm.model), align)


def test_a_sparsity_budget_gets_unstructured_only_where_the_hardware_gains_from_zeros(small_cnn):
    budget = ep.Budget(sparsity=0.5)
    ethos = {c.method for c in _choices(small_cnn, ETHOS, budget).values() if not c.kept_by}
    pi5 = {c.method for c in _choices(small_cnn, PI5, budget).values() if not c.kept_by}
    assert (ethos, pi5) == ({"unstructured"}, {"structured"})


def test_an_mcu_gives_structured_with_its_own_reason_for_a_macs_budget(small_cnn):
    free = [c for c in _choices(small_cnn, STM32, ep.Budget(macs_ratio=0.5)).values() if not c.kept_by]
    assert free and all(c.method == "structured" and "int8 has no sparse kernels" in c.reason for c in free)


def test_sensitivity_measures_exactly_the_layers_the_policy_may_prune(tiny_resnet):
    target = ep.load_target(PI5)
    plan = ep.plan(tiny_resnet.model, tiny_resnet.inputs, target, ep.Budget(macs_ratio=0.9))
    kept_by_rule = {d.layer for d in plan.layers if d.reason.startswith(("first layer", "classifier head"))}
    eligible = set(_eligible(tiny_resnet.model, tiny_resnet.inputs, target, None)[0])
    assert kept_by_rule and eligible
    assert eligible == {d.layer for d in plan.layers} - kept_by_rule


@pytest.mark.parametrize(("channels", "fraction", "align", "removed"), [
    (64, 0.5, 8, 32), (64, 0.3, 8, 16), (64, 0.99, 8, 56), (8, 0.9, 8, 0), (64, 0.0, 8, 0), (60, 0.5, 8, 28),
])
def test_removal_keeps_multiples_of_the_alignment_and_never_below_one_unit(channels, fraction, align, removed):
    from edgeprune.pruning.structured import ChannelGroup

    group = ChannelGroup(root="conv", channels=channels, out_layers=("conv",), in_layers=())
    assert rules.removal_for(group, fraction, align, min_channels=1) == removed
