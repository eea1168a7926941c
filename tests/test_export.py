"""ep.export: the format follows the profile, the artifact is verified in its runtime, nothing is lost."""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import edgeprune as ep
from edgeprune import zoo
from edgeprune.export import ExportError, export, verify
from edgeprune.export import onnx as onnx_format
from edgeprune.export.verify import COSINE_MIN, TOP1_MIN
from edgeprune.pruning.nm import satisfies_nm


@pytest.fixture(scope="module")
def pruned_for_jetson(jetson_small):
    model, inputs = zoo.small_cnn(), zoo.small_cnn.example_inputs()
    plan = ep.plan(model, inputs, jetson_small, ep.Budget(macs_ratio=0.5))
    assert plan.by_method("n:m")
    return model, inputs, plan, ep.prune(model, plan)


@pytest.fixture(scope="module")
def onnx_artifact(pruned_for_jetson, jetson_small, tmp_path_factory):
    _, inputs, _, pruned = pruned_for_jetson
    return export(pruned, inputs, jetson_small, tmp_path_factory.mktemp("onnx"))


def test_jetson_target_exports_onnx_by_default(onnx_artifact):
    assert onnx_artifact.path.suffix == ".onnx" and onnx_artifact.manifest["format"] == "onnx"


def test_manifest_is_written_beside_the_artifact(onnx_artifact):
    manifest = json.loads(onnx_artifact.manifest_path.read_text())
    assert manifest["artifact"] == onnx_artifact.path.name
    for key in ("target", "plan", "source_model", "sha256", "precision", "verification", "memory", "versions"):
        assert key in manifest
    assert "onnxruntime" in manifest["versions"] and "torch" in manifest["versions"]


def test_onnx_outputs_match_pytorch_within_fp32_tolerance(onnx_artifact, pruned_for_jetson):
    _, _, _, pruned = pruned_for_jetson
    (output,) = onnx_artifact.manifest["verification"]["outputs"]
    assert output["tolerance"] == "|a-b| <= 0.001 + 0.001*|b|" and output["inputs"] > 0
    assert output["max_abs_err"] < 1e-4  # as recorded at export
    x = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(7))  # and on an input of our own
    (got,) = onnx_format.run(onnx_artifact.path, [x.numpy()])
    with torch.no_grad():
        np.testing.assert_allclose(got, pruned(x).numpy(), rtol=1e-3, atol=1e-3)


def test_two_four_sparsity_is_checked_inside_the_onnx_file(onnx_artifact, pruned_for_jetson):
    _, _, plan, _ = pruned_for_jetson
    layers = onnx_artifact.manifest["verification"]["weights"]["layers"]
    two_four = {d.layer for d in plan.by_method("n:m")}
    assert {name for name, r in layers.items() if r["check"] == "2:4 along the input dimension"} == two_four
    stored = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(onnx_artifact.path)).graph.initializer}
    for layer in two_four:  # the tensor it was checked on is that layer's, and 2:4 holds in the file
        assert layers[layer]["stored_as"] == f"{layer}.weight"
        assert satisfies_nm(torch.from_numpy(stored[f"{layer}.weight"].copy()), 2, 4), layer


def test_structured_channel_counts_are_checked_inside_the_artifact(onnx_artifact, pruned_for_jetson):
    _, _, plan, _ = pruned_for_jetson
    layers = onnx_artifact.manifest["verification"]["weights"]["layers"]
    structured = plan.by_method("structured")
    assert structured
    for d in structured:
        assert layers[d.layer]["check"] == f"{d.out_channels[1]} output channels"
        assert layers[d.layer]["shape"][0] == d.out_channels[1] < d.out_channels[0]


def test_verification_catches_weights_tampered_with_after_export(onnx_artifact, pruned_for_jetson, tmp_path):
    _, inputs, _, pruned = pruned_for_jetson
    copy = tmp_path / onnx_artifact.path.name
    model = onnx.load(str(onnx_artifact.path))
    target = next(i for i in model.graph.initializer if len(i.dims) == 4 and (numpy_helper.to_array(i) == 0).any())
    tampered = numpy_helper.to_array(target).copy()
    tampered[tampered == 0] = 0.05  # the 2:4 zeros are gone, and the outputs move
    target.CopyFrom(numpy_helper.from_array(tampered, target.name))
    onnx.save(model, str(copy))
    (tmp_path / onnx_artifact.manifest_path.name).write_text(onnx_artifact.manifest_path.read_text())
    layer = target.name.removesuffix(".weight")
    with pytest.raises(ExportError, match=rf"layer {re.escape(layer)}: 2:4 along the input dimension does not "
                                          rf"hold in {re.escape(target.name)}"):
        verify(pruned, inputs, copy)


def test_verify_passes_on_the_untouched_artifact(onnx_artifact, pruned_for_jetson):
    _, inputs, plan, pruned = pruned_for_jetson
    checks = verify(pruned, inputs, onnx_artifact)
    # every pruned layer checked again, with the findings export recorded, and the outputs compared again
    assert set(checks["weights"]["layers"]) == {d.layer for d in plan.layers if d.method != "keep"}
    assert checks["weights"]["layers"] == onnx_artifact.manifest["verification"]["weights"]["layers"]
    assert checks["runtime"] == "onnxruntime" and checks["outputs"][0]["max_abs_err"] < 1e-4


def test_existing_artifact_is_not_overwritten(onnx_artifact, pruned_for_jetson, jetson_small):
    _, inputs, _, pruned = pruned_for_jetson
    before = onnx_artifact.path.read_bytes()
    with pytest.raises(ep.ArtifactError, match="already exists"):
        export(pruned, inputs, jetson_small, onnx_artifact.path.parent)
    assert onnx_artifact.path.read_bytes() == before


def test_force_replaces_an_existing_artifact(pruned_for_jetson, jetson_small, tmp_path):
    _, inputs, _, pruned = pruned_for_jetson
    export(pruned, inputs, jetson_small, tmp_path)
    art = export(pruned, inputs, jetson_small, tmp_path, force=True)
    assert art.path.is_file() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_int8_without_calibration_is_an_error_and_writes_nothing(pruned_for_jetson, jetson_small, tmp_path):
    _, inputs, _, pruned = pruned_for_jetson
    with pytest.raises(ExportError, match="calibration"):
        export(pruned, inputs, jetson_small, tmp_path / "out", precision="int8")
    assert not (tmp_path / "out").exists()


def test_mcu_target_refuses_fp32(pruned_for_jetson, tmp_path):
    _, inputs, _, pruned = pruned_for_jetson
    with pytest.raises(ExportError, match="full-int8"):
        export(pruned, inputs, "stm32h743", tmp_path, precision="fp32")


def test_onnx_int8_is_qdq_and_keeps_two_four(pruned_for_jetson, jetson_small, tmp_path):
    _, inputs, plan, pruned = pruned_for_jetson
    calibration = [tuple(t + 0.1 * i for t in inputs) for i in range(4)]
    art = export(pruned, inputs, jetson_small, tmp_path, precision="int8", calibration=calibration)
    assert art.manifest["export"]["ops"].get("DequantizeLinear")
    (output,) = art.manifest["verification"]["outputs"]
    assert output["cosine"] >= COSINE_MIN and output["top1_agreement"] >= TOP1_MIN
    layers = art.manifest["verification"]["weights"]["layers"]
    stored = {t.name: t.array for t in onnx_format.weights(art.path).tensors}
    for d in plan.by_method("n:m"):  # the int8 weights in the file keep the pattern
        array = stored[layers[d.layer]["stored_as"]]
        assert array.dtype == np.int8 and satisfies_nm(torch.from_numpy(array.copy()), 2, 4), d.layer


def test_corrupt_onnx_artifact_is_an_error(onnx_artifact, pruned_for_jetson, tmp_path):
    _, inputs, _, pruned = pruned_for_jetson
    broken = tmp_path / onnx_artifact.path.name
    broken.write_bytes(onnx_artifact.path.read_bytes()[:200])
    (tmp_path / onnx_artifact.manifest_path.name).write_text(onnx_artifact.manifest_path.read_text())
    with pytest.raises(ep.ArtifactError, match=rf"{re.escape(str(broken))}: not a loadable ONNX model"):
        verify(pruned, inputs, broken)


def test_an_int8_export_calibrated_on_real_data_is_verified_on_held_out_real_data(trained_small_cnn, tmp_path):
    x, _ = ep.zoo.digits("train")
    test_x, _ = ep.zoo.digits("test")
    art = ep.export(trained_small_cnn, (x[:1],), "stm32h743", tmp_path, precision="int8",
                    calibration=[(x[i : i + 1],) for i in range(64)],
                    verify_inputs=[(test_x[i : i + 1],) for i in range(16)])
    (output,) = art.manifest["verification"]["outputs"]
    assert art.manifest["verification"]["inputs"] == 16
    assert output["cosine"] >= COSINE_MIN and output["top1_agreement"] >= TOP1_MIN
