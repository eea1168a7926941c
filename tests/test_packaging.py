"""The wheel carries the built-in profiles, so an installed edgeprune works without the source tree."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )
    return next(out.glob("edgeprune-*.whl"))


def test_wheel_contains_every_builtin_profile(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for profile in (ROOT / "targets").glob("*.toml"):
        assert f"edgeprune/_builtin/targets/{profile.name}" in names


def run_from_unpacked_wheel(wheel: Path, tmp_path: Path, code: str) -> str:
    """Run `code` with the unpacked wheel first on sys.path and the source tree out of reach."""
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path / "site", capture_output=True, text=True,
                            env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_unpacked_wheel_loads_profiles_without_the_source_tree(wheel, tmp_path):
    code = ("import edgeprune as ep, pathlib; t = ep.load_target('stm32h743'); "
            "print(pathlib.Path(t.source).resolve().is_relative_to(pathlib.Path.cwd().resolve()))")
    assert run_from_unpacked_wheel(wheel, tmp_path, code) == "True"


def test_wheel_contains_every_device_harness(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for script in (ROOT / "runtimes").glob("*.py"):
        assert f"edgeprune/_builtin/runtimes/{script.name}" in names


def test_an_installed_edgeprune_finds_its_harnesses_without_the_source_tree(wheel, tmp_path):
    code = ("from edgeprune.remote import HARNESSES; from edgeprune.remote.upload import runtimes_dir; import pathlib; d = runtimes_dir(); "
            "print(all((d / h).is_file() for h in HARNESSES.values()), "
            "d.resolve().is_relative_to(pathlib.Path.cwd().resolve()))")
    assert run_from_unpacked_wheel(wheel, tmp_path, code) == "True True"
