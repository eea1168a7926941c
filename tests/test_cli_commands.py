"""The command line a user meets on the first day: trained weights in, sensitivity into the plan, fine-tuning
before export (and a warning when it was skipped), their own model module, one --overwrite, --version.
In-process through typer's CliRunner; the few that export are marked e2e."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch.utils.data import DataLoader, TensorDataset

import edgeprune as ep
from edgeprune import zoo
from edgeprune.metrics import accuracy
from helpers import CLI_MODEL as MODEL
from helpers import CLI_PI as PI
from helpers import run_cli, run_cli_ok

FACTORY = MODEL[1]


def digits_accuracy(model) -> float:
    return accuracy(model.eval(), DataLoader(TensorDataset(*zoo.digits("test")), batch_size=256))




@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def trained(work, trained_small_cnn) -> Path:
    """The session's small_cnn trained on the digits, saved as the user would: safetensors."""
    path = work / "trained.safetensors"
    safetensors.torch.save_model(trained_small_cnn, str(path))
    return path


@pytest.fixture(scope="module")
def pruned_dir(work, trained) -> Path:
    """The trained model pruned to half its MACs for the Pi by `edgeprune prune`, never fine-tuned."""
    out = work / "pruned"
    run_cli_ok("prune", *PI, *MODEL, "--weights", str(trained), "--budget", "macs=0.5", "--out", str(out))
    return out


# ------------------------------------------------------------------------------------------ --version

def test_version_prints_the_package_version():
    result = run_cli_ok("--version")
    assert result.output.strip() == f"edgeprune {ep.__version__}"


# ------------------------------------------------------------------------------------------ --model

def test_a_model_module_in_the_current_directory_needs_no_pythonpath(tmp_path, monkeypatch):
    name = f"mymodels_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "def net():\n    return nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),"
        " nn.Linear(128, 10))\n\n"
        "net.example_inputs = lambda: (torch.randn(1, 1, 8, 8),)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    try:
        result = run_cli_ok("plan", *PI, "-m", f"{name}:net", "--budget", "macs=0.8", "--json", "plan.json")
    finally:
        sys.modules.pop(name, None)
    assert "Linear" in result.output
    assert ep.Plan.from_json((tmp_path / "plan.json").read_text()).target == "raspberry-pi-5"


# ------------------------------------------------------------------------------------------ --overwrite

def test_every_command_that_writes_offers_overwrite_and_not_force():
    for command in ("plan", "prune", "finetune", "export", "bench", "sensitivity"):
        result = run_cli_ok(command, "--help")
        assert "--overwrite" in result.output, command
        assert "--force" not in result.output, command  # the old spelling still works, unlisted


def test_force_still_replaces_an_existing_output_as_overwrite_does(tmp_path):
    out = tmp_path / "plan.json"
    out.write_text("old")
    run_cli_ok("plan", *PI, *MODEL, "--json", str(out), "--force")
    assert ep.Plan.from_json(out.read_text()).target == "raspberry-pi-5"


def test_an_existing_output_is_kept_and_the_message_names_overwrite(tmp_path):
    artifact, out = tmp_path / "model.onnx", tmp_path / "bench.json"
    artifact.write_text("never measured")
    out.write_text("old")
    result = run_cli("bench", str(artifact), "--json", str(out))
    assert result.exit_code == 2 and "bench.json: already exists; pass --overwrite" in result.output
    assert out.read_text() == "old"


# ------------------------------------------------------------------------------------------ --weights

@pytest.fixture(scope="module")
def sensitivity_json(work, trained) -> Path:
    out = work / "sens"
    run_cli_ok("sensitivity", *PI, *MODEL, "--weights", str(trained), "--digits", "--amounts", "0.25,0.5,0.75",
           "--out", str(out))
    return out / "sensitivity.json"


def test_sensitivity_measures_the_trained_weights_given(sensitivity_json, trained):
    sens = ep.Sensitivity.from_json(sensitivity_json.read_text())
    dense = ep.load_weights(FACTORY, trained)
    assert sens.baseline == pytest.approx(digits_accuracy(dense)) and sens.baseline > 0.8


def test_prune_starts_from_the_trained_weights_given(pruned_dir, trained):
    pruned = ep.load(FACTORY, pruned_dir)
    dense = ep.load_weights(FACTORY, trained)
    # the classifier's outputs are never pruned: its bias is the trained one, not the factory's
    assert torch.equal(pruned.classifier.bias, dense.classifier.bias)
    assert not torch.equal(pruned.classifier.bias, zoo.small_cnn().classifier.bias)


def test_weights_that_do_not_fit_the_model_name_the_file_and_the_tensors(tmp_path):
    wrong = tmp_path / "other.safetensors"
    safetensors.torch.save_file({"fc.weight": torch.zeros(2, 2)}, str(wrong))
    result = run_cli("plan", *PI, *MODEL, "--weights", str(wrong))
    assert result.exit_code == 2
    assert "other.safetensors: does not match" in result.output and "fc.weight" in result.output


# ------------------------------------------------------------------------------------------ --sensitivity

def _sensitivity_reasons(plan: ep.Plan) -> list[str]:
    return [d.reason for d in plan.layers if "sensitiv" in d.reason.lower()]


def test_plan_reads_the_json_sensitivity_writes(work, trained, sensitivity_json):
    with_sens, without = work / "plan-sens.json", work / "plan-plain.json"
    run_cli_ok("plan", *PI, *MODEL, "--weights", str(trained), "--sensitivity", str(sensitivity_json),
           "--json", str(with_sens))
    run_cli_ok("plan", *PI, *MODEL, "--weights", str(trained), "--json", str(without))
    assert _sensitivity_reasons(ep.Plan.from_json(with_sens.read_text()))
    assert not _sensitivity_reasons(ep.Plan.from_json(without.read_text()))


def test_prune_reads_the_json_sensitivity_writes(work, trained, sensitivity_json):
    out = work / "pruned-sens"
    run_cli_ok("prune", *PI, *MODEL, "--weights", str(trained), "--sensitivity", str(sensitivity_json),
           "--out", str(out))
    assert _sensitivity_reasons(ep.record_of(ep.load(FACTORY, out)).plan)


def test_a_sensitivity_for_another_target_is_refused(work, trained, sensitivity_json):
    result = run_cli("plan", "-t", "jetson-orin-nano-8gb", *MODEL, "--sensitivity", str(sensitivity_json))
    assert result.exit_code == 2 and "raspberry-pi-5" in result.output


# ------------------------------------------------------------------------------------------ finetune

@pytest.fixture(scope="module")
def finetuned_dir(work, pruned_dir, trained) -> Path:
    out = work / "finetuned"
    run_cli_ok("finetune", str(pruned_dir), *MODEL, "--weights", str(trained), "--digits", "--epochs", "2",
           "--out", str(out))
    return out


def test_finetune_saves_a_model_marked_fine_tuned_with_the_pruned_shapes(finetuned_dir, pruned_dir):
    tuned, pruned = ep.load(FACTORY, finetuned_dir), ep.load(FACTORY, pruned_dir)
    assert ep.record_of(tuned).finetuned and not ep.record_of(pruned).finetuned
    x = zoo.small_cnn.example_inputs()
    assert ep.measure(tuned, x).macs == ep.measure(pruned, x).macs


def test_finetune_recovers_accuracy_lost_to_pruning(finetuned_dir, pruned_dir):
    assert digits_accuracy(ep.load(FACTORY, finetuned_dir)) > digits_accuracy(ep.load(FACTORY, pruned_dir)) + 0.05


def test_finetune_trains_on_a_safetensors_file_of_x_and_y(work, pruned_dir):
    x, y = zoo.digits("train")
    data = work / "train.safetensors"
    safetensors.torch.save_file({"x": x[:256].contiguous(), "y": y[:256]}, str(data))
    out = work / "finetuned-data"
    result = run_cli_ok("finetune", str(pruned_dir), *MODEL, "--data", str(data), "--val-data", str(data),
                    "--epochs", "1", "--out", str(out))
    assert "validation accuracy after 1 epochs" in result.output
    assert ep.record_of(ep.load(FACTORY, out)).finetuned


def test_finetune_with_x_and_y_of_different_lengths_names_the_file(work, pruned_dir):
    data = work / "wrong-labels.safetensors"
    safetensors.torch.save_file({"x": torch.zeros(4, 1, 8, 8), "y": torch.zeros(5, dtype=torch.long)}, str(data))
    result = run_cli("finetune", str(pruned_dir), *MODEL, "--data", str(data), "--out", str(work / "never"))
    assert result.exit_code == 2 and "wrong-labels.safetensors: x has 4 samples but y has 5" in result.output


def test_finetune_with_inputs_the_model_cannot_take_is_an_error_not_a_traceback(work, pruned_dir):
    data = work / "three-channels.safetensors"
    safetensors.torch.save_file({"x": torch.zeros(4, 3, 8, 8), "y": torch.zeros(4, dtype=torch.long)}, str(data))
    result = run_cli("finetune", str(pruned_dir), *MODEL, "--data", str(data), "--out", str(work / "never"))
    assert isinstance(result.exception, SystemExit) and result.exit_code == 2
    assert "(inputs (4, 3, 8, 8)) does not run through SmallCNN" in result.output


# ------------------------------------------------------------------------------------------ export

@pytest.mark.e2e
def test_export_warns_that_a_pruned_model_was_never_fine_tuned(pruned_dir, tmp_path):
    result = run_cli_ok("export", *PI, *MODEL, "--weights", str(pruned_dir), "--format", "onnx", "--out", str(tmp_path))
    assert "warning:" in result.output and "never fine-tuned" in result.output


@pytest.mark.e2e
def test_export_of_a_fine_tuned_model_gives_no_warning(finetuned_dir, tmp_path):
    result = run_cli_ok("export", *PI, *MODEL, "--weights", str(finetuned_dir), "--format", "onnx",
                    "--out", str(tmp_path))
    assert "never fine-tuned" not in result.output


def test_export_refuses_a_model_pruned_for_another_target(finetuned_dir, tmp_path):
    result = run_cli("export", "-t", "jetson-orin-nano-8gb", *MODEL, "--weights", str(finetuned_dir),
                 "--out", str(tmp_path))
    assert result.exit_code == 2 and "--allow-other-target" in result.output
    assert not list(tmp_path.iterdir())


@pytest.mark.e2e
def test_export_allow_other_target_exports_and_records_both_targets(finetuned_dir, tmp_path):
    run_cli_ok("export", "-t", "jetson-orin-nano-8gb", *MODEL, "--weights", str(finetuned_dir), "--allow-other-target",
           "--out", str(tmp_path))
    manifest = json.loads(next(tmp_path.glob("*.manifest.json")).read_text())
    assert (manifest["target"], manifest["plan_target"]) == ("jetson-orin-nano-8gb", "raspberry-pi-5")


@pytest.mark.e2e
def test_export_verifies_on_the_verify_data_file(finetuned_dir, tmp_path):
    x, _ = zoo.digits("test")
    data = tmp_path / "verify.safetensors"
    safetensors.torch.save_file({"input_0": x[:12].contiguous()}, str(data))
    out = tmp_path / "artifact"
    run_cli_ok("export", *PI, *MODEL, "--weights", str(finetuned_dir), "--format", "onnx", "--verify-data", str(data),
           "--out", str(out))
    manifest = json.loads(next(out.glob("*.manifest.json")).read_text())
    assert manifest["verification"]["source"] == "verify_inputs"
    assert manifest["verification"]["inputs"] == 12


def test_export_verify_data_of_the_wrong_shape_names_the_tensor(finetuned_dir, tmp_path):
    data = tmp_path / "rgb.safetensors"
    safetensors.torch.save_file({"input_0": torch.zeros(4, 3, 8, 8)}, str(data))
    result = run_cli("export", *PI, *MODEL, "--weights", str(finetuned_dir), "--verify-data", str(data),
                 "--out", str(tmp_path / "never"))
    assert result.exit_code == 2
    assert "rgb.safetensors: tensor 'input_0' holds samples of shape (3, 8, 8)" in result.output
    assert "takes (1, 8, 8)" in result.output
