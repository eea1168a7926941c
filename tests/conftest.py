"""Shared fixtures: the zoo's tiny models (built once per session), TOML files in tmp_path, and a Jetson
profile whose 2:4 thresholds the tiny models reach.

Session-scoped models (and `planned`'s plans and pruned models) are shared by every test: a test must
never change one in place. Train or edit a copy: `copy.deepcopy` of a dense model, a fresh `ep.prune(...)`
of a pruned one. `test_pruning.py` checks that `plan` and `prune` leave the caller's model untouched,
which is what makes sharing the dense models safe.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
from torch import nn

import edgeprune as ep
from edgeprune import zoo

TINY_MODELS = ("small_cnn", "tiny_resnet", "tiny_mobilenet_v2", "tiny_convnext", "tiny_vit", "tiny_bert")
TARGETS_DIR = Path(__file__).resolve().parent.parent / "targets"


@dataclass(frozen=True)
class ZooModel:
    name: str
    model: nn.Module
    inputs: Any  # a tuple of positional tensors or a dict of keyword tensors, as the factory gives them


def macs_budget(model: str, jetson: bool = False) -> ep.Budget:
    """A MACs budget the policy's rules can meet on a tiny model. tiny_resnet at 32x32 spends most of its
    MACs in its stem, which is always kept (its floor is ~0.76-0.84 of the MACs, by target). On Jetson the
    2:4 layers alone reach ~0.5-0.6, so 0.5 makes the policy shrink channels on top of 2:4."""
    if model == "tiny_resnet":
        return ep.Budget(macs_ratio=0.85)
    return ep.Budget(macs_ratio=0.5 if jetson else 0.7)


# A plan lands just inside its budget, not anywhere inside it: after the search the policy gives channels
# back, one aligned unit (or attention head) at a time, while the budget holds. On the tiny models, at
# alignments of 4-8 channels, that leaves the measured MACs or sparsity within this much of the budget
# (measured over budgets 0.4-0.9 of the MACs and 0.2-0.5 sparsity: at most 0.031 and 0.015).
BUDGET_TOLERANCE = 0.05


def _build(name: str) -> ZooModel:
    factory = getattr(zoo, name)
    return ZooModel(name, factory(), factory.example_inputs())


@pytest.fixture(scope="session")
def small_cnn() -> ZooModel:
    return _build("small_cnn")


@pytest.fixture(scope="session")
def tiny_resnet() -> ZooModel:
    return _build("tiny_resnet")


@pytest.fixture(scope="session")
def tiny_mobilenet_v2() -> ZooModel:
    return _build("tiny_mobilenet_v2")


@pytest.fixture(scope="session")
def tiny_convnext() -> ZooModel:
    return _build("tiny_convnext")


@pytest.fixture(scope="session")
def tiny_vit() -> ZooModel:
    return _build("tiny_vit")


@pytest.fixture(scope="session")
def tiny_bert() -> ZooModel:
    return _build("tiny_bert")


@pytest.fixture
def zoo_model(request) -> Callable[[str], ZooModel]:
    """`zoo_model("tiny_vit")`: the session's model by name, for tests parametrized over TINY_MODELS."""
    return request.getfixturevalue


def layer_channels(module: nn.Module) -> tuple[int, int]:
    """(output channels, input channels) of a Conv or Linear layer, as the plan's rows count them."""
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features
    return module.out_channels, module.in_channels


def write_toml_file(directory: Path, name: str, text: str) -> Path:
    path = Path(directory) / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def write_toml(tmp_path) -> Callable[[str, str], Path]:
    """`write_toml("board.toml", text)` writes `text` into this test's tmp_path and returns the path."""
    return lambda name, text: write_toml_file(tmp_path, name, text)


def builtin_profile_text(name: str) -> str:
    return (TARGETS_DIR / f"{name}.toml").read_text(encoding="utf-8")


def set_key(text: str, key: str, value: str) -> str:
    """`text` with the (unique) line `key = ...` given `value`; the comment after the value is dropped."""
    new, count = re.subn(rf"(?m)^{re.escape(key)}\s*=.*$", f"{key} = {value}", text)
    assert count == 1, f"expected one line '{key} = ...', found {count}"
    return new


@pytest.fixture(scope="session")
def jetson_small(tmp_path_factory) -> Path:
    """Jetson Orin Nano with the 2:4 width thresholds lowered from 256 to 16 channels, so that the tiny
    models have layers that qualify for n:m. Users add profiles by path, so this goes in by path too."""
    text = builtin_profile_text("jetson-orin-nano-8gb")
    text = set_key(set_key(text, "min_in_channels", "16"), "min_out_channels", "16")
    return write_toml_file(tmp_path_factory.mktemp("targets"), "jetson-small.toml", text)


@pytest.fixture(scope="session")
def planned() -> Callable[..., tuple[ep.Plan, nn.Module]]:
    """`planned(zoo_model, target, budget)`: (plan, pruned model), computed once per session.

    Shared: tests must not change the plan or the pruned model (deep-copy the model to train it).
    """
    cache: dict[tuple, tuple[ep.Plan, nn.Module]] = {}

    def get(zm: ZooModel, target, budget: ep.Budget, **kwargs) -> tuple[ep.Plan, nn.Module]:
        key = (zm.name, str(target), budget, tuple(sorted(kwargs.items())))
        if key not in cache:
            plan = ep.plan(zm.model, zm.inputs, target, budget, **kwargs)
            cache[key] = (plan, ep.prune(zm.model, plan))
        return cache[key]

    return get


@dataclass(frozen=True)
class BenchArtifacts:
    """Exported small-CNN artifacts a device harness can run: one per runtime."""
    pte: Path      # ExecuTorch + XNNPACK, fp32 (raspberry-pi-5)
    tflite: Path   # LiteRT, fp32 (raspberry-pi-5)
    onnx: Path     # ONNX, fp32 (jetson-orin-nano-8gb)
    mcu: Path      # full-int8 .tflite for TFLite-Micro (stm32h743)


@pytest.fixture(scope="session")
def bench_artifacts(small_cnn, tmp_path_factory) -> BenchArtifacts:
    """Exported once per session (~15 s); tests copy a file before changing it."""
    import torch

    out = tmp_path_factory.mktemp("bench-artifacts")
    model, inputs = small_cnn.model, small_cnn.inputs
    calibration = [tuple(torch.randn_like(t) for t in inputs) for _ in range(4)]
    return BenchArtifacts(
        pte=ep.export(model, inputs, "raspberry-pi-5", out / "pte", format="pte").path,
        tflite=ep.export(model, inputs, "raspberry-pi-5", out / "tflite", format="tflite").path,
        onnx=ep.export(model, inputs, "jetson-orin-nano-8gb", out / "onnx").path,
        mcu=ep.export(model, inputs, "stm32h743", out / "mcu", precision="int8", calibration=calibration).path,
    )


def _ssh_server_or_skip(root: Path, server: str = "sshd"):
    """A real SSH server on loopback: OpenSSH's sshd, or dropbear. Outside CI a machine without it skips
    these tests with the reason; with CI=true they fail instead, so CI can never pass by skipping them."""
    from sshd_server import DropbearServer, SSHServer, SSHServerUnavailable

    try:
        return (DropbearServer if server == "dropbear" else SSHServer).start(root)
    except (SSHServerUnavailable, OSError, subprocess.CalledProcessError) as exc:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI=true but the loopback {server} is unavailable: {exc}")
        pytest.skip(f"loopback {server} unavailable: {exc}")


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    """One sshd for the session's tests that leave it running."""
    server = _ssh_server_or_skip(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


@pytest.fixture
def sshd_private(tmp_path):
    """An sshd of this test's own, for tests that kill or restart it."""
    server = _ssh_server_or_skip(tmp_path / "sshd")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def dropbear(tmp_path_factory):
    """One dropbear (the SSH server of OpenWrt and many Yocto/Buildroot images) for the session's tests."""
    server = _ssh_server_or_skip(tmp_path_factory.mktemp("dropbear"), "dropbear")
    yield server
    server.stop()


# ------------------------------------------------------------------------------------------ fault fixtures

def _needs_root(what: str) -> None:
    """Skip outside CI when `what` needs root here; with CI=true (CI runs as root) fail instead, so that
    CI can never pass by skipping a fault test."""
    message = f"{what} needs root (CI runs as root)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI=true but {message}")
    pytest.skip(message)


@dataclass(frozen=True)
class LocalUser:
    name: str
    uid: int
    gid: int
    home: Path

    def run(self, argv: list[str], **kwargs) -> "subprocess.CompletedProcess":
        """Run `argv` as this user (setpriv: no shell, no PAM session in between)."""
        return subprocess.run(["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups", "--",
                               *argv], **kwargs)


OTHER_USER = "edgeprune-other"


@pytest.fixture(scope="session")
def other_user() -> LocalUser:
    """A second local account on this machine (created when missing): the other user of a shared board."""
    import pwd

    if os.geteuid() != 0:
        _needs_root("a second local user")
    try:
        entry = pwd.getpwnam(OTHER_USER)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", OTHER_USER], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        entry = pwd.getpwnam(OTHER_USER)
    return LocalUser(entry.pw_name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir))


@pytest.fixture
def tmpfs(tmp_path) -> Callable[..., Path]:
    """`tmpfs("64k")`: a tmpfs of that size mounted in this test's tmp_path (a full disk on demand);
    `tmpfs("64k", read_only=True)`: the same, read-only (root ignores file modes, not a read-only mount)."""
    mounted: list[Path] = []

    def mount(size: str = "64k", *, read_only: bool = False) -> Path:
        if os.geteuid() != 0:
            _needs_root("mounting a tmpfs")
        point = tmp_path / f"tmpfs-{len(mounted)}"
        point.mkdir()
        options = f"size={size},mode=0755" + (",ro" if read_only else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            _needs_root(f"mounting a tmpfs ({done.stderr.strip()})")
        mounted.append(point)
        return point

    yield mount
    for point in reversed(mounted):
        subprocess.run(["umount", "-l", str(point)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
