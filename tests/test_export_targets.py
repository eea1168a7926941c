"""Every combination the built-in targets use, through ep.export, on our CNN and on transformers' ResNet."""

from __future__ import annotations

import re

import pytest
import torch

import edgeprune as ep
from edgeprune import zoo
from edgeprune.export import ExportError
from edgeprune.export.verify import COSINE_MIN, TOP1_MIN
from edgeprune.inputs import InputSpec

COMBINATIONS = [
    # (target, precision, format) — None means the profile's default
    ("raspberry-pi-5", "fp32", None),
    ("raspberry-pi-5", "int8", None),
    ("raspberry-pi-5", "fp32", "tflite"),
    ("stm32h743", None, None),
    ("corstone-300-ethos-u55-128", None, None),
]
MODELS = {"small_cnn": ep.Budget(macs_ratio=0.6), "tiny_resnet": ep.Budget(macs_ratio=0.9)}


def _calibration(factory, n=8):
    spec = InputSpec.of(factory.example_inputs())
    return [spec.make(seed=500 + i) for i in range(n)]


@pytest.fixture(scope="module")
def pruned_models():
    """Each model pruned once, for the Pi; the tests export it for every target (allow_other_target=True)."""
    out = {}
    for name, budget in MODELS.items():
        factory = getattr(zoo, name)
        model, inputs = factory(), factory.example_inputs()
        plan = ep.plan(model, inputs, "raspberry-pi-5", budget)
        out[name] = (factory, inputs, ep.prune(model, plan))
    return out


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("target,precision,fmt", COMBINATIONS)
def test_artifact_round_trips_and_verifies(pruned_models, model_name, target, precision, fmt, tmp_path):
    factory, inputs, pruned = pruned_models[model_name]
    needs_calibration = precision == "int8" or ep.load_target(target).family == "mcu"
    art = ep.export(pruned, inputs, target, tmp_path, precision=precision, format=fmt, allow_other_target=True,
                    calibration=_calibration(factory) if needs_calibration else None)
    manifest, checks = art.manifest, art.manifest["verification"]
    assert art.path.is_file() and art.manifest_path.is_file()
    # the artifact's outputs in its runtime, as recorded: fp32 equal to PyTorch's up to float rounding,
    # int8 pointing the same way and picking the same class
    (output,) = checks["outputs"]
    assert output["inputs"] == checks["inputs"] > 0
    if manifest["precision"] == "int8":
        assert output["cosine"] >= COSINE_MIN and output["top1_agreement"] >= TOP1_MIN
    else:
        assert output["max_abs_err"] < 1e-4
    # every layer the plan pruned (all structured on the Pi) was found in the artifact with its pruned width
    plan = ep.record_of(pruned).plan
    pruned_layers = {d.layer: d for d in plan.layers if d.method != "keep"}
    assert pruned_layers and {d.method for d in pruned_layers.values()} == {"structured"}
    assert checks["weights"]["checked"], checks["weights"].get("note")
    assert {name: (r["check"], r["shape"][0]) for name, r in checks["weights"]["layers"].items()} == {
        name: (f"{d.out_channels[1]} output channels", d.out_channels[1]) for name, d in pruned_layers.items()}


@pytest.mark.parametrize("target", ["stm32h743", "corstone-300-ethos-u55-128"])
def test_mcu_artifact_runs_in_tflite_micro_and_records_its_fit(pruned_models, target, tmp_path):
    factory, inputs, pruned = pruned_models["small_cnn"]
    memory = ep.export(pruned, inputs, target, tmp_path, calibration=_calibration(factory),
                       allow_other_target=True).manifest["memory"]
    (tflm,) = memory["tflm_outputs"]  # TFLite-Micro's outputs against PyTorch's
    assert tflm["inputs"] > 0 and tflm["cosine"] >= COSINE_MIN and tflm["top1_agreement"] >= TOP1_MIN
    assert 0 < memory["tflm_arena_bytes"] <= memory["sram_bytes"] and memory["fits_sram"] and memory["fits_flash"]


def test_ethos_u_artifact_is_compiled_by_vela_with_estimates_labelled(pruned_models, tmp_path):
    factory, inputs, pruned = pruned_models["small_cnn"]
    art = ep.export(pruned, inputs, "corstone-300-ethos-u55-128", tmp_path, calibration=_calibration(factory),
                    allow_other_target=True)
    vela = art.manifest["memory"]["vela"]
    assert vela["npu_ops"] > 0 and vela["cpu_ops"] == 0
    assert vela["estimated_inference_s"] > 0 and "estimate" in vela["estimate_note"]
    assert (tmp_path / vela["vela_tflite"]).is_file()


def test_model_too_big_for_sram_says_by_how_many_kib(pruned_models, tmp_path):
    factory, inputs, pruned = pruned_models["small_cnn"]
    text = (ep.builtin_targets()["stm32h743"]).read_text()
    tiny = tmp_path / "tiny-mcu.toml"
    tiny.write_text(re.sub(r"(?m)^sram_bytes = [0-9_]+", "sram_bytes = 4096", text))
    assert "sram_bytes = 4096" in tiny.read_text()
    with pytest.raises(ExportError, match=r"does not fit SRAM: needs [0-9.]+ KiB, the target has 4.0 KiB \([0-9.]+ KiB over\)"):
        ep.export(pruned, inputs, tiny, tmp_path / "out", calibration=_calibration(factory), allow_other_target=True)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_failed_export_leaves_no_artifact_looking_valid(pruned_models, tmp_path):
    factory, inputs, pruned = pruned_models["small_cnn"]
    with pytest.raises(ExportError, match=r"unknown export format 'pdf': expected one of pte, tflite, onnx"):
        ep.export(pruned, inputs, "raspberry-pi-5", tmp_path, format="pdf")
    assert not list(tmp_path.iterdir())


class _Lgamma(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        return torch.lgamma(self.fc(x).abs() + 1)


def test_an_op_the_runtime_cannot_take_is_named(tmp_path):
    model = _Lgamma().eval()
    with pytest.raises(ExportError, match="lgamma"):
        ep.export(model, (torch.randn(1, 8),), "raspberry-pi-5", tmp_path, format="tflite")
    assert not list(tmp_path.iterdir())
