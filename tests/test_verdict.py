"""The A/B decision: paired per-round ratios, their confidence interval, and the verdict rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from edgeprune.errors import SettingsError
from edgeprune.remote.verdict import CompareSettings, Verdict, decide, judge


def rounds(ratio: float, noise: float, n: int = 30, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-round medians of a baseline near 10 ms that drifts, and a candidate `ratio` times it, each side
    with its own multiplicative noise of relative size `noise`."""
    rng = np.random.default_rng(seed)
    drift = 10.0 * np.exp(np.linspace(0.0, 0.3, n))  # the machine slows down 35 % over the run
    a = drift * np.exp(rng.normal(0.0, noise, n))
    b = ratio * drift * np.exp(rng.normal(0.0, noise, n))
    return a, b


def test_the_ratio_is_the_median_of_the_paired_per_round_ratios():
    a, b = np.array([10.0, 20.0, 40.0]), np.array([11.0, 20.0, 48.0])
    assert judge(a, b).ratio == pytest.approx(1.1, rel=1e-12)


def test_the_interval_is_the_order_statistic_interval_and_the_p_value_wilcoxons():
    a, b = rounds(1.03, 0.02)
    d = np.log(b / a)
    ci = stats.quantile_test(d, q=0.0, p=0.5).confidence_interval(0.9)
    w = stats.wilcoxon(d)
    j = judge(a, b, confidence=0.9)
    assert j.ci == pytest.approx((math.exp(ci.low), math.exp(ci.high)), rel=1e-12)
    assert (j.statistic, j.p_value, j.n, j.confidence) == (pytest.approx(w.statistic), pytest.approx(w.pvalue), 30, 0.9)


def test_one_round_disturbed_by_another_process_does_not_move_the_verdict():
    a, b = rounds(1.0, 0.01)
    calm = judge(a, b)
    b[7] *= 60  # a 0.2 ms model measured 12 ms: it lost a time slice
    disturbed = judge(a, b)
    assert calm.verdict is disturbed.verdict is Verdict.SAME
    assert disturbed.ratio == pytest.approx(calm.ratio, rel=0.01)


def test_too_few_rounds_to_bound_the_median_are_inconclusive():
    j = judge([1.0, 1.0, 1.0, 1.0], [1.2, 1.3, 1.25, 1.22])
    assert j.ci == (0.0, math.inf) and j.verdict is Verdict.INCONCLUSIVE


def test_drift_shared_by_both_sides_of_a_round_cancels():
    a, b = rounds(1.0, 0.001)  # 35 % drift, 0.1 % noise
    j = judge(a, b)
    assert j.verdict is Verdict.SAME
    assert j.ci[1] - j.ci[0] < 0.002


@pytest.mark.parametrize("lo, hi, verdict", [
    (1.011, 1.051, Verdict.SLOWER),       # really slower, and max_slowdown not ruled out
    (1.06, 1.09, Verdict.SLOWER),
    (1.009, 1.08, Verdict.INCONCLUSIVE),  # may be no change at all, may be 8 %
    (1.02, 1.049, Verdict.SAME),          # a real 2-5 % slowdown is within the 5 % asked about
    (1.0, 1.05, Verdict.SAME),            # the bounds themselves belong to `same`
    (0.998, 1.003, Verdict.SAME),         # a statistically real 0.3 % change
    (0.90, 0.98, Verdict.FASTER),
    (0.96, 0.985, Verdict.SAME),          # faster, but by less than max_slowdown
    (0.94, 0.995, Verdict.INCONCLUSIVE),  # may be a trifle or 6 % faster
    (0.93, 1.07, Verdict.INCONCLUSIVE),
])
def test_the_verdict_follows_from_where_the_interval_lies(lo, hi, verdict):
    assert decide(lo, hi, max_slowdown=0.05, min_effect=0.01) is verdict


def test_a_tenth_slower_candidate_is_slower():
    j = judge(*rounds(1.10, 0.03))
    assert j.verdict is Verdict.SLOWER and j.ratio == pytest.approx(1.10, rel=0.02)


def test_a_tenth_faster_candidate_is_faster():
    assert judge(*rounds(0.90, 0.03)).verdict is Verdict.FASTER


def test_a_statistically_real_change_below_the_minimum_effect_is_the_same():
    j = judge(*rounds(1.003, 0.0005))
    assert j.p_value < 1e-6  # real...
    assert j.verdict is Verdict.SAME  # ...and too small to matter


def test_too_few_or_too_noisy_rounds_are_inconclusive():
    assert judge(*rounds(1.05, 0.10, n=5)).verdict is Verdict.INCONCLUSIVE


def test_rounds_that_do_not_pair_up_are_refused():
    with pytest.raises(SettingsError, match="pair up"):
        judge([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(SettingsError, match="at least 3"):
        judge([1.0, 2.0], [1.0, 2.0])
    with pytest.raises(SettingsError, match="finite number > 0"):
        judge([1.0, 0.0, 3.0], [1.0, 2.0, 3.0])


def test_rounds_without_spread_give_an_exact_ratio():
    same = judge([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert (same.verdict, same.ratio, same.ci, same.p_value) == (Verdict.SAME, 1.0, (1.0, 1.0), 1.0)
    double = judge([1.0, 2.0, 3.0], [2.0, 4.0, 6.0])
    assert (double.verdict, double.ratio, double.p_value) == (Verdict.SLOWER, 2.0, 0.0)
    assert same.statistic == 0.0 and double.statistic == math.inf


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_slowdown=-0.1), "max_slowdown"),
    (dict(max_slowdown=float("nan")), "max_slowdown"),
    (dict(min_effect=0.06), "must not exceed max_slowdown"),
    (dict(confidence=1.0), "confidence"),
    (dict(rounds=2), "rounds"),
    (dict(rounds=30, max_rounds=20), "max_rounds"),
    (dict(round_runs=0), "round_runs"),
    (dict(max_seconds=0), "max_seconds"),
    (dict(cooldown_s=-1), "cooldown_s"),
    (dict(threads=0), "threads"),
])
def test_compare_settings_out_of_range_are_refused_naming_the_setting(kwargs, message):
    with pytest.raises(SettingsError, match=message):
        CompareSettings(**kwargs)
