"""Per-layer sensitivity analysis, its plots, and the policy using it (issue 5, part 2)."""

from __future__ import annotations

import json
import re

import pytest
import torch

import edgeprune as ep
from edgeprune import zoo
from edgeprune.metrics import accuracy
from edgeprune.plots import plot_accuracy_vs_latency, plot_layer_sparsity
from helpers import BUDGET_TOLERANCE, run_cli

PI5 = "raspberry-pi-5"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TOLERANCE = -0.05  # pruning can help a little by chance: drops may be slightly negative


@pytest.fixture(scope="module")
def trained(trained_small_cnn):
    """The session's small_cnn trained on the digits train split (~93% test accuracy); shared, never changed."""
    return trained_small_cnn


@pytest.fixture(scope="module")
def inputs():
    return zoo.small_cnn.example_inputs()


@pytest.fixture(scope="module")
def sens(trained, inputs):
    return ep.sensitivity(trained, inputs, zoo.digits("test"), None, PI5)


@pytest.fixture(scope="module")
def budget():
    return ep.Budget(macs_ratio=0.5)


def test_there_is_a_row_per_eligible_layer_and_none_for_kept_ones(sens):
    measured = set(sens.layers) | set(sens.skipped)
    assert measured == {"res.0", "res.3", "expand.0", "depthwise.0", "branch_a.0", "branch_b.0", "fc1"}
    assert "stem.0" not in measured and "classifier" not in measured


def test_each_row_has_a_metric_value_and_drop_per_amount(sens):
    for row in sens.rows:
        assert row.method == "structured"  # raspberry-pi-5: structured only
        assert row.amounts == (0.25, 0.5, 0.75)
        assert len(row.values) == len(row.drops) == 3
        assert all(d >= TOLERANCE for d in row.drops)
        assert row.drops == pytest.approx(tuple(sens.baseline - v for v in row.values))


def test_the_baseline_is_the_dense_models_accuracy(sens, trained):
    x, y = zoo.digits("test")
    with torch.no_grad():
        acc = float((trained(x).argmax(-1) == y).float().mean())
    assert sens.baseline == pytest.approx(acc)
    assert sens.baseline > 0.6


def test_the_callers_model_is_unchanged(trained, inputs):
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    ep.sensitivity(trained, inputs, zoo.digits("test"), None, PI5, amounts=(0.5,), layers=["branch_a.0"])
    after = trained.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_custom_metric_is_used(trained, inputs):
    calls = []

    def metric(model, data):
        calls.append(data)
        return 1.0

    s = ep.sensitivity(trained, inputs, "val", metric, PI5, amounts=(0.5,), layers=["fc1"])
    assert s.baseline == 1.0 and s.row("fc1").drops == (0.0,)
    assert set(calls) == {"val"}


def test_a_layer_the_rules_keep_is_refused(trained, inputs):
    with pytest.raises(ep.ModelError, match="classifier"):
        ep.sensitivity(trained, inputs, zoo.digits("test"), None, PI5, layers=["classifier"])


def test_the_plot_is_a_png(sens, tmp_path):
    path = sens.plot(tmp_path / "s.png")
    assert path.read_bytes().startswith(PNG_MAGIC)


def test_json_round_trips(sens):
    again = ep.Sensitivity.from_json(sens.to_json())
    assert again == sens


def test_plan_with_sensitivity_still_meets_the_budget_from_both_sides(trained, inputs, sens, budget):
    plan = ep.plan(trained, inputs, PI5, budget, sensitivity=sens)
    assert budget.macs_ratio - BUDGET_TOLERANCE <= plan.macs_ratio <= budget.macs_ratio + 1e-9


def test_plan_gives_the_most_sensitive_pruned_layer_less(trained, inputs, sens, budget):
    without = ep.plan(trained, inputs, PI5, budget)
    pruned = [d.layer for d in without.by_method("structured") if d.layer in sens.layers]
    worst = max(pruned, key=lambda n: sens.row(n).drop_at(0.5))
    with_s = ep.plan(trained, inputs, PI5, budget, sensitivity=sens)
    assert with_s.layer(worst).amount < without.layer(worst).amount
    assert "more sensitive than average → pruned less" in with_s.layer(worst).reason


REASON = re.compile(r"sensitivity measured ([+-]\d+\.\d) pts at 50% of its channels removed "
                    r"\(average ([+-]\d+\.\d) pts\): (.*)$")


def test_sensitivity_reasons_say_what_was_measured_and_what_was_decided_in_the_same_words(trained, inputs, sens,
                                                                                          budget):
    plan = ep.plan(trained, inputs, PI5, budget, sensitivity=sens)
    explained = [d for d in plan.by_method("structured") if d.layer in sens.layers]
    assert len(explained) >= 2
    for d in explained:
        found = REASON.search(d.reason)
        assert found, d.reason
        measured, average, decided = float(found[1]), float(found[2]), found[3]
        group = next(g for g in plan.groups if g.id == d.group)
        drop = max(sens.row(n).drop_at(0.5) for n in group.layers if n in sens.layers)
        assert measured == pytest.approx(round(-drop * 100, 1))  # the group's drop at 50%, not at its amount
        if measured < average:
            assert decided == "more sensitive than average → pruned less", d.reason
        elif measured > average:
            assert decided == "less sensitive than average → pruned more", d.reason


def test_plan_without_sensitivity_has_no_sensitivity_reasons(trained, inputs, budget):
    plan = ep.plan(trained, inputs, PI5, budget)
    assert not any("sensitiv" in d.reason for d in plan.layers)


def test_a_sensitivity_for_another_target_is_refused(trained, inputs, sens, budget):
    with pytest.raises(ep.EdgepruneError, match="raspberry-pi-5.*x86-64-host"):
        ep.plan(trained, inputs, "x86-64-host", budget, sensitivity=sens)


def test_a_sensitivity_naming_an_unknown_layer_is_refused(trained, inputs, sens, budget):
    data = sens.to_dict()
    data["rows"][0]["layer"] = "nope.0"
    with pytest.raises(ep.ModelError, match="nope.0"):
        ep.plan(trained, inputs, PI5, budget, sensitivity=ep.Sensitivity.from_dict(data))


def test_layer_sparsity_plot_is_written_and_not_overwritten(trained, inputs, budget, tmp_path):
    plans = {PI5: ep.plan(trained, inputs, PI5, budget)}
    path = plot_layer_sparsity(plans, tmp_path / "sparsity.png")
    assert path.read_bytes().startswith(PNG_MAGIC)
    with pytest.raises(ep.ArtifactError, match="already exists"):
        plot_layer_sparsity(plans, path)
    plot_layer_sparsity(plans, path, overwrite=True)


def test_accuracy_vs_latency_plot_is_written_and_not_overwritten(tmp_path):
    points = [
        {"label": "dense", "accuracy": 0.9, "latency_ms": 2.0, "device": "pi5", "runtime": "xnnpack", "proxy": False},
        {"label": "pruned", "accuracy": 0.88, "latency_ms": 1.1, "device": "orin", "runtime": "trt", "proxy": True},
    ]
    path = plot_accuracy_vs_latency(points, tmp_path / "acc.png")
    assert path.read_bytes().startswith(PNG_MAGIC)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(ep.ArtifactError, match="already exists"):
        plot_accuracy_vs_latency(points, path)


def test_cli_writes_json_and_png(tmp_path):
    out = tmp_path / "sens"
    result = run_cli("sensitivity", "--target", PI5, "--model", "edgeprune.zoo:small_cnn",
                     "--digits", "--out", str(out), "--amounts", "0.5")
    assert result.exit_code == 0, result.output
    data = json.loads((out / "sensitivity.json").read_text())
    assert data["target"] == PI5 and data["rows"]
    assert (out / "sensitivity.png").read_bytes().startswith(PNG_MAGIC)


def test_cli_without_validation_data_fails_clearly(tmp_path):
    result = run_cli("sensitivity", "--target", PI5, "--model", "edgeprune.zoo:small_cnn",
                     "--out", str(tmp_path / "x"))
    assert result.exit_code == 2
    assert "--digits" in result.output


def test_on_a_2_4_target_the_wide_layers_get_one_n_m_point(trained, inputs, jetson_small):
    """2:4 has one amount (half the weights), so each 2:4 layer is measured once, at 0.5."""
    sens = ep.sensitivity(trained, inputs, zoo.digits("test"), None, jetson_small)
    nm_rows = [r for r in sens.rows if r.method == "n:m"]
    assert {r.layer for r in nm_rows} >= {"res.0", "res.3", "branch_b.0"}
    assert all(r.amounts == (0.5,) and len(r.drops) == 1 for r in nm_rows)
    # depthwise: no dense GEMM for 2:4, and its channels are expand.0's, which is 2:4 here
    assert "coupled to expand.0 (n:m on this target)" in sens.skipped["depthwise.0"]


def test_plan_with_2_4_sensitivity_meets_the_budget(trained, inputs, jetson_small, budget):
    sens = ep.sensitivity(trained, inputs, zoo.digits("test"), None, jetson_small)
    plan = ep.plan(trained, inputs, jetson_small, budget, sensitivity=sens)
    assert plan.macs_ratio <= budget.macs_ratio + 1e-9
    assert plan.by_method("n:m")


def test_bn_recalibrated_sensitivity_recomputes_statistics_of_each_pruned_copy(trained, inputs):
    """Stale BatchNorm statistics account for much of a one-shot drop: recalibrated, the drops are smaller."""
    val, train = zoo.digits("test"), zoo.digits("train")
    plain = ep.sensitivity(trained, inputs, val, None, PI5, amounts=(0.5,))
    recal = ep.sensitivity(trained, inputs, val, None, PI5, amounts=(0.5,), calibration_data=train)
    assert recal.bn_recalibrated and not plain.bn_recalibrated
    assert recal.baseline == pytest.approx(accuracy(ep.recalibrate_bn(trained, train), val))
    mean = lambda s: sum(r.drops[0] for r in s.rows) / len(s.rows)  # noqa: E731
    assert mean(recal) < mean(plain)
    assert ep.Sensitivity.from_json(recal.to_json()).bn_recalibrated


def test_calibration_data_the_model_cannot_take_is_a_clear_error(trained, inputs):
    wrong = (torch.zeros(8, 3, 8, 8), torch.zeros(8, dtype=torch.long))  # 3 channels for a 1-channel model
    with pytest.raises(ep.ModelError, match="calibration_data does not run through the dense SmallCNN"):
        ep.sensitivity(trained, inputs, zoo.digits("test"), None, PI5, amounts=(0.5,), calibration_data=wrong)


def test_empty_calibration_data_is_a_clear_error(trained, inputs):
    with pytest.raises(ep.ModelError, match="recalibration data is empty"):
        ep.sensitivity(trained, inputs, zoo.digits("test"), None, PI5, amounts=(0.5,), calibration_data=[])


def test_cli_bn_data_recalibrates_and_says_so_in_the_json(tmp_path):
    out = tmp_path / "sens"
    result = run_cli("sensitivity", "--target", PI5, "--model", "edgeprune.zoo:small_cnn",
                     "--digits", "--bn-data", "digits", "--out", str(out), "--amounts", "0.5")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "sensitivity.json").read_text())["bn_recalibrated"] is True


def test_cli_bn_data_without_x_names_the_file_and_tensor(tmp_path):
    from safetensors.torch import save_file

    bad = tmp_path / "bn.safetensors"
    save_file({"images": torch.zeros(4, 1, 8, 8)}, str(bad))
    result = run_cli("sensitivity", "--target", PI5, "--model", "edgeprune.zoo:small_cnn",
                     "--digits", "--bn-data", str(bad), "--out", str(tmp_path / "s"))
    assert result.exit_code == 2
    assert "bn.safetensors" in result.output and "'x'" in result.output
