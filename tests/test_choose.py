"""`ep.choose` and `edgeprune choose`: every candidate pruning a target allows, measured on a real device
(`local`), its accuracy estimated on the digits, and the one to use said with the numbers."""

from __future__ import annotations

import copy
import json

import pytest
import safetensors.torch
import torch
from torch.utils.data import DataLoader, TensorDataset

import edgeprune as ep
from edgeprune import zoo
from edgeprune.choosing import KINDS
from helpers import CLI_MODEL, run_cli

QUICK = ep.BenchSettings(min_runs=20, min_seconds=0.2, warmup_runs=3, warmup_seconds=0.05)


@pytest.fixture(scope="module")
def digits_loaders():
    train, test = zoo.digits("train"), zoo.digits("test")
    return (DataLoader(TensorDataset(*train), batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0)),
            DataLoader(TensorDataset(*test), batch_size=256))


@pytest.fixture(scope="module")
def jetson_choice(trained_small_cnn, digits_loaders):
    train, val = digits_loaders
    model = copy.deepcopy(trained_small_cnn)
    return ep.choose(model, (torch.randn(1, 1, 8, 8),), "jetson-orin-nano-8gb", ep.Budget(macs_ratio=0.5),
                     device="local", val_data=val, train_data=train, settings=QUICK)


def test_each_candidate_the_target_allows_is_measured_on_the_device(jetson_choice):
    names = [c.name for c in jetson_choice.candidates]
    assert names == ["rules", "structured", "n:m", "unstructured"]  # a Jetson has 2:4 and more than channels
    for c in jetson_choice.candidates:
        assert c.plan is not None and c.measured_ms > 0 and c.ci95_ms[0] <= c.measured_ms <= c.ci95_ms[1], c
        assert c.device_s > 0
    assert jetson_choice.dense_ms > 0 and jetson_choice.proxy  # Jetson plans timed on this machine


def test_a_cpu_target_offers_no_n_m_and_no_separate_channels_only_candidate():
    kinds = [k.name for k in KINDS if k.applies(ep.load_target("x86-64-host"))]
    assert kinds == ["rules", "unstructured"]  # its rules are channels only; it has no N:M kernel


def test_accuracy_is_estimated_on_the_validation_data_after_bn_recalibration(jetson_choice, trained_small_cnn,
                                                                            digits_loaders):
    _, val = digits_loaders
    assert jetson_choice.dense_accuracy == pytest.approx(ep.metrics.accuracy(trained_small_cnn, val))
    assert jetson_choice.accuracy_source == "top-1 on the validation data, pruned, BatchNorm recalibrated"
    for c in jetson_choice.candidates:
        assert 0.0 <= c.accuracy <= 1.0
    by = {c.name: c for c in jetson_choice.candidates}
    assert by["unstructured"].accuracy > by["structured"].accuracy  # half the weights, against half the MACs


def test_the_chosen_candidate_meets_the_budget_with_the_best_accuracy_of_those_that_do(jetson_choice):
    meeting = [c for c in jetson_choice.candidates if c.meets]
    assert meeting and all(c.macs_ratio <= 0.5 + 1e-9 for c in meeting)
    best = jetson_choice.best
    assert best.accuracy == max(c.accuracy for c in meeting)
    assert jetson_choice.why.startswith(f"use {best.name}: it meets macs_ratio=0.5 at {best.measured_ms:.3f} ms")
    missed = {c.name: c.reason for c in jetson_choice.candidates if not c.meets}
    assert "unstructured" in missed and "misses 0.5" in missed["unstructured"]


def test_a_choice_is_written_as_json_with_every_candidate_and_its_plan(jetson_choice):
    data = json.loads(json.dumps(jetson_choice.to_dict()))
    assert data["schema"] == "edgeprune.choice/1" and data["chosen"] == jetson_choice.chosen
    assert [c["name"] for c in data["candidates"]] == [c.name for c in jetson_choice.candidates]
    assert ep.Plan.from_dict(data["candidates"][0]["plan"]).layers == jetson_choice.candidates[0].plan.layers


def test_cli_choose_meets_a_latency_budget_on_the_device_and_says_which_to_use(tmp_path, trained_small_cnn):
    weights = tmp_path / "trained.safetensors"
    safetensors.torch.save_model(trained_small_cnn, str(weights))
    x, y = zoo.digits("test")
    safetensors.torch.save_file({"x": x.contiguous(), "y": y}, str(tmp_path / "val.safetensors"))
    out = tmp_path / "choice.json"
    result = run_cli("choose", "-t", "x86-64-host", *CLI_MODEL, "--weights", weights, "--input-shape", "1,1,8,8",
                     "--budget", "latency_ratio=0.7", "--val-data", tmp_path / "val.safetensors",
                     "--latency-cache", tmp_path / "cache", "--json", out)
    data = json.loads(out.read_text())
    by = {c["name"]: c for c in data["candidates"]}
    # the zeros of unstructured pruning run at the dense speed on this CPU: it cannot meet a latency budget
    assert by["unstructured"]["meets"] is False and "runs its zeros at the dense speed" in by["unstructured"]["reason"]
    if data["chosen"] is None:  # the loop could not resolve the budget on this machine: said, and exit 1
        assert result.exit_code == 1 and "no candidate meets latency_ratio=0.7" in result.output
    else:
        assert result.exit_code == 0 and by["rules"]["meets"] and by["rules"]["measured_ms"] <= 0.7 * data["dense_ms"]
        assert "choice: use rules: it meets latency_ratio=0.7" in " ".join(result.output.split())
    assert "x86-64-host within latency_ratio=0.7, measured on local" in result.output
    assert "accuracy: top-1 on the validation data, pruned" in result.output


def test_cli_choose_recovery_needs_training_data():
    result = run_cli("choose", "-t", "x86-64-host", *CLI_MODEL, "--input-shape", "1,1,8,8", "--budget", "macs=0.5",
                     "--recover-epochs", "1")
    assert result.exit_code == 2 and "--recover-epochs needs --data" in result.output
