"""MCU artifacts: the full-int8 .tflite in TensorFlow Lite for Microcontrollers, its arena, and Vela."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgeprune.errors import ArtifactError
from edgeprune.export import litert, mcu
from edgeprune.export.formats import ExportError


def _randn(shape, seed: int) -> np.ndarray:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).numpy()


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mcu")


@pytest.fixture(scope="module")
def cnn_int8(small_cnn, out_dir):
    """zoo.small_cnn as a full-int8 .tflite, the artifact an MCU target gets."""
    path = out_dir / "small_cnn_int8.tflite"
    calibration = [(torch.from_numpy(_randn((1, 1, 8, 8), seed)),) for seed in range(100, 132)]
    facts = litert.export(small_cnn.model, small_cnn.inputs, path, "int8", calibration, require_full_int8=True)
    return path, facts


@pytest.fixture(scope="module")
def vela_result(cnn_int8, out_dir):
    return mcu.vela_compile(cnn_int8[0], "ethos-u55-128", out_dir / "vela")


def test_full_int8_artifact_runs_in_tflm_and_agrees_with_litert(cnn_int8):
    path, facts = cnn_int8
    step = facts["outputs"][0]["scale"]  # one quantization step of the int8 output
    for seed in range(4):
        x = _randn((1, 1, 8, 8), seed)
        (micro,) = mcu.tflm_run(path, [x])
        (lite,) = litert.run(path, [x])
        assert micro.dtype == np.float32 and micro.shape == lite.shape == (1, 10)
        # Same int8 model, different kernels (TFLM reference vs XNNPACK): at most a couple of steps apart.
        assert np.abs(micro - lite).max() <= 2 * step + 1e-9
        assert micro.argmax() == lite.argmax()


def test_tflm_arena_bytes_runs_the_model_and_half_of_it_does_not(cnn_int8):
    path, _ = cnn_int8
    arena = mcu.tflm_arena_bytes(path)
    assert arena > 0
    x = _randn((1, 1, 8, 8), 7)
    assert mcu.tflm_run(path, [x], arena_size=arena)[0].shape == (1, 10)
    with pytest.raises(mcu.ArenaTooSmallError, match=f"arena of {arena // 2} bytes"):
        mcu.tflm_run(path, [x], arena_size=arena // 2)


def test_tflm_refuses_a_tiny_arena_without_crashing(cnn_int8):
    path, _ = cnn_int8
    # TFLM itself would write outside an arena this small (SIGSEGV); the caller gets an error instead.
    with pytest.raises(mcu.ArenaTooSmallError):
        mcu.tflm_run(path, [_randn((1, 1, 8, 8), 0)], arena_size=100)


def test_vela_compile_reports_memory_npu_ops_and_estimates(vela_result):
    result = vela_result
    assert Path(result["vela_tflite"]).is_file()
    assert litert.inspect(result["vela_tflite"])["ops"] == {"CUSTOM:ethos-u": 1}
    assert result["accelerator_config"] == "ethos-u55-128"
    assert result["sram_bytes"] > 0 and result["flash_bytes"] > 0
    assert result["npu_ops"] > 0 and result["cpu_ops"] == 0 and result["cpu_op_names"] == {}
    assert result["estimated_cycles"] > 0 and result["estimated_inference_s"] > 0
    assert result["macs"] > 0
    assert "estimate" in result["estimate_note"]


def test_vela_lists_the_ops_left_on_the_cpu(out_dir):
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    path = out_dir / "mlp_fp32.tflite"
    litert.export(model, (torch.randn(1, 16),), path, "fp32")  # float: the NPU takes none of it
    result = mcu.vela_compile(path, "ethos-u55-128", out_dir / "vela_fp32")
    assert result["npu_ops"] == 0 and result["cpu_ops"] > 0
    assert result["cpu_op_names"].get("FULLY_CONNECTED") == 2
    assert any(f["op"] == "FULLY_CONNECTED" and "Float32" in f["reason"] for f in result["cpu_fallback"])


def test_vela_error_raises_export_error(cnn_int8, out_dir):
    with pytest.raises(ExportError, match="Vela failed for ethos-u55-7"):
        mcu.vela_compile(cnn_int8[0], "ethos-u55-7", out_dir / "vela_bad")


def test_tflm_names_the_op_it_has_no_kernel_for(vela_result):
    # A Vela-compiled model needs the Ethos-U driver's custom op, which host TFLM does not register.
    with pytest.raises(ExportError, match="no kernel for op CUSTOM"):
        mcu.tflm_run(vela_result["vela_tflite"], [_randn((1, 1, 8, 8), 0)])


@pytest.mark.parametrize("call", ["tflm_run", "tflm_arena_bytes", "vela_compile"])
def test_truncated_artifact_raises_artifact_error(cnn_int8, tmp_path, call):
    data = cnn_int8[0].read_bytes()
    truncated = tmp_path / "cut.tflite"
    truncated.write_bytes(data[: len(data) * 3 // 4])
    with pytest.raises(ArtifactError, match="cut.tflite"):
        if call == "tflm_run":
            mcu.tflm_run(truncated, [_randn((1, 1, 8, 8), 0)])
        elif call == "tflm_arena_bytes":
            mcu.tflm_arena_bytes(truncated)
        else:
            mcu.vela_compile(truncated, "ethos-u55-128", tmp_path / "vela")
