"""End to end through the `edgeprune` command line: in-process (helpers.run_cli), and once as a user starts it,
`python -m edgeprune` in a process of its own."""

from __future__ import annotations

import pytest
import torch

import edgeprune as ep
from edgeprune import zoo
from helpers import run_cli as run
from helpers import run_edgeprune

pytestmark = pytest.mark.e2e


def test_python_m_edgeprune_runs_the_command_line_and_exits_2_on_a_mistake():
    listed = run_edgeprune("targets")
    assert listed.returncode == 0, listed.stderr
    assert set(ep.builtin_targets()) <= set(listed.stdout.split())
    refused = run_edgeprune("plan", "-t", "no-such-board", "-m", "edgeprune.zoo:small_cnn")
    assert refused.returncode == 2 and "unknown target 'no-such-board'" in refused.stderr


def test_targets_lists_every_builtin_profile():
    result = run("targets")
    assert result.exit_code == 0, result.stderr
    for name in ep.builtin_targets():
        assert name in result.stdout


def test_targets_show_prints_the_profile_with_its_sources():
    result = run("targets", "show", "jetson-orin-nano-8gb")
    assert result.exit_code == 0, result.stderr
    assert "min_in_channels = 256" in result.stdout  # the profile's values
    assert "# Sources:" in result.stdout and "[TRT#] #3282" in result.stdout  # and the sources cited for them


def test_plan_prints_the_table_and_writes_json(tmp_path):
    out = tmp_path / "plan.json"
    result = run("plan", "--target", "raspberry-pi-5", "--model", "edgeprune.zoo:small_cnn", "--budget", "macs=0.5",
                 "--json", str(out))
    assert result.exit_code == 0, result.stderr
    assert "structured" in result.stdout and "first layer" in result.stdout
    plan = ep.Plan.from_json(out.read_text())
    assert plan.target == "raspberry-pi-5" and plan.macs_ratio <= 0.5


def test_plan_with_input_shape_and_keyword_name(tmp_path):
    out = tmp_path / "plan.json"
    result = run("plan", "-t", "stm32h743", "-m", "edgeprune.zoo:tiny_resnet", "--input-shape", "1,3,32,32",
                 "--input-name", "pixel_values", "--budget", "sparsity=0.3", "--json", str(out))
    assert result.exit_code == 0, result.stderr
    plan = ep.Plan.from_json(out.read_text())
    assert [(t.name, t.shape) for t in plan.inputs.tensors] == [("pixel_values", (1, 3, 32, 32))]
    assert (plan.target, plan.budget) == ("stm32h743", ep.Budget(sparsity=0.3))


def test_plan_refuses_to_overwrite_json_without_flag(tmp_path):
    out = tmp_path / "plan.json"
    out.write_text("precious")
    result = run("plan", "-t", "raspberry-pi-5", "-m", "edgeprune.zoo:small_cnn", "--json", str(out))
    assert result.exit_code == 2 and "already exists" in result.stderr
    assert out.read_text() == "precious"


def test_plan_with_recipe_applies_overrides(tmp_path):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('ignore = ["branch_*"]\n[layers."fc1"]\nmethod = "keep"\n')
    out = tmp_path / "plan.json"
    result = run("plan", "-t", "raspberry-pi-5", "-m", "edgeprune.zoo:small_cnn", "--budget", "macs=0.7",
                 "--recipe", str(recipe), "--json", str(out))
    assert result.exit_code == 0, result.stderr
    plan = ep.Plan.from_json(out.read_text())
    assert {plan.layer(n).method for n in ("branch_a.0", "branch_b.0", "fc1")} == {"keep"}


@pytest.mark.parametrize(
    "args,message",
    [
        (["-t", "no-such-board"], "unknown target 'no-such-board'"),
        (["-t", "raspberry-pi-5", "--budget", "macs=1.5"], "macs_ratio=1.5"),
        (["-t", "raspberry-pi-5", "--budget", "speed=2"], "expected KEY=VALUE with KEY one of macs_ratio="),
        (["-t", "raspberry-pi-5", "--input-shape", "1,3,x"], "--input-shape"),
    ],
)
def test_plan_bad_input_is_a_clear_error(args, message, tmp_path):
    result = run("plan", "-m", "edgeprune.zoo:small_cnn", *args, "--json", str(tmp_path / "p.json"))
    assert result.exit_code == 2
    assert message in result.stderr
    assert not (tmp_path / "p.json").exists()


def test_plan_with_unknown_recipe_layer_names_it_and_writes_nothing(tmp_path):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('[layers."fc9"]\nmethod = "keep"\n')
    result = run("plan", "-t", "raspberry-pi-5", "-m", "edgeprune.zoo:small_cnn", "--recipe", str(recipe),
                 "--json", str(tmp_path / "p.json"))
    assert result.exit_code == 2 and "fc9" in result.stderr and "fc1" in result.stderr
    assert not (tmp_path / "p.json").exists()


def test_prune_saves_a_model_that_loads_with_identical_outputs(tmp_path):
    out = tmp_path / "model"
    result = run("prune", "-t", "stm32h743", "-m", "edgeprune.zoo:small_cnn", "--budget", "macs=0.5", "--out", str(out))
    assert result.exit_code == 0, result.stderr
    assert "dense vs pruned" in result.stdout
    loaded = ep.load("edgeprune.zoo:small_cnn", out).eval()
    plan = ep.record_of(loaded).plan
    assert (plan.target, plan.budget) == ("stm32h743", ep.Budget(macs_ratio=0.5))
    # the CLI pruned the factory's (seeded) weights by this plan: the same pruning here gives the same model
    expected = ep.prune(zoo.small_cnn(), plan).eval()
    x = (torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(3)),)
    with torch.no_grad():
        assert torch.equal(loaded(*x), expected(*x))
    assert ep.measure(loaded, x).macs <= 0.5 * ep.measure(zoo.small_cnn(), x).macs


def test_every_command_that_builds_a_model_takes_its_input_name_as_input_name():
    # sensitivity once spelt it --name, the history's option (a leftover of the single-module CLI)
    for command in ("plan", "prune", "sensitivity", "export", "deploy"):
        result = run(command, "--help", env={"COLUMNS": "200"})
        assert "--input-name" in result.output, command
    assert " --name " not in run("sensitivity", "--help", env={"COLUMNS": "200"}).output
