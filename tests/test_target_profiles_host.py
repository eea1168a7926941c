"""What the shipped profiles tell a user: sources they can look up, and a host profile about their own machine."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

import edgeprune as ep
from helpers import run_cli

NOT_PUBLIC = re.compile(r"REFERENCE\.md|/work/|shared/")


@pytest.mark.parametrize("name", sorted(ep.builtin_targets()))
def test_builtin_profile_cites_only_sources_a_user_can_look_up(name):
    text = ep.builtin_targets()[name].read_text()
    cited = [line.strip() for line in text.splitlines() if NOT_PUBLIC.search(line)]
    assert not cited, f"{name} cites files users do not have: {cited}"


def test_x86_host_profile_reports_the_cores_this_process_may_run_on():
    allowed = os.sched_getaffinity(0)
    one = {min(allowed)}
    os.sched_setaffinity(0, one)  # as `taskset -c 0` or a one-CPU container would
    try:
        assert ep.load_target("x86-64-host").hardware.cores == 1
    finally:
        os.sched_setaffinity(0, allowed)
    assert ep.load_target("x86-64-host").hardware.cores == len(allowed)


def test_x86_host_profile_reports_this_machines_simd_level():
    flags = set(re.search(r"^flags\s*:(.*)$", Path("/proc/cpuinfo").read_text(), re.M).group(1).split())
    expected = ("avx512", 512) if "avx512f" in flags else ("avx2", 256) if "avx2" in flags else ("none", 0)
    hardware = ep.load_target("x86-64-host").hardware
    assert (hardware.simd, hardware.simd_width_bits) == expected


def test_a_users_profile_may_leave_cores_to_the_host_but_not_misspell_it(tmp_path):
    text = ep.builtin_targets()["x86-64-host"].read_text()
    mine = tmp_path / "mine.toml"
    mine.write_text(text.replace('name = "x86-64-host"', 'name = "mine"'))
    assert ep.load_target(mine).hardware.cores == len(os.sched_getaffinity(0))
    mine.write_text(text.replace('cores = "host"', 'cores = "hots"'))
    with pytest.raises(ep.TargetError, match=r"cores"):
        ep.load_target(mine)


def test_targets_show_prints_the_values_detected_on_this_machine():
    hardware = ep.load_target("x86-64-host").hardware
    done = run_cli("targets", "show", "x86-64-host")
    assert done.exit_code == 0, done.output
    assert f"{hardware.cores} cores" in done.output
    assert f"SIMD {hardware.simd} ({hardware.simd_width_bits}-bit)" in done.output
