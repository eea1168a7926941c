"""ep.reserve: one connection and one lock for many runs on a device, the lease renewed while it lives,
released on leaving (also on Ctrl-C)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

import edgeprune as ep
from edgeprune.devices import local_device
from helpers import QUICK_BENCH, matmul_chain_onnx
from remote_helpers import loopback

QUICK = ep.CompareSettings(rounds=6, more_rounds=4, max_rounds=10, round_runs=3, warmup_runs=1, warmup_seconds=0,
                           threads=1)


@pytest.fixture(scope="module")
def chains(tmp_path_factory):
    d = tmp_path_factory.mktemp("chains")
    return matmul_chain_onnx(d / "base.onnx", 16, width=128, rows=32), matmul_chain_onnx(d / "slow.onnx", 48, width=128, rows=32)


def lease_of(device: ep.Device) -> dict:
    return json.loads((Path(device.workdir) / "lock" / "lease.json").read_text())


def test_runs_in_a_reservation_share_one_lock_which_others_cannot_take(chains, tmp_path):
    base, slow = chains
    device = local_device(workdir=str(tmp_path / "work"), lock_wait_s=0)
    with ep.reserve(device) as board:
        owner = lease_of(device)["owner"]
        assert board.compare(base, slow, settings=QUICK).verdict is ep.Verdict.SLOWER
        assert board.bench(base, settings=QUICK_BENCH).n >= QUICK_BENCH.min_runs
        assert board.compare(slow, base, settings=QUICK).verdict is ep.Verdict.FASTER
        assert lease_of(device)["owner"] == owner
        with pytest.raises(ep.DeviceBusyError, match="device busy"):
            ep.bench(base, device, settings=QUICK_BENCH)
    assert not (Path(device.workdir) / "lock").exists()
    assert list(Path(device.workdir).glob("run-*")) == []


def test_a_series_gives_each_artifact_its_own_result_in_order(chains, tmp_path):
    base, slow = chains
    with ep.reserve(local_device(workdir=str(tmp_path / "work"), lock_wait_s=0)) as board:
        results = board.bench_series([base, slow, base], settings=QUICK_BENCH)
    assert [Path(r.artifact).name for r in results] == ["base.onnx", "slow.onnx", "base.onnx"]
    assert results[1].p50 > 1.5 * max(results[0].p50, results[2].p50)  # three times the MatMuls
    shares = {r.overhead_s["total_s"] for r in results}
    assert len(shares) == 1 and all(r.n >= QUICK_BENCH.min_runs for r in results)


def test_a_series_of_two_runtimes_is_refused(chains, bench_artifacts, tmp_path):
    with ep.reserve(local_device(workdir=str(tmp_path / "work"), lock_wait_s=0)) as board:
        with pytest.raises(ep.SettingsError, match="must share one runtime, got executorch, onnx"):
            board.bench_series([chains[0], bench_artifacts.pte])


def test_the_lease_is_renewed_while_the_reservation_lives(chains, tmp_path):
    base, _ = chains
    # a 6 s lease, renewed every 2 s: expired leases are reclaimed by the next runner, live ones not
    device = local_device(workdir=str(tmp_path / "work"), lock_wait_s=0, lease_s=6, deadline_s=6)
    with ep.reserve(device):
        first = lease_of(device)["expires"]
        time.sleep(8)  # past the first lease
        assert lease_of(device)["expires"] > first + 2
        with pytest.raises(ep.DeviceBusyError):
            ep.bench(base, device, settings=QUICK_BENCH)


def test_an_operation_after_the_lock_was_lost_is_refused(chains, tmp_path):
    base, slow = chains
    device = local_device(workdir=str(tmp_path / "work"), lock_wait_s=0)
    with ep.reserve(device) as board:
        shutil.rmtree(Path(device.workdir) / "lock")  # an expired lease reclaimed by another runner
        with pytest.raises(ep.DeviceBusyError, match="lock was lost"):
            board.compare(base, slow, settings=QUICK)


def test_ctrl_c_in_a_reservation_releases_the_device(chains, tmp_path):
    device = local_device(workdir=str(tmp_path / "work"), lock_wait_s=0)
    with pytest.raises(KeyboardInterrupt):
        with ep.reserve(device):
            raise KeyboardInterrupt
    assert not (Path(device.workdir) / "lock").exists()
    assert list(Path(device.workdir).glob("run-*")) == []


def test_a_reservation_over_ssh_uploads_each_artifact_once(chains, sshd, tmp_path):
    base, slow = chains
    device = loopback(sshd, tmp_path)
    uploads = []
    with ep.reserve(device, progress=lambda stage, info: uploads.append(info["file"]) if stage == "upload" else None) \
            as board:
        board.compare(base, slow, settings=QUICK)
        board.compare(base, slow, settings=QUICK)
    assert uploads.count("base.onnx") == 1 and uploads.count("slow.onnx") == 1 and uploads.count("bench_onnx.py") == 1
    assert list((tmp_path / "device-work").glob("run-*")) == []
