"""`edgeprune demo`, end to end through the CLI: the whole flow on real digits leaves a complete report."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from edgeprune.cli import app
from edgeprune.demo import TARGETS


def test_the_demo_runs_the_whole_flow_and_leaves_a_report(tmp_path):
    out = tmp_path / "report"
    done = CliRunner().invoke(app, ["demo", "--out", str(out)])
    assert done.exit_code == 0, done.output
    for png in ("layer-sparsity.png", "accuracy-vs-latency.png", *(f"sensitivity-{t}.png" for t in TARGETS)):
        assert (out / png).read_bytes().startswith(b"\x89PNG"), png
    for target in TARGETS:
        assert (out / target / "pruned" / "pruned.manifest.json").exists()
        timings = json.loads((out / target / "bench.json").read_text())
        # timed here, not on the target: every number is labelled a proxy
        assert [t["proxy"] for t in timings] == [True, True] and all(t["device"] == "local" for t in timings)


def test_the_demo_refuses_a_report_folder_that_has_files(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    done = CliRunner().invoke(app, ["demo", "--out", str(tmp_path)])
    assert done.exit_code == 2 and "not empty" in done.output and (tmp_path / "keep.txt").read_text() == "mine"
