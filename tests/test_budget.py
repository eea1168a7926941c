"""Budget: one small type per kind, exactly one kind, values in range, the CLI's `--budget` text form, and how
each kind judges an estimate of a plan."""

from __future__ import annotations

import pytest

import edgeprune as ep


def test_macs_ratio_budget_has_kind_and_value():
    budget = ep.Budget(macs_ratio=0.5)
    assert (budget.kind, budget.value, str(budget)) == ("macs_ratio", 0.5, "macs_ratio=0.5")


def test_sparsity_budget_has_kind_and_value():
    budget = ep.Budget(sparsity=0.25)
    assert (budget.kind, budget.value, str(budget)) == ("sparsity", 0.25, "sparsity=0.25")


def test_budget_without_a_field_is_an_error():
    with pytest.raises(ep.BudgetError, match="exactly one"):
        ep.Budget()


def test_budget_with_two_fields_is_an_error():
    with pytest.raises(ep.BudgetError, match="exactly one"):
        ep.Budget(macs_ratio=0.5, sparsity=0.5)


@pytest.mark.parametrize("ratio", [1e-6, 0.5, 1.0])
def test_macs_ratio_in_range_is_accepted_and_reads_back_from_its_text(ratio):
    budget = ep.Budget(macs_ratio=ratio)
    assert (budget.kind, ep.Budget.parse(str(budget))) == ("macs_ratio", budget)


@pytest.mark.parametrize("ratio", [0.0, -0.5, 1.0000001, 2.0, float("nan")])
def test_macs_ratio_outside_zero_one_is_an_error(ratio):
    with pytest.raises(ep.BudgetError, match=r"macs_ratio=.*must be in \(0, 1\]"):
        ep.Budget(macs_ratio=ratio)


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.999])
def test_sparsity_in_range_is_accepted_and_reads_back_from_its_text(sparsity):
    budget = ep.Budget(sparsity=sparsity)
    assert (budget.kind, ep.Budget.parse(str(budget))) == ("sparsity", budget)


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5, float("nan")])
def test_sparsity_outside_zero_one_is_an_error(sparsity):
    with pytest.raises(ep.BudgetError, match=r"sparsity=.*must be in \[0, 1\)"):
        ep.Budget(sparsity=sparsity)


def test_budget_error_is_an_edgeprune_error():
    with pytest.raises(ep.EdgepruneError, match=r"Budget\(sparsity=2.0\): must be in") as info:
        ep.Budget(sparsity=2.0)
    assert isinstance(info.value, ep.BudgetError)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("macs=0.5", ep.Budget(macs_ratio=0.5)),
        ("macs_ratio=0.25", ep.Budget(macs_ratio=0.25)),
        ("sparsity=0.5", ep.Budget(sparsity=0.5)),
        (" macs = 0.75 ", ep.Budget(macs_ratio=0.75)),
    ],
)
def test_parse_reads_the_cli_form(text, expected):
    assert ep.Budget.parse(text) == expected


@pytest.mark.parametrize("text", ["0.5", "energy=3", "macs", "=0.5"])
def test_parse_rejects_an_unknown_form(text):
    with pytest.raises(ep.BudgetError, match="expected KEY=VALUE with KEY one of macs_ratio=, sparsity=, latency_ms="):
        ep.Budget.parse(text)


def test_parse_rejects_a_non_number():
    with pytest.raises(ep.BudgetError, match="'half' is not a number"):
        ep.Budget.parse("macs=half")


def test_parse_checks_the_range():
    with pytest.raises(ep.BudgetError, match="must be in"):
        ep.Budget.parse("sparsity=1.5")


KINDS = [
    ("macs_ratio", 0.5, ep.MacsBudget), ("sparsity", 0.25, ep.SparsityBudget), ("latency_ms", 2.5, ep.LatencyBudget),
    ("latency_ratio", 0.6, ep.LatencyRatioBudget), ("sram_kib", 512, ep.SramBudget), ("flash_kib", 1024, ep.FlashBudget),
    ("ram_mib", 64, ep.RamBudget),
]


@pytest.mark.parametrize(("key", "value", "kind"), KINDS)
def test_budget_keyword_builds_the_kind_registered_for_it(key, value, kind):
    budget = ep.Budget(**{key: value})
    assert type(budget) is kind and isinstance(budget, ep.Budget)
    assert (budget.kind, budget.value, str(budget)) == (key, value, f"{key}={value:g}")


@pytest.mark.parametrize(("key", "value", "kind"), KINDS)
def test_every_kind_reads_back_from_its_text_and_its_json(key, value, kind):
    budget = kind(value)
    assert ep.Budget.parse(str(budget)) == budget
    assert ep.Budget.from_json(budget.to_json()) == budget


@pytest.mark.parametrize(("text", "expected"), [
    ("latency=2", ep.LatencyBudget(2.0)), ("sram=256", ep.SramBudget(256)), ("flash=900", ep.FlashBudget(900)),
    ("ram=48", ep.RamBudget(48)), ("latency_ratio=0.5", ep.LatencyRatioBudget(0.5)),
])
def test_parse_reads_the_short_forms_of_the_new_kinds(text, expected):
    assert ep.Budget.parse(text) == expected


@pytest.mark.parametrize(("key", "value"), [
    ("latency_ms", 0.0), ("latency_ms", -1.0), ("latency_ms", float("inf")), ("latency_ms", float("nan")),
    ("latency_ratio", 0.0), ("latency_ratio", 1.5), ("sram_kib", 0), ("flash_kib", -4), ("ram_mib", float("inf")),
])
def test_new_kinds_outside_their_range_are_errors_naming_key_and_range(key, value):
    with pytest.raises(ep.BudgetError, match=rf"Budget\({key}={value}\): must be in \("):
        ep.Budget(**{key: value})


def test_unknown_keyword_is_an_error_listing_the_kinds():
    with pytest.raises(ep.BudgetError, match="energy_mj=...\\): unknown kind; expected one of macs_ratio=, sparsity="):
        ep.Budget(energy_mj=3.0)


def test_an_alias_is_not_a_keyword():
    with pytest.raises(ep.BudgetError, match="unknown kind"):
        ep.Budget(macs=0.5)


def test_a_positional_value_is_an_error():
    with pytest.raises(ep.BudgetError, match="exactly one of"):
        ep.Budget(0.5)


def test_a_kind_built_directly_checks_its_range_too():
    with pytest.raises(ep.BudgetError, match="must be in"):
        ep.LatencyBudget(-2.0)


def test_upper_bound_met_at_the_value_and_missed_above_it_by_the_relative_excess():
    budget = ep.Budget(macs_ratio=0.5)
    assert budget.meets(ep.Estimate(macs_ratio=0.5)) and budget.miss(ep.Estimate(macs_ratio=0.5)) == 0.0
    assert not budget.meets(ep.Estimate(macs_ratio=0.55))
    assert budget.miss(ep.Estimate(macs_ratio=0.55)) == pytest.approx(0.1)


def test_lower_bound_met_at_the_value_and_missed_below_it_by_the_shortfall():
    budget = ep.Budget(sparsity=0.5)
    assert budget.meets(ep.Estimate(sparsity=0.5)) and budget.meets(ep.Estimate(sparsity=0.9))
    assert not budget.meets(ep.Estimate(sparsity=0.4))
    assert budget.miss(ep.Estimate(sparsity=0.4)) == pytest.approx(0.2)


def test_latency_budget_without_a_latency_in_the_estimate_asks_for_a_device():
    with pytest.raises(ep.BudgetError, match=r"latency_ms=2.*needs a device"):
        ep.Budget(latency_ms=2.0).meets(ep.Estimate(macs_ratio=0.1))


def test_latency_ratio_is_judged_against_the_dense_latency_on_the_same_device():
    budget = ep.Budget(latency_ratio=0.5)
    assert budget.quantity(ep.Estimate(latency_ms=3.0, dense_latency_ms=8.0)) == pytest.approx(0.375)
    assert budget.meets(ep.Estimate(latency_ms=4.0, dense_latency_ms=8.0))
    assert not budget.meets(ep.Estimate(latency_ms=4.4, dense_latency_ms=8.0))
    assert budget.absolute(8.0) == ep.LatencyBudget(4.0)


def test_memory_budgets_judge_bytes_in_their_own_unit():
    assert ep.Budget(sram_kib=2).quantity(ep.Estimate(sram_bytes=3072)) == 3.0
    assert ep.Budget(flash_kib=1).meets(ep.Estimate(flash_bytes=1024))
    assert not ep.Budget(flash_kib=1).meets(ep.Estimate(flash_bytes=1025))
    assert ep.Budget(ram_mib=1).quantity(ep.Estimate(ram_bytes=2 * 1024 * 1024)) == 2.0


def test_memory_budget_without_an_estimate_says_what_is_missing():
    with pytest.raises(ep.BudgetError, match=r"sram_kib=8.*arena is not estimated"):
        ep.Budget(sram_kib=8).quantity(ep.Estimate())


def test_macs_stages_move_linearly_and_are_relative_to_the_model_pruned_so_far():
    budget, original = ep.Budget(macs_ratio=0.4), ep.Estimate(macs_ratio=1.0)
    stage = budget.stage(1, 3, original, original)
    assert type(stage) is ep.MacsBudget and stage.value == pytest.approx(0.8)
    # the stage-2 model already runs 0.8 of the dense MACs: 0.6 of the dense is 0.75 of its own
    assert budget.stage(2, 3, original, ep.Estimate(macs_ratio=0.8)).value == pytest.approx(0.75)
    assert budget.stage(3, 3, original, ep.Estimate(macs_ratio=0.6)).value == pytest.approx(0.4 / 0.6)


def test_absolute_stages_move_from_the_dense_quantity_to_the_budget():
    budget = ep.Budget(flash_kib=100)
    original = ep.Estimate(flash_bytes=300 * 1024)
    assert [budget.stage(k, 4, original, original).value for k in (1, 2, 3, 4)] == [250, 200, 150, 100]


def test_a_sparsity_budget_cannot_be_staged_and_says_what_to_use():
    with pytest.raises(ep.BudgetError, match=r"finetune\(gradual=...\)"):
        ep.Budget(sparsity=0.5).stage(1, 2, ep.Estimate(), ep.Estimate())


def test_an_unknown_kind_in_json_is_malformed_and_names_it():
    with pytest.raises(ep.MalformedError, match="unknown budget kind 'energy_mj'.*newer version"):
        ep.Budget.from_json({"energy_mj": 3})


def test_an_out_of_range_value_in_json_is_malformed():
    with pytest.raises(ep.MalformedError, match=r"plan: budget: Budget\(macs_ratio=3\)"):
        ep.Budget.from_json({"macs_ratio": 3}, "plan: budget")


def test_an_estimate_takes_measured_quantities_and_keeps_the_rest():
    est = ep.Estimate(macs_ratio=0.5, flash_bytes=10).but(latency_ms=2.0, flash_bytes=None)
    assert (est.macs_ratio, est.latency_ms, est.flash_bytes) == (0.5, 2.0, 10)
