"""What an export is verified on, and against what: held-out calibration samples for int8, each pruned layer
read from its own tensor in the artifact, and the target the model was pruned for."""

from __future__ import annotations

import copy
import re
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

import edgeprune as ep
from edgeprune import zoo
from edgeprune.export import ExportError, export, verify
from edgeprune.export import executorch as et_format
from edgeprune.export import litert as litert_format
from edgeprune.export import onnx as onnx_format
from edgeprune.export.formats import WeightReadback
from edgeprune.export.verify import ATOL, COSINE_MIN, RTOL, TOP1_MIN, compare_outputs, likeness

READERS = {"onnx": onnx_format, "pte": et_format, "tflite": litert_format}
RUNTIMES = {"onnx": "onnxruntime", "pte": "ExecuTorch (XNNPACK)", "tflite": "LiteRT"}
OUTPUT_FAILED = re.compile(r"output \d+: .* does not hold")  # how a verification error names an output


# ------------------------------------------------------------------------ item 3: what int8 is verified on

@pytest.fixture(scope="module")
def trained_cnn(trained_small_cnn):
    """The session's small_cnn trained on real digits (train split), and 40 real training images to calibrate with."""
    x, _ = zoo.digits("train")
    return trained_small_cnn, [(x[i : i + 1],) for i in range(40)]


def test_int8_export_with_real_calibration_is_verified_on_held_out_calibration_samples(trained_cnn, tmp_path):
    model, calibration = trained_cnn
    art = export(model, calibration[0], "jetson-orin-nano-8gb", tmp_path, precision="int8", calibration=calibration)
    checks = art.manifest["verification"]
    assert checks["source"] == "held-out calibration"
    assert checks["inputs"] == 8 and art.manifest["calibration_samples"] == 32  # 20 % of 40 held out
    (output,) = checks["outputs"]
    assert output["inputs"] == 8 and output["cosine"] >= COSINE_MIN and output["top1_agreement"] >= TOP1_MIN


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
    (output,) = checks["outputs"]
    assert checks["source"] == "verify_inputs" and output["inputs"] == 8
    assert output["cosine"] >= COSINE_MIN and output["top1_agreement"] >= TOP1_MIN


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


def _one_zero_set(stored: np.ndarray) -> np.ndarray:
    """The first zero made 0.01: one N:M group broken."""
    broken = stored.copy()
    broken.flat[np.flatnonzero(broken == 0)[0]] = 0.01
    return broken


def _tampered_copy(artifact, fmt: str, layer: str, tmp_path, *, keep_names: bool = True, tamper=_one_zero_set):
    """A copy of the export's directory in which `layer`'s weight is `tamper(stored weight)` inside the
    artifact's bytes (by default one weight it had pruned is non-zero again: its 2:4 pattern is broken) and
    nothing else changed."""
    directory = shutil.copytree(artifact.path.parent, tmp_path / "copy")
    path = directory / artifact.path.name
    if not keep_names:
        (directory / (path.stem + et_format.NAMES_SUFFIX)).unlink()
    stored = next(t for t in READERS[fmt].weights(artifact.path).tensors if t.name == f"{layer}.weight")
    data, raw = path.read_bytes(), stored.array.tobytes()
    assert data.count(raw) == 1, f"the {layer} weight's bytes are not stored once, as is, in {path.name}"
    broken = tamper(stored.array)
    assert broken.dtype == stored.array.dtype and broken.shape == stored.array.shape
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
    assert {name: (r["stored_as"], r["matched_by"], r["check"]) for name, r in layers.items()} == {
        "first": ("first.weight", "name", "2:4 along the input dimension"),
        "second": ("second.weight", "name", "2:4 along the input dimension")}


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
    projections = {d.layer: d for d in plan.layers if d.layer.endswith(("k_proj", "v_proj")) and d.method != "keep"}
    assert projections and {d.method for d in projections.values()} == {"structured"}
    # each found with its own pruned width
    assert {p: layers[p]["shape"][0] for p in projections} == {p: d.out_channels[1] for p, d in projections.items()}
    stored = [layers[p]["stored_as"] for p in projections]
    assert len(set(stored)) == len(stored)  # no tensor checked for two layers


# ----------------------------------------------------- outputs: the artifact's in its runtime against PyTorch's

def _shifted(model: nn.Module, by: float) -> nn.Module:
    """A copy of the small CNN whose every output is `by` higher (its classifier's bias shifted): checked
    against the small CNN's artifact, that artifact's outputs genuinely differ from the model's by `by`."""
    shifted = copy.deepcopy(model)
    with torch.no_grad():
        shifted.classifier.bias += by
    return shifted


@pytest.mark.parametrize("fmt", list(RUNTIMES))
def test_an_artifact_whose_outputs_differ_beyond_the_fp32_tolerance_fails_naming_runtime_output_and_difference(
        small_cnn, bench_artifacts, fmt):
    with pytest.raises(ExportError, match=rf"{re.escape(RUNTIMES[fmt])} output 0: \|a-b\| <= 0\.001 \+ "
                                          rf"0\.001\*\|b\| does not hold \(max abs err 0\.05, ") as caught:
        verify(_shifted(small_cnn.model, 0.05), small_cnn.inputs, getattr(bench_artifacts, fmt))
    assert isinstance(caught.value, ep.EdgepruneError) and "layer" not in str(caught.value)


@pytest.mark.parametrize("fmt", list(RUNTIMES))
def test_outputs_within_the_fp32_tolerance_pass_with_the_difference_recorded(small_cnn, bench_artifacts, fmt):
    checks = verify(_shifted(small_cnn.model, 2e-4), small_cnn.inputs, getattr(bench_artifacts, fmt))
    (output,) = checks["outputs"]
    assert checks["runtime"] == RUNTIMES[fmt] and output["inputs"] == checks["inputs"] > 1
    assert output["max_abs_err"] == pytest.approx(2e-4, abs=2e-5)  # the shift, plus float rounding


def _fp32(reference: list[float], got: list[float]) -> dict:
    (result,) = compare_outputs([[np.array([reference])]], [[np.array([got])]], "fp32")
    return result


def test_fp32_outputs_agree_within_atol_plus_rtol_times_the_pytorch_value_and_not_beyond():
    assert (ATOL, RTOL) == (1e-3, 1e-3)
    reference = [0.0, 10.0]  # bounds: 1e-3 where PyTorch gives 0, 1e-3 + 1e-3 * 10 = 1.1e-2 where it gives 10
    assert _fp32(reference, [0.99e-3, 10 - 0.99 * 1.1e-2])["passed"]
    assert not _fp32(reference, [1.01e-3, 10.0])["passed"]  # beyond the absolute part
    assert not _fp32(reference, [0.0, 10 + 1.01 * 1.1e-2])["passed"]  # beyond the relative part
    assert _fp32(reference, [0.0, 10 + 1.01 * 1.1e-2])["max_abs_err"] == pytest.approx(1.111e-2)


def test_fp32_outputs_are_compared_on_every_verification_input():
    same, off = np.zeros((1, 4)), np.full((1, 4), 0.01)
    results = compare_outputs([[same], [same], [same]], [[same], [same], [off]], "fp32")
    assert [(r["inputs"], r["passed"], r["max_abs_err"]) for r in results] == [(3, False, pytest.approx(0.01))]


def test_each_model_output_is_compared_on_its_own():
    first, second = np.ones((1, 3)), np.ones((1, 5))
    results = compare_outputs([[first, second]], [[first, second + 0.5]], "fp32")
    assert [(r["output"], r["passed"]) for r in results] == [(0, True), (1, False)]


def _int8(reference: list[np.ndarray], got: list[np.ndarray]) -> dict:
    (result,) = compare_outputs([[r] for r in reference], [[g] for g in got], "int8")
    return result


def test_int8_outputs_need_a_cosine_of_at_least_0_97():
    assert COSINE_MIN == 0.97
    reference = np.zeros((1, 10))
    reference[0, 0] = 10.0
    off_axis = np.zeros((1, 10))
    off_axis[0, 2:4] = [10 / np.sqrt(2), -10 / np.sqrt(2)]  # orthogonal to the reference, as long

    def at(cosine: float) -> np.ndarray:  # the reference turned by the angle of `cosine`, its top-1 kept
        return reference + np.sqrt(1 / cosine**2 - 1) * off_axis

    assert _int8([reference], [at(0.975)])["passed"]
    failed = _int8([reference], [at(0.965)])
    assert not failed["passed"] and failed["cosine"] == pytest.approx(0.965) and failed["top1_agreement"] == 1.0


def test_int8_outputs_need_the_top1_class_of_at_least_three_quarters_of_the_inputs():
    assert TOP1_MIN == 0.75
    agree, swapped = np.array([[1.0, 0.999, 0.0]]), np.array([[0.999, 1.0, 0.0]])  # cosine ~1, top-1 differs
    assert _int8([agree] * 4, [agree] * 3 + [swapped])["passed"]
    failed = _int8([agree] * 4, [agree] * 2 + [swapped] * 2)
    assert not failed["passed"] and failed["top1_agreement"] == 0.5 and failed["cosine"] > 0.999


# --------------------------------- sparsity and channel counts of a plan with every kind of layer, in each format

MIXED_RECIPE = {"layers": {"expand.0": {"method": "unstructured", "amount": 0.5}}}
MIXED_CHECKS = {"res.0": "16 output channels", "branch_b.0": "24 output channels",
                "expand.0": "zero fraction >= 0.5000"}


@pytest.fixture(scope="module")
def mixed(small_cnn):
    """small_cnn planned for the Pi with half of expand.0's weights zeroed (a recipe's unstructured layer) and
    the rest of the budget met by removing channels of res.0 and branch_b.0: (plan, pruned model)."""
    plan = ep.plan(small_cnn.model, small_cnn.inputs, "raspberry-pi-5", ep.Budget(macs_ratio=0.7),
                   recipe=MIXED_RECIPE)
    assert {d.layer: (d.method, d.amount if d.method == "unstructured" else d.out_channels)
            for d in plan.layers if d.method != "keep"} == {
        "res.0": ("structured", (32, 16)), "branch_b.0": ("structured", (32, 24)), "expand.0": ("unstructured", 0.5)}
    return plan, ep.prune(small_cnn.model, plan)


@pytest.fixture(scope="module")
def mixed_artifacts(small_cnn, mixed, tmp_path_factory):
    _, pruned = mixed
    return {fmt: export(pruned, small_cnn.inputs, "raspberry-pi-5", tmp_path_factory.mktemp(fmt), format=fmt)
            for fmt in READERS}


@pytest.mark.parametrize("fmt", list(READERS))
def test_each_pruned_layer_is_checked_inside_the_artifact_for_what_the_plan_did_to_it(mixed_artifacts, fmt):
    layers = mixed_artifacts[fmt].manifest["verification"]["weights"]["layers"]
    assert {name: r["check"] for name, r in layers.items()} == MIXED_CHECKS
    # what was measured in the stored tensors, not only the verdict
    assert (layers["res.0"]["shape"][0], layers["branch_b.0"]["shape"][0]) == (16, 24)
    assert layers["expand.0"]["zero_fraction"] == pytest.approx(0.5, abs=1e-9)


def _zeros_filled_in(stored: np.ndarray) -> np.ndarray:
    """Every zero made 1e-30: the zero fraction drops to 0, the outputs move by far less than the tolerance."""
    return np.where(stored == 0, np.float32(1e-30), stored).astype(stored.dtype)


@pytest.mark.parametrize("fmt", list(READERS))
def test_an_unstructured_layer_whose_zeros_were_filled_in_inside_the_artifact_fails_verification_naming_it(
        mixed, mixed_artifacts, fmt, small_cnn, tmp_path):
    _, pruned = mixed
    copy_path = _tampered_copy(mixed_artifacts[fmt], fmt, "expand.0", tmp_path, tamper=_zeros_filled_in)
    with pytest.raises(ExportError) as caught:
        verify(pruned, small_cnn.inputs, copy_path)
    message = str(caught.value)
    assert "layer expand.0: zero fraction >= 0.5000 does not hold in expand.0.weight" in message
    # the weight check alone caught it: the outputs still agree, and no other layer is blamed
    assert not OUTPUT_FAILED.search(message) and "layer res.0" not in message and "layer branch_b.0" not in message


@pytest.mark.parametrize("fmt", list(READERS))
def test_verifying_against_a_plan_the_artifacts_model_was_not_pruned_with_names_each_layer_it_breaks(
        mixed, bench_artifacts, small_cnn, fmt):
    """The bench artifacts are the dense small CNN: the plan's channel counts and zeros are all missing."""
    plan, _ = mixed
    with pytest.raises(ExportError) as caught:
        verify(small_cnn.model, small_cnn.inputs, getattr(bench_artifacts, fmt), plan=plan)
    failed = dict(re.findall(r"layer ([\w.]+): (.+?) does not hold in \1\.weight", str(caught.value)))
    assert failed == MIXED_CHECKS
    assert not OUTPUT_FAILED.search(str(caught.value))  # the dense model and its dense artifact agree


def test_an_export_given_a_plan_its_model_was_not_pruned_with_fails_and_writes_nothing(mixed, small_cnn, tmp_path):
    plan, _ = mixed
    with pytest.raises(ExportError, match=r"layer res\.0: 16 output channels does not hold in res\.0\.weight"):
        export(small_cnn.model, small_cnn.inputs, "raspberry-pi-5", tmp_path / "out", format="onnx", plan=plan)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


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


def test_a_layers_own_weight_with_pruned_rows_is_alike_to_its_stored_tensor():
    # rows zeroed by pruning have no direction: they are left out, not counted as unlike (or as NaN)
    w = np.random.default_rng(0).standard_normal((8, 4, 3, 3)).astype(np.float32)
    w[[1, 5]] = 0.0
    folded = w * np.linspace(-2.0, 3.0, 8, dtype=np.float32)[:, None, None, None]  # BN folding: a scale per row
    assert likeness(w, folded) == pytest.approx(1.0)


def test_an_all_zero_weight_is_like_nothing():
    w = np.zeros((4, 3), dtype=np.float32)
    assert likeness(w, np.ones((4, 3), dtype=np.float32)) == 0.0

