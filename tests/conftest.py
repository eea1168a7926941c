"""Shared fixtures: the zoo's tiny models (built once per session), TOML files in tmp_path, and a Jetson
profile whose 2:4 thresholds the tiny models reach.

Session-scoped models (and `planned`'s plans and pruned models) are shared by every test: a test must
never change one in place. Train or edit a copy: `copy.deepcopy` of a dense model, a fresh `ep.prune(...)`
of a pruned one. `test_pruning.py` checks that `plan` and `prune` leave the caller's model untouched,
which is what makes sharing the dense models safe.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from torch import nn

import edgeprune as ep
from edgeprune import zoo
from helpers import JETSON_SMALL, builtin_profile_text, randn, set_key, write_toml_file


@pytest.fixture(autouse=True, scope="session")
def _history_outside_the_repository(tmp_path_factory):
    """`edgeprune bench` appends each result to a history database, by default ./.edgeprune/history.sqlite:
    for the tests (which run from the repository), one in a temporary directory instead, through the
    variable the CLI's --history default reads. A test of the default itself deletes the variable."""
    from edgeprune.history import ENV_VAR

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(ENV_VAR, str(tmp_path_factory.mktemp("history") / "history.sqlite"))
        yield


@dataclass(frozen=True)
class ZooModel:
    name: str
    model: nn.Module
    inputs: Any  # a tuple of positional tensors or a dict of keyword tensors, as the factory gives them


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


@pytest.fixture
def write_toml(tmp_path) -> Callable[[str, str], Path]:
    """`write_toml("board.toml", text)` writes `text` into this test's tmp_path and returns the path."""
    return lambda name, text: write_toml_file(tmp_path, name, text)


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


@pytest.fixture
def pruned_case(request, zoo_model, jetson_small, planned) -> tuple[ZooModel, ep.Plan, nn.Module]:
    """(zoo model, plan, pruned model) for one (model, target, budget) case of helpers.GRID (`on_grid`)."""
    model, target, budget = request.param
    zm = zoo_model(model)
    plan, pruned = planned(zm, jetson_small if target == JETSON_SMALL else target, budget)
    return zm, plan, pruned


def _state(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="session")
def trained_small_cnn():
    """zoo.small_cnn after 4 seeded epochs of Adam on the digits train split (~93 % test accuracy): the one
    trained model of the session. Shared: never train, prune or edit it in place (copy.deepcopy first);
    at the end of the session its weights are checked unchanged."""
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    model = zoo.small_cnn().train()
    x, y = zoo.digits("train")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    batches = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    for _ in range(4):
        for xb, yb in batches:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
    model.eval()
    trained = _state(model)
    yield model
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, trained[k])]
    assert not changed and not model.training, f"a test changed the shared trained_small_cnn: {changed}"


def _calibration(small_cnn: ZooModel, seeds: range) -> list:
    return [tuple(randn(*t.shape, seed=seed) for t in small_cnn.inputs) for seed in seeds]


@pytest.fixture(scope="session")
def small_cnn_tflite(small_cnn, tmp_path_factory) -> ep.Artifact:
    """zoo.small_cnn as the fp32 .tflite (LiteRT) a Raspberry Pi 5 gets, with its manifest; exported once.
    Shared: tests copy the file before changing it."""
    out = tmp_path_factory.mktemp("small-cnn-tflite")
    return ep.export(small_cnn.model, small_cnn.inputs, "raspberry-pi-5", out, format="tflite")


@pytest.fixture(scope="session")
def small_cnn_int8_tflite(small_cnn, tmp_path_factory) -> ep.Artifact:
    """zoo.small_cnn as the full-int8 .tflite an MCU target (stm32h743, TFLite-Micro) gets, calibrated on 32
    seeded inputs (all of them: separate seeded inputs verify it), with its manifest; exported once.
    Shared: tests copy the file before changing it."""
    out = tmp_path_factory.mktemp("small-cnn-int8-tflite")
    return ep.export(small_cnn.model, small_cnn.inputs, "stm32h743", out, precision="int8",
                     calibration=_calibration(small_cnn, range(100, 132)),
                     verify_inputs=_calibration(small_cnn, range(200, 208)))


@pytest.fixture(scope="session")
def small_cnn_onnx(small_cnn, tmp_path_factory) -> ep.Artifact:
    """zoo.small_cnn as the ONNX a Jetson gets, with its manifest: the quickest artifact to export and to time
    on `local`; exported once. Shared: tests copy the file before changing it."""
    return ep.export(small_cnn.model, small_cnn.inputs, "jetson-orin-nano-8gb", tmp_path_factory.mktemp("onnx"))


@dataclass(frozen=True)
class BenchArtifacts:
    """Exported small-CNN artifacts a device harness can run: one per runtime."""
    pte: Path      # ExecuTorch + XNNPACK, fp32 (raspberry-pi-5)
    tflite: Path   # LiteRT, fp32 (raspberry-pi-5)
    onnx: Path     # ONNX, fp32 (jetson-orin-nano-8gb)
    mcu: Path      # full-int8 .tflite for TFLite-Micro (stm32h743)


@pytest.fixture(scope="session")
def bench_artifacts(small_cnn, small_cnn_onnx, small_cnn_tflite, small_cnn_int8_tflite,
                    tmp_path_factory) -> BenchArtifacts:
    """Exported once per session (~15 s); tests copy a file before changing it."""
    pte = ep.export(small_cnn.model, small_cnn.inputs, "raspberry-pi-5", tmp_path_factory.mktemp("pte"), format="pte")
    return BenchArtifacts(
        pte=pte.path,
        tflite=small_cnn_tflite.path,
        onnx=small_cnn_onnx.path,
        mcu=small_cnn_int8_tflite.path,
    )


def _ssh_server_or_skip(root: Path, server: str = "sshd", sftp: bool = True):
    """A real SSH server on loopback: OpenSSH's sshd, or dropbear. Outside CI a machine without it skips
    these tests with the reason; with CI=true they fail instead, so CI can never pass by skipping them."""
    from sshd_server import DropbearServer, SSHServer, SSHServerUnavailable

    try:
        return (DropbearServer if server == "dropbear" else SSHServer).start(root, sftp=sftp)
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


@pytest.fixture(scope="module", params=["sshd", "dropbear"])
def no_sftp_server(request, tmp_path_factory):
    """An SSH server that offers no SFTP: OpenSSH without `Subsystem sftp`, dropbear without sftp-server."""
    server = _ssh_server_or_skip(tmp_path_factory.mktemp(f"{request.param}-no-sftp"), request.param, sftp=False)
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


@pytest.fixture
def sysfs(tmp_path, monkeypatch):
    """A FakeSysfs (remote_helpers) that this test's `local` runs read in place of /sys."""
    from remote_helpers import FakeSysfs

    fake = FakeSysfs(tmp_path / "sysfs")
    monkeypatch.setenv("EDGEPRUNE_TEST_SYSFS", str(fake.root))  # device_state.SYSFS_ENV; the harness inherits it
    return fake


@pytest.fixture
def drawn(monkeypatch):
    """The figures the plot functions saved, left open for inspection."""
    import matplotlib.pyplot as plt

    kept = []
    monkeypatch.setattr(plt, "close", lambda fig=None: kept.append(fig))
    yield kept
    monkeypatch.undo()
    for fig in kept:
        plt.close(fig)
