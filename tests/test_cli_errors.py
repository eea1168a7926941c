"""A user's mistake, or the machine refusing a write, is an `error:` line naming the path and exit code 2 on
the command line, found before the work where it can be: never a traceback. Read-only outputs and full disks
are real (a tmpfs mounted read-only, or filled), since root ignores file modes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import edgeprune as ep
from helpers import CLI_MODEL as MODEL
from helpers import CLI_PI as PI
from helpers import bench_flags, run_cli


def fill(directory: Path) -> Path:
    """Fill the file system `directory` is on, to the last byte (empty files can still be created)."""
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:  # ENOSPC: full
        pass
    finally:
        os.close(fd)
    return directory


@pytest.fixture
def onnx_artifact(small_cnn_onnx) -> Path:
    return small_cnn_onnx.path


@pytest.fixture
def pruned_dir(tmp_path, small_cnn, planned) -> Path:
    plan, pruned = planned(small_cnn, "raspberry-pi-5", ep.Budget(macs_ratio=0.5))
    return ep.save(pruned, plan, tmp_path / "pruned", factory="edgeprune.zoo:small_cnn")


# (command line given the output path, text that shows the work was done): each must be refused before it
READ_ONLY = {
    "plan --json": (lambda out, _: ["plan", *PI, *MODEL, "--json", out / "plan.json"], "plan for"),
    "prune --out": (lambda out, _: ["prune", *PI, *MODEL, "--out", out / "pruned"], "plan for"),
    "finetune --out": (lambda out, d: ["finetune", d, *MODEL, "--digits", "--epochs", "1", "--out", out / "ft"],
                       "epoch 1"),
    "sensitivity --out": (lambda out, _: ["sensitivity", *PI, *MODEL, "--digits", "--amounts", "0.5",
                                          "--out", out / "sens"], "sensitivity for"),
    "bench --json": (lambda out, a: ["bench", a, "--json", out / "bench.json", *bench_flags()], "latency"),
}


@pytest.mark.parametrize("command", list(READ_ONLY))
def test_a_read_only_output_is_refused_before_any_work(command, tmpfs, request):
    make, work_shown = READ_ONLY[command]
    extra = (request.getfixturevalue("pruned_dir") if command.startswith("finetune") else
             request.getfixturevalue("onnx_artifact") if command.startswith("bench") else None)
    read_only = tmpfs("64k", read_only=True)
    result = run_cli(*make(read_only, extra))
    assert result.exit_code == 2, result.output
    assert f"error: {read_only}/" in result.output and "Read-only file system" in result.output, result.output
    assert work_shown not in result.output, result.output


def test_a_full_disk_under_plan_json_is_an_error_naming_the_file(tmpfs):
    full = fill(tmpfs("64k"))
    result = run_cli("plan", *PI, *MODEL, "--json", full / "plan.json")
    assert result.exit_code == 2
    assert f"{full}/" in result.output and "plan.json" in result.output, result.output
    assert "No space left on device" in result.output and "plan for" in result.output  # found when writing
    assert not (full / "plan.json").exists()


def test_a_full_disk_under_export_out_is_an_error_naming_the_output(tmpfs):
    full = fill(tmpfs("64k"))
    result = run_cli("export", *PI, *MODEL, "--out", full / "artifacts")
    assert result.exit_code == 2
    assert f"{full}/artifacts" in result.output and "No space left on device" in result.output, result.output


def test_a_bench_result_that_cannot_be_written_is_printed_and_the_path_named(tmpfs, onnx_artifact):
    # empty files still fit on a full tmpfs, so the check before the run passes and the write after it fails
    full = fill(tmpfs("64k"))
    result = run_cli("bench", onnx_artifact, "--json", full / "bench.json", *bench_flags())
    assert result.exit_code == 2
    assert f"the result could not be written to {full}/bench.json" in result.output, result.output
    assert "No space left on device" in result.output
    kept = json.loads(result.stdout[result.stdout.index("{"):result.stdout.rindex("}") + 1])
    assert kept["schema"] == "edgeprune.bench-result/1" and kept["n"] >= 5 and kept["p50"] > 0


LATIN1 = 'name = "caf\xe9"\n'.encode("latin-1")


@pytest.mark.parametrize("args", [
    ["targets", "show", "latin1.toml"],
    ["plan", "-t", "latin1.toml", *MODEL],
    ["plan", *PI, *MODEL, "--recipe", "latin1.toml"],
    ["devices", "list", "--devices", "latin1.toml"],
], ids=["target-show", "plan-target", "plan-recipe", "devices"])
def test_a_toml_file_that_is_not_utf8_is_named(args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "latin1.toml").write_bytes(LATIN1)
    result = run_cli(*args)
    assert result.exit_code == 2
    assert "error: latin1.toml: not UTF-8 text (byte 0xe9 at offset 11)" in result.output, result.output


def test_a_model_module_with_a_syntax_error_names_the_file_and_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "brokenmodel.py").write_text("import torch\n\ndef net(:\n    pass\n")
    result = run_cli("plan", *PI, "-m", "brokenmodel:net")
    assert result.exit_code == 2
    assert "brokenmodel.py, line 3: SyntaxError" in result.output, result.output


def test_a_huge_input_shape_is_refused_before_allocating_naming_the_memory():
    result = run_cli("plan", *PI, *MODEL, "--input-shape", "1,3,1000000,1000000")
    assert result.exit_code == 2
    assert ("--input-shape 1,3,1000000,1000000 of shape (1, 3, 1000000, 1000000) (float32) would take 10.9 TiB"
            in result.output), result.output


@pytest.mark.parametrize("name", ["[/x].toml", "[bold]x[/bold].toml", "[red]"])
def test_a_path_with_rich_markup_in_it_is_printed_as_typed(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run_cli("plan", *PI, *MODEL, "--recipe", name)
    assert result.exit_code == 2
    assert f"error: {name}: file not found" in result.output, result.output
