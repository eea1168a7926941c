"""`edgeprune regress`: one A/B comparison for CI systems that do not run pytest; its exit code is the
verdict (0 same or faster, 1 slower, 3 inconclusive, 2 usage or device error)."""

from __future__ import annotations

import json

import pytest

import edgeprune as ep
from helpers import matmul_chain_onnx, run_cli


@pytest.fixture(scope="module")
def chains(tmp_path_factory):
    d = tmp_path_factory.mktemp("chains")
    return matmul_chain_onnx(d / "base.onnx", 16, width=128, rows=32), matmul_chain_onnx(d / "slow.onnx", 48,
                                                                                         width=128, rows=32)


@pytest.fixture
def local_toml(tmp_path):
    toml = tmp_path / "devices.toml"
    toml.write_text(f'[devices.local]\nworkdir = "{tmp_path / "work"}"\nlock_wait_s = 0\nthreads = 1\n')
    return toml


def regress(local_toml, baseline, candidate, *args):
    return run_cli("regress", "--devices", local_toml, "--device", "local", "--baseline", baseline, candidate, *args)


def test_a_slower_candidate_exits_1_with_the_ratio_in_the_table(chains, local_toml):
    base, slow = chains
    done = regress(local_toml, base, slow, "--no-history")
    assert done.exit_code == 1, done.output
    assert "slower" in done.output and "x" in done.output and "slow.onnx" in done.output


def test_a_faster_candidate_exits_0(chains, local_toml):
    base, slow = chains
    assert regress(local_toml, slow, base, "--no-history").exit_code == 0


def test_a_comparison_the_device_state_spoiled_is_inconclusive_and_exits_3(chains, local_toml, sysfs):
    (sysfs.zone / "temp").write_text("91500\n")  # past its passive trip point, before and after every batch
    base, slow = chains
    done = regress(local_toml, base, slow, "--no-history", "--cooldown", "0", "--retries", "1")
    assert done.exit_code == 3, done.output
    assert "inconclusive" in done.output and "not judged" in done.output and "thermal zone 0" in done.output


@pytest.mark.parametrize("problem, message", [
    ("missing", "not found"),
    ("device", "no device named 'nowhere'"),
    ("settings", "min_effect"),
])
def test_usage_and_device_errors_exit_2_naming_the_fault(chains, local_toml, tmp_path, problem, message):
    base, slow = chains
    args = {"missing": (local_toml, base, tmp_path / "gone.onnx"),
            "device": (local_toml, base, slow), "settings": (local_toml, base, slow)}[problem]
    extra = {"device": ("--device", "nowhere"), "settings": ("--min-effect", "0.2")}.get(problem, ())
    done = regress(*args, "--no-history", *extra)
    assert done.exit_code == 2 and message in done.output, done.output


def test_the_json_holds_the_whole_comparison_and_the_history_gets_it(chains, local_toml, tmp_path):
    base, slow = chains
    out, history = tmp_path / "c.json", tmp_path / "h.sqlite"
    done = regress(local_toml, base, slow, "--json", out, "--history", history, "--name", "chain")
    assert done.exit_code == 1, done.output
    c = ep.Comparison.from_dict(json.loads(out.read_text()))
    assert c.verdict is ep.Verdict.SLOWER and c.name == "chain" and c.n >= 3
    with ep.open_history(history) as h:
        (record,) = h.records()
    assert record.result() == c
