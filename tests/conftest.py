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


def _ssh_server_or_skip(root: Path):
    """A real sshd on loopback. Outside CI a machine without sshd skips these tests with the reason;
    with CI=true they fail instead, so CI can never pass by skipping them."""
    from sshd_server import SSHServer, SSHServerUnavailable

    try:
        return SSHServer.start(root)
    except (SSHServerUnavailable, OSError) as exc:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI=true but the loopback sshd is unavailable: {exc}")
        pytest.skip(f"loopback sshd unavailable: {exc}")


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
