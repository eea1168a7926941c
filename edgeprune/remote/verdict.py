"""Judging a candidate artifact against a baseline from interleaved rounds on one device.

The device-side harness runs the two artifacts alternately in one process (runtimes/interleave.py), so
both see the same clocks, temperature and background load; each round gives one median latency per
artifact. The decision works on the paired per-round log ratios d_i = log(candidate_i / baseline_i):
drift in the machine's speed moves both sides of a round alike and cancels in the ratio, where it would
widen (or bias) a comparison of two separate runs.

    ratio    = exp(median d_i)                    the median paired ratio
    CI       = exp(distribution-free CI of the median of d_i)
               scipy.stats.quantile_test(d, q=0, p=0.5).confidence_interval(): order statistics of d,
               exact coverage whatever the distribution
    p-value  = Wilcoxon signed-rank test of d against 0 (scipy.stats.wilcoxon)

Why medians and ranks, not a t-test on the mean: on a shared machine a round now and then loses a slice of
CPU to another process (a 0.2 ms model measured 12 ms once in a round of 15 here), or the first round still
warms caches; one such round moves a mean and widens a t-interval for every round after it, while the
median and the order-statistic interval barely notice it.

Three outcomes and a fourth for "not yet" (in the spirit of Pinpoint's sequential test), with two
thresholds: `max_slowdown` (the slowdown the user must hear about) and `min_effect` (below it, a change is
too small to matter, however certain):

    slower        the CI's low end is above 1 + min_effect (really slower, by more than a trifle) and its
                  high end above 1 + max_slowdown (a slowdown of max_slowdown is not ruled out)
    faster        the mirror image: high end below 1/(1 + min_effect), low end below 1/(1 + max_slowdown)
    same          neither, and the CI lies within [1/(1 + max_slowdown), 1 + max_slowdown]: any change is
                  smaller than the one asked about (a statistically real 0.3 % is `same`)
    inconclusive  anything else: the CI is too wide to tell; more rounds are taken while the caps allow

Why not "the ratio is above 1 + max_slowdown": a candidate truly max_slowdown slower would pass half the
time. The CI's high end crossing the threshold while its low end clears `min_effect` catches it most of
the time, and an unchanged artifact almost never (BENCHMARKS.md measures both rates).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Optional, Sequence

import numpy as np
from scipy import stats

from ..errors import SettingsError


class Verdict(str, Enum):
    FASTER = "faster"
    SAME = "same"
    SLOWER = "slower"
    INCONCLUSIVE = "inconclusive"

    def __str__(self) -> str:
        return self.value


TEST_NAME = ("median of the paired per-round log ratios: CI from order statistics (scipy.stats.quantile_test), "
             "p-value from the Wilcoxon signed-rank test (scipy.stats.wilcoxon)")


@dataclass(frozen=True)
class CompareSettings:
    """How a comparison samples and decides.

    rounds: the first batch of rounds; while the verdict is inconclusive, `more_rounds` more are taken, up
    to `max_rounds` in all and `max_seconds` of measuring. Each round times `round_runs` inferences of
    each artifact (A then B, or B then A: the order alternates, A B B A A B ...).
    A batch whose device state is flagged (a clock drop, a thermal trip, Pi throttling, or a governor
    other than `governor` when one is asked for) is not judged: it is re-run after `cooldown_s`, up to
    `retries` times, and reported `inconclusive` with its flags if it stays flagged."""

    max_slowdown: float = 0.05
    min_effect: float = 0.01
    confidence: float = 0.95
    rounds: int = 20
    more_rounds: int = 20
    max_rounds: int = 120
    round_runs: int = 5
    max_seconds: float = 120.0
    warmup_runs: int = 5
    warmup_seconds: float = 0.5
    cooldown_s: float = 30.0
    retries: int = 1
    governor: Optional[str] = None
    threads: Optional[int] = None
    cores: Optional[tuple[int, ...]] = None
    seed: int = 0

    def __post_init__(self):
        for name in ("max_slowdown", "min_effect"):
            _fraction(name, getattr(self, name))
        if self.min_effect > self.max_slowdown:
            raise SettingsError(f"CompareSettings(min_effect={self.min_effect:g}): must not exceed max_slowdown "
                                f"({self.max_slowdown:g}): a change is then both too small to matter and too "
                                "large to pass")
        if not (isinstance(self.confidence, numbers.Real) and 0.5 <= self.confidence < 1):
            raise SettingsError(f"CompareSettings(confidence={self.confidence!r}): expected a level in [0.5, 1), "
                                "e.g. 0.95")
        for name, least in (("rounds", 3), ("more_rounds", 1), ("max_rounds", 3), ("round_runs", 1),
                            ("warmup_runs", 0), ("retries", 0), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
                raise SettingsError(f"CompareSettings({name}={value!r}): expected a whole number >= {least}")
        if self.max_rounds < self.rounds:
            raise SettingsError(f"CompareSettings(max_rounds={self.max_rounds}): fewer than the first batch "
                                f"(rounds={self.rounds})")
        for name in ("max_seconds", "warmup_seconds", "cooldown_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
                    or value < 0 or (name == "max_seconds" and value == 0):
                raise SettingsError(f"CompareSettings({name}={value!r}): expected a finite number of seconds "
                                    f"{'> 0' if name == 'max_seconds' else '>= 0'}")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise SettingsError(f"CompareSettings(threads={self.threads!r}): expected a whole number >= 1 or None")
        if self.cores is not None:
            object.__setattr__(self, "cores", tuple(self.cores))


def _fraction(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or not 0 <= value < 1:
        raise SettingsError(f"CompareSettings({name}={value!r}): expected a fraction in [0, 1), e.g. 0.05")


@dataclass(frozen=True)
class Judgement:
    """The decision over some paired rounds."""

    verdict: Verdict
    ratio: float  # candidate / baseline: the median of the per-round ratios
    ci: tuple[float, float]  # of `ratio`, at `confidence` (0 and inf: too few rounds to bound it)
    confidence: float
    statistic: float  # Wilcoxon's W
    p_value: float  # two-sided, against "no change"
    n: int  # rounds
    test: str = TEST_NAME


def judge(baseline: Sequence[float], candidate: Sequence[float], *, max_slowdown: float = 0.05,
          min_effect: float = 0.01, confidence: float = 0.95) -> Judgement:
    """The verdict from per-round medians of the two artifacts (`baseline[i]` and `candidate[i]` timed in
    the same round i). See the module docstring for the rule."""
    a, b = np.asarray(baseline, dtype=np.float64), np.asarray(candidate, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise SettingsError(f"judge: {a.size} baseline and {b.size} candidate rounds; they must pair up")
    if a.size < 3:
        raise SettingsError(f"judge: {a.size} rounds; at least 3 are needed for a confidence interval")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b)) and np.all(a > 0) and np.all(b > 0)):
        raise SettingsError("judge: every round's latency must be a finite number > 0")
    d = np.log(b / a)
    ratio = float(math.exp(np.median(d)))
    if np.ptp(d) == 0:  # identical ratios (a timer's resolution): no spread, the ratio is exact
        lo = hi = ratio
        statistic, p_value = (0.0, 1.0) if ratio == 1.0 else (math.copysign(math.inf, d[0]), 0.0)
    else:
        interval = stats.quantile_test(d, q=0.0, p=0.5).confidence_interval(confidence)
        # too few rounds for this confidence: the order statistics cannot bound the median
        lo = math.exp(interval.low) if np.isfinite(interval.low) else 0.0
        hi = math.exp(interval.high) if np.isfinite(interval.high) else math.inf
        test = stats.wilcoxon(d) if np.any(d != 0) else None
        statistic, p_value = (float(test.statistic), float(test.pvalue)) if test is not None else (0.0, 1.0)
    return Judgement(verdict=decide(lo, hi, max_slowdown, min_effect), ratio=ratio, ci=(lo, hi),
                     confidence=confidence, statistic=statistic, p_value=p_value, n=int(a.size))


def decide(lo: float, hi: float, max_slowdown: float, min_effect: float) -> Verdict:
    """The verdict for a ratio whose confidence interval is [lo, hi]."""
    up, small = 1.0 + max_slowdown, 1.0 + min_effect
    if lo > small and hi > up:
        return Verdict.SLOWER
    if hi < 1.0 / small and lo < 1.0 / up:
        return Verdict.FASTER
    if lo >= 1.0 / up and hi <= up:
        return Verdict.SAME
    return Verdict.INCONCLUSIVE


@dataclass(frozen=True)
class Comparison:
    """A candidate judged against a baseline on one device.

    `baseline_rounds`/`candidate_rounds`: the per-round medians (ms) the verdict was computed from, in the
    order they were taken; `judged` is False when the device state stayed flagged (`flags` says why) and
    the verdict is then `inconclusive` whatever the numbers say. `device_s`: the device time the
    comparison took, connection and uploads included; `batches`: how many harness runs it took (re-runs
    after a flagged state included)."""

    device: str
    baseline: str
    baseline_sha256: str
    candidate: str
    candidate_sha256: str
    runtime: str
    runtime_version: str
    verdict: Verdict
    ratio: float
    ci: tuple[float, float]
    confidence: float
    statistic: float
    p_value: float
    n: int
    baseline_p50: float
    candidate_p50: float
    max_slowdown: float
    min_effect: float
    judged: bool
    flags: tuple[str, ...]
    notes: tuple[str, ...]
    state_before: dict
    state_after: dict
    baseline_rounds: tuple[float, ...]
    candidate_rounds: tuple[float, ...]
    settings: dict
    device_s: float
    batches: int
    measured_at: str
    test: str = TEST_NAME
    name: Optional[str] = None  # what the user calls the model (the pytest plugin's `name=`)
    extra: dict = field(default_factory=dict)
    # every timed run (ms) of the judged rounds, round after round: what other rules can be applied to
    baseline_samples: tuple[float, ...] = ()
    candidate_samples: tuple[float, ...] = ()

    @property
    def failed(self) -> bool:
        """What a regression gate fails on: slower, or not known to be otherwise."""
        return self.verdict in (Verdict.SLOWER, Verdict.INCONCLUSIVE)

    def summary(self) -> str:
        """One line a person can act on."""
        lo, hi = self.ci
        text = (f"{self.verdict.value}: {self.candidate} is {self.ratio:.3f}x {self.baseline} on '{self.device}' "
                f"(p50 {self.baseline_p50:.4g} -> {self.candidate_p50:.4g} ms; {self.confidence:.0%} CI "
                f"{lo:.3f}-{hi:.3f}; n={self.n} rounds; p={self.p_value:.3g}; limit +{self.max_slowdown:.1%})")
        if self.flags:
            text += f"; not judged, the device state was flagged: {'; '.join(self.flags)}"
        return text

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(schema="edgeprune.comparison/1", verdict=self.verdict.value)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "Comparison":
        known = set(cls.__dataclass_fields__)
        values = {k: v for k, v in data.items() if k in known}
        values["verdict"] = Verdict(values["verdict"])
        for key in ("flags", "notes", "baseline_rounds", "candidate_rounds", "ci", "baseline_samples",
                    "candidate_samples"):
            values[key] = tuple(values.get(key, ()))
        return cls(**values)
