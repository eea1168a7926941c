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
from edgeprune.export.verify import COSINE_MIN, TOP1_MIN
from helpers import randn


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mcu")


@pytest.fixture(scope="module")
def cnn_int8(small_cnn_int8_tflite):
    """zoo.small_cnn as a full-int8 .tflite, the artifact an MCU target gets (conftest's, shared), and its facts."""
    return small_cnn_int8_tflite.path, small_cnn_int8_tflite.manifest["export"]


@pytest.fixture(scope="module")
def vela_result(cnn_int8, out_dir):
    return mcu.vela_compile(cnn_int8[0], "ethos-u55-128", out_dir / "vela")


def test_full_int8_artifact_runs_in_tflm_and_agrees_with_litert(cnn_int8):
    path, facts = cnn_int8
    step = facts["outputs"][0]["scale"]  # one quantization step of the int8 output
    for seed in range(4):
        x = randn(1, 1, 8, 8, seed=seed).numpy()
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
    x = randn(1, 1, 8, 8, seed=7).numpy()
    assert mcu.tflm_run(path, [x], arena_size=arena)[0].shape == (1, 10)
    with pytest.raises(mcu.ArenaTooSmallError, match=f"arena of {arena // 2} bytes"):
        mcu.tflm_run(path, [x], arena_size=arena // 2)


def test_tflm_refuses_a_tiny_arena_without_crashing(cnn_int8):
    path, _ = cnn_int8
    # TFLM itself would write outside an arena this small (SIGSEGV); the caller gets an error instead.
    with pytest.raises(mcu.ArenaTooSmallError, match=rf"{path.name}: an arena of 100 bytes is below the "):
        mcu.tflm_run(path, [randn(1, 1, 8, 8, seed=0).numpy()], arena_size=100)


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
    litert.export(model, (randn(1, 16, seed=0),), path, "fp32")  # float: the NPU takes none of it
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
        mcu.tflm_run(vela_result["vela_tflite"], [randn(1, 1, 8, 8, seed=0).numpy()])


@pytest.mark.parametrize("call", ["tflm_run", "tflm_arena_bytes", "vela_compile"])
def test_truncated_artifact_raises_artifact_error(cnn_int8, tmp_path, call):
    data = cnn_int8[0].read_bytes()
    truncated = tmp_path / "cut.tflite"
    truncated.write_bytes(data[: len(data) * 3 // 4])
    with pytest.raises(ArtifactError, match="cut.tflite"):
        if call == "tflm_run":
            mcu.tflm_run(truncated, [randn(1, 1, 8, 8, seed=0).numpy()])
        elif call == "tflm_arena_bytes":
            mcu.tflm_arena_bytes(truncated)
        else:
            mcu.vela_compile(truncated, "ethos-u55-128", tmp_path / "vela")


# ------------------------------------------------------- an MLP, and what TFLite-Micro cannot take (issue 10)

def _digits_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                         nn.Linear(256, 10)).eval()


@pytest.fixture(scope="module")
def digits_images():
    from edgeprune import zoo

    images, _ = zoo.digits("train")
    return images  # (N, 1, 8, 8) real digits in [0, 1]


@pytest.fixture(scope="module")
def mlp_int8(digits_images, out_dir):
    """The MLP of issue 10 as the full-int8 .tflite an MCU target gets, calibrated on real digits."""
    path = out_dir / "mlp_int8.tflite"
    calibration = [(digits_images[i:i + 1],) for i in range(64)]
    litert.export(_digits_mlp(), (digits_images[:1],), path, "int8", calibration, require_full_int8=True)
    return path


def test_arena_of_an_mlp_is_measured_although_tflm_crashes_on_arenas_a_few_bytes_short(mlp_int8, digits_images):
    # Searching for the smallest arena probes arenas a few bytes short of what the MLP needs, and TFLM's
    # memory planner crashes (SIGSEGV) on some of them instead of failing: the measurement must survive that.
    arena = mcu.tflm_arena_bytes(mlp_int8)
    x = digits_images[200:201].numpy()
    (micro,) = mcu.tflm_run(mlp_int8, [x], arena_size=arena)
    (lite,) = litert.run(mlp_int8, [x])
    step = litert.inspect(mlp_int8)["outputs"][0]["scale"]
    assert np.abs(micro - lite).max() <= 2 * step + 1e-9 and micro.argmax() == lite.argmax()


@pytest.mark.parametrize("target", ["stm32h743", "corstone-300-ethos-u55-128"])
def test_mlp_exports_for_mcu_targets_and_agrees_with_pytorch_in_tflite_micro(digits_images, target, tmp_path):
    import edgeprune as ep

    calibration = [(digits_images[i:i + 1],) for i in range(64)]
    held_out = [(digits_images[i:i + 1],) for i in range(300, 304)]
    art = ep.export(_digits_mlp(), (digits_images[:1],), target, tmp_path, calibration=calibration,
                    verify_inputs=held_out)
    memory = art.manifest["memory"]
    (tflm,) = memory["tflm_outputs"]  # TFLite-Micro's outputs on the held-out digits against PyTorch's
    assert tflm["inputs"] == 4 and tflm["cosine"] >= COSINE_MIN and tflm["top1_agreement"] >= TOP1_MIN
    assert 0 < memory["tflm_arena_bytes"] <= memory["sram_bytes"] and memory["fits_flash"]


def test_tflm_names_the_op_it_cannot_prepare(mlp_int8, tmp_path):
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    # The first FULLY_CONNECTED made to write int16 from int8 inputs: TFLM's kernel refuses it in Prepare,
    # whatever the arena; the error must name the op, not blame the arena.
    model = schema.ModelT.InitFromPackedBuf(mlp_int8.read_bytes(), 0)
    graph = model.subgraphs[0]
    ops = [model.operatorCodes[op.opcodeIndex].builtinCode for op in graph.operators]
    fc = graph.operators[ops.index(schema.BuiltinOperator.FULLY_CONNECTED)]
    graph.tensors[fc.outputs[0]].type = schema.TensorType.INT16
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=litert.FILE_IDENTIFIER)
    broken = tmp_path / "int16_fc.tflite"
    broken.write_bytes(bytes(builder.Output()))
    with pytest.raises(ExportError, match=r"at op FULLY_CONNECTED \(node \d+, prepare\)") as raised:
        mcu.tflm_run(broken, [np.zeros((1, 1, 8, 8), np.float32)])
    assert not isinstance(raised.value, mcu.ArenaTooSmallError)


def test_model_over_flash_fails_with_how_many_kib_over(digits_images, tmp_path):
    import re

    import edgeprune as ep

    # The MLP's int8 file is ~100 KiB: about twice the flash of this copy of stm32h743.
    text = ep.builtin_targets()["stm32h743"].read_text()
    small = tmp_path / "small-flash-mcu.toml"
    small.write_text(re.sub(r"(?m)^flash_bytes = [0-9_]+", "flash_bytes = 49_152", text))
    calibration = [(digits_images[i:i + 1],) for i in range(16)]
    with pytest.raises(ExportError, match=r"does not fit flash: needs [0-9.]+ KiB, the target has 48\.0 KiB "
                                          r"\([0-9.]+ KiB over\)"):
        ep.export(_digits_mlp(), (digits_images[:1],), small, tmp_path / "out", calibration=calibration,
                  verify_inputs=calibration[:4])
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_mcu_export_names_the_layers_that_stay_float(out_dir):
    # TFLite-Micro and Vela run int8 only; the quantizer has no integer LayerNorm: say which layer and why.
    model = nn.Sequential(nn.Linear(16, 16), nn.LayerNorm(16), nn.Linear(16, 4)).eval()
    calibration = [(randn(1, 16, seed=seed),) for seed in range(8)]
    with pytest.raises(ExportError, match=r"LayerNorm layers \(1: 1\) stay float \(the int8 quantizer has no "
                                          r"integer form for them\)"):
        litert.export(model, calibration[0], out_dir / "layernorm.tflite", "int8", calibration,
                      require_full_int8=True)
