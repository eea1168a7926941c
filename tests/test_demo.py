"""`edgeprune demo`, end to end through the CLI: the whole flow on real digits leaves a complete report."""

from __future__ import annotations

import io
import json
import re
import warnings

import pytest
import torch
from rich.console import Console
from torch import nn

import edgeprune as ep
from edgeprune.demo import TARGETS, Row, Splits, fits_flash, flash_cell, notes, summary
from helpers import run_cli


def test_the_demo_runs_the_whole_flow_and_leaves_a_report(tmp_path):
    out = tmp_path / "report"
    done = run_cli("demo", "--out", out)
    assert done.exit_code == 0, done.output
    for png in ("layer-sparsity.png", "accuracy-vs-latency.png", *(f"sensitivity-{t}.png" for t in TARGETS)):
        assert (out / png).read_bytes().startswith(b"\x89PNG"), png
    for target in TARGETS:
        manifests = list((out / target / "pruned").glob("*.manifest.json"))  # one, named after its artifact
        assert len(manifests) == 1 and manifests[0].with_name(manifests[0].name.removesuffix(".manifest.json")).is_file()
        timings = json.loads((out / target / "bench.json").read_text())
        # timed here, not on the target: every number is labelled a proxy
        assert [t["proxy"] for t in timings] == [True, True] and all(t["device"] == "local" for t in timings)
    # deployed where this machine runs what the target runs; the Jetson's engine needs TensorRT on the device
    assert json.loads((out / "raspberry-pi-5" / "bundle" / "deploy.json").read_text())["passed"] is True
    assert "jetson-orin-nano-8gb: deploy: not deployed: " in done.output and "trtexec" in done.output


def test_the_demo_refuses_a_report_folder_that_has_files(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    done = run_cli("demo", "--out", tmp_path)
    assert done.exit_code == 2 and "not empty" in done.output and (tmp_path / "keep.txt").read_text() == "mine"


def test_the_default_report_folder_is_under_the_current_directory_and_never_reused(tmp_path, monkeypatch):
    from edgeprune.demo import default_report

    monkeypatch.chdir(tmp_path)
    assert default_report() == tmp_path / "edgeprune-demo-report"
    (tmp_path / "edgeprune-demo-report").mkdir()
    assert default_report() == tmp_path / "edgeprune-demo-report"  # empty: used
    (tmp_path / "edgeprune-demo-report" / "summary.txt").write_text("an earlier run")
    (tmp_path / "edgeprune-demo-report-2").write_text("a file, not a folder")
    assert default_report() == tmp_path / "edgeprune-demo-report-3"


def _row(target: str, **overrides) -> Row:
    values = dict(acc_dense=0.969, acc_pruned=0.367, acc_finetuned=0.972, macs=(290_000, 145_000),
                  params=(20_000, 10_000), size=(80_000, 40_000), p50=(0.0121, 0.0104), device="local",
                  runtime="tflite-micro", proxy=True, memory="")
    return Row(target, **{**values, **overrides})


@pytest.mark.parametrize("width", [150, 120])
def test_the_summary_never_cuts_a_target_name(width):
    console = Console(width=width, file=io.StringIO(), color_system=None)
    console.print(summary([_row(t) for t in TARGETS], Splits(validation=270, test=360)))
    lines = console.file.getvalue().splitlines()
    for target in TARGETS:
        assert any(target in line for line in lines), f"{target} cut at width {width}"


def test_the_summary_says_which_split_its_accuracy_comes_from():
    console = Console(width=150, file=io.StringIO(), color_system=None)
    console.print(summary([_row(t) for t in TARGETS], Splits(validation=270, test=360)))
    text = " ".join(console.file.getvalue().split())
    assert "test accuracy" in text and "test split (360 digits)" in text and "validation split (270 digits)" in text


def test_an_mcu_plan_over_flash_is_said_so_in_its_row_before_any_export():
    # ~2.6 M weights: over the stm32h743's 2 MiB flash even at int8 after the plan takes 10 % of the MACs
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2048), nn.ReLU(), nn.Linear(2048, 1200), nn.ReLU(),
                          nn.Linear(1200, 10)).eval()
    target = ep.load_target("stm32h743")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the plan's own "does not fit flash" warning: not what this test checks
        plan = ep.plan(model, (torch.randn(1, 1, 8, 8),), target, ep.Budget(macs_ratio=0.9))
    assert not fits_flash(plan, target)
    cell = flash_cell(plan, target)
    assert "DOES NOT FIT" in cell and re.search(r"\d+ KiB over", cell) and "2048 KiB flash" in cell


def test_a_plan_that_fits_flash_says_how_much_it_uses():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 10)).eval()
    target = ep.load_target("stm32h743")
    plan = ep.plan(model, (torch.randn(1, 1, 8, 8),), target, ep.Budget(macs_ratio=0.9))
    assert fits_flash(plan, target) and flash_cell(plan, target).endswith("/ 2048 KiB flash, fits")


def test_the_summary_keeps_every_proxy_mark_at_the_demos_width():
    # the widest cells the demo printed: a proxy mark cut off the end of a row would pass a proxy as real
    rows = [_row(t, runtime=runtime, macs=(2_681_000, 1_331_000), params=(47_210, 24_946), size=(216_064, 126_976),
                 p50=(2.9292, 1.6224)) for t, runtime in zip(TARGETS, ("onnxruntime", "executorch", "tflm"))]
    console = Console(width=150, file=io.StringIO(), color_system=None)
    console.print(summary(rows, Splits(validation=216, test=360)))
    text = console.file.getvalue()
    assert all(f"{runtime}*" in text for runtime in ("onnxruntime", "executorch", "tflm")), text


def test_a_flagged_measurement_is_marked_in_the_summary_and_says_why():
    rows = [_row(TARGETS[0], flags=("dense: noisy: CV 40.0 % > 5.0 %",)), _row(TARGETS[1])]
    console = Console(width=150, file=io.StringIO(), color_system=None)
    console.print(summary(rows, Splits(validation=216, test=360)))
    marked = [line for line in console.file.getvalue().splitlines() if "×" in line]
    assert "†" in marked[0] and "†" not in marked[1]
    assert f"{TARGETS[0]}: † dense: noisy: CV 40.0 % > 5.0 %" in notes(rows)
    assert not any(line.startswith(TARGETS[1]) for line in notes(rows))
