"""The latency model as data: the table's keys and its file, the cache identity, interpolation between the
channel counts measured, calibration to whole-model measurements, and the policy planning with it."""

from __future__ import annotations

import json
import re

import pytest
import torch
from torch import nn

import edgeprune as ep
from edgeprune.latency import LatencyModel, LatencyTable, LayerConfig, TableIdentity, table_path

IDENTITY = TableIdentity("pi5-lab", "executorch", "1.0.0", 2, (2, 3), "[[1, 3, 16, 16]]")
CONV = LayerConfig("Conv2d", 32, 64, (3, 3), (1, 1), (1, 1), False, (16, 16), ("BatchNorm2d", "ReLU"))


def bilinear(i: int, o: int) -> float:
    return 0.5 + 0.01 * i + 0.02 * o + 0.001 * i * o  # bilinear interpolation reproduces it exactly


def table_over(config: LayerConfig, ins, outs, f=bilinear) -> LatencyTable:
    table = LatencyTable(IDENTITY)
    for i in ins:
        for o in outs:
            table.add(config.with_channels(i, o), f(i, o))
    return table


def test_configs_that_differ_only_in_channels_share_a_shape_key():
    other = CONV.with_channels(16, 48)
    assert other.shape_key() == CONV.shape_key() and other.key() != CONV.key()
    assert LayerConfig("Conv2d", 32, 64, (1, 1), (1, 1), (0, 0)).shape_key() != CONV.shape_key()


def test_a_depthwise_config_keeps_its_input_equal_to_its_output():
    dw = LayerConfig("Conv2d", 64, 64, (3, 3), (1, 1), (1, 1), True, (8, 8))
    assert (dw.with_channels(64, 32).in_channels, dw.with_channels(64, 32).out_channels) == (32, 32)


def test_table_reads_back_what_it_saved(tmp_path):
    table = table_over(CONV, (16, 32), (32, 64))
    loaded = LatencyTable.load(table.save(tmp_path / "t.json"))
    assert loaded.identity == IDENTITY and loaded.entries == table.entries


def test_table_with_a_non_positive_entry_is_malformed_and_names_file_and_entry(tmp_path):
    path = tmp_path / "t.json"
    data = json.loads(table_over(CONV, (32,), (64,)).to_json())
    data["entries"][CONV.key()] = -1.0
    path.write_text(json.dumps(data))
    with pytest.raises(ep.MalformedError, match="t.json: entry " + re.escape(repr(CONV.key())) + " is not a positive"):
        LatencyTable.load(path)


def test_a_file_that_is_not_a_table_is_malformed(tmp_path):
    path = tmp_path / "t.json"
    path.write_text('{"schema": "edgeprune.plan/2"}')
    with pytest.raises(ep.MalformedError, match="not an edgeprune latency table"):
        LatencyTable.load(path)


@pytest.mark.parametrize("change", [{"runtime_version": "1.1.0"}, {"threads": 4}, {"cores": (0,)},
                                    {"inputs": "[[1, 3, 32, 32]]"}, {"device": "pi5-other"}])
def test_another_runtime_version_thread_count_pinning_or_input_is_another_table(tmp_path, change):
    from dataclasses import replace

    assert table_path(tmp_path, replace(IDENTITY, **change)) != table_path(tmp_path, IDENTITY)


def test_the_same_identity_finds_the_same_table():
    assert table_path("/c", IDENTITY) == table_path("/c", TableIdentity(*[getattr(IDENTITY, f) for f in
                                                                          ("device", "runtime", "runtime_version",
                                                                           "threads", "cores", "inputs")]))


def model_of(table: LatencyTable, config: LayerConfig = CONV) -> LatencyModel:
    return LatencyModel(table, {"conv": config})


def test_an_exact_entry_is_returned_as_measured():
    model = model_of(table_over(CONV, (16, 32), (32, 64)))
    assert model.layer_ms("conv", 16, 32) == bilinear(16, 32)


@pytest.mark.parametrize(("i", "o"), [(24, 48), (20, 60), (16, 40), (30, 32)])
def test_between_measured_counts_latency_is_interpolated_bilinearly(i, o):
    model = model_of(table_over(CONV, (16, 32), (32, 64)))
    assert model.layer_ms("conv", i, o) == pytest.approx(bilinear(i, o))


def test_layers_sharing_a_shape_interpolate_over_the_counts_each_input_count_holds():
    table = table_over(CONV, (32,), (32, 64))
    for config in (CONV.with_channels(64, 16), CONV.with_channels(64, 128)):
        table.add(config, bilinear(config.in_channels, config.out_channels))
    model = model_of(table)
    # at 48 inputs: halfway between 32 inputs (outputs 32/64 held) and 64 inputs (outputs 16/128 held)
    expected = 0.5 * bilinear(32, 48) + 0.5 * bilinear(64, 48)
    assert model.layer_ms("conv", 48, 48) == pytest.approx(expected)


def test_outside_the_measured_counts_the_nearest_edge_is_used():
    model = model_of(table_over(CONV, (16, 32), (32, 64)))
    assert model.layer_ms("conv", 8, 16) == pytest.approx(bilinear(16, 32))


def test_a_layer_shape_the_table_never_saw_asks_for_a_new_profile():
    model = model_of(table_over(CONV, (16, 32), (32, 64)), LayerConfig("Linear", 64, 10))
    with pytest.raises(ep.MalformedError, match="holds nothing for layer 'conv'.*profile the model again"):
        model.layer_ms("conv", 64, 10)


def test_a_model_sums_its_layers_and_what_runs_outside_them():
    model = model_of(table_over(CONV, (16, 32), (32, 64)))
    model.rest_ms = 0.25
    assert model.predict({}) == pytest.approx(0.25 + bilinear(32, 64))
    assert model.predict({"conv": (16, 32)}) == pytest.approx(0.25 + bilinear(16, 32))


def test_a_measurement_calibrates_the_prediction_of_the_model_it_measured():
    model = model_of(table_over(CONV, (16, 32), (32, 64)))
    model.correct({}, 1.5)
    assert model.predict({}) == pytest.approx(1.5)
    assert model.predict({"conv": (16, 32)}) == pytest.approx(bilinear(16, 32) * 1.5 / bilinear(32, 64))


def test_between_two_measurements_the_prediction_follows_the_line_through_them():
    model = model_of(table_over(CONV, (16, 32), (32, 64)))
    model.correct({}, 4.0)
    model.correct({"conv": (16, 32)}, 1.0)
    raw_mid = (bilinear(16, 32) + bilinear(32, 64)) / 2
    assert model.calibrated(raw_mid) == pytest.approx(2.5)


def test_a_newer_measurement_of_the_same_widths_replaces_the_older():
    model = model_of(table_over(CONV, (16, 32), (32, 64)))
    model.correct({}, 4.0)  # the profile's short runs
    model.correct({"conv": (16, 32)}, 1.0)
    model.correct({}, 3.0)  # the loop's longer runs of the dense model
    assert model.predict({}) == pytest.approx(3.0) and len(model.measurements) == 2


def test_noise_never_makes_a_smaller_model_predict_slower_than_a_larger_one():
    model = model_of(table_over(CONV, (16, 32), (32, 64)))
    model.correct({}, 2.0)
    model.correct({"conv": (16, 32)}, 3.0)  # measured slower than the dense model: noise
    assert model.predict({"conv": (16, 32)}) <= model.predict({})


# -- the policy reads the model as data -----------------------------------------------------------------

def wide_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                         nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(),
                         nn.Conv2d(128, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10)).eval()


def mac_proportional_model(model: nn.Module, inputs) -> LatencyModel:
    """A table whose entries are 1 µs per thousand MACs, at every count a search may choose."""
    from edgeprune.profiling import layer_configs

    configs, _ = layer_configs(model, inputs)
    table = LatencyTable(IDENTITY)
    for config in configs.values():
        pixels = 1
        for s in config.input_shape:
            pixels *= s
        k = 1
        for s in config.kernel:
            k *= s
        for i in range(1, config.in_channels + 1):
            for o in range(1, config.out_channels + 1):
                c = config.with_channels(i, o)
                if c.in_channels == i:
                    table.add(c, pixels * k * c.in_channels * c.out_channels / 1e6 + 1e-3)
    return LatencyModel(table, configs)


def test_a_latency_budget_plans_just_inside_the_predicted_budget():
    model, inputs = wide_cnn(), (torch.randn(1, 3, 16, 16),)
    latency = mac_proportional_model(model, inputs)
    budget = ep.Budget(latency_ms=0.6 * latency.dense_ms)
    plan = ep.plan(model, inputs, "x86-64-host", budget, latency=latency)
    # one step of x86-64-host's 32-channel alignment on 64/128 channels moves it by up to ~1/4
    assert 0.75 * budget.value <= plan.latency_ms <= budget.value
    assert plan.dense_latency_ms == pytest.approx(latency.dense_ms) and plan.groups
    assert f"p50 {plan.latency_ms:.3g} ms predicted by the device's latency model" in plan.summary()


def test_a_latency_ratio_budget_is_judged_against_the_predicted_dense_latency():
    model, inputs = wide_cnn(), (torch.randn(1, 3, 16, 16),)
    latency = mac_proportional_model(model, inputs)
    plan = ep.plan(model, inputs, "x86-64-host", ep.Budget(latency_ratio=0.6), latency=latency)
    assert 0.75 * 0.6 <= plan.latency_ms / plan.dense_latency_ms <= 0.6


def test_a_latency_model_of_another_model_is_refused_naming_the_layer():
    model, inputs = wide_cnn(), (torch.randn(1, 3, 16, 16),)
    latency = mac_proportional_model(model, inputs)
    other = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 14 * 14, 10))
    with pytest.raises(ep.ModelError, match="the latency model names layer '6', which the model does not have"):
        ep.plan(other, inputs, "x86-64-host", ep.Budget(latency_ms=1.0), latency=latency)


def test_a_latency_model_profiled_at_other_widths_is_refused_naming_layer_and_widths():
    model, inputs = wide_cnn(), (torch.randn(1, 3, 16, 16),)
    latency = mac_proportional_model(model, inputs)
    narrower = ep.prune(model, ep.plan(model, inputs, "x86-64-host", ep.Budget(macs_ratio=0.6)))
    with pytest.raises(ep.ModelError, match="profiled with layer '3' at 64→128 channels, the model has 64→64: profile it again"):
        ep.plan(narrower, inputs, "x86-64-host", ep.Budget(latency_ms=1.0), latency=latency)
