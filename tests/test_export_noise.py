"""An export prints what edgeprune has to say, not the warnings of the libraries it drives."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import warnings
from pathlib import Path

import edgeprune as ep
from edgeprune import zoo

THIRD_PARTY = re.compile(r"LeafSpec|torchvision is not installed|cpuinfo_utils|Failed to load .*torchao|absl::")


def test_an_onnx_export_prints_no_third_party_noise(tmp_path, capfd, caplog):
    """torch.onnx logs "torchvision is not installed" four times per export, and torch.export a LeafSpec
    FutureWarning: neither reaches the user."""
    with warnings.catch_warnings(record=True) as seen, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        ep.export(zoo.small_cnn().eval(), zoo.small_cnn.example_inputs(), "jetson-orin-nano-8gb", tmp_path, name="cnn")
    out = capfd.readouterr()
    noise = [str(w.message) for w in seen if THIRD_PARTY.search(str(w.message))]
    noise += [r.getMessage() for r in caplog.records if THIRD_PARTY.search(r.getMessage())]
    noise += [line for line in (out.out + out.err).splitlines() if THIRD_PARTY.search(line)]
    assert not noise, noise


def _fresh_process(code: str) -> str:
    """stdout + stderr of `code` run in a new interpreter (import-time noise shows once per process)."""
    root = Path(ep.__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def test_a_first_executorch_export_and_run_print_no_third_party_noise(tmp_path):
    """The first export imports torchao (CUDA kernels it cannot load, a deprecated pytree call) and the first
    run loads XNNPACK's cpuinfo (probing Arm-only /sys files)."""
    out = _fresh_process(
        "import edgeprune as ep; from edgeprune import zoo\n"
        f"ep.export(zoo.small_cnn(), zoo.small_cnn.example_inputs(), 'raspberry-pi-5', {str(tmp_path)!r}, name='cnn')\n"
        "print('exported')")
    noise = [line for line in out.splitlines() if THIRD_PARTY.search(line) or "is an Enum subclass" in line]
    assert out.strip().endswith("exported") and not noise, noise


def test_building_a_transformers_model_prints_no_torchao_noise():
    out = _fresh_process("from edgeprune import zoo; zoo.resnet18(); print('built')")
    assert out.strip() == "built"
