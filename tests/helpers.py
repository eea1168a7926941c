"""Constants and plain functions the test files share; the shared fixtures are in conftest.py.

Test files import these as `from helpers import ...` (tests/ is on sys.path: pytest puts the rootdir
conftest's directory there). One definition of each: the paths of the device scripts, the quick benchmark
settings, the cosine of two outputs, seeded random inputs, the model x target grid of planned-and-pruned
models, and the one way a test runs the command line (in-process) or, where a real process is the point,
`python -m edgeprune`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Iterable

import numpy as np
import pytest
import torch
from click.testing import Result
from torch import nn
from typer.testing import CliRunner

import edgeprune as ep
from edgeprune.remote import BenchSettings

# ------------------------------------------------------------------------------------------------ paths

REPO = Path(__file__).resolve().parent.parent  # the edgeprune beside these tests, not whichever is installed
RUNTIMES_DIR = REPO / "runtimes"  # the scripts uploaded to a device
DEVICE_PY = RUNTIMES_DIR / "device.py"
DATA_DIR = REPO / "tests" / "data"
TARGETS_DIR = REPO / "targets"

# ------------------------------------------------------------------------------------------------ models

TINY_MODELS = ("small_cnn", "tiny_resnet", "tiny_mobilenet_v2", "tiny_convnext", "tiny_vit", "tiny_bert")


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


def layer_channels(module: nn.Module) -> tuple[int, int]:
    """(output channels, input channels) of a Conv or Linear layer, as the plan's rows count them."""
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features
    return module.out_channels, module.in_channels


# --------------------------------------------------------------------------- the model x target grid

# The one grid of (tiny model, target, budget) the policy and pruning tests plan and prune: every family's
# representative with each budget kind, and Ethos-U (Vela compresses zeros) with sparsity. conftest's
# `pruned_case` fixture turns a case into (zoo model, plan, pruned model), planned once per session.
JETSON_SMALL = "jetson_small"  # stands for conftest's `jetson_small` profile: 2:4 thresholds lowered to 16
PI5, STM32, ETHOS = "raspberry-pi-5", "stm32h743", "corstone-300-ethos-u55-128"
GRID_SPARSITY = 0.3


def grid_budget(model: str, target: str, kind: str) -> ep.Budget:
    """The grid's budget of `kind` ("macs" or "sparsity") for `model` on `target`."""
    return macs_budget(model, jetson=target == JETSON_SMALL) if kind == "macs" else ep.Budget(sparsity=GRID_SPARSITY)


def grid_cases(targets: Iterable[str], kinds: Iterable[str], models: Iterable[str] = TINY_MODELS) -> list:
    """pytest params of (model, target, budget) for every model, target and budget kind given."""
    return [pytest.param((model, target, grid_budget(model, target, kind)), id=f"{model}-{target}-{kind}")
            for model in models for target in targets for kind in kinds]


GRID = grid_cases((JETSON_SMALL, PI5, STM32), ("macs", "sparsity")) + grid_cases((ETHOS,), ("sparsity",))


def on_grid(cases: list):
    """Parametrize a test's `pruned_case` (conftest) over `cases` of the grid."""
    return pytest.mark.parametrize("pruned_case", cases, indirect=True)


# ------------------------------------------------------------------------------------------ numbers

def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two outputs, in float64, over all their elements."""
    a, b = np.asarray(a).ravel().astype(np.float64), np.asarray(b).ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    """A standard normal tensor drawn from its own generator: the same for the same seed, whatever ran before."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------ benchmarks

# Enough runs for a result, few enough for a unit test; not for any performance claim.
QUICK_BENCH = BenchSettings(min_runs=10, min_seconds=0.1, warmup_runs=1, warmup_seconds=0.0)


def bench_flags(settings: BenchSettings = QUICK_BENCH) -> list[str]:
    """`settings` as the command-line flags `edgeprune bench` and the harnesses take."""
    return ["--min-runs", str(settings.min_runs), "--min-seconds", str(settings.min_seconds),
            "--warmup-runs", str(settings.warmup_runs), "--warmup-seconds", str(settings.warmup_seconds)]


def matmul_chain_onnx(path: Path, layers: int, width: int = 96, rows: int = 1) -> Path:
    """An ONNX model of `layers` MatMul+Relu steps on a (rows, width) input, written directly with onnx.helper
    (milliseconds, no export): a real artifact whose cost grows with `layers` (and rows), for A/B
    comparisons. rows=32, width=128: about 0.5 MFLOP a layer, tenths of a millisecond."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(layers)
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"]), helper.make_node("Relu", [f"m{i}"], [f"r{i}"])]
        x = f"r{i}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, width])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [rows, width])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path.write_bytes(model.SerializeToString())
    return path


# ------------------------------------------------------------------------------------ the command line

CLI_MODEL = ["-m", "edgeprune.zoo:small_cnn"]  # the model most command lines in the tests are given
CLI_PI = ["-t", "raspberry-pi-5"]
CLI_COLUMNS = "240"  # wide enough that no table or message the tests look for is wrapped


def run_cli(*args, env: "dict | None" = None) -> Result:
    """`edgeprune ARGS...` in-process (typer's CliRunner); arguments are stringified, so paths can be passed.

    Whatever the exit code, a command line never ends in a traceback: any exception other than the exit is
    a failure here, as a user would see it."""
    from edgeprune.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": CLI_COLUMNS, **(env or {})})
    assert isinstance(result.exception, (SystemExit, type(None))), (
        f"edgeprune {' '.join(map(str, args))} raised {result.exception!r}\n{result.output}")
    assert "Traceback" not in result.output, result.output
    return result


def run_cli_ok(*args, env: "dict | None" = None) -> Result:
    """`run_cli`, asserting exit code 0."""
    result = run_cli(*args, env=env)
    assert result.exit_code == 0, f"edgeprune {' '.join(map(str, args))} exited {result.exit_code}:\n{result.output}"
    return result


def edgeprune_env(**extra: str) -> dict:
    """The environment of a user's shell running the edgeprune under test: a bare PATH, a wide terminal."""
    return {"COLUMNS": CLI_COLUMNS, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
            **extra}


def edgeprune_argv(*args) -> list[str]:
    return [sys.executable, "-m", "edgeprune", *map(str, args)]


def run_edgeprune(*args, cwd: "Path | None" = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m edgeprune ARGS...` in a real process, for tests where the process is the point: the entry
    point itself, what a user's terminal shows of an error."""
    return subprocess.run(edgeprune_argv(*args), capture_output=True, text=True, cwd=cwd, env=edgeprune_env(),
                          timeout=timeout)


def start_edgeprune(*args, cwd: "Path | None" = None) -> subprocess.Popen:
    """`python -m edgeprune ARGS...` started in a process group of its own, so that SIGINT to the group is a
    terminal's Ctrl-C; this shell's environment (the SSH client's home), its output piped."""
    env = dict(os.environ, COLUMNS=CLI_COLUMNS, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.Popen(edgeprune_argv(*args), cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


# ------------------------------------------------------------------------------------------ TOML files

def write_toml_file(directory: Path, name: str, text: str) -> Path:
    path = Path(directory) / name
    path.write_text(text, encoding="utf-8")
    return path


def builtin_profile_text(name: str) -> str:
    return (TARGETS_DIR / f"{name}.toml").read_text(encoding="utf-8")


def set_key(text: str, key: str, value: str) -> str:
    """`text` with the (unique) line `key = ...` given `value`; the comment after the value is dropped."""
    new, count = re.subn(rf"(?m)^{re.escape(key)}\s*=.*$", f"{key} = {value}", text)
    assert count == 1, f"expected one line '{key} = ...', found {count}"
    return new
