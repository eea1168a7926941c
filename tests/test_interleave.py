"""A/B mode of the device-side harness (runtimes/interleave.py): two artifacts timed alternately in one
process, as the runner starts it (a real subprocess, a real runtime, real ONNX artifacts)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from helpers import RUNTIMES_DIR, matmul_chain_onnx

from edgeprune.remote.verdict import Verdict, judge

ONNX = str(RUNTIMES_DIR / "bench_onnx.py")
QUICK = ["--warmup-runs", "2", "--warmup-seconds", "0", "--threads", "1", "--engine", "onnxruntime"]


def run_ab(baseline, candidate, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, ONNX, str(candidate), "--ab-baseline", str(baseline), *QUICK, *args],
                          capture_output=True, text=True, timeout=120)


def result_of(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def chains(tmp_path_factory):
    """A 4-layer chain on a 16-row input (~0.1 ms), a copy of it, and a 12-layer chain (about 3x its cost)."""
    d = tmp_path_factory.mktemp("chains")
    base = matmul_chain_onnx(d / "base.onnx", 4, rows=16)
    copy = d / "copy.onnx"
    copy.write_bytes(base.read_bytes())
    return base, copy, matmul_chain_onnx(d / "slow.onnx", 12, rows=16)


def test_each_round_times_both_artifacts_the_asked_number_of_times(chains):
    base, copy, _ = chains
    r = result_of(run_ab(base, copy, "--rounds", "6", "--round-runs", "3"))
    assert r["schema"] == "edgeprune.ab/1" and (r["rounds"], r["round_runs"]) == (6, 3)
    for side, name in (("baseline", "base.onnx"), ("candidate", "copy.onnx")):
        assert r[side]["artifact"] == name
        assert [len(runs) for runs in r[side]["samples"]] == [3] * 6
        assert r[side]["rounds"] == pytest.approx([float(np.median(runs)) for runs in r[side]["samples"]])
        assert r[side]["n"] == 18


def test_the_order_alternates_and_continues_from_the_first_round(chains):
    base, copy, _ = chains
    assert result_of(run_ab(base, copy, "--rounds", "4", "--round-runs", "1"))["order"] == ["AB", "BA", "AB", "BA"]
    assert result_of(run_ab(base, copy, "--rounds", "3", "--round-runs", "1",
                            "--first-round", "5"))["order"] == ["BA", "AB", "BA"]


def test_a_costlier_candidate_is_slower_round_after_round(chains):
    base, _, slow = chains
    r = result_of(run_ab(base, slow, "--rounds", "10", "--round-runs", "5"))
    a, b = np.array(r["baseline"]["rounds"]), np.array(r["candidate"]["rounds"])
    assert np.mean(b > a) >= 0.9
    assert judge(a, b).verdict is Verdict.SLOWER


def test_the_device_state_is_sampled_around_the_rounds_and_only_it_flags(chains):
    base, copy, _ = chains
    r = result_of(run_ab(base, copy, "--rounds", "3", "--round-runs", "1", "--max-cv", "0.000001"))
    assert r["state_before"]["time"] <= r["state_after"]["time"]
    assert r["flags"] == []  # noise is a note: pairing the rounds copes with it
    assert any(n.startswith("baseline: noisy") for n in r["notes"])


def test_artifacts_that_take_different_inputs_exit_2_naming_both(chains, tmp_path):
    base, _, _ = chains
    other = matmul_chain_onnx(tmp_path / "wide.onnx", 2, width=64)
    proc = run_ab(base, other, "--rounds", "2")
    assert proc.returncode == 2
    assert "base.onnx" in proc.stderr and "wide.onnx" in proc.stderr and "same inputs" in proc.stderr


def test_a_missing_baseline_exits_2_naming_it(chains, tmp_path):
    _, copy, _ = chains
    proc = run_ab(tmp_path / "gone.onnx", copy)
    assert proc.returncode == 2 and "gone.onnx: no such file" in proc.stderr


@pytest.mark.parametrize("flag", ["--rounds", "--round-runs"])
def test_zero_rounds_or_runs_per_round_exit_2_naming_the_flag(chains, flag):
    base, copy, _ = chains
    proc = run_ab(base, copy, flag, "0")
    assert proc.returncode == 2 and f"{flag} must be at least 1" in proc.stderr
