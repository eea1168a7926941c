"""Latency budgets on a real device (`local`: the harness in a subprocess, ExecuTorch + XNNPACK, as
x86-64-host runs it): the profile measured there and kept on disk, and the closed loop that plans, exports,
measures and re-plans until the measured p50 is inside the window."""

from __future__ import annotations

import pytest
import torch

import edgeprune as ep
from edgeprune.closedloop import Measured, converge
from edgeprune.rules import channels
from helpers import run_cli
from test_latency import mac_proportional_model, wide_cnn

TARGET = "x86-64-host"
SETTINGS = ep.BenchSettings(min_runs=30, min_seconds=0.3, warmup_runs=3, warmup_seconds=0.05)


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    model, inputs = wide_cnn(), (torch.randn(1, 3, 16, 16),)
    cache = tmp_path_factory.mktemp("latency-cache")
    measured: list[str] = []
    latency = ep.profile(model, inputs, TARGET, "local", cache_dir=cache, points=2, settings=SETTINGS,
                         progress=lambda what, done, total: measured.append(what))
    return model, inputs, cache, latency, measured


def test_profile_measures_each_layer_at_the_counts_the_search_may_choose_and_the_dense_model(profiled):
    model, inputs, cache, latency, measured = profiled
    assert set(latency.layers) == {"0", "3", "6", "11"}
    # x86-64-host aligns to 32; layers 0, 3 and 6 share a shape (3x3, 16x16 input, BatchNorm + ReLU) and its table
    grid = latency.table.grid(latency.layers["6"])
    assert {i: sorted(row) for i, row in grid.items()} == {3: [32, 64], 32: [32, 128], 64: [32, 128], 128: [32, 128]}
    assert all(v > 0 for v in latency.table.entries.values())
    assert measured[-1] == "the dense model" and len(measured) == len(latency.table.entries) + 1
    assert latency.predict({}) == pytest.approx(latency.measurements[0]["measured_ms"])


def test_profile_keeps_its_table_on_disk_for_the_device_runtime_and_threads(profiled):
    model, inputs, cache, latency, measured = profiled
    (path,) = cache.iterdir()
    identity = latency.table.identity
    assert (identity.device, identity.runtime) == ("local", "executorch") and identity.runtime_version
    assert ep.LatencyTable.load(path).entries == latency.table.entries


def test_a_second_profile_for_the_same_device_measures_only_the_dense_model(profiled):
    model, inputs, cache, latency, _ = profiled
    measured: list[str] = []
    again = ep.profile(model, inputs, TARGET, "local", cache_dir=cache, points=2, settings=SETTINGS,
                       progress=lambda what, done, total: measured.append(what))
    assert measured == ["the dense model"] and again.table.entries == latency.table.entries


def test_the_loop_returns_a_plan_measured_inside_the_window_twice(profiled):
    model, inputs, cache, latency, _ = profiled
    # wider than the default: x86-64-host's 32-channel steps on 64/128 channels are coarse, and one plan on this
    # shared VM has measured 0.42 and 0.50 ms in two runs under the suite's load (the default window is
    # tested above on a scripted device)
    window = (0.75, 1.0)
    said: list[str] = []
    # calibration= is for an int8 target's export; an fp32 target's loop takes it and exports as before
    plan = ep.plan(model, inputs, TARGET, ep.Budget(latency_ratio=0.7), device="local", latency=latency,
                   window=window, settings=SETTINGS, calibration=[inputs],
                   progress=lambda what, done, total: said.append(what))
    # the goal is 0.7 of the dense p50 measured as the loop measures, not with the profile's short runs
    assert said[0] == "the dense model" and plan.dense_latency_ms > 0
    goal = 0.7 * plan.dense_latency_ms
    last_two = [i.measured_ms for i in plan.iterations[-2:]]
    assert all(window[0] * goal <= m <= window[1] * goal for m in last_two), (plan.iterations, goal)
    assert plan.measured_latency_ms == max(last_two) and plan.budget == ep.Budget(latency_ratio=0.7)
    assert all(i.device_s > 0 and i.ci95_ms[0] <= i.measured_ms <= i.ci95_ms[1] for i in plan.iterations)
    assert ep.Plan.from_json(plan.to_json()).iterations == plan.iterations
    assert f"measured on the device ({len(plan.iterations)} runs)" in plan.summary()


def test_an_int8_targets_loop_without_calibration_is_refused_before_measuring():
    with pytest.raises(ep.BudgetError, match="stm32h743: its plans are measured on their int8 artifacts, whose "
                                             r"export needs calibration data: pass calibration="):
        ep.plan(wide_cnn(), (torch.randn(1, 3, 16, 16),), "stm32h743", ep.Budget(latency_ms=1.0), device="local")


def test_a_macs_budget_with_a_device_is_refused():
    with pytest.raises(ep.BudgetError, match="is met by the policy alone: plan without a device"):
        ep.plan(wide_cnn(), (torch.randn(1, 3, 16, 16),), TARGET, ep.Budget(macs_ratio=0.5), device="local")


# -- the loop's decisions, on a device whose p50 is scripted --------------------------------------------
# `converge` is the loop without a runner: its measure(pruned, name) is given. The "device" here is a latency
# model of its own that the planner's model does not know (off by a factor, or noisy): what the loop decides
# from what it is told, at the default window, with raspberry-pi-5's 8-channel steps.

FINE = "raspberry-pi-5"


class ScriptedDevice:
    """p50 = factor × the MAC-proportional truth of the pruned widths (+ the next of `noise`, cycled)."""

    def __init__(self, model, inputs, factor=1.0, noise=(0.0,), ci=0.001):
        self.truth = mac_proportional_model(model, inputs)
        self.factor, self.noise, self.ci, self.calls = factor, noise, ci, []

    def __call__(self, pruned, name):
        modules = dict(pruned.named_modules())
        widths = {n: channels(modules[n])[::-1] for n in self.truth.layers}
        p50 = self.factor * self.truth.raw(widths) * (1 + self.noise[len(self.calls) % len(self.noise)])
        self.calls.append(name)
        return Measured(p50, ((1 - self.ci) * p50, (1 + self.ci) * p50), 1.0)


def scripted(factor=1.0, noise=(0.0,), ci=0.001):
    model, inputs = wide_cnn(), (torch.randn(1, 3, 16, 16),)
    return model, inputs, mac_proportional_model(model, inputs), ScriptedDevice(model, inputs, factor, noise, ci)


def test_a_plan_measured_in_the_window_twice_is_returned_with_both_measurements():
    model, inputs, latency, device = scripted()
    plan = converge(model, inputs, FINE, ep.Budget(latency_ratio=0.6), latency, device, device="pi")
    goal = 0.6 * latency.dense_ms
    assert len(plan.iterations) == 2 and plan.iterations[0].measured_ms == plan.iterations[1].measured_ms
    assert 0.9 * goal <= plan.measured_latency_ms <= goal and plan.dense_latency_ms == latency.dense_ms


def test_a_device_slower_than_the_model_is_corrected_until_the_plan_lands_in_the_window():
    model, inputs, latency, device = scripted(factor=1.4)
    budget = ep.Budget(latency_ms=0.5 * device.factor * device.truth.dense_ms)
    plan = converge(model, inputs, FINE, budget, latency, device, device="pi")
    first, *_, last = plan.iterations
    assert first.measured_ms > budget.value  # the model, 1.4x optimistic, chose a plan too large at first
    assert 0.9 * budget.value <= last.measured_ms <= budget.value and len(plan.iterations) >= 3
    assert last.predicted_ms == pytest.approx(last.measured_ms, rel=0.1)  # the corrected model agrees


def test_a_budget_no_plan_reaches_says_so_before_measuring():
    model, inputs, latency, device = scripted()
    with pytest.raises(ep.BudgetError, match=r"latency_ratio=0.01\) \([0-9.]+ ms\) on pi: the latency model "
                                             r"measured there predicts no plan reaches it"):
        converge(model, inputs, FINE, ep.Budget(latency_ratio=0.01), latency, device, device="pi")
    assert device.calls == []


def test_a_p50_whose_confidence_interval_is_wider_than_the_window_is_unresolvable():
    model, inputs, latency, device = scripted(ci=0.08)  # ±8 %: 16 % wide, the window 10 %
    with pytest.raises(ep.BudgetError, match=r"on pi: the device's noise cannot resolve it: the p50's 95 % CI is "
                                             r"[0-9.]+ ms wide .* wider than the window"):
        converge(model, inputs, FINE, ep.Budget(latency_ratio=0.6), latency, device, device="pi")
    assert len(device.calls) == 1


def test_a_plan_measured_twice_that_spread_wider_than_the_window_is_the_devices_noise():
    model, inputs, latency, device = scripted(noise=(0.12, -0.12))
    with pytest.raises(ep.BudgetError, match=r"on pi: the device's noise cannot resolve it: one plan measured "
                                             r"[0-9.]+–[0-9.]+ ms in separate runs, wider than the window"):
        converge(model, inputs, FINE, ep.Budget(latency_ratio=0.6), latency, device, device="pi")


def test_a_budget_between_two_alignment_steps_says_which_plans_are_nearest():
    model, inputs, latency, device = scripted()
    # a 1 % window between two 8-channel steps of the last conv: no plan lands inside it
    with pytest.raises(ep.BudgetError, match=r"no plan lands in the window .* the nearest plans \(.*\) are one step "
                                             "of the target's channel alignment apart"):
        converge(model, inputs, "x86-64-host", ep.Budget(latency_ratio=0.6), latency, device, device="pi",
                 window=(0.99, 1.0))


def test_settling_takes_the_largest_plan_measured_under_the_budget_when_the_window_is_between_steps():
    model, inputs, latency, device = scripted()
    budget = ep.Budget(latency_ratio=0.6)
    plan = converge(model, inputs, "x86-64-host", budget, latency, device, device="pi", window=(0.99, 1.0),
                    settle=True)
    goal = 0.6 * latency.dense_ms
    under = [i for i in plan.iterations if i.measured_ms <= goal]
    assert plan.measured_latency_ms <= goal and plan.macs_ratio == max(i.macs_ratio for i in under)
    assert plan.budget == budget and "this is the largest measured under" in plan.notes[-1]


def test_a_budget_no_plan_is_predicted_to_reach_after_measuring_names_the_fastest_measured():
    model, inputs, latency, device = scripted(factor=3.0)
    budget = ep.Budget(latency_ms=0.05 * latency.dense_ms)  # the model thinks it reachable (0.031 at the least)
    with pytest.raises(ep.BudgetError, match=r"cannot be met on pi: after [0-9]+ measurements no plan is predicted "
                                             r"to reach it; the fastest measured [0-9.]+ ms"):
        converge(model, inputs, FINE, budget, latency, device, device="pi")


# -- through the CLI ------------------------------------------------------------------------------------

def test_cli_latency_budget_without_a_device_asks_for_one():
    result = run_cli("plan", "--target", TARGET, "--model", "test_latency:wide_cnn", "--input-shape", "1,3,16,16",
                     "--budget", "latency_ms=2")
    assert result.exit_code == 2 and "needs a device to measure on" in result.output
    assert "Traceback" not in result.output


# -- memory budgets, checked on the exported artifact ----------------------------------------------------

def _seeded(zm, seeds):
    from helpers import randn

    return [tuple(randn(*t.shape, seed=s) for t in zm.inputs) for s in seeds]


def test_a_flash_budget_is_met_by_the_exported_file_not_only_the_estimate(small_cnn):
    dense = ep.plan(small_cnn.model, small_cnn.inputs, "stm32h743", ep.Budget(macs_ratio=1.0)).estimate()
    budget = ep.Budget(flash_kib=0.6 * dense.flash_bytes / 1024)
    plan = ep.plan(small_cnn.model, small_cnn.inputs, "stm32h743", budget, calibration=_seeded(small_cnn, range(16)))
    # the first plan's estimate met the budget but its .tflite (quantization parameters, the flatbuffer's own
    # structure) did not: the loop planned again with the overshoot it measured
    note = plan.notes[-1]
    assert note.startswith(f"{budget} met on the exported artifact") and note.count("measured") >= 2, note
    assert plan.measured_flash_bytes <= budget.value * 1024
    assert plan.estimate().flash_bytes == plan.measured_flash_bytes and plan.budget == budget
    assert plan.weight_bytes < plan.measured_flash_bytes  # the policy's estimate is kept as it was


def test_an_sram_budget_below_the_smallest_arena_says_what_was_measured(small_cnn):
    with pytest.raises(ep.BudgetError, match=r"sram_kib=7.5\) cannot be met on stm32h743's artifact: aimed 7.5, "
                                             r"estimated [0-9.]+, measured [0-9.]+ \(the tensor arena"):
        ep.plan(small_cnn.model, small_cnn.inputs, "stm32h743", ep.Budget(sram_kib=7.5),
                calibration=_seeded(small_cnn, range(16)))
