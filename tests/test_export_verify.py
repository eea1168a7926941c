"""What an export is verified on, and against what: held-out calibration samples for int8, each pruned layer
read from its own tensor in the artifact, and the target the model was pruned for."""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import edgeprune as ep
from edgeprune import zoo
from edgeprune.export import ExportError, export, verify
from edgeprune.export import executorch as et_format
from edgeprune.export import litert as litert_format
from edgeprune.export import onnx as onnx_format
from edgeprune.export.formats import WeightReadback

READERS = {"onnx": onnx_format, "pte": et_format, "tflite": litert_format}


# ------------------------------------------------------------------------ item 3: what int8 is verified on

@pytest.fixture(scope="module")
def trained_cnn():
    """small_cnn trained briefly on real digits (train split), and 40 real training images to calibrate with."""
    x, y = zoo.digits("train")
    torch.manual_seed(0)
    model = ep.finetune(zoo.small_cnn(), DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True),
                        epochs=3, lr=3e-3, quiet=True).model.eval()
    return model, [(x[i : i + 1],) for i in range(40)]


def test_int8_export_with_real_calibration_is_verified_on_held_out_calibration_samples(trained_cnn, tmp_path):
    model, calibration = trained_cnn
    art = export(model, calibration[0], "jetson-orin-nano-8gb", tmp_path, precision="int8", calibration=calibration)
    checks = art.manifest["verification"]
    assert checks["source"] == "held-out calibration"
    assert checks["inputs"] == 8 and art.manifest["calibration_samples"] == 32  # 20 % of 40 held out
    assert all(o["passed"] and o["top1_agreement"] >= 0.75 for o in checks["outputs"])


def test_verify_inputs_are_used_as_given_and_all_calibration_samples_calibrate(trained_cnn, tmp_path):
    model, calibration = trained_cnn
    test_x, _ = zoo.digits("test")
    art = export(model, calibration[0], "jetson-orin-nano-8gb", tmp_path, precision="int8", calibration=calibration,
                 verify_inputs=[(test_x[i : i + 1],) for i in range(12)])
    assert art.manifest["verification"]["source"] == "verify_inputs"
    assert art.manifest["verification"]["inputs"] == 12 and art.manifest["calibration_samples"] == 40


def test_fp32_export_without_verify_inputs_is_verified_on_random_inputs_and_says_so(tmp_path):
    art = export(zoo.small_cnn(), zoo.small_cnn.example_inputs(), "jetson-orin-nano-8gb", tmp_path)
    assert art.manifest["verification"]["source"] == "random" and art.manifest["calibration_samples"] == 0


def test_one_calibration_sample_leaves_none_to_verify_on_and_the_error_says_what_to_pass(trained_cnn, tmp_path):
    model, calibration = trained_cnn
    with pytest.raises(ExportError, match=r"1 calibration sample.*verify_inputs="):
        export(model, calibration[0], "jetson-orin-nano-8gb", tmp_path / "out", precision="int8",
               calibration=calibration[:1])
    assert not (tmp_path / "out").exists()


class _Cancelling(nn.Module):
    """Two almost equal linear maps subtracted: the result is far below their int8 rounding error, so no
    int8 export of it can agree with PyTorch, whatever it is verified on."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(64, 10), nn.Linear(64, 10)
        with torch.no_grad():
            self.b.weight.copy_(self.a.weight + 1e-4 * torch.randn_like(self.a.weight))
            self.b.bias.copy_(self.a.bias)

    def forward(self, x):
        x = x.flatten(1)
        return self.a(x) - self.b(x)


def test_a_failed_int8_verification_says_how_many_samples_were_held_out_and_calibrated_on(tmp_path):
    x, _ = zoo.digits("train")
    calibration = [(x[i : i + 1],) for i in range(10)]
    with pytest.raises(ExportError, match=r"failed verification on 2 held-out calibration sample\(s\) "
                                          r"\(calibrated on the other 8"):
        export(_Cancelling().eval(), calibration[0], "jetson-orin-nano-8gb", tmp_path, precision="int8",
               calibration=calibration)


def test_reverifying_an_int8_artifact_needs_data_like_its_calibration(trained_cnn, tmp_path):
    model, calibration = trained_cnn
    art = export(model, calibration[0], "jetson-orin-nano-8gb", tmp_path, precision="int8", calibration=calibration)
    with pytest.raises(ExportError, match="int8.*verify_inputs="):
        verify(model, calibration[0], art)
    checks = verify(model, calibration[0], art, verify_inputs=calibration[:8])
    assert checks["source"] == "verify_inputs" and all(o["passed"] for o in checks["outputs"])


# --------------------------------------------------------------- item 4: each layer checked on its own tensor

class _Twins(nn.Module):
    """Three 32->32 3x3 convs, equal in shape: `stem` (kept: it sees the input), then `first` and `second`,
    defined in the opposite order to the one they run in (so definition order and graph order differ)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(32, 32, 3, padding=1)
        self.second = nn.Conv2d(32, 32, 3, padding=1)
        self.first = nn.Conv2d(32, 32, 3, padding=1)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.first(x))
        x = torch.relu(self.second(x))
        return self.head(x.mean((2, 3)))


@pytest.fixture(scope="module")
def twins(jetson_small):
    model, inputs = _Twins().eval(), (torch.randn(1, 32, 8, 8, generator=torch.Generator().manual_seed(0)),)
    plan = ep.plan(model, inputs, jetson_small, ep.Budget(macs_ratio=0.7))
    assert {d.layer: d.method for d in plan.layers if d.method != "keep"} == {"first": "n:m", "second": "n:m"}
    return inputs, ep.prune(model, plan)


@pytest.fixture(scope="module")
def twin_artifacts(twins, jetson_small, tmp_path_factory):
    inputs, pruned = twins
    return {fmt: export(pruned, inputs, jetson_small, tmp_path_factory.mktemp(fmt), format=fmt) for fmt in READERS}


def _tampered_copy(artifact, fmt: str, layer: str, tmp_path, *, keep_names: bool = True):
    """A copy of the export's directory in which one weight `layer` had pruned is non-zero again inside the
    artifact's bytes: that layer's 2:4 pattern is broken and nothing else changed."""
    directory = shutil.copytree(artifact.path.parent, tmp_path / "copy")
    path = directory / artifact.path.name
    if not keep_names:
        (directory / (path.stem + et_format.NAMES_SUFFIX)).unlink()
    stored = next(t for t in READERS[fmt].weights(artifact.path).tensors if t.name == f"{layer}.weight")
    data, raw = path.read_bytes(), stored.array.tobytes()
    assert data.count(raw) == 1, f"the {layer} weight's bytes are not stored once, as is, in {path.name}"
    broken = stored.array.copy()
    broken.flat[np.flatnonzero(broken == 0)[0]] = 0.01
    path.write_bytes(data.replace(raw, broken.tobytes()))
    return path


@pytest.mark.parametrize("fmt", list(READERS))
@pytest.mark.parametrize("layer", ["first", "second"])
def test_a_tamper_in_either_of_two_equal_shaped_layers_is_caught_on_that_layers_own_tensor(
        twins, twin_artifacts, fmt, layer, tmp_path):
    inputs, pruned = twins
    other = {"first": "second", "second": "first"}[layer]
    copy = _tampered_copy(twin_artifacts[fmt], fmt, layer, tmp_path)
    with pytest.raises(ExportError) as caught:
        verify(pruned, inputs, copy)
    assert f"layer {layer}: 2:4 along the input dimension does not hold in {layer}.weight" in str(caught.value)
    assert f"layer {other}:" not in str(caught.value)


@pytest.mark.parametrize("fmt", list(READERS))
def test_every_pruned_layer_is_read_from_the_tensor_named_after_it(twin_artifacts, fmt):
    layers = twin_artifacts[fmt].manifest["verification"]["weights"]["layers"]
    assert {name: (r["stored_as"], r["matched_by"], r["passed"]) for name, r in layers.items()} == {
        "first": ("first.weight", "name", True), "second": ("second.weight", "name", True)}


def test_without_recorded_names_each_layer_is_matched_to_the_tensor_holding_its_weights(twins, twin_artifacts, tmp_path):
    inputs, pruned = twins
    copy = _tampered_copy(twin_artifacts["pte"], "pte", "second", tmp_path, keep_names=False)
    labels = [t.name for t in et_format.weights(copy).tensors]  # positional: xnnpack0.conv2d1, ...
    names = [t.name for t in et_format.weights(twin_artifacts["pte"].path).tensors]
    assert not any(label.endswith(".weight") for label in labels)
    with pytest.raises(ExportError) as caught:
        verify(pruned, inputs, copy)
    assert f"layer second: 2:4 along the input dimension does not hold in {labels[names.index('second.weight')]}" \
        in str(caught.value)
    assert "layer first:" not in str(caught.value)


def test_equal_shaped_tensors_that_neither_name_nor_values_tell_apart_fail_as_ambiguous(twins, twin_artifacts):
    from edgeprune.export.verify import check_weights

    _, pruned = twins
    readback = onnx_format.weights(twin_artifacts["onnx"].path)
    unnamed = [replace(t, layer=None) for t in readback.tensors]
    first = next(t for t in unnamed if t.name == "first.weight")
    copy = replace(first, name="copy_of_first", array=first.array * 0.5)  # the same weights, stored twice
    checks = check_weights(ep.record_of(pruned).plan, pruned, WeightReadback(unnamed + [copy]))
    assert checks["layers"]["first"]["error"].startswith(
        "ambiguous: 2 unnamed tensors of shape [32, 32, 3, 3] in the artifact (first.weight, copy_of_first)")
    assert checks["layers"]["second"]["passed"] and checks["layers"]["second"]["matched_by"] == "values"


def test_vit_attention_projections_in_tflite_are_each_checked_on_their_own_weights(tiny_vit, planned, tmp_path):
    """litert-torch names a ViT's k_proj and v_proj weights after q_proj too, and stores them out of order."""
    plan, pruned = planned(tiny_vit, "raspberry-pi-5", ep.Budget(macs_ratio=0.7))
    art = export(pruned, tiny_vit.inputs, "raspberry-pi-5", tmp_path, format="tflite")
    layers = art.manifest["verification"]["weights"]["layers"]
    projections = [d.layer for d in plan.layers if d.layer.endswith(("k_proj", "v_proj")) and d.method != "keep"]
    assert projections and all(layers[p]["passed"] for p in projections)
    stored = [layers[p]["stored_as"] for p in projections]
    assert len(set(stored)) == len(stored)  # no tensor checked for two layers


# ------------------------------------------------------------------------------ item 5: the plan's target

@pytest.fixture(scope="module")
def pruned_for_mcu():
    model, inputs = zoo.small_cnn(), zoo.small_cnn.example_inputs()
    return inputs, ep.prune(model, ep.plan(model, inputs, "stm32h743", ep.Budget(macs_ratio=0.6)))


def test_a_model_pruned_for_one_target_is_not_exported_for_another(pruned_for_mcu, tmp_path):
    inputs, pruned = pruned_for_mcu
    with pytest.raises(ExportError, match=r"pruned for stm32h743, not jetson-orin-nano-8gb.*allow_other_target=True"):
        export(pruned, inputs, "jetson-orin-nano-8gb", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_allow_other_target_exports_it_and_the_manifest_records_both_targets(pruned_for_mcu, tmp_path):
    inputs, pruned = pruned_for_mcu
    art = export(pruned, inputs, "jetson-orin-nano-8gb", tmp_path, allow_other_target=True)
    assert (art.manifest["target"], art.manifest["plan_target"]) == ("jetson-orin-nano-8gb", "stm32h743")
