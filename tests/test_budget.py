"""Budget: exactly one kind, values in range, and the CLI's `--budget` text form."""

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


@pytest.mark.parametrize("text", ["0.5", "latency=3", "macs", "=0.5"])
def test_parse_rejects_an_unknown_form(text):
    with pytest.raises(ep.BudgetError, match="expected macs=R or sparsity=S"):
        ep.Budget.parse(text)


def test_parse_rejects_a_non_number():
    with pytest.raises(ep.BudgetError, match="'half' is not a number"):
        ep.Budget.parse("macs=half")


def test_parse_checks_the_range():
    with pytest.raises(ep.BudgetError, match="must be in"):
        ep.Budget.parse("sparsity=1.5")
