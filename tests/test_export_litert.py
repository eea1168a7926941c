"""LiteRT (.tflite) export: litert-torch converts, ai-edge-litert runs, the flatbuffer is read back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgeprune.errors import ArtifactError
from edgeprune.export import litert
from edgeprune.export.formats import LAYOUTS, ExportError
from helpers import cosine, randn


class TinyNet(nn.Module):
    """A conv, a depthwise conv and a 1x1 conv in a ModuleList (iterated, never called: its name is not
    on the call stack litert-torch records), and a Linear."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.ModuleList([nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 16, 1)])
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        for block in self.blocks:
            x = torch.relu(block(x))
        return self.fc(x.mean((2, 3)))


# Weights zeroed in PyTorch: (parameter, index); a whole output channel of `conv` too.
ZEROED = [("conv.weight", (1, 0, 0, 0)), ("conv.weight", (2, 1, 2, 2)), ("blocks.0.weight", (3, 0, 1, 1)),
          ("blocks.1.weight", (5, 7, 0, 0)), ("fc.weight", (2, 7))]
ZEROED_CHANNEL = ("conv.weight", 6)


def tiny_net() -> TinyNet:
    model = TinyNet().eval()
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, index in ZEROED:
            params[name][index] = 0.0
        params[ZEROED_CHANNEL[0]][ZEROED_CHANNEL[1]] = 0.0
    return model


def to_layout(weight: torch.Tensor, layout: str) -> np.ndarray:
    """A PyTorch Conv/Linear weight in the layout TFLite stores it in."""
    w = weight.detach()
    if layout == "ohwi":
        return w.permute(0, 2, 3, 1).numpy()
    if layout == "1hwo":  # depthwise (C, 1, kh, kw) -> (1, kh, kw, C)
        return w.permute(1, 2, 3, 0).numpy()
    return w.numpy()  # "oihw": a Linear's (out, in)


def stored_index(index: tuple, layout: str) -> tuple:
    """Where PyTorch's weight[index] lands in the stored layout."""
    if layout == "ohwi":
        o, i, h, w = index
        return (o, h, w, i)
    if layout == "1hwo":
        o, _, h, w = index
        return (0, h, w, o)
    return index


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("litert")


@pytest.fixture(scope="module")
def cnn_fp32(small_cnn_tflite):
    """The session's fp32 small_cnn .tflite (conftest) and its export facts."""
    return small_cnn_tflite.path, small_cnn_tflite.manifest["export"]


@pytest.fixture(scope="module")
def cnn_int8(small_cnn_int8_tflite):
    """The session's full-int8 small_cnn .tflite (conftest), calibrated on 32 seeded inputs, and its export facts."""
    return small_cnn_int8_tflite.path, small_cnn_int8_tflite.manifest["export"]


@pytest.fixture(scope="module")
def tiny_artifacts(out_dir):
    model = tiny_net()
    inputs = (randn(1, 3, 8, 8, seed=0),)
    fp32 = out_dir / "tiny_fp32.tflite"
    int8 = out_dir / "tiny_int8.tflite"
    facts = {"fp32": litert.export(model, inputs, fp32, "fp32"),
             "int8": litert.export(model, inputs, int8, "int8", [(randn(1, 3, 8, 8, seed=s),) for s in range(8)])}
    return model, {"fp32": fp32, "int8": int8}, facts


def test_fp32_tflite_matches_eager_within_1e_4(small_cnn, cnn_fp32):
    path, _ = cnn_fp32
    for seed in range(4):
        x = randn(1, 1, 8, 8, seed=seed)
        with torch.no_grad():
            expected = small_cnn.model(x).numpy()
        (out,) = litert.run(path, [x.numpy()])
        assert out.dtype == np.float32 and out.shape == expected.shape
        np.testing.assert_allclose(out, expected, rtol=0, atol=1e-4)


def test_int8_tflite_agrees_with_eager_cosine_and_top1(small_cnn, cnn_int8):
    path, _ = cnn_int8
    for seed in range(8):
        x = randn(1, 1, 8, 8, seed=1000 + seed)
        with torch.no_grad():
            expected = small_cnn.model(x).numpy()
        (out,) = litert.run(path, [x.numpy()])  # float input, quantized with the input's scale/zero point
        assert out.dtype == np.float32
        assert cosine(out, expected) > 0.99
        assert out.argmax() == expected.argmax()


def test_int8_export_is_full_integer_with_int8_io(cnn_int8):
    _, facts = cnn_int8
    assert facts["full_int8"] and facts["float_ops"] == []
    for tensor in facts["inputs"] + facts["outputs"]:
        assert tensor["dtype"] == "int8"
        assert tensor["scale"] > 0 and -128 <= tensor["zero_point"] <= 127
    assert "QUANTIZE" not in facts["ops"] and "DEQUANTIZE" not in facts["ops"]
    assert facts["calibration_samples"] == 32 and "PT2EQuantizer" in facts["quantizer"]


def test_export_facts_count_ops_by_builtin_name(cnn_fp32):
    _, facts = cnn_fp32
    ops = facts["ops"]
    # SmallCNN: 7 convolutions (litert-torch makes the 1-input-channel stem a DEPTHWISE_CONV_2D), 2 Linear.
    assert ops.get("CONV_2D", 0) + ops.get("DEPTHWISE_CONV_2D", 0) == 7
    assert ops["FULLY_CONNECTED"] == 2
    assert facts["inputs"] == [{"name": "serving_default_args_0", "shape": [1, 1, 8, 8], "dtype": "float32"}]
    assert [t["dtype"] for t in facts["outputs"]] == ["float32"] and not facts["full_int8"]
    assert facts["size_bytes"] == cnn_fp32[0].stat().st_size


def test_require_full_int8_rejects_float_ops(out_dir):
    model = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8)).eval()  # LayerNorm stays float in litert-torch
    calibration = [(randn(1, 8, seed=s),) for s in range(4)]
    with pytest.raises(ExportError, match=r"not full-integer.*float ops \['"):
        litert.export(model, (randn(1, 8, seed=0),), out_dir / "ln.tflite", "int8", calibration,
                      require_full_int8=True)


def test_run_feeds_keyword_inputs_in_the_model_order(out_dir):
    class TwoInputs(nn.Module):
        def forward(self, scale, bias):  # keyword order is not alphabetical on purpose
            return scale.sum(-1, keepdim=True) * 2 + bias[..., :1] * 3

    inputs = {"scale": randn(1, 4, seed=1), "bias": randn(1, 3, seed=2)}
    path = out_dir / "kwargs.tflite"
    facts = litert.export(TwoInputs().eval(), inputs, path, "fp32")
    assert [t["name"] for t in facts["inputs"]] == ["serving_default_scale", "serving_default_bias"]
    (out,) = litert.run(path, [inputs["scale"].numpy(), inputs["bias"].numpy()])
    np.testing.assert_allclose(out, TwoInputs()(**inputs).numpy(), atol=1e-5)


def test_run_rejects_a_wrong_number_of_inputs(cnn_fp32):
    path, _ = cnn_fp32
    x = np.zeros((1, 1, 8, 8), np.float32)
    with pytest.raises(ExportError, match="takes 1 inputs"):
        litert.run(path, [x, x])


def test_weights_are_the_pytorch_weights_in_tflite_layouts(tiny_artifacts):
    model, paths, facts = tiny_artifacts
    params = dict(model.named_parameters())
    readback = litert.weights(paths["fp32"])
    assert readback.note == ""
    names = facts["fp32"]["weight_names"]  # stored name -> parameter name (ModuleList names dropped)
    assert sorted(names[t.name] for t in readback.tensors) == [
        "blocks.0.weight", "blocks.1.weight", "conv.weight", "fc.weight"]
    layouts = {names[t.name]: t.layout for t in readback.tensors}
    assert layouts == {"conv.weight": "ohwi", "blocks.0.weight": "1hwo", "blocks.1.weight": "ohwi",
                       "fc.weight": "oihw"}
    for tensor in readback.tensors:
        assert tensor.layout in LAYOUTS and tensor.array.dtype == np.float32
        np.testing.assert_array_equal(tensor.array, to_layout(params[names[tensor.name]], tensor.layout))


def test_weights_of_int8_model_are_int8_and_keep_pytorch_zeros(tiny_artifacts):
    _, paths, facts = tiny_artifacts
    readback = litert.weights(paths["int8"])
    names = facts["int8"]["weight_names"]
    by_param = {names[t.name]: t for t in readback.tensors}
    assert set(by_param) == {"conv.weight", "blocks.0.weight", "blocks.1.weight", "fc.weight"}
    assert all(t.array.dtype == np.int8 for t in readback.tensors)
    for name, index in ZEROED:
        stored = by_param[name]
        assert stored.array[stored_index(index, stored.layout)] == 0, (name, index)
    conv = by_param[ZEROED_CHANNEL[0]]
    assert not conv.array[ZEROED_CHANNEL[1]].any()  # "ohwi": output channel first
    assert np.count_nonzero(conv.array) > conv.array.size // 2  # the rest is not all zero


def test_unsupported_op_raises_export_error_naming_the_op(out_dir):
    class LogGamma(nn.Module):
        def forward(self, x):
            return torch.special.gammaln(x)

    with pytest.raises(ExportError, match=r"aten\.lgamma"):
        litert.export(LogGamma().eval(), (torch.rand(2, 2) + 1,), out_dir / "lgamma.tflite", "fp32")


@pytest.mark.parametrize("read", [litert.run, litert.weights, litert.inspect], ids=["run", "weights", "inspect"])
def test_truncated_tflite_raises_artifact_error_naming_the_file(cnn_int8, tmp_path, read):
    data = cnn_int8[0].read_bytes()
    truncated = tmp_path / "truncated.tflite"
    truncated.write_bytes(data[: len(data) // 2])
    args = (truncated, [np.zeros((1, 1, 8, 8), np.float32)]) if read is litert.run else (truncated,)
    with pytest.raises(ArtifactError, match="truncated.tflite"):
        read(*args)


def test_file_without_tflite_identifier_raises_artifact_error(tmp_path):
    path = tmp_path / "model.tflite"
    path.write_bytes(b"PK\x03\x04 this is a zip, not a flatbuffer")
    with pytest.raises(ArtifactError, match="not a TFLite flatbuffer"):
        litert.run(path, [np.zeros((1, 1, 8, 8), np.float32)])


def test_missing_file_raises_artifact_error(tmp_path):
    with pytest.raises(ArtifactError, match="missing.tflite"):
        litert.weights(tmp_path / "missing.tflite")
