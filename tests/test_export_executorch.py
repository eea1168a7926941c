"""ExecuTorch (.pte, XNNPACK delegate): export, run in the real runtime, read the stored weights back."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from edgeprune.errors import ArtifactError
from edgeprune.export import executorch as et
from edgeprune.export.formats import LAYOUTS, ExportError
from helpers import cosine, randn


class ConvNet(nn.Module):
    """A plain conv (with bias, no BN), a depthwise conv and a Linear: one layout each, values unchanged by
    export, so the readback can be compared exactly with the PyTorch weights."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.depthwise(torch.relu(self.conv(x))))
        return self.fc(x.mean((2, 3)))


def _conv_net() -> nn.Module:
    torch.manual_seed(0)
    model = ConvNet().eval()
    with torch.no_grad():
        model.conv.weight[2] = 0.0  # a whole output channel
        model.conv.weight[5, 1, 0, 2] = 0.0  # a single weight
        model.depthwise.weight[3] = 0.0
        model.fc.weight[:, 6] = 0.0  # an input column
    return model


def _as_numpy(inputs) -> list[np.ndarray]:
    values = inputs.values() if isinstance(inputs, dict) else inputs
    return [v.numpy() for v in values]


def _eager(model: nn.Module, inputs) -> np.ndarray:
    with torch.no_grad():
        out = model(**inputs) if isinstance(inputs, dict) else model(*inputs)
    return (out.logits if hasattr(out, "logits") else out).numpy()


@pytest.fixture(scope="module")
def conv_net() -> nn.Module:
    return _conv_net()


@pytest.fixture(scope="module")
def conv_net_fp32(conv_net, tmp_path_factory):
    path = tmp_path_factory.mktemp("et") / "conv_net.pte"
    return path, et.export(conv_net, (randn(1, 3, 8, 8),), path, "fp32", None)


@pytest.fixture(scope="module")
def conv_net_int8(conv_net, tmp_path_factory):
    path = tmp_path_factory.mktemp("et") / "conv_net_int8.pte"
    calibration = [(randn(1, 3, 8, 8, seed=s),) for s in range(8)]
    return path, et.export(conv_net, (randn(1, 3, 8, 8),), path, "int8", calibration)


@pytest.fixture(scope="module")
def small_cnn_int8(small_cnn, tmp_path_factory):
    path = tmp_path_factory.mktemp("et") / "small_cnn_int8.pte"
    calibration = [(randn(1, 1, 8, 8, seed=s),) for s in range(8)]
    return path, et.export(small_cnn.model, small_cnn.inputs, path, "int8", calibration)


def test_fp32_round_trip_matches_eager(conv_net, conv_net_fp32):
    path, _ = conv_net_fp32
    for seed in range(3):
        x = randn(1, 3, 8, 8, seed=seed)
        (out,) = et.run(path, [x.numpy()])
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, _eager(conv_net, (x,)), rtol=0, atol=1e-4)


def test_fp32_round_trip_of_transformers_model_with_keyword_inputs(tiny_mobilenet_v2, tmp_path):
    path = tmp_path / "mobilenet.pte"
    facts = et.export(tiny_mobilenet_v2.model, tiny_mobilenet_v2.inputs, path, "fp32", None)
    assert facts["xnnpack_subgraphs"] >= 1
    outputs = et.run(path, _as_numpy(tiny_mobilenet_v2.inputs))
    np.testing.assert_allclose(outputs[0], _eager(tiny_mobilenet_v2.model, tiny_mobilenet_v2.inputs),
                               rtol=0, atol=1e-4)


def test_int8_round_trip_is_close_to_eager(small_cnn, small_cnn_int8):
    path, _ = small_cnn_int8
    for seed in range(100, 104):
        x = randn(1, 1, 8, 8, seed=seed)
        (out,) = et.run(path, [x.numpy()])
        assert cosine(out, _eager(small_cnn.model, (x,))) > 0.99


def test_export_facts_count_delegates_and_ops_left_outside(conv_net_fp32):
    path, facts = conv_net_fp32
    assert facts["xnnpack_subgraphs"] == 2  # the mean over H, W (keepdim=False) splits the graph
    assert facts["non_delegated_ops"] == {"aten.mean.dim": 1}
    assert facts["delegated_ops"]["aten.convolution.default"] == 2
    assert facts["delegated_ops"]["aten.linear.default"] == 1
    assert facts["precision"] == "fp32" and facts["quantizer"] is None
    assert facts["pte_bytes"] == path.stat().st_size
    assert all((path.parent / name).is_file() for name in facts["extra_files"])
    json.dumps(facts)  # goes into a JSON manifest as it is


def test_int8_facts_name_the_xnnpack_quantizer(small_cnn_int8):
    _, facts = small_cnn_int8
    assert facts["precision"] == "int8"
    assert facts["quantizer"].endswith("XNNPACKQuantizer")
    assert facts["calibration_inputs"] == 8
    assert facts["delegated_ops"]["quantized_decomposed.dequantize_per_channel.default"] >= 1
    assert facts["non_delegated_ops"] == {}  # the whole quantized small CNN runs inside XNNPACK


def test_fp32_weights_read_back_exactly_in_xnnpack_layouts(conv_net, conv_net_fp32):
    path, _ = conv_net_fp32
    stored = {t.name: t for t in et.weights(path).tensors}
    assert set(stored) == {"conv.weight", "depthwise.weight", "fc.weight"}
    assert all(t.layout in LAYOUTS and t.array.dtype == np.float32 for t in stored.values())
    conv, depthwise, fc = (getattr(conv_net, n).weight.detach().numpy() for n in ("conv", "depthwise", "fc"))
    assert stored["conv.weight"].layout == "ohwi"  # (out, kh, kw, in)
    np.testing.assert_array_equal(stored["conv.weight"].array, conv.transpose(0, 2, 3, 1))
    assert stored["depthwise.weight"].layout == "1hwo"  # (1, kh, kw, out)
    np.testing.assert_array_equal(stored["depthwise.weight"].array, depthwise.transpose(1, 2, 3, 0))
    assert stored["fc.weight"].layout == "oihw"  # (out, in), as in PyTorch
    np.testing.assert_array_equal(stored["fc.weight"].array, fc)


def test_int8_weights_are_int8_and_keep_the_zeros(conv_net, conv_net_int8):
    path, _ = conv_net_int8
    stored = {t.name: t for t in et.weights(path).tensors}
    assert {n: (t.layout, t.array.shape) for n, t in stored.items()} == {
        "conv.weight": ("ohwi", (8, 3, 3, 3)),
        "depthwise.weight": ("1hwo", (1, 3, 3, 8)),
        "fc.weight": ("oihw", (4, 8)),
    }
    assert all(t.array.dtype == np.int8 for t in stored.values())
    for name, perm in (("conv", (0, 2, 3, 1)), ("depthwise", (1, 2, 3, 0)), ("fc", (0, 1))):
        zero = getattr(conv_net, name).weight.detach().numpy().transpose(perm) == 0
        assert (stored[f"{name}.weight"].array[zero] == 0).all(), name
    # symmetric per-channel: each output channel's largest weight maps to +-127 (the zeroed channel stays 0)
    conv_int8 = stored["conv.weight"].array.astype(np.int32)
    assert (np.abs(conv_int8).reshape(8, -1).max(axis=1) == [127, 127, 0, 127, 127, 127, 127, 127]).all()


def test_weights_of_batchnorm_model_have_folded_values_but_shapes_and_zeros_of_pytorch(small_cnn, tmp_path):
    model = copy.deepcopy(small_cnn.model)
    with torch.no_grad():
        model.expand[0].weight[5] = 0.0  # Conv -> BN: the delegate folds the BN into the conv filter
    path = tmp_path / "small_cnn.pte"
    et.export(model, small_cnn.inputs, path, "fp32", None)
    stored = {t.name: t for t in et.weights(path).tensors}
    convs = {n + ".weight": m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert set(stored) == set(convs)
    for name, module in convs.items():
        w = module.weight.detach().numpy()
        if isinstance(module, nn.Linear):
            expected = ("oihw", w.shape)
        elif module.in_channels // module.groups == 1:
            # XNNPACK runs every conv with one input channel per group as depthwise: the 1-channel stem too
            expected = ("1hwo", w.transpose(1, 2, 3, 0).shape)
        else:
            expected = ("ohwi", w.transpose(0, 2, 3, 1).shape)
        assert (stored[name].layout, stored[name].array.shape) == expected, name
    assert not stored["expand.0.weight"].array[5].any()
    assert stored["expand.0.weight"].array[4].any()


def test_weights_without_the_names_file_are_still_read_with_positional_names(conv_net_fp32, tmp_path):
    path, _ = conv_net_fp32
    copied = tmp_path / "renamed.pte"
    copied.write_bytes(path.read_bytes())
    readback = et.weights(copied)
    assert [t.layout for t in readback.tensors] == ["ohwi", "1hwo", "oihw"]
    assert "positional" in readback.note


def test_truncated_pte_raises_artifact_error_naming_the_file(conv_net_fp32, tmp_path):
    path, _ = conv_net_fp32
    data = path.read_bytes()
    for cut in (0, 6, 100, len(data) // 2, len(data) - 1):
        broken = tmp_path / f"cut{cut}.pte"
        broken.write_bytes(data[:cut])
        with pytest.raises(ArtifactError, match=f"cut{cut}.pte"):
            et.run(broken, [randn(1, 3, 8, 8).numpy()])
        with pytest.raises(ArtifactError, match=f"cut{cut}.pte"):
            et.weights(broken)


def test_corrupt_xnnpack_payload_raises_artifact_error_instead_of_aborting(conv_net_fp32, tmp_path):
    # The runtime itself aborts the process (C++ terminate) on this file: its error log quotes the bad bytes.
    path, _ = conv_net_fp32
    data = path.read_bytes()
    assert data.count(b"XN01") == 2
    broken = tmp_path / "bad_xnngraph.pte"
    broken.write_bytes(data.replace(b"XN01", b"\xff\xfe\xc7\x91"))
    with pytest.raises(ArtifactError, match="bad_xnngraph.pte.*XNNPACK"):
        et.run(broken, [randn(1, 3, 8, 8).numpy()])


def test_corrupt_program_identifier_raises_artifact_error(conv_net_fp32, tmp_path):
    path, _ = conv_net_fp32
    data = bytearray(path.read_bytes())
    data[4:8] = b"\xf8\x00\x91\xc7"
    broken = tmp_path / "bad_header.pte"
    broken.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="bad_header.pte"):
        et.run(broken, [randn(1, 3, 8, 8).numpy()])


def test_missing_pte_raises_artifact_error(tmp_path):
    with pytest.raises(ArtifactError, match="nothing.pte"):
        et.run(tmp_path / "nothing.pte", [])


class DataDependentBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        y = self.fc(x)
        if y.sum() > 0:  # Python control flow on a tensor's value
            return y * 2
        return y


def test_data_dependent_control_flow_raises_export_error_naming_the_cause(tmp_path):
    with pytest.raises(ExportError, match=r"data-dependent control flow.*_local_scalar_dense.*if y\.sum\(\) > 0"):
        et.export(DataDependentBranch().eval(), (torch.randn(1, 4),), tmp_path / "dd.pte", "fp32", None)
    assert not (tmp_path / "dd.pte").exists()


@torch.library.custom_op("edgeprune_test::scale_by_two", mutates_args=())
def _scale_by_two(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@_scale_by_two.register_fake
def _(x):
    return torch.empty_like(x)


class CustomOpNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return _scale_by_two(self.fc(x))


def test_op_without_an_executorch_kernel_raises_export_error_naming_the_op(tmp_path):
    with pytest.raises(ExportError, match="edgeprune_test::scale_by_two"):
        et.export(CustomOpNet().eval(), (torch.randn(1, 4),), tmp_path / "custom.pte", "fp32", None)


def test_int8_without_calibration_raises_export_error(conv_net, tmp_path):
    with pytest.raises(ExportError, match="calibration"):
        et.export(conv_net, (randn(1, 3, 8, 8),), tmp_path / "q.pte", "int8", [])
