"""A wrong path is a user's mistake: every command answers it with exit code 2 and a message naming the
path, never a traceback. Each command meets a missing file, a file where a directory belongs, a directory
where a file belongs, a file it cannot read (a symlink loop: unreadable even for root) and outputs that
already exist."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import edgeprune as ep
from edgeprune import zoo
from edgeprune._atomic import write_text
from helpers import CLI_MODEL as MODEL
from helpers import CLI_PI as PI
from helpers import run_cli, run_edgeprune


@pytest.fixture
def paths(tmp_path, monkeypatch) -> Path:
    """tmp_path as the working directory, holding: a file, a directory, a symlink loop, a pickled checkpoint."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file.txt").write_text("not what was asked for")
    (tmp_path / "adir").mkdir()
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    torch.save(zoo.small_cnn().state_dict(), tmp_path / "model.pt")
    (tmp_path / "existing.json").write_text("precious")
    return tmp_path


# (command line, the path the message must name); every path is relative to the `paths` directory
CASES = {
    # targets show: a profile is a file
    "targets-show-missing": (["targets", "show", "boards/mine.toml"], "boards/mine.toml"),
    "targets-show-directory": (["targets", "show", "adir/"], "adir"),
    "targets-show-unreadable": (["targets", "show", "loop/x.toml"], "loop"),
    # plan: --recipe and --sensitivity are read, --json is written
    "plan-recipe-missing": (["plan", *PI, *MODEL, "--recipe", "missing.toml"], "missing.toml"),
    "plan-recipe-directory": (["plan", *PI, *MODEL, "--recipe", "adir"], "adir"),
    "plan-recipe-unreadable": (["plan", *PI, *MODEL, "--recipe", "loop"], "loop"),
    "plan-sensitivity-missing": (["plan", *PI, *MODEL, "--sensitivity", "missing.json"], "missing.json"),
    "plan-sensitivity-directory": (["plan", *PI, *MODEL, "--sensitivity", "adir"], "adir"),
    "plan-sensitivity-not-json": (["plan", *PI, *MODEL, "--sensitivity", "file.txt"], "file.txt"),
    "plan-weights-pickle": (["plan", *PI, *MODEL, "--weights", "model.pt"], "model.pt"),
    "plan-weights-directory": (["plan", *PI, *MODEL, "--weights", "adir"], "adir"),
    "plan-json-existing": (["plan", *PI, *MODEL, "--json", "existing.json"], "existing.json"),
    "plan-json-directory": (["plan", *PI, *MODEL, "--json", "adir", "--overwrite"], "adir"),
    "plan-json-under-a-file": (["plan", *PI, *MODEL, "--json", "file.txt/plan.json"], "file.txt"),
    # prune: --out is a directory
    "prune-out-existing": (["prune", *PI, *MODEL, "--out", "adir"], "adir"),
    "prune-out-file": (["prune", *PI, *MODEL, "--out", "file.txt", "--overwrite"], "file.txt"),
    "prune-out-under-a-file": (["prune", *PI, *MODEL, "--out", "file.txt/pruned"], "file.txt"),
    "prune-weights-missing": (["prune", *PI, *MODEL, "--weights", "missing.safetensors", "--out", "p"],
                              "missing.safetensors"),
    # finetune: PRUNED is a saved directory, --data a file, --out a directory
    "finetune-pruned-file": (["finetune", "model.pt", *MODEL, "--digits", "--out", "ft"], "model.pt"),
    "finetune-pruned-missing": (["finetune", "missing", *MODEL, "--digits", "--out", "ft"], "missing"),
    "finetune-data-directory": (["finetune", "adir", *MODEL, "--data", "adir", "--out", "ft"], "adir"),
    "finetune-out-file": (["finetune", "adir", *MODEL, "--digits", "--out", "file.txt"], "file.txt"),
    "finetune-out-existing": (["finetune", "adir", *MODEL, "--digits", "--out", "adir"], "adir"),
    # export: --weights is a saved directory or a .safetensors file, --calibration/--verify-data files
    "export-weights-pickle": (["export", *PI, *MODEL, "--weights", "model.pt", "--out", "e"], "model.pt"),
    "export-weights-missing": (["export", *PI, *MODEL, "--weights", "missing", "--out", "e"], "missing"),
    "export-weights-unreadable": (["export", *PI, *MODEL, "--weights", "loop", "--out", "e"], "loop"),
    "export-weights-not-a-saved-model": (["export", *PI, *MODEL, "--weights", "adir", "--out", "e"], "adir"),
    "export-calibration-directory": (["export", *PI, *MODEL, "--int8", "--calibration", "adir", "--out", "e"], "adir"),
    "export-calibration-unreadable": (["export", *PI, *MODEL, "--int8", "--calibration", "loop", "--out", "e"], "loop"),
    "export-verify-data-missing": (["export", *PI, *MODEL, "--verify-data", "missing.safetensors", "--out", "e"],
                                   "missing.safetensors"),
    "export-out-file": (["export", *PI, *MODEL, "--out", "file.txt"], "file.txt"),
    "export-out-under-a-file": (["export", *PI, *MODEL, "--out", "file.txt/artifacts"], "file.txt"),
    # bench: ARTIFACT and --devices are files, --json is written
    "bench-artifact-missing": (["bench", "missing.pte"], "missing.pte"),
    "bench-artifact-directory": (["bench", "adir"], "adir"),
    "bench-devices-directory": (["bench", "file.txt", "--devices", "adir"], "adir"),
    "bench-json-existing": (["bench", "file.txt", "--json", "existing.json"], "existing.json"),
    # devices: --devices is a file
    "devices-list-missing": (["devices", "list", "--devices", "missing.toml"], "missing.toml"),
    "devices-list-directory": (["devices", "list", "--devices", "adir"], "adir"),
    "devices-check-unreadable": (["devices", "check", "--devices", "loop"], "loop"),
    # sensitivity: --data/--bn-data are files, --out a directory
    "sensitivity-data-missing": (["sensitivity", *PI, *MODEL, "--data", "missing.safetensors", "--out", "s"],
                                 "missing.safetensors"),
    "sensitivity-data-unreadable": (["sensitivity", *PI, *MODEL, "--data", "loop", "--out", "s"], "loop"),
    "sensitivity-bn-data-directory": (["sensitivity", *PI, *MODEL, "--digits", "--bn-data", "adir", "--out", "s"],
                                      "adir"),
    "sensitivity-out-file": (["sensitivity", *PI, *MODEL, "--digits", "--out", "file.txt"], "file.txt"),
    # demo: --out is a directory
    "demo-out-file": (["demo", "--out", "file.txt"], "file.txt"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_path_exits_2_with_a_message_naming_it(case, paths):
    args, named = CASES[case]
    result = run_cli(*args)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and named in result.output, result.output
    assert "Traceback" not in result.output


@pytest.mark.e2e
@pytest.mark.parametrize("args, named", [
    (["export", *PI, *MODEL, "--weights", "model.pt", "--out", "e"], "model.pt"),
    (["export", *PI, *MODEL, "--out", "file.txt"], "file.txt"),
])
def test_as_a_user_runs_it_a_bad_path_prints_no_traceback(args, named, paths):
    done = run_edgeprune(*args, cwd=paths)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "error:" in done.stderr and named in done.stderr


# the same mistakes through the Python API: ArtifactError naming the path, not a bare OSError

def test_load_given_a_file_instead_of_a_saved_directory_says_so(paths):
    with pytest.raises(ep.ArtifactError, match=r"model\.pt: is a file; a saved model is the directory"):
        ep.load("edgeprune.zoo:small_cnn", paths / "model.pt")


def test_save_refuses_to_replace_a_file_even_with_overwrite(paths, small_cnn, planned):
    plan, pruned = planned(small_cnn, "raspberry-pi-5", ep.Budget(macs_ratio=0.5))
    with pytest.raises(ep.ArtifactError, match="file.txt: is not a directory"):
        ep.save(pruned, plan, paths / "file.txt", overwrite=True)
    assert (paths / "file.txt").read_text() == "not what was asked for"


def test_save_under_a_file_names_the_file_in_the_way(paths, small_cnn, planned):
    plan, pruned = planned(small_cnn, "raspberry-pi-5", ep.Budget(macs_ratio=0.5))
    with pytest.raises(ep.ArtifactError, match=r"file\.txt is a file"):
        ep.save(pruned, plan, paths / "file.txt" / "model")


def test_an_atomic_write_onto_a_directory_is_refused_and_leaves_it(paths):
    with pytest.raises(ep.ArtifactError, match="adir: is a directory"):
        write_text(paths / "adir", "text", overwrite=True)
    assert (paths / "adir").is_dir()


def test_export_into_a_file_is_an_artifact_error_before_any_work(paths):
    model = zoo.small_cnn()
    with pytest.raises(ep.ArtifactError, match="file.txt: is not a directory"):
        ep.export(model, zoo.small_cnn.example_inputs(), "raspberry-pi-5", paths / "file.txt")


def test_dense_weights_from_a_pickle_are_refused_unread(paths):
    with pytest.raises(ep.ArtifactError, match=r"model\.pt: not a safetensors file.*never unpickles"):
        ep.load_weights("edgeprune.zoo:small_cnn", paths / "model.pt")
