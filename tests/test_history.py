"""The history database (edgeprune.history): records appended and read back whole, several processes
appending at once, a damaged or newer file refused without a byte of it changed, change points, the plot,
and `edgeprune history` / `edgeprune bench --history` on the command line.

Records are real BenchResult and Comparison objects built here (a bench run takes seconds; what the
database does with a result does not depend on how it was measured); the command-line bench tests time
the small CNN's ONNX on `local`."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
import sqlite3
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import matplotlib

matplotlib.use("Agg", force=True)
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import edgeprune as ep  # noqa: E402
from edgeprune._atomic import sha256_file  # noqa: E402
from edgeprune.history import (DEFAULT_PATH, ENV_VAR, History, change_points, git_commit,  # noqa: E402
                               history_path, level_changes, open_history, plot_history)
from edgeprune.remote import BenchResult, Comparison, Verdict  # noqa: E402
from helpers import bench_flags, run_cli, run_cli_ok  # noqa: E402

SHA_A, SHA_B = "a" * 64, "b" * 64


def bench_result(p50: float = 1.25, *, device: str = "local", artifact: str = "/models/net.onnx",
                 flags: tuple = ()) -> BenchResult:
    """A BenchResult as `ep.bench` returns one, every field set to something that would show if lost."""
    return BenchResult(
        device=device, device_target="x86-64-host", artifact=artifact, artifact_sha256=SHA_A,
        artifact_target="jetson-orin-nano-8gb", runtime="onnx", runtime_version="1.18.1", engine="onnxruntime",
        n=4, p50=p50, p90=p50 * 1.1, p99=p50 * 1.2, mean=p50 * 1.01, std=0.02, cv=0.016, min=p50 * 0.9,
        max=p50 * 1.3, ci95_p50=(p50 * 0.98, p50 * 1.03), samples=(p50 * 0.9, p50, p50 * 1.01, p50 * 1.3),
        warmup_runs=2, threads=2, cores=(0, 1),
        state_before={"governor": {"0": "performance"}, "thermal": [{"type": "cpu", "temp_c": 41.5}]},
        state_after={"cur_mhz": {"0": 2400.0}}, flags=flags, notes=("pinned to 0,1",),
        overhead_s={"upload": 0.12, "harness": 1.5},
        settings={"min_runs": 4, "min_seconds": 0.1, "cores": [0, 1], "threads": 2},
        measured_at="2026-03-01T10:00:00+00:00", load={"others_share": 0.012, "wait_share": 0.0},
        ci95_p50_batches=(p50 * 0.95, p50 * 1.06))


def comparison(ratio: float = 1.08, verdict: Verdict = Verdict.SLOWER, *, device: str = "local",
               judged: bool = True, name: "str | None" = "net") -> Comparison:
    """A Comparison as `ep.compare` returns one."""
    return Comparison(
        device=device, baseline="/baselines/net.onnx", baseline_sha256=SHA_A, candidate="/build/net.onnx",
        candidate_sha256=SHA_B, runtime="onnx", runtime_version="1.18.1", verdict=verdict, ratio=ratio,
        ci=(ratio * 0.98, ratio * 1.02), confidence=0.95, statistic=5.5, p_value=1e-4, n=3, baseline_p50=2.0,
        candidate_p50=2.0 * ratio, max_slowdown=0.05, min_effect=0.01, judged=judged,
        flags=() if judged else ("clock dropped on cpu0",), notes=("a note",),
        state_before={"governor": {"0": "schedutil"}}, state_after={}, baseline_rounds=(2.0, 2.01, 1.99),
        candidate_rounds=(2.0 * ratio, 2.01 * ratio, 1.99 * ratio), settings={"rounds": 3, "cores": None},
        device_s=12.5, batches=1, measured_at="2026-03-01T11:00:00+00:00", name=name, extra={"seed": 0})


@pytest.fixture
def history(tmp_path) -> History:
    with open_history(tmp_path / "h" / "history.sqlite") as opened:
        yield opened


def snapshot(directory: Path) -> dict:
    """Every file in `directory` with its bytes."""
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


# ------------------------------------------------------------------------------------------ records

def test_a_bench_result_is_read_back_with_every_field(history):
    result = bench_result(1.25)
    before = datetime.now(timezone.utc)
    written = history.record_bench(result, commit="c" * 40)
    [read] = history.records()
    assert read == written
    assert (read.kind, read.commit, read.name, read.device) == ("bench", "c" * 40, "net.onnx", "local")
    assert (read.artifact, read.artifact_sha256, read.baseline, read.baseline_sha256) == (
        "/models/net.onnx", SHA_A, None, None)
    assert (read.runtime, read.runtime_version, read.measured_at) == ("onnx", "1.18.1", "2026-03-01T10:00:00+00:00")
    assert (read.p50, read.p50_ci, read.baseline_p50, read.ratio, read.ratio_ci, read.verdict) == (
        1.25, (1.25 * 0.98, 1.25 * 1.03), None, None, None, None)
    assert read.valid is True and read.flags == ()
    assert read.settings == result.settings and read.samples == {"samples": list(result.samples)}
    assert read.device_state == {"state_before": result.state_before, "state_after": result.state_after,
                                 "load": result.load}
    assert read.statistics["p99"] == result.p99 and read.statistics["overhead_s"] == result.overhead_s
    recorded = datetime.fromisoformat(read.recorded_at)
    assert recorded.utcoffset() == timedelta(0) and before <= recorded <= datetime.now(timezone.utc)
    assert read.result() == result  # everything recorded, nothing changed on the way


def test_a_comparison_is_read_back_with_every_field(history):
    c = comparison(1.08, Verdict.SLOWER, judged=False)
    history.record_comparison(c, commit=None)
    [read] = history.records()
    assert (read.kind, read.commit, read.name, read.device) == ("comparison", None, "net", "local")
    assert (read.artifact, read.artifact_sha256, read.baseline, read.baseline_sha256) == (
        "/build/net.onnx", SHA_B, "/baselines/net.onnx", SHA_A)
    assert (read.p50, read.baseline_p50, read.p50_ci) == (2.0 * 1.08, 2.0, None)
    assert (read.verdict, read.ratio, read.ratio_ci) == ("slower", 1.08, (1.08 * 0.98, 1.08 * 1.02))
    assert read.slower and read.valid is False and read.flags == ("clock dropped on cpu0",)
    assert read.samples == {"baseline_rounds": [2.0, 2.01, 1.99], "candidate_rounds": list(c.candidate_rounds)}
    assert read.result() == c


def test_a_comparison_without_a_name_is_named_after_its_candidate_file(history):
    assert history.record_comparison(comparison(name=None), commit=None).name == "net.onnx"


def test_records_are_filtered_by_device_name_and_kind_oldest_first(history):
    history.record_bench(bench_result(1.0, device="pi"), commit=None)
    history.record_bench(bench_result(2.0, device="orin"), commit=None)
    history.record_bench(bench_result(3.0, device="pi"), name="resnet", commit=None)
    history.record_comparison(comparison(device="pi", name="resnet"), commit=None)
    assert [r.p50 for r in history.records()] == [1.0, 2.0, 3.0, 2.0 * 1.08]
    assert [r.p50 for r in history.records(device="pi")] == [1.0, 3.0, 2.0 * 1.08]
    assert [r.p50 for r in history.records(device="pi", name="resnet")] == [3.0, 2.0 * 1.08]
    assert [r.p50 for r in history.records(name="resnet", kind="bench")] == [3.0]
    assert history.records(device="nano") == []


def test_an_unknown_kind_is_refused(history):
    with pytest.raises(ep.HistoryError, match="kind='benchmark': expected one of bench, comparison"):
        history.records(kind="benchmark")


def test_records_survive_closing_and_reopening(tmp_path):
    with open_history(tmp_path / "h.sqlite") as first:
        first.record_bench(bench_result(1.0), commit=None)
    with open_history(tmp_path / "h.sqlite") as second:
        second.record_bench(bench_result(2.0), commit=None)
        assert [r.p50 for r in second.records()] == [1.0, 2.0]


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_the_commit_is_the_repositorys_head_and_none_outside_one(tmp_path, monkeypatch):
    repo, outside = tmp_path / "repo", tmp_path / "outside"
    repo.mkdir()
    outside.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    assert git_commit(repo) is None  # a repository without a commit has no HEAD yet
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "one"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # `outside` must not find a repo above it
    assert git_commit(repo) == head and git_commit(outside) is None
    monkeypatch.chdir(repo)
    with open_history(tmp_path / "h.sqlite") as h:
        assert h.record_bench(bench_result()).commit == head  # commit=AUTO: the current directory's HEAD


# ------------------------------------------------------------------------------------------ concurrency

def _append_many(path: str, writer: int, count: int, start) -> None:
    start.wait()  # every writer opens (the first ones create the file) and appends at the same moment
    with open_history(path) as h:
        for i in range(count):
            h.record_bench(bench_result(1.0 + i, device=f"writer-{writer}"), commit=None)


def test_concurrent_writers_all_land(tmp_path):
    writers, count = 4, 25
    path = str(tmp_path / "shared.sqlite")
    context = multiprocessing.get_context("fork")  # the test's imports are inherited: no 4 s torch import each
    start = context.Barrier(writers)
    processes = [context.Process(target=_append_many, args=(path, w, count, start)) for w in range(writers)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(60)
    assert [p.exitcode for p in processes] == [0] * writers
    with open_history(path) as h:
        records = h.records()
    landed = sorted((r.device, r.p50) for r in records)
    assert landed == sorted((f"writer-{w}", 1.0 + i) for w in range(writers) for i in range(count))
    assert len({r.id for r in records}) == writers * count


def test_a_lock_held_past_the_timeout_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "h.sqlite"
    with open_history(path) as h:
        h.record_bench(bench_result(1.0), commit=None)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # a writer that never finishes
    try:
        with open_history(path, busy_timeout_s=0.2) as h:
            started = time.monotonic()
            where = re.escape(str(path))
            with pytest.raises(ep.HistoryError, match=rf"{where}: cannot append to it: still locked by another "
                                                      r"writer after 0\.2 s"):
                h.record_bench(bench_result(2.0), commit=None)
            assert time.monotonic() - started >= 0.2
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with open_history(path) as h:
        assert [r.p50 for r in h.records()] == [1.0]


# ------------------------------------------------------------------------------------------ damaged files

def _history_with_records(path: Path, count: int) -> Path:
    with open_history(path) as h:
        for i in range(count):
            h.record_bench(bench_result(1.0 + i), commit=None)
    return path


def _garbage(path: Path) -> None:
    path.write_bytes(bytes(range(256)) * 20)


def _truncated(path: Path) -> None:
    data = _history_with_records(path, 60).read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _damaged_page(path: Path) -> None:
    """A records page whose b-tree header is overwritten: the file opens and its first page reads fine, and
    SQLite would append to it; only a check of every page finds the damage."""
    _history_with_records(path, 60)
    with sqlite3.connect(path) as db:
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
    data = bytearray(path.read_bytes())
    data[page_size * 6: page_size * 6 + 12] = b"\xff" * 12
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_garbage, _truncated, _damaged_page], ids=["garbage", "truncated", "damaged-page"])
def test_a_damaged_file_is_refused_naming_it_and_left_byte_for_byte(tmp_path, damage):
    path = tmp_path / "history.sqlite"
    damage(path)
    before = snapshot(tmp_path)
    where = re.escape(str(path))
    with pytest.raises(ep.HistoryError, match=rf"^{where}: not a readable history database \(.*\); it was left "
                                              "as it is"):
        open_history(path)
    assert snapshot(tmp_path) == before  # not rewritten, not replaced, no journal left beside it


def test_another_programs_database_is_refused_and_left_as_it_is(tmp_path):
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE users (name TEXT)")
        db.execute("INSERT INTO users VALUES ('ada')")
    db.close()
    before = snapshot(tmp_path)
    where = re.escape(str(path))
    with pytest.raises(ep.HistoryError, match=rf"{where}: an SQLite database, but not an edgeprune history \(its "
                                              r"tables: users\)"):
        open_history(path)
    assert snapshot(tmp_path) == before


def test_a_history_of_a_newer_schema_is_refused_and_left_as_it_is(tmp_path):
    path = _history_with_records(tmp_path / "history.sqlite", 2)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE schema_version SET version = 2")
    db.close()
    before = snapshot(tmp_path)
    where = re.escape(str(path))
    with pytest.raises(ep.HistoryError, match=rf"{where}: a history of schema version 2, written by a newer "
                                              r"edgeprune \(this one reads version 1\)"):
        open_history(path)
    assert snapshot(tmp_path) == before


def test_reading_a_missing_history_creates_nothing(tmp_path):
    with pytest.raises(ep.HistoryError, match=rf"{re.escape(str(tmp_path))}/none\.sqlite: no history database here"):
        open_history(tmp_path / "none.sqlite", create=False)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------ where

@pytest.mark.parametrize("where, path", [
    ("sqlite:///runs/history.sqlite", Path("runs/history.sqlite")),
    ("sqlite:////var/lib/ci/history.sqlite", Path("/var/lib/ci/history.sqlite")),
    ("sqlite:///my%20runs/h.sqlite", Path("my runs/h.sqlite")),
    ("history.sqlite", Path("history.sqlite")),
    (None, Path(".edgeprune/history.sqlite")),
])
def test_a_history_is_named_by_a_path_or_an_sqlite_url(where, path):
    assert history_path(where) == path


@pytest.mark.parametrize("url, says", [
    ("postgresql://ci@db/history", "'postgresql://' URLs are not supported"),
    ("sqlite://ci-host/history.sqlite", "names a host ('ci-host')"),
    ("sqlite:///", "names no file"),
    ("sqlite:///h.sqlite?mode=ro", "URL options ('?…') are not supported"),
])
def test_a_url_that_is_not_an_sqlite_file_is_refused_naming_it(url, says):
    with pytest.raises(ep.HistoryError) as caught:
        open_history(url)
    assert str(caught.value).startswith(f"--history {url}: ") and says in str(caught.value)


# ------------------------------------------------------------------------------------------ change points

def noisy(n: int, cv: float, seed: int, level: float = 10.0) -> np.ndarray:
    return level * np.exp(np.random.default_rng(seed).normal(0.0, cv, n))


@pytest.mark.parametrize("factor", [1.10, 0.90])
def test_a_step_is_found_at_the_index_where_it_starts(factor):
    values = noisy(24, 0.01, seed=3)
    values[14:] *= factor
    assert change_points(values) == [14]


def test_two_steps_are_both_found():
    values = noisy(30, 0.01, seed=4)
    values[10:] *= 1.2
    values[20:] *= 0.8
    assert change_points(values) == [10, 20]


@pytest.mark.parametrize("seed", range(8))
def test_a_flat_noisy_series_has_no_change_point(seed):
    assert change_points(noisy(40, 0.03, seed)) == []


def test_a_change_smaller_than_the_minimum_effect_is_not_a_change_point():
    values = np.full(20, 10.0)
    values[10:] = 10.05  # certain (no noise at all), but 0.5 %: below min_effect (1 %)
    assert change_points(values) == []
    values[10:] = 10.2
    assert change_points(values) == [10]


def test_one_outlier_is_not_a_new_level():
    values = noisy(20, 0.01, seed=5)
    values[9] *= 1.5
    assert change_points(values) == []


@pytest.mark.parametrize("values", [[1.0, 0.0, 1.0, 1.0], [1.0, float("nan"), 1.0, 1.0], [1.0, -2.0, 1.0, 1.0]])
def test_change_points_refuse_what_is_not_a_latency(values):
    with pytest.raises(ep.SettingsError, match="each a finite number > 0"):
        change_points(values)


def test_level_changes_are_found_per_device_and_kind_and_give_the_new_level(history):
    for i, value in enumerate(noisy(16, 0.005, seed=6)):
        history.record_bench(bench_result(value * (1.2 if i >= 8 else 1.0), device="pi"), commit=None)
        history.record_bench(bench_result(value * 3, device="orin"), commit=None)  # flat: no change
    for ratio in (1.0, 1.0, 1.0, 1.0, 1.0):  # comparisons' p50 sit far from the bench runs': not one series
        history.record_comparison(comparison(ratio, Verdict.SAME, device="pi", name="net.onnx"), commit=None)
    records = history.records()
    pi_bench = [r for r in records if r.device == "pi" and r.kind == "bench"]
    changes = level_changes(records)
    assert list(changes) == [pi_bench[8].id]
    assert changes[pi_bench[8].id] == pytest.approx(1.2, rel=0.01)


# ------------------------------------------------------------------------------------------ plot



def test_the_plot_shows_p50_with_its_ci_and_marks_slower_verdicts_and_change_points(history, tmp_path, drawn):
    for i in range(12):
        history.record_bench(bench_result(1.0 if i < 6 else 1.3, device="pi",
                                          flags=("noisy: CV 8 %",) if i == 2 else ()), commit=None)
    history.record_comparison(comparison(1.0, Verdict.SAME, device="pi"), commit=None)
    history.record_comparison(comparison(1.09, Verdict.SLOWER, device="pi"), commit=None)
    records = history.records()
    shown = plot_history(records, tmp_path / "history.png")
    assert shown.path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shown.series == ("pi · net.onnx", "pi · net (A/B: the ratio's relative CI)")
    assert shown.slower == ((14.0, 2.0 * 1.09),)  # the 14th record, at its candidate p50
    assert shown.flagged == ((3.0, 1.0),)
    assert shown.change_points == (7.0,)  # the 7th record starts the 1.3 ms level
    ax = drawn[-1].axes[0]
    bench_bars = ax.containers[0].lines[2][0].get_segments()  # the errorbar's vertical CI segments
    assert np.allclose(bench_bars[0][:, 1], [0.98, 1.03]) and np.allclose(bench_bars[6][:, 1], [1.3 * 0.98, 1.3 * 1.03])


def test_the_plot_does_not_replace_an_existing_file_unasked(history, tmp_path):
    history.record_bench(bench_result(), commit=None)
    (tmp_path / "history.png").write_bytes(b"mine")
    with pytest.raises(ep.ArtifactError, match="already exists"):
        plot_history(history.records(), tmp_path / "history.png")
    assert (tmp_path / "history.png").read_bytes() == b"mine"
    assert plot_history(history.records(), tmp_path / "history.png", overwrite=True).path.stat().st_size > 1000


# ------------------------------------------------------------------------------------------ command line

def test_cli_history_prints_the_records_with_the_change_point_marked(tmp_path):
    path = tmp_path / "history.sqlite"
    with open_history(path) as h:
        for i in range(12):
            h.record_bench(bench_result(1.0 if i < 6 else 1.2, device="pi"), commit=f"{i:x}" * 40)
        h.record_bench(bench_result(5.0, device="orin"), commit=None)
        h.record_comparison(comparison(1.09, Verdict.SLOWER, device="pi"), commit=None)
    out = run_cli_ok("history", "--history", f"sqlite:///{path}", "--device", "pi").output
    rows = [line for line in out.splitlines() if "│ pi " in line]
    assert len(rows) == 13 and "orin" not in out
    assert "▲ +20.0%" in rows[6] and "6666666666" in rows[6] and "1.2" in rows[6]
    assert sum("▲" in row for row in rows) == 1
    assert "slower 1.090× (1.068–1.112)" in rows[12] and "comparison" in rows[12]


def test_cli_history_plot_writes_the_png(tmp_path):
    path = _history_with_records(tmp_path / "history.sqlite", 3)
    run_cli_ok("history", "--history", path, "--plot", tmp_path / "trend.png")
    assert (tmp_path / "trend.png").read_bytes()[:4] == b"\x89PNG"
    refused = run_cli("history", "--history", path, "--plot", tmp_path / "trend.png")
    assert refused.exit_code == 2 and "trend.png: already exists; pass --overwrite" in refused.output


def test_cli_history_of_a_damaged_file_is_one_error_line_and_the_file_is_kept(tmp_path):
    path = tmp_path / "history.sqlite"
    _garbage(path)
    before = path.read_bytes()
    result = run_cli("history", "--history", path)
    assert result.exit_code == 2
    assert result.output.startswith(f"error: {path}: not a readable history database")
    assert path.read_bytes() == before


def test_cli_history_without_a_database_says_where_it_looked(tmp_path):
    result = run_cli("history", "--history", tmp_path / "none.sqlite")
    assert result.exit_code == 2 and f"{tmp_path}/none.sqlite: no history database here" in result.output
    assert not (tmp_path / "none.sqlite").exists()


def test_cli_history_with_a_url_of_another_database_is_an_error_line():
    result = run_cli("history", "--history", "mysql://db/history")
    assert result.exit_code == 2
    assert "error: --history mysql://db/history: the history is an SQLite file" in result.output


@pytest.fixture
def onnx_artifact(small_cnn_onnx) -> Path:
    return small_cnn_onnx.path


def test_cli_bench_appends_its_result_to_the_history(tmp_path, onnx_artifact):
    path = tmp_path / "runs" / "history.sqlite"
    out = run_cli_ok("bench", onnx_artifact, "--history", f"sqlite:///{path}", "--name", "small-cnn",
                     "--json", tmp_path / "bench.json", *bench_flags()).output
    assert f"added 1 result to the history {path}" in out
    with open_history(path, create=False) as h:
        [record] = h.records()
    assert record.result() == BenchResult.from_dict(json.loads((tmp_path / "bench.json").read_text()))
    assert (record.name, record.device, record.artifact_sha256) == ("small-cnn", "local", sha256_file(onnx_artifact))


def test_cli_bench_appends_to_the_current_directorys_history_by_default(tmp_path, onnx_artifact, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(ENV_VAR)  # conftest points it away from the repository; here the default is the point
    run_cli_ok("bench", onnx_artifact, *bench_flags())
    with open_history(tmp_path / DEFAULT_PATH, create=False) as h:
        assert [(r.kind, r.name) for r in h.records()] == [("bench", onnx_artifact.name)]


def test_cli_bench_no_history_appends_nothing(tmp_path, onnx_artifact, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(ENV_VAR)
    out = run_cli_ok("bench", onnx_artifact, "--no-history", *bench_flags()).output
    assert "latency (ms)" in out and not (tmp_path / ".edgeprune").exists()


def test_cli_bench_refuses_a_damaged_history_before_measuring(tmp_path, onnx_artifact):
    path = tmp_path / "history.sqlite"
    _garbage(path)
    before = path.read_bytes()
    result = run_cli("bench", onnx_artifact, "--history", path, *bench_flags())
    assert result.exit_code == 2 and result.output.startswith(f"error: {path}: not a readable history database")
    assert "latency (ms)" not in result.output and path.read_bytes() == before


def _fill(directory: Path) -> None:
    """Fill the file system `directory` is on to the last byte (as test_cli_errors does)."""
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)


def test_cli_bench_whose_result_cannot_be_added_says_so_and_keeps_the_json(tmp_path, tmpfs, onnx_artifact):
    disk = tmpfs("256k")
    with open_history(disk / "history.sqlite") as reader:  # open: its WAL files stay, and opening needs no space
        reader.record_bench(bench_result(1.0), commit=None)
        _fill(disk)
        result = run_cli("bench", onnx_artifact, "--history", reader.path, "--json", tmp_path / "bench.json",
                         *bench_flags())
        assert [r.p50 for r in reader.records()] == [1.0]
    assert result.exit_code == 2 and "latency (ms)" in result.output
    assert f"error: the result was not added to the history: {reader.path}: cannot append to it: database or " \
           "disk is full" in result.output
    assert json.loads((tmp_path / "bench.json").read_text())["device"] == "local"
