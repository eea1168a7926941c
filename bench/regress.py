"""Benchmark: how often ep.compare cries wolf, how often it catches a real slowdown, and what it costs.

On the `local` device, with real ONNX artifacts (chains of MatMul+Relu layers, tests/helpers.py):
  - A/A: the base artifact against a byte-identical copy, --aa comparisons: the false-alarm rate (a `slower`
    verdict) and how many came back `inconclusive`;
  - detection: candidates with 2 %, 5 % and 10 % more layers, --detect comparisons each. Their TRUE slowdown
    is established first by one long interleaved run (--truth-rounds rounds), and reported: that, not the
    nominal layer count, is what the rates are against;
  - the device time one comparison costs (Comparison.device_s: connect, upload, lock, every batch, clean-up),
    median and p90.
Beside edgeprune's verdict, on the very same samples of each comparison:
  - pytest-benchmark's `--benchmark-compare-fail=median:5%`: fail when the candidate's median is more than
    5 % above the baseline's;
  - asv's rule (`asv compare --factor 1.05`): slower when the ratio of medians exceeds 1.05 and the samples
    differ by Mann-Whitney U at p < 0.002.

    .venv/bin/python bench/regress.py --out bench/out/regress.md [--aa 200 --detect 100]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import stats

import edgeprune as ep
from _report import emit
from edgeprune.devices import local_device

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers import matmul_chain_onnx  # noqa: E402

BASE_LAYERS = 100
SHAPE = dict(width=64, rows=16)
SLOWDOWNS = (0.02, 0.05, 0.10)


def pytest_benchmark_fails(c: ep.Comparison) -> bool:
    return float(np.median(c.candidate_samples)) > 1.05 * float(np.median(c.baseline_samples))


def asv_slower(c: ep.Comparison) -> bool:
    ratio = float(np.median(c.candidate_samples)) / float(np.median(c.baseline_samples))
    p = stats.mannwhitneyu(c.candidate_samples, c.baseline_samples, alternative="two-sided").pvalue
    return ratio > 1.05 and p < 0.002


def true_ratio(device, base: Path, other: Path, rounds: int) -> tuple[float, tuple[float, float]]:
    settings = ep.CompareSettings(rounds=rounds, max_rounds=rounds, round_runs=10, threads=1, max_seconds=3600)
    c = ep.compare(base, other, device, settings=settings)
    return c.ratio, c.ci


def run(device, base: Path, cand: Path, n: int, settings: ep.CompareSettings, label: str) -> list[ep.Comparison]:
    out = []
    for i in range(n):
        out.append(ep.compare(base, cand, device, settings=settings))
        if (i + 1) % 20 == 0:
            print(f"  {label}: {i + 1}/{n}", flush=True)
    return out


def rates(results: list[ep.Comparison]) -> dict:
    n = len(results)
    verdicts = [c.verdict.value for c in results]
    seconds = [c.device_s for c in results]
    return dict(n=n, slower=verdicts.count("slower") / n, inconclusive=verdicts.count("inconclusive") / n,
                same=verdicts.count("same") / n, pytest_benchmark=sum(map(pytest_benchmark_fails, results)) / n,
                asv=sum(map(asv_slower, results)) / n, median_s=float(np.median(seconds)),
                p90_s=float(np.percentile(seconds, 90)), rounds=float(np.median([c.n for c in results])))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path)
    parser.add_argument("--aa", type=int, default=200, help="A/A comparisons")
    parser.add_argument("--detect", type=int, default=100, help="comparisons per true slowdown")
    parser.add_argument("--truth-rounds", type=int, default=400)
    args = parser.parse_args()
    settings = ep.CompareSettings(threads=1)  # the defaults a user gets, on one thread
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        device = local_device(workdir=str(tmp / "work"))
        base = matmul_chain_onnx(tmp / "base.onnx", BASE_LAYERS, **SHAPE)
        copy = tmp / "copy.onnx"
        copy.write_bytes(base.read_bytes())
        rows = [("A/A (identical copy)", None, None, rates(run(device, base, copy, args.aa, settings, "A/A")))]
        for s in SLOWDOWNS:
            cand = matmul_chain_onnx(tmp / f"slow{int(s * 100)}.onnx", round(BASE_LAYERS * (1 + s)), **SHAPE)
            truth = true_ratio(device, base, cand, args.truth_rounds)
            rows.append((f"+{s:.0%} layers", *truth, rates(run(device, base, cand, args.detect, settings,
                                                                    f"+{s:.0%}"))))
    lines = [
        "# A/B regression decisions: false alarms, detection, device time", "",
        f"Machine: {platform.node()}, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}; "
        f"Python {platform.python_version()}; device `local`; onnxruntime, 1 thread. Base: {BASE_LAYERS} "
        f"MatMul+Relu layers on a {SHAPE['rows']}x{SHAPE['width']} input. Settings: ep.CompareSettings() "
        f"defaults (max_slowdown 5 %, min_effect 1 %, 95 %, first batch {settings.rounds} rounds of "
        f"{settings.round_runs} runs, up to {settings.max_rounds}). Wall time {time.monotonic() - started:.0f} s.",
        "",
        "| candidate | true ratio (95 % CI) | n | edgeprune `slower` | edgeprune `inconclusive` | pytest-benchmark "
        "median:5% fails | asv (1.05, MWU p<0.002) slower | device s/comparison (median, p90) | rounds (median) |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for label, ratio, ci, r in rows:
        truth = "1 (same bytes)" if ratio is None else f"{ratio:.3f} ({ci[0]:.3f}-{ci[1]:.3f})"
        lines.append(f"| {label} | {truth} | {r['n']} | {r['slower']:.1%} | {r['inconclusive']:.1%} | "
                     f"{r['pytest_benchmark']:.1%} | {r['asv']:.1%} | {r['median_s']:.2f}, {r['p90_s']:.2f} | "
                     f"{r['rounds']:.0f} |")
    emit(lines, args.out)


if __name__ == "__main__":
    main()
