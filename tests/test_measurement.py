"""Honest measurement (issue 11, item 11): a run is flagged when its samples spread too much ("noisy") or
when other processes took too much of its CPUs ("busy"), the load is reported, and the result says what its
confidence intervals cover.

The decisions are tested on given samples and CPU counters (runtimes/harness.py and device_state.py are
importable here, as in test_runtimes.py); one real run on `local` with busy-loop processes spinning on every
core shows the flag reaching BenchResult.valid.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import statistics
import subprocess
import sys

import numpy as np
import pytest

import edgeprune as ep
from edgeprune.devices import local_device
from edgeprune.remote import BenchResult, BenchSettings
from helpers import DATA_DIR, QUICK_BENCH, RUNTIMES_DIR

sys.path.insert(0, str(RUNTIMES_DIR))

import device_state  # noqa: E402
import harness  # noqa: E402


def samples_with_cv(cv: float, n: int = 2000, mean: float = 10.0) -> np.ndarray:
    """n samples whose CV (std with ddof=1 over the mean) is exactly `cv`."""
    z = np.random.default_rng(0).standard_normal(n)
    z = (z - z.mean()) / z.std(ddof=1)
    return mean + cv * mean * z


def snapshot(seconds: float, own_cpu_s: float, cpus: dict) -> dict:
    """A device_state.cpu_snapshot() as the kernel's counters would give it: cpus = {"cpu0": (busy, steal, total)}
    in ticks (CLK_TCK, 100 a second)."""
    return {"mono_s": seconds, "own_cpu_s": own_cpu_s, "runnable": 1, "loadavg": [0.5, 0.5, 0.5],
            "cpus": {name: {"busy": b, "steal": s, "total": t} for name, (b, s, t) in cpus.items()}}


def load_of(others_ticks: int, own_ticks: int = 200, window_ticks: int = 200, steal_ticks: int = 0) -> dict:
    """The window_load of a 2 s window on two CPUs in which this process used `own_ticks` and other processes
    `others_ticks` (+ `steal_ticks` taken by the hypervisor) of the 2 × 200 ticks."""
    start = snapshot(100.0, 10.0, {"cpu0": (1000, 0, 5000), "cpu1": (1000, 0, 5000)})
    busy = own_ticks + others_ticks
    end = snapshot(100.0 + window_ticks / 100, 10.0 + own_ticks / 100,
                   {"cpu0": (1000 + busy // 2, steal_ticks // 2, 5000 + window_ticks),
                    "cpu1": (1000 + busy - busy // 2, steal_ticks - steal_ticks // 2, 5000 + window_ticks)})
    return device_state.window_load(start, end, cpus=[0, 1])


def quiet_load() -> dict:
    return load_of(others_ticks=12)  # 3 % of two CPUs: a few daemons


# ------------------------------------------------------------------------------------- the decision

def test_a_run_whose_cv_is_above_the_limit_is_flagged_noisy():
    quiet = quiet_load()
    stats = harness.summarize(samples_with_cv(0.082), seed=0)
    assert harness.noise_flags(stats["cv"], quiet) == ["noisy: CV 8.2 % > 5.0 %"]


def test_a_quiet_run_with_a_small_cv_is_not_flagged():
    quiet = quiet_load()
    stats = harness.summarize(samples_with_cv(0.02), seed=0)
    assert quiet["others_share"] == 0.03
    assert harness.noise_flags(stats["cv"], quiet) == []


def test_a_run_on_a_loaded_machine_is_flagged_busy_whatever_its_cv():
    # two busy loops beside a one-thread benchmark on two CPUs: they take 130 of the 200 ticks it left free
    load = load_of(others_ticks=260)
    assert load["others_share"] == 0.65
    assert harness.noise_flags(0.01, load) == [
        "busy: other processes took 65.0 % of the 2 CPU(s) the benchmark may use (0,1) during the measurement "
        "> 25.0 %"]


def test_the_limits_can_be_set_per_run():
    quiet = quiet_load()
    load = load_of(others_ticks=260)
    assert harness.noise_flags(0.082, load, max_cv=0.10, max_busy=0.70) == []
    assert harness.noise_flags(0.082, quiet, max_cv=0.08) == ["noisy: CV 8.2 % > 8.0 %"]


def test_a_load_that_could_not_be_read_flags_nothing_but_the_cv():
    assert harness.noise_flags(0.01, {}) == []
    assert harness.noise_flags(None, {}) == []  # a single sample has no CV


# --------------------------------------------------------------------------------------- the load

def test_window_load_subtracts_the_benchmarks_own_cpu_time():
    load = load_of(others_ticks=0, own_ticks=200)
    assert (load["others_share"], load["own_share"]) == (0.0, 0.5)
    assert load["window_s"] == 2.0 and load["cpus"] == [0, 1]


def test_window_load_counts_a_hypervisors_steal_as_load():
    load = load_of(others_ticks=0, steal_ticks=120)
    assert (load["others_share"], load["steal_share"]) == (0.3, 0.3)


def test_window_load_judges_only_the_cpus_the_benchmark_may_use():
    # pinned to cpu1, which it had alone; cpu0 was kept fully busy by something else
    start = snapshot(0.0, 1.0, {"cpu0": (0, 0, 1000), "cpu1": (0, 0, 1000)})
    end = snapshot(2.0, 3.0, {"cpu0": (200, 0, 1200), "cpu1": (200, 0, 1200)})
    assert device_state.window_load(start, end, cpus=[1])["others_share"] == 0.0
    assert device_state.window_load(start, end, cpus=None)["others_share"] == 0.5


def test_cpu_snapshots_around_a_busy_loop_see_this_process_and_not_others():
    start = device_state.cpu_snapshot()
    deadline = start["mono_s"] + 0.5
    while device_state.cpu_snapshot()["mono_s"] < deadline:
        pass
    load = device_state.window_load(start, device_state.cpu_snapshot(), sorted(os.sched_getaffinity(0)))
    assert load["window_s"] >= 0.5 and load["cpus"] == sorted(os.sched_getaffinity(0))
    # this process spun for the whole window (as much as the machine's other load let it)
    assert load["own_share"] > 0.0
    assert 0.0 <= load["others_share"] <= 1.0 - load["own_share"] + 0.02  # counters tick at 100 Hz
    assert len(load["runnable"]) == 2 and load["runnable"][0] >= 1  # this process, at least


# ---------------------------------------------------------------------------- what the CI covers

def test_the_json_says_the_confidence_intervals_cover_one_run_only():
    stats = harness.summarize(samples_with_cv(0.02), seed=0)
    assert stats["ci95_p50_scope"] == "within-run"
    lo, hi = stats["ci95_p50_batches"]
    assert lo < stats["p50"] < hi


def ar1(seed: int, phi: float, n: int = 2000) -> np.ndarray:
    """Latencies around a true median of 1.0 whose neighbours are alike (an AR(1) process: each sample keeps
    `phi` of the last one's deviation), as a slowly changing clock or background load makes them."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0.0, 0.01, n)
    e = np.empty(n)
    e[0] = w[0] / np.sqrt(1 - phi ** 2)
    for t in range(1, n):
        e[t] = phi * e[t - 1] + w[t]
    return 1.0 + e


def test_batch_ci_still_covers_the_median_when_neighbouring_samples_are_alike():
    # The bootstrap takes samples as independent and misses the true median most of the time here;
    # the batch medians carry the correlation and keep about their 95 %.
    covered = {"ci95_p50": 0, "ci95_p50_batches": 0}
    for seed in range(200):
        stats = harness.summarize(ar1(seed, phi=0.9), seed=seed)
        for key in covered:
            covered[key] += stats[key][0] <= 1.0 <= stats[key][1]
    assert covered["ci95_p50"] < 0.6 * 200
    assert covered["ci95_p50_batches"] >= 0.9 * 200


def test_batch_ci_agrees_with_the_bootstrap_for_independent_samples():
    x = np.random.default_rng(4).normal(1.0, 0.05, 4000)
    stats = harness.summarize(x, seed=0)
    boot = stats["ci95_p50"][1] - stats["ci95_p50"][0]
    batches = stats["ci95_p50_batches"][1] - stats["ci95_p50_batches"][0]
    assert 0.5 < batches / boot < 2.0


def test_batch_ci_needs_five_samples_in_each_of_its_ten_batches():
    assert harness.summarize(samples_with_cv(0.02, n=49), seed=0)["ci95_p50_batches"] is None
    assert harness.summarize(samples_with_cv(0.02, n=50), seed=0)["ci95_p50_batches"] is not None


# ----------------------------------------------------------------------------------- BenchResult

def test_a_result_written_before_these_fields_still_loads():
    data = json.loads((DATA_DIR / "bench-result-1076b1c.json").read_text())  # written by edgeprune at 1076b1c
    assert "load" not in data and "ci95_p50_scope" not in data
    result = BenchResult.from_dict(data)
    assert (result.load, result.ci95_p50_batches, result.ci95_p50_scope) == ({}, None, "within-run")
    assert result.p50 == data["p50"] and result.ci95_p50 == tuple(data["ci95_p50"])
    assert BenchResult.from_dict(json.loads(result.to_json())) == result


# --------------------------------------------------------------------------------- a real loaded run

@pytest.fixture
def spinners():
    """A busy-loop process pinned to each CPU this process may use, for the length of the test."""
    procs = [subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, [{cpu}])\nwhile True: pass"])
             for cpu in sorted(os.sched_getaffinity(0))]
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait()


def test_a_run_beside_busy_loops_on_every_core_is_flagged_busy_and_invalid(bench_artifacts, tmp_path, spinners):
    device = local_device(workdir=str(tmp_path / "work"), lock_wait_s=0.5)
    settings = BenchSettings(min_runs=10, min_seconds=1.0, warmup_runs=1, warmup_seconds=0.0, threads=1)
    result = ep.bench(bench_artifacts.onnx, device, settings=settings)
    busy = [flag for flag in result.flags if flag.startswith("busy: ")]
    assert busy and not result.valid, result.flags
    assert result.load["others_share"] > 0.25 and result.load["window_s"] >= 1.0
    assert result.load["cpus"] == sorted(os.sched_getaffinity(0))
    assert result.ci95_p50_scope == "within-run"
    assert json.loads(result.to_json())["load"] == result.load


# ------------------------------------------------------------------ a device not at full speed, end to end

# the noise limits out of the way: whatever the machine's load, only the device's state can flag these runs
STATE_ONLY = dataclasses.replace(QUICK_BENCH, max_cv=1e6, max_busy=1e6)


def test_a_run_during_which_the_cpu_clock_dropped_comes_back_invalid(bench_artifacts, tmp_path, sysfs):
    server = sysfs.clock_per_sample("2400000", "1200000")
    device = local_device(workdir=str(tmp_path / "work"), command_timeout_s=120)  # a read never answered: fails
    try:
        result = ep.bench(bench_artifacts.onnx, device, settings=STATE_ONLY)
    finally:  # a run that failed before its second sample: open the FIFO so that the server can finish
        fd = os.open(sysfs.cpufreq / "scaling_cur_freq", os.O_RDONLY | os.O_NONBLOCK)
        server.join(timeout=30)
        os.close(fd)
    assert (result.state_before["cur_mhz"], result.state_after["cur_mhz"]) == ({"cpu0": 2400.0}, {"cpu0": 1200.0})
    assert result.flags == ("cpu0 frequency dropped 2400 → 1200 MHz during the run",)
    assert not result.valid and json.loads(result.to_json())["valid"] is False


def test_a_run_on_a_cpu_past_its_thermal_trip_point_comes_back_invalid(bench_artifacts, tmp_path, sysfs):
    (sysfs.zone / "temp").write_text("91500\n")
    result = ep.bench(bench_artifacts.onnx, local_device(workdir=str(tmp_path / "work")), settings=STATE_ONLY)
    assert result.state_after["thermal"][0]["temp_c"] == 91.5
    assert result.flags == ("thermal zone 0 (cpu-thermal) reached 91.5 °C, its passive trip point 85.0 °C",)
    assert not result.valid and json.loads(result.to_json())["valid"] is False


def test_a_run_at_a_steady_clock_below_its_trip_points_comes_back_valid(bench_artifacts, tmp_path, sysfs):
    result = ep.bench(bench_artifacts.onnx, local_device(workdir=str(tmp_path / "work")), settings=STATE_ONLY)
    assert result.state_after["cur_mhz"] == {"cpu0": 2400.0} and result.state_after["thermal"][0]["temp_c"] == 50.0
    assert result.flags == () and result.valid


def test_window_load_reports_every_field_of_a_known_window():
    # cpu10 sorts after cpu2 (numerically); this process ran 0.5 s of CPU and waited 1 ms of every 4 it was ready
    start = dict(snapshot(10.0, 1.0, {"cpu2": (100, 10, 1000), "cpu10": (300, 0, 1000)}),
                 schedstat=[3_000_000, 1_000_000], runnable=2, loadavg=[0.25, 0.2, 0.1])
    end = dict(snapshot(12.5, 1.5, {"cpu2": (250, 30, 1250), "cpu10": (330, 20, 1250)}),
               schedstat=[6_000_000, 2_000_000], runnable=3, loadavg=[0.75, 0.3, 0.1])
    ticks = device_state._ticks_per_s()
    own = 0.5 * ticks
    busy_and_steal = (150 + 20) + (30 + 20)
    assert device_state.window_load(start, end) == {
        "window_s": 2.5, "cpus": [2, 10],
        "others_share": round((busy_and_steal - own) / 500, 4), "steal_share": round(40 / 500, 4),
        "own_share": round(own / 500, 4), "wait_share": 0.25, "runnable": [2, 3], "loadavg_1m": [0.25, 0.75]}


def test_window_load_of_a_thread_that_ended_in_the_window_has_no_wait_share():
    start = dict(snapshot(0.0, 1.0, {"cpu0": (0, 0, 100)}), schedstat=[5_000_000, 1_000_000])
    end = dict(snapshot(1.0, 1.1, {"cpu0": (50, 0, 200)}), schedstat=[4_000_000, 2_000_000])
    assert device_state.window_load(start, end)["wait_share"] is None


def test_window_load_without_the_process_cpu_time_counts_all_busy_ticks_as_others():
    start = dict(snapshot(0.0, 1.0, {"cpu0": (0, 0, 100)}), own_cpu_s=None)
    end = snapshot(1.0, 2.0, {"cpu0": (60, 0, 200)})
    load = device_state.window_load(start, end)
    assert (load["others_share"], load["own_share"]) == (0.6, 0.0)


def test_window_load_never_reports_more_than_the_whole_capacity_or_less_than_nothing():
    start = snapshot(0.0, 1.0, {"cpu0": (0, 0, 100)})
    assert device_state.window_load(start, snapshot(1.0, 1.0, {"cpu0": (100, 50, 200)}))["others_share"] == 1.0
    assert device_state.window_load(start, snapshot(1.0, 9.0, {"cpu0": (10, 0, 200)}))["others_share"] == 0.0
    assert device_state.window_load(start, snapshot(1.0, 9.0, {"cpu0": (10, 0, 200)}))["own_share"] == 1.0


@pytest.mark.parametrize("end_cpus, cpus", [({"cpu1": (0, 0, 200)}, None), ({"cpu0": (50, 0, 200)}, [3]),
                                            ({"cpu0": (50, 0, 100)}, None)],
                         ids=["no-cpu-in-both", "none-of-the-pinned", "no-ticks-passed"])
def test_window_load_that_cannot_be_judged_is_empty(end_cpus, cpus):
    start = snapshot(0.0, 1.0, {"cpu0": (0, 0, 100)})
    assert device_state.window_load(start, snapshot(1.0, 1.0, end_cpus), cpus) == {}


# ------------------------------------------------------------------------------------- start-of-run notes

def test_state_notes_name_each_slow_governor_on_the_pinned_cpus_in_cpu_order():
    state = {"governor": {"cpu10": "powersave", "cpu2": "ondemand", "cpu3": "performance", "cpu4": "powersave"}}
    assert harness.state_notes(state, None) == [
        "CPU frequency governor is 'ondemand'/'powersave' on cpu2,cpu4,cpu10, not 'performance': "
        "the clock may change during the run"]
    assert harness.state_notes(state, [3, 4]) == [
        "CPU frequency governor is 'powersave' on cpu4, not 'performance': the clock may change during the run"]
    assert harness.state_notes(state, [3]) == []


def test_state_notes_a_load_average_above_the_cpu_count_and_only_above():
    assert harness.state_notes({"loadavg": [4.5, 1.0, 1.0], "cpu_count": 4}, None) == [
        "load average 4.50 (1 min) is above the 4 CPUs: other processes compete with the benchmark"]
    assert harness.state_notes({"loadavg": [4.0, 9.0, 9.0], "cpu_count": 4}, None) == []
    assert harness.state_notes({}, None) == []


# ------------------------------------------------------------------------------------- the statistics

def test_summarize_reports_each_statistic_of_known_samples():
    samples = [float(v) for v in range(1, 101)]  # 1..100 ms
    stats = harness.summarize(samples, seed=0)
    assert {k: stats[k] for k in ("n", "p50", "mean", "min", "max", "ci95_p50_scope")} == {
        "n": 100, "p50": 50.5, "mean": 50.5, "min": 1.0, "max": 100.0, "ci95_p50_scope": "within-run"}
    assert (stats["p90"], stats["p99"]) == (pytest.approx(90.1), pytest.approx(99.01))
    assert stats["std"] == pytest.approx(29.011492) and stats["cv"] == pytest.approx(29.011492 / 50.5)
    lo, hi = stats["ci95_p50"]
    assert 40 < lo < 50.5 < hi < 61  # the bootstrap CI of the median of 1..100: about ±10 ranks


def test_summarize_gives_a_cv_for_sub_millisecond_samples_and_none_for_one_sample():
    assert harness.summarize([0.5, 0.7, 0.9], seed=0)["cv"] == pytest.approx(0.2 / 0.7)
    one = harness.summarize([0.5], seed=0)
    assert (one["std"], one["cv"], one["ci95_p50_batches"]) == (None, None, None)


def test_batch_ci_is_the_median_plus_minus_t_times_the_spread_of_ten_batch_medians():
    samples = [float(v) for v in range(50)]  # ten batches of five: batch medians 2, 7, ..., 47
    half = 2.262 * statistics.stdev([2.0 + 5 * i for i in range(10)]) / math.sqrt(10)
    assert harness.batch_ci(samples, 24.5) == pytest.approx([24.5 - half, 24.5 + half])
    assert harness.batch_ci(samples[:49], 24.0) is None  # fewer than 10 batches of 5


@pytest.mark.parametrize("n", [3, 4, 5, 6])
def test_bootstrap_medians_follow_the_exact_distribution_of_resampled_medians(n):
    # every one of the n**n resamples (n draws with replacement) is equally likely: enumerate them
    x = [float(10 * i) for i in range(n)]
    exact = {}
    for picks in itertools.product(range(n), repeat=n):
        m = float(np.median([x[i] for i in picks]))
        exact[m] = exact.get(m, 0) + 1 / n ** n
    draws = harness.bootstrap_medians(x, np.random.default_rng(0), 200_000)
    values, counts = np.unique(draws, return_counts=True)
    seen = dict(zip(values.tolist(), (counts / draws.size).tolist()))
    assert set(seen) <= set(exact)
    assert max(abs(seen.get(m, 0.0) - p) for m, p in exact.items()) < 0.006


def test_noise_flags_at_exactly_the_limits_are_not_raised():
    at_limit = {"others_share": 0.25, "cpus": [0]}
    assert harness.noise_flags(0.05, at_limit) == []
    assert harness.noise_flags(0.0501, {"others_share": 0.2501, "cpus": [0]}) == [
        "noisy: CV 5.0 % > 5.0 %",
        "busy: other processes took 25.0 % of the 1 CPU(s) the benchmark may use (0) during the measurement > 25.0 %"]
