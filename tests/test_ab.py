"""ep.compare: a candidate judged against a baseline on a device, from interleaved rounds taken in batches,
with the device state checked before anything is judged. Real ONNX artifacts, the real harness, on `local`
and over a loopback SSH server."""

from __future__ import annotations

import math

import pytest

import edgeprune as ep
from edgeprune.devices import local_device
from edgeprune.remote.ab import governor_flags
from helpers import matmul_chain_onnx
from remote_helpers import loopback, nothing_ran

# Small batches: these tests check the procedure, not the rates (bench/regress.py measures those).
QUICK = ep.CompareSettings(rounds=6, more_rounds=4, max_rounds=14, round_runs=3, warmup_runs=1, warmup_seconds=0,
                           threads=1, cooldown_s=0.05)


@pytest.fixture(scope="module")
def chains(tmp_path_factory):
    """A 16-layer chain, a copy of it in another folder under the same name, and a 48-layer chain."""
    d = tmp_path_factory.mktemp("chains")
    base = matmul_chain_onnx(d / "model.onnx", 16, width=128, rows=32)
    (d / "copy").mkdir()
    copy = d / "copy" / "model.onnx"
    copy.write_bytes(base.read_bytes())
    return base, copy, matmul_chain_onnx(d / "slow.onnx", 48, width=128, rows=32)


@pytest.fixture
def local(tmp_path):
    return local_device(workdir=str(tmp_path / "work"))


def test_a_three_times_costlier_candidate_is_slower_after_the_first_batch(chains, local):
    base, _, slow = chains
    c = ep.compare(base, slow, local, settings=QUICK)
    assert c.verdict is ep.Verdict.SLOWER and c.failed
    assert c.ratio > 1.5 and c.ci[0] > 1.01
    assert (c.batches, c.n, len(c.baseline_rounds), len(c.candidate_rounds)) == (1, 6, 6, 6)
    assert len(c.baseline_samples) == len(c.candidate_samples) == 6 * QUICK.round_runs
    assert c.judged and c.flags == ()
    assert "slower" in c.summary() and "slow.onnx" in c.summary()


def test_the_verdict_is_the_judgement_of_the_rounds_it_reports(chains, local):
    base, _, slow = chains
    c = ep.compare(slow, base, local, settings=QUICK)
    j = ep.remote.verdict.judge(c.baseline_rounds, c.candidate_rounds, max_slowdown=c.max_slowdown,
                                 min_effect=c.min_effect, confidence=c.confidence)
    assert (c.verdict, c.ratio, c.ci, c.p_value) == (j.verdict, j.ratio, j.ci, j.p_value)
    assert c.verdict is ep.Verdict.FASTER and not c.failed


def test_more_rounds_are_taken_while_undecided_up_to_the_cap(chains, local):
    base, copy, _ = chains
    # below 6 rounds the order statistics cannot bound a median at 95 %: whatever the timings, the answer
    # stays open until max_rounds
    never = ep.CompareSettings(**{**QUICK.__dict__, "rounds": 3, "more_rounds": 1, "max_rounds": 5})
    c = ep.compare(base, copy, local, settings=never)
    assert c.verdict is ep.Verdict.INCONCLUSIVE and c.judged and c.failed and c.ci == (0.0, math.inf)
    assert (c.n, c.batches) == (5, 3)  # 3, then 1 and 1


def test_two_artifacts_with_the_same_file_name_are_both_uploaded(chains, local):
    base, copy, _ = chains
    c = ep.compare(base, copy, local, settings=QUICK)
    assert (c.baseline, c.candidate) == (str(base), str(copy))
    assert c.baseline_sha256 == c.candidate_sha256 and c.n >= 6


def test_a_device_past_its_thermal_trip_point_is_not_judged_after_its_retries(chains, local, sysfs):
    (sysfs.zone / "temp").write_text("91500\n")
    base, _, slow = chains
    c = ep.compare(base, slow, local, settings=ep.CompareSettings(**{**QUICK.__dict__, "retries": 2}))
    assert c.verdict is ep.Verdict.INCONCLUSIVE and not c.judged and c.failed
    assert c.flags == ("thermal zone 0 (cpu-thermal) reached 91.5 °C, its passive trip point 85.0 °C",)
    assert c.batches == 3 and c.n == 0 and math.isnan(c.ratio)
    assert sum("not judged" in n for n in c.notes) == 2
    assert "not judged, the device state was flagged" in c.summary()


def test_a_governor_other_than_the_one_asked_for_is_not_judged(chains, local, sysfs):
    (sysfs.cpufreq / "scaling_governor").write_text("powersave\n")
    base, _, slow = chains
    c = ep.compare(base, slow, local, settings=ep.CompareSettings(**{**QUICK.__dict__, "retries": 0,
                                                                      "governor": "performance"}))
    assert not c.judged and c.flags == ("governor: cpu0 runs 'powersave', not 'performance' as asked",)


def test_the_governor_is_not_checked_unless_asked_for(chains, local, sysfs):
    (sysfs.cpufreq / "scaling_governor").write_text("powersave\n")
    base, _, slow = chains
    assert ep.compare(base, slow, local, settings=QUICK).judged


def test_governor_flags_look_only_at_the_pinned_cpus():
    state = {"governor": {"cpu0": "powersave", "cpu1": "performance", "cpu2": "ondemand"}}
    assert governor_flags(state, "performance", [1]) == []
    assert governor_flags(state, "performance", None) == [
        "governor: cpu0 runs 'powersave', cpu2 runs 'ondemand', not 'performance' as asked"]
    assert governor_flags(state, None, None) == []


def test_artifacts_of_two_runtimes_are_refused_before_the_device_is_used(chains, local, bench_artifacts):
    base, _, _ = chains
    with pytest.raises(ep.ArtifactError, match="cannot be compared with the onnx baseline"):
        ep.compare(base, bench_artifacts.tflite, local, settings=QUICK)
    assert nothing_ran(local)


def test_a_comparison_round_trips_through_its_dict(chains, local):
    base, _, slow = chains
    c = ep.compare(base, slow, local, settings=QUICK, name="chain")
    again = ep.Comparison.from_dict(c.to_dict())
    assert again == c and c.to_dict()["verdict"] == "slower" and again.name == "chain"


def test_a_comparison_over_ssh_uploads_checks_and_cleans_up(chains, sshd, tmp_path):
    base, _, slow = chains
    device = loopback(sshd, tmp_path)
    c = ep.compare(base, slow, device, settings=QUICK)
    assert c.device == "loopback" and c.verdict is ep.Verdict.SLOWER
    assert list((tmp_path / "device-work").glob("run-*")) == []
