"""`ep.deploy`: an exported artifact shipped to a device, run there in the device's own runtime on the
reference inputs, its outputs compared with PyTorch's, and a bundle brought back that loads without
edgeprune. Devices: `local` and real SSH servers on loopback; TensorRT through a stand-in trtexec that
writes trtexec's real formats (tests/standin_trtexec.py)."""

from __future__ import annotations

import copy
import json
import os
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import edgeprune as ep
from edgeprune._atomic import sha256_file
from edgeprune.devices import get_device
from edgeprune.deployment import MAX_DOWNLOAD, checked_result, device_outputs
from edgeprune.export.reference import Reference, read_reference, reference_path
from helpers import RUNTIMES_DIR, cosine, run_cli
from remote_helpers import devices_toml, locked, loopback, run_dirs

sys.path.insert(0, str(RUNTIMES_DIR))

import bench_onnx  # noqa: E402
import deploy_check  # noqa: E402

STANDIN = Path(__file__).with_name("standin_trtexec.py")


@pytest.fixture(scope="module")
def small_onnx(small_cnn, tmp_path_factory) -> Path:
    """zoo.small_cnn as an fp32 ONNX file for onnxruntime (a Raspberry Pi 5 profile, format="onnx")."""
    return ep.export(small_cnn.model, small_cnn.inputs, "raspberry-pi-5", tmp_path_factory.mktemp("onnx-ort"),
                     format="onnx").path


@pytest.fixture(scope="module")
def jetson_2_4(small_cnn, jetson_small, tmp_path_factory) -> tuple[Path, ep.Plan]:
    """zoo.small_cnn planned for a Jetson with 2:4 on 16+ channel layers, pruned and exported as ONNX."""
    plan = ep.plan(small_cnn.model, small_cnn.inputs, jetson_small, budget=ep.Budget(macs_ratio=0.8))
    pruned = ep.prune(small_cnn.model, plan, small_cnn.inputs)
    art = ep.export(pruned, small_cnn.inputs, jetson_small, tmp_path_factory.mktemp("jetson-onnx"))
    return art.path, plan


@pytest.fixture
def trtexec_on_path(tmp_path, monkeypatch) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "trtexec"
    exe.write_text(f"#!/bin/sh\nexec {sys.executable} {STANDIN} \"$@\"\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return exe


def local(tmp_path: Path) -> tuple[Path, ep.Device]:
    """This test's `local` device (its own work dir), once per test however often it is asked for."""
    toml = tmp_path / "devices.toml"
    if toml.exists():
        return toml, get_device("local", toml)
    return devices_toml("local", tmp_path, None)


def _bundle_files(out: Path) -> set[str]:
    return {p.name for p in out.iterdir()}


# ------------------------------------------------------------------------------------ what export leaves

def test_export_writes_the_reference_inputs_and_pytorch_outputs_beside_the_artifact(small_cnn, small_onnx):
    ref = read_reference(reference_path(small_onnx))
    manifest = json.loads(small_onnx.with_name(small_onnx.name + ".manifest.json").read_text())
    assert manifest["verification"]["reference"] == reference_path(small_onnx).name
    assert reference_path(small_onnx).name in manifest["files"]
    with torch.no_grad():
        expected = small_cnn.model(torch.from_numpy(ref.inputs[0][0])).numpy()
    np.testing.assert_allclose(ref.outputs[0][0], expected, rtol=1e-6, atol=1e-6)
    assert len(ref.inputs) == manifest["verification"]["inputs"]


# --------------------------------------------------------------------------------- each runtime, passing

@pytest.mark.parametrize("which, runtime", [("pte", "executorch"), ("tflite", "litert"), ("mcu", "tflm")])
def test_deploy_on_local_runs_the_artifact_in_its_runtime_and_bundles_it(which, runtime, bench_artifacts, tmp_path):
    toml, device = local(tmp_path)
    artifact = getattr(bench_artifacts, which)
    d = ep.deploy(artifact, device, tmp_path / "bundle")
    assert d.passed and d.runtime == runtime
    assert d.artifact == tmp_path / "bundle" / artifact.name
    assert d.artifact.read_bytes() == artifact.read_bytes()
    assert _bundle_files(tmp_path / "bundle") == {artifact.name, "deploy.json", "reference.npz",
                                                  "device-outputs.npz", "README.md"}
    manifest = json.loads((tmp_path / "bundle" / "deploy.json").read_text())
    assert manifest["passed"] is True and manifest["runtime"] == runtime and manifest["load"] == artifact.name
    assert manifest["device"]["name"] == "local" and manifest["system"]["python"]
    assert manifest["files"][artifact.name] == sha256_file(artifact)
    assert not run_dirs(device) and not locked(device)


def test_deploy_of_an_onnx_file_runs_it_in_onnxruntime_on_the_device(small_onnx, tmp_path):
    toml, device = local(tmp_path)
    d = ep.deploy(small_onnx, device, tmp_path / "bundle")
    assert d.passed and d.runtime == "onnxruntime" and d.layers == ()
    device_outputs = np.load(tmp_path / "bundle" / "device-outputs.npz")
    reference = np.load(tmp_path / "bundle" / "reference.npz")
    np.testing.assert_allclose(device_outputs["output_0_0"], reference["output_0_0"], rtol=1e-4, atol=1e-5)


def test_the_bundle_readme_says_how_to_load_the_file_without_edgeprune(bench_artifacts, tmp_path):
    toml, device = local(tmp_path)
    ep.deploy(bench_artifacts.pte, device, tmp_path / "bundle")
    readme = (tmp_path / "bundle" / "README.md").read_text()
    assert f'load_program("{bench_artifacts.pte.name}")' in readme
    assert "verification **passed**" in readme and "input 0: [1, 1, 8, 8] float32" in readme
    code = "\n".join(block.split("\n", 1)[1] for block in readme.split("```")[1::2])
    assert "edgeprune" not in code


def test_the_bundle_readme_code_really_loads_the_bundled_file(bench_artifacts, tmp_path):
    """The LiteRT README's snippet, run as written against the bundle, computes the device's outputs."""
    toml, device = local(tmp_path)
    ep.deploy(bench_artifacts.tflite, device, tmp_path / "bundle")
    readme = (tmp_path / "bundle" / "README.md").read_text()
    snippet = readme.split("```python\n", 1)[1].split("```", 1)[0]
    x = np.load(tmp_path / "bundle" / "reference.npz")["input_0_0"]
    cwd = os.getcwd()
    os.chdir(tmp_path / "bundle")
    try:
        scope = {"x": x}
        exec(snippet, scope)
    finally:
        os.chdir(cwd)
    np.testing.assert_allclose(scope["y"], np.load(tmp_path / "bundle" / "device-outputs.npz")["output_0_0"],
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("which", ["pte", "tflite"])
def test_deploy_over_ssh_checks_the_artifact_on_the_loopback_device(which, sshd, bench_artifacts, tmp_path):
    device = loopback(sshd, tmp_path)
    d = ep.deploy(getattr(bench_artifacts, which), device, tmp_path / "bundle")
    assert d.passed and d.manifest["device"]["address"] == device.address
    assert not list((tmp_path / "device-work").glob("run-*"))


def test_deploy_over_ssh_without_sftp_streams_the_outputs_back(no_sftp_server, small_onnx, tmp_path):
    d = ep.deploy(small_onnx, loopback(no_sftp_server, tmp_path), tmp_path / "bundle")
    assert d.passed and d.runtime == "onnxruntime"
    assert d.manifest["files"]["device-outputs.npz"] == sha256_file(
        tmp_path / "bundle" / "device-outputs.npz")


# ------------------------------------------------------------------------------------------------ failing

@pytest.mark.parametrize("where", ["local", "loopback"])
def test_an_artifact_changed_on_the_device_after_its_upload_never_runs(where, bench_artifacts, sshd, tmp_path):
    device = local(tmp_path)[1] if where == "local" else loopback(sshd, tmp_path)
    artifact = bench_artifacts.tflite

    def tamper(stage, info):
        if stage == "lock":  # uploaded and checked; the harness has not started
            (run,) = run_dirs(device)
            on_device = run / artifact.name
            data = bytearray(on_device.read_bytes())
            data[-1] ^= 0xFF
            on_device.write_bytes(bytes(data))

    with pytest.raises(ep.ArtifactError, match=r"changed on the device after its upload was checked.*nothing was run"):
        ep.deploy(artifact, device, tmp_path / "bundle", progress=tamper)
    assert not (tmp_path / "bundle").exists()
    assert not run_dirs(device) and not locked(device)


def test_outputs_that_differ_from_the_model_fail_the_deploy_and_keep_what_the_device_computed(
        small_cnn, bench_artifacts, tmp_path):
    toml, device = local(tmp_path)
    changed = copy.deepcopy(small_cnn.model)
    with torch.no_grad():
        changed.classifier.bias += 0.5  # the model moved on after this export
    with pytest.raises(ep.DeployError, match=r"differs from PyTorch on .*output 0: max \|a-b\| 0\.5"):
        ep.deploy(bench_artifacts.pte, device, tmp_path / "bundle", model=changed, example_inputs=small_cnn.inputs)
    manifest = json.loads((tmp_path / "bundle" / "deploy.json").read_text())
    assert manifest["passed"] is False and manifest["checks"]["outputs"][0]["passed"] is False
    got = np.load(tmp_path / "bundle" / "device-outputs.npz")["output_0_0"]
    expected = np.load(tmp_path / "bundle" / "reference.npz")["output_0_0"]
    np.testing.assert_allclose(expected - got, 0.5, atol=1e-4)
    assert "FAILED: do not ship this bundle" in (tmp_path / "bundle" / "README.md").read_text()


def test_a_nonempty_bundle_directory_is_never_overwritten_without_force(bench_artifacts, tmp_path):
    toml, device = local(tmp_path)
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "mine.txt").write_text("keep")
    with pytest.raises(ep.ArtifactError, match=r"bundle: exists and is not empty .*force=True"):
        ep.deploy(bench_artifacts.tflite, device, tmp_path / "bundle")
    assert _bundle_files(tmp_path / "bundle") == {"mine.txt"}
    ep.deploy(bench_artifacts.tflite, device, tmp_path / "bundle", force=True)
    assert "mine.txt" not in _bundle_files(tmp_path / "bundle")


def test_an_artifact_without_its_reference_needs_the_model(bench_artifacts, small_cnn, tmp_path):
    toml, device = local(tmp_path)
    art = tmp_path / "copy" / bench_artifacts.tflite.name
    art.parent.mkdir()
    art.write_bytes(bench_artifacts.tflite.read_bytes())
    manifest = bench_artifacts.tflite.with_name(bench_artifacts.tflite.name + ".manifest.json")
    (art.parent / manifest.name).write_text(manifest.read_text())
    with pytest.raises(ep.ArtifactError, match=r"no reference beside it .*pass model= and example_inputs="):
        ep.deploy(art, device, tmp_path / "bundle")
    d = ep.deploy(art, device, tmp_path / "bundle", model=small_cnn.model, example_inputs=small_cnn.inputs)
    assert d.passed and "seeded random" in d.manifest["checks"]["reference"]


# --------------------------------------------------------------------------------- TensorRT (stand-in)

def test_a_jetson_deploy_builds_the_engine_on_the_device_and_reports_its_sparse_layers(
        jetson_2_4, trtexec_on_path, tmp_path):
    artifact, plan = jetson_2_4
    toml, device = local(tmp_path)
    d = ep.deploy(artifact, device, tmp_path / "bundle")
    assert d.passed and d.runtime == "tensorrt" and d.runtime_version == "10.3.0"
    assert d.artifact == tmp_path / "bundle" / f"{artifact.stem}.engine"
    assert d.artifact.read_bytes().startswith(b"STANDIN-TRT-ENGINE\n")
    assert {"layers.json", "build.log"} <= _bundle_files(tmp_path / "bundle")
    assert d.manifest["checks"]["compared_at"] == "fp16" and "--fp16" in d.manifest["tensorrt"]["flags"]
    assert [o["tolerance"] for o in d.outputs] == ["|a-b| <= 0.01 + 0.01*|b|"]  # an fp16 engine's
    got = np.load(tmp_path / "bundle" / "device-outputs.npz")["output_0_0"]
    assert cosine(got, np.load(tmp_path / "bundle" / "reference.npz")["output_0_0"]) > 0.9999
    rows = {r.layer: r for r in d.layers}
    assert set(rows) == {x.layer for x in plan.layers}
    wide = [x.layer for x in plan.layers if x.method == "n:m" and x.out_channels[1] >= 64]
    narrow = [x.layer for x in plan.layers if x.method == "n:m" and x.out_channels[1] < 64]
    assert wide and narrow
    for name in wide:
        assert rows[name].sparse_kernel and "sparse" in rows[name].tactic
    for name in narrow:
        assert not rows[name].sparse_kernel and rows[name].eligible is True
        assert "eligible, but a dense tactic timed faster" in rows[name].reason
        assert "below the ~256" in rows[name].reason
    assert sorted(w.split(":")[0] for w in d.warnings) == sorted(narrow)
    assert all(not rows[x.layer].sparse_kernel for x in plan.layers if x.method == "keep")


def test_an_fp32_engine_gets_no_sparse_kernel_and_says_why(jetson_2_4, trtexec_on_path, tmp_path):
    artifact, plan = jetson_2_4
    toml, device = local(tmp_path)
    d = ep.deploy(artifact, device, tmp_path / "bundle", precision="fp32")
    assert d.manifest["checks"]["compared_at"] == "fp32"
    assert all(not r.sparse_kernel for r in d.layers)
    assert all("the engine is fp32" in r.reason for r in d.layers if r.method == "n:m")


def test_a_failed_engine_build_names_trtexec_and_leaves_nothing(jetson_2_4, trtexec_on_path, tmp_path, monkeypatch):
    artifact, _ = jetson_2_4
    toml, device = local(tmp_path)
    monkeypatch.setenv("EDGEPRUNE_STANDIN_TRTEXEC_FAIL", "build")
    with pytest.raises(ep.DeviceError, match=r"trtexec could not build the engine .*Engine could not be created"):
        ep.deploy(artifact, device, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists() and not run_dirs(device)


def test_a_jetson_deploy_without_trtexec_says_so_and_stops(jetson_2_4, tmp_path, monkeypatch):
    artifact, _ = jetson_2_4
    toml, device = local(tmp_path)
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent) + os.pathsep + "/usr/bin:/bin")
    with pytest.raises(ep.DeviceError, match=r"trtexec is not on PATH nor at /usr/src/tensorrt/bin/trtexec"):
        ep.deploy(artifact, device, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists() and not run_dirs(device) and not locked(device)


# ------------------------------------------------------------------------------------- trtexec's formats

def test_the_sparsity_lines_of_a_verbose_build_log_are_read():
    log = ("[08/05/2024-12:06:54] [I] [TRT] (Sparsity) Layers eligible for sparse math: MatMul_401, "
           "Conv_619 + Relu_620\n"
           "[08/05/2024-12:06:54] [I] [TRT] (Sparsity) TRT inference plan picked sparse implementation for layers: "
           "Conv_619 + Relu_620\n")
    assert bench_onnx.parse_sparsity(log) == {"eligible": ["MatMul_401", "Conv_619 + Relu_620"],
                                              "picked": ["Conv_619 + Relu_620"]}
    assert bench_onnx.parse_sparsity("[I] Engine built in 3 sec.\n") is None


def test_exported_outputs_keep_their_shape_and_non_finite_values():
    text = ('[\n  { "name" : "logits"\n  , "dimensions" : "1x2x2"\n  , "values" : [ 1.5, -2, nan, inf ]\n  }\n'
            ', { "name" : "aux"\n  , "dimensions" : "3"\n  , "values" : [ 0, 1, 2 ]\n  }\n]\n')
    out = bench_onnx.parse_trtexec_outputs(text)
    assert out["logits"].shape == (1, 2, 2) and np.isnan(out["logits"][0, 1, 0]) and out["logits"][0, 1, 1] == np.inf
    assert out["aux"].tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="3 values for dimensions 2x2"):
        bench_onnx.parse_trtexec_outputs('[{ "name" : "x", "dimensions" : "2x2", "values" : [ 1, 2, 3 ] }]')


def test_the_jetson_release_is_read_from_nv_tegra_release():
    line = "# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic, EABI: aarch64, DATE: Mon May  6 2024"
    assert deploy_check.parse_l4t(line) == "36.3.0"
    assert deploy_check.parse_l4t("garbage") is None
    assert deploy_check.parse_os_release('NAME="Ubuntu"\nPRETTY_NAME="Ubuntu 22.04.4 LTS"\n') == "Ubuntu 22.04.4 LTS"
    assert deploy_check.parse_os_release('NAME=Alpine\nVERSION=3.20\n') == "Alpine 3.20"


# ---------------------------------------------------------------------------------------------------- CLI

@pytest.mark.e2e
def test_edgeprune_deploy_writes_the_bundle_and_prints_the_checks(bench_artifacts, tmp_path):
    toml, device = local(tmp_path)
    result = run_cli("deploy", str(bench_artifacts.tflite), "--devices", str(toml), "--device", "local",
                     "--out", str(tmp_path / "bundle"))
    assert result.exit_code == 0, result.output
    assert "passed" in result.output and "litert" in result.output
    assert (tmp_path / "bundle" / bench_artifacts.tflite.name).exists()


@pytest.mark.e2e
def test_edgeprune_deploy_into_a_nonempty_directory_exits_2_without_a_traceback(bench_artifacts, tmp_path):
    toml, device = local(tmp_path)
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "x").write_text("x")
    result = run_cli("deploy", str(bench_artifacts.tflite), "--devices", str(toml), "--device", "local",
                     "--out", str(tmp_path / "bundle"))
    assert result.exit_code == 2 and "exists and is not empty" in result.output and "Traceback" not in result.output


@pytest.mark.e2e
def test_edgeprune_deploy_whose_outputs_differ_on_the_device_exits_1(small_cnn, bench_artifacts, tmp_path):
    from safetensors.torch import save_model

    toml, device = local(tmp_path)
    changed = copy.deepcopy(small_cnn.model)
    with torch.no_grad():
        changed.classifier.bias += 0.5
    save_model(changed, str(tmp_path / "changed.safetensors"))
    result = run_cli("deploy", str(bench_artifacts.tflite), "--devices", str(toml), "--out", str(tmp_path / "bundle"),
                     "--model", "edgeprune.zoo:small_cnn", "--weights", str(tmp_path / "changed.safetensors"))
    assert result.exit_code == 1, result.output
    assert "failed:" in result.output and "output 0: max |a-b| 0.5" in result.output
    assert (tmp_path / "bundle" / "device-outputs.npz").exists()


def test_an_int8_jetson_deploy_builds_an_int8_engine_from_the_qdq_export(small_cnn, jetson_small, trtexec_on_path,
                                                                         tmp_path):
    plan = ep.plan(small_cnn.model, small_cnn.inputs, jetson_small, budget=ep.Budget(macs_ratio=0.8))
    pruned = ep.prune(small_cnn.model, plan, small_cnn.inputs)
    calibration = [tuple(torch.randn(x.shape, generator=torch.Generator().manual_seed(s)) for x in small_cnn.inputs)
                   for s in range(100, 132)]
    art = ep.export(pruned, small_cnn.inputs, jetson_small, tmp_path / "out", precision="int8", calibration=calibration)
    d = ep.deploy(art.path, local(tmp_path)[1], tmp_path / "bundle")
    assert d.passed and d.manifest["checks"]["compared_at"] == "int8"
    assert "--int8" in d.manifest["tensorrt"]["flags"] and "--fp16" not in d.manifest["tensorrt"]["flags"]
    rows = {r.layer: r for r in d.layers}
    assert all(rows[x.layer].onnx_node for x in plan.layers)  # found behind the QDQ weights' DequantizeLinear
    assert any(r.sparse_kernel for r in d.layers if r.method == "n:m")


def test_an_int8_export_is_deployed_as_an_int8_engine_only(jetson_2_4, small_cnn, jetson_small, tmp_path):
    plan = ep.plan(small_cnn.model, small_cnn.inputs, jetson_small, budget=ep.Budget(macs_ratio=0.8))
    pruned = ep.prune(small_cnn.model, plan, small_cnn.inputs)
    calibration = [tuple(torch.randn(x.shape, generator=torch.Generator().manual_seed(s)) for x in small_cnn.inputs)
                   for s in range(100, 110)]
    art = ep.export(pruned, small_cnn.inputs, jetson_small, tmp_path / "out", precision="int8", calibration=calibration)
    # TensorRT runs QDQ layers in int8 whatever the flags: an fp16 comparison would fail a sound engine
    device = local(tmp_path)[1]
    with pytest.raises(ep.SettingsError, match=r"precision='fp16': this export is int8 \(QDQ\)"):
        ep.deploy(art.path, device, tmp_path / "bundle", precision="fp16")
    with pytest.raises(ep.SettingsError, match=r"precision='int8': a TensorRT int8 engine is built from an int8"):
        ep.deploy(jetson_2_4[0], device, tmp_path / "bundle", precision="int8")


def test_a_bundle_moved_aside_by_a_killed_deploy_is_put_back(bench_artifacts, tmp_path):
    import subprocess

    from edgeprune._atomic import temporary_path

    out = tmp_path / "bundle"
    dead = subprocess.Popen(["true"])  # a process that has exited: the deploy that was killed
    dead.wait()
    aside = temporary_path(out, "old")
    aside = aside.with_name(aside.name.replace(f".{os.getpid()}-", f".{dead.pid}-"))
    aside.mkdir()
    (aside / "deploy.json").write_text("{}")
    with pytest.warns(UserWarning, match="put back the bundle an interrupted deploy had moved aside"), \
            pytest.raises(ep.ArtifactError, match="exists and is not empty"):
        ep.deploy(bench_artifacts.tflite, local(tmp_path)[1], out)
    assert (out / "deploy.json").read_text() == "{}" and not aside.exists()


# ------------------------------------------------------------------------ what a device reports is checked

def _report(**overrides) -> dict:
    files = {"outputs.npz": {"sha256": "0" * 64, "bytes": 10}}
    return {"runtime": "litert", "files": files, **overrides}


@pytest.mark.parametrize("name", ["../outside.npz", "/etc/passwd", ".hidden", "a/b"])
def test_a_reported_file_name_that_is_not_a_plain_name_is_refused(name, tmp_path):
    device = local(tmp_path)[1]
    report = _report(files={"outputs.npz": {"sha256": "0" * 64, "bytes": 10}, name: {"sha256": "0" * 64, "bytes": 1}})
    with pytest.raises(ep.ArtifactError, match=r"not a plain name .*nothing was brought back"):
        checked_result(report, "litert", False, device)


@pytest.mark.parametrize("size", [-1, MAX_DOWNLOAD + 1, "10"])
def test_a_reported_file_size_outside_the_download_limit_is_refused(size, tmp_path):
    report = _report(files={"outputs.npz": {"sha256": "0" * 64, "bytes": size}})
    with pytest.raises(ep.ArtifactError, match=r"a size of at most 4 GiB"):
        checked_result(report, "litert", False, local(tmp_path)[1])


def test_a_report_of_another_runtime_or_without_the_engine_is_refused(tmp_path):
    device = local(tmp_path)[1]
    with pytest.raises(ep.ArtifactError, match=r"runtime 'onnxruntime', expected litert"):
        checked_result(_report(runtime="onnxruntime"), "litert", False, device)
    with pytest.raises(ep.ArtifactError, match=r"runtime 'onnxruntime', expected tensorrt"):
        checked_result(_report(runtime="onnxruntime"), "onnx", True, device)
    tensorrt = _report(runtime="tensorrt", tensorrt={"flags": ["--fp16"], "sparsity": None})
    with pytest.raises(ep.ArtifactError, match=r"no layers.json, model.engine"):
        checked_result(tensorrt, "onnx", True, device)


def test_tensorrt_details_that_are_not_flags_and_layer_lists_are_refused(tmp_path):
    files = {n: {"sha256": "0" * 64, "bytes": 1} for n in ("outputs.npz", "model.engine", "layers.json")}
    for details in ({"flags": "--fp16"}, {"flags": ["--fp16"], "sparsity": {"picked": "conv"}}):
        with pytest.raises(ep.ArtifactError, match="TensorRT build details"):
            checked_result({"runtime": "tensorrt", "files": files, "tensorrt": details}, "onnx", True,
                           local(tmp_path)[1])


def _outputs_file(path: Path, arrays: dict) -> Path:
    np.savez(path, **arrays)
    return path


def test_device_outputs_must_match_the_reference_in_count_and_shape(tmp_path):
    device = local(tmp_path)[1]
    ref = Reference([[np.zeros((1, 4), np.float32)]] * 2, [[np.zeros((1, 10), np.float32)]] * 2)
    good = {"output_0_0": np.ones((1, 10), np.float32), "output_1_0": np.ones((1, 10), np.float32)}
    assert [o[0].shape for o in device_outputs(_outputs_file(tmp_path / "ok.npz", good), ref, device)] == [(1, 10)] * 2
    with pytest.raises(ep.ArtifactError, match=r"lack output_1_0: sample 1 has 1 output"):
        device_outputs(_outputs_file(tmp_path / "a.npz", {"output_0_0": good["output_0_0"]}), ref, device)
    with pytest.raises(ep.ArtifactError, match=r"have output_1_0 of shape \[1, 9\]; PyTorch's is \[1, 10\]"):
        device_outputs(_outputs_file(tmp_path / "b.npz", {**good, "output_1_0": np.ones((1, 9), np.float32)}), ref,
                       device)
    with pytest.raises(ep.ArtifactError, match=r"hold output_0_1: the model has 1 output"):
        device_outputs(_outputs_file(tmp_path / "c.npz", {**good, "output_0_1": np.ones(1)}), ref, device)


def test_an_output_member_far_larger_than_its_reference_is_not_loaded(tmp_path):
    ref = Reference([[np.zeros(1, np.float32)]], [[np.zeros((1, 10), np.float32)]])
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, output_0_0=np.zeros((1, 10_000_000), np.float32))  # 40 MB, ~40 KB compressed
    with pytest.raises(ep.ArtifactError, match=r"hold 40000128 bytes for output_0_0, of shape \[1, 10\]"):
        device_outputs(path, ref, local(tmp_path)[1])
