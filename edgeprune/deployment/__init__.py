"""Deploy an exported artifact to a device: ship it, build what the device runs, check its outputs there
in the device's own runtime, and bring back a bundle an application loads as it is.

    d = ep.deploy("out/model.onnx", "jetson", "bundle/", devices="devices.toml")
    d.artifact      # bundle/model.engine: the TensorRT engine built on the Jetson
    d.layers        # per plan layer: the tactic TensorRT picked, and whether it is a sparse kernel
    d.warnings      # e.g. a 2:4 layer that got a dense kernel, with TensorRT's reason

The artifact travels through the runner (remote/runner.hold: the same host-key, lock, sha256 and timeout
guarantees as a benchmark); on the device runtimes/deploy_check.py loads the very bytes whose sha256 was
checked, runs it on the reference inputs and writes its outputs, which come back (sha256-checked again)
and are compared here with PyTorch's, with export's tolerances. The reference is the one export wrote
beside the artifact (export/reference.py), or computed from `model` on `verify_inputs`.
"""

from __future__ import annotations

import json
import re
import tempfile
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
from torch import nn

from .._atomic import check_dir_output, foreign_files, sha256_file
from ..devices import Device, get_device
from ..errors import ArtifactError, DeployError, ExportError, MalformedError, SettingsError
from ..export import holdout
from ..export.reference import Reference, read_reference, reference_of, reference_path
from ..export.verify import compare_outputs
from ..plan import Plan
from ..pruning import finalize
from ..remote.results import BenchSettings
from ..remote.runner import checked_artifact, hold, run_harness
from ..remote.upload import Progress
from . import bundle
from .tensorrt import LayerKernel, kernels

SCHEMA = "edgeprune.deploy/1"
OUTPUTS = "outputs.npz"  # what runtimes/deploy_check.py writes
ENGINE, LAYER_INFO = "model.engine", "layers.json"  # what runtimes/bench_onnx.py's TensorRT build writes
# the runtime each harness reports (bench_onnx: onnxruntime or, building an engine, tensorrt)
RUNTIMES = {"executorch": {"executorch"}, "litert": {"litert"}, "tflm": {"tflm"}, "onnx": {"onnxruntime", "tensorrt"}}
MAX_DOWNLOAD = 4 << 30  # an engine of a large model is hundreds of MB; more is a device that lies
_SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class Deployment:
    """A bundle `edgeprune deploy` wrote and what the device said about the artifact in it."""
    out: Path                    # the bundle directory
    artifact: Path               # the file the application loads (a TensorRT engine on a Jetson)
    runtime: str
    runtime_version: str
    passed: bool
    outputs: tuple[dict, ...]    # per model output: the comparison with PyTorch's (export's tolerances)
    layers: tuple[LayerKernel, ...] = ()  # TensorRT: per plan layer, its kernel
    warnings: tuple[str, ...] = ()
    manifest: dict = field(default_factory=dict, repr=False)


def _reference(artifact: Path, manifest: dict, model: Optional[nn.Module], example_inputs: Any,
               verify_inputs: Optional[Iterable]) -> tuple[Reference, str]:
    """(reference, where it came from): computed from `model` when given, else the one export wrote."""
    if model is not None:
        if example_inputs is None and verify_inputs is None:
            raise SettingsError("deploy with model= needs example_inputs= (or verify_inputs=) to compute the "
                                "reference outputs on")
        if manifest.get("precision") == "int8" and verify_inputs is None:
            raise ExportError(f"{artifact.name} is int8: it is only meant to agree with PyTorch on data like its "
                              f"calibration data, so pass verify_inputs= (examples like that data)")
        data = holdout.split([], list(verify_inputs) if verify_inputs is not None else None, example_inputs)
        return reference_of(finalize(model).eval(), data.verification), data.describe()
    name = (manifest.get("verification") or {}).get("reference")
    path = reference_path(artifact)
    if not name or not path.is_file():
        raise ArtifactError(f"{artifact}: no reference beside it ({path.name}; exports before deploy existed did not "
                            f"write one). Export the model again, or pass model= and example_inputs= (CLI: --model "
                            f"and --weights) to compute the reference outputs here")
    recorded = (manifest.get("files") or {}).get(path.name)
    if recorded and recorded != sha256_file(path):
        raise ArtifactError(f"{path}: sha256 differs from its manifest's: the reference changed after export")
    return read_reference(path), f"the {manifest['verification'].get('inputs', '?')} input(s) export verified on"


def _precisions(kind: str, manifest: dict, precision: Optional[str]) -> tuple[bool, str, str]:
    """(TensorRT?, the engine's build precision, the precision outputs are compared at)."""
    tensorrt = kind == "onnx" and manifest.get("runtime") == "tensorrt"
    exported = manifest.get("precision")
    if exported not in ("fp32", "int8"):
        raise MalformedError(f"the artifact's manifest: key 'precision' is {exported!r}, expected fp32 or int8")
    if not tensorrt:
        if precision not in (None, exported):
            raise SettingsError(f"precision={precision!r}: only a TensorRT engine is built on the device; this "
                                f"{manifest['format']} artifact is {exported} as exported")
        return False, exported, exported
    build = precision or ("int8" if exported == "int8" else "fp16")
    if build not in ("fp32", "fp16", "int8"):
        raise SettingsError(f"precision={precision!r}: expected fp32, fp16 or int8 for a TensorRT engine")
    if build == "int8" and exported != "int8":
        raise SettingsError("precision='int8': a TensorRT int8 engine is built from an int8 (QDQ) export; export "
                            "with precision='int8' first (its calibration is in the QDQ nodes)")
    if exported == "int8" and build != "int8":
        raise SettingsError(f"precision={build!r}: this export is int8 (QDQ): TensorRT runs its quantized layers in "
                            f"int8 whatever the builder flags, so its engine is int8; leave precision out")
    return True, build, build


def _check_out(out: Path, force: bool) -> None:
    check_dir_output(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise ArtifactError(f"{out}: exists and is not empty ({', '.join(foreign_files(out)[:3]) or 'files'}); "
                            f"pass force=True (CLI: --force) to replace it with the new bundle")


def deploy(artifact: "str | Path", device: "str | Device", out: "str | Path", *,
           devices: "str | Path | None" = None, model: Optional[nn.Module] = None, example_inputs: Any = None,
           verify_inputs: Optional[Iterable] = None, precision: Optional[str] = None, force: bool = False,
           trust_new_host_key: bool = False, progress: Optional[Progress] = None,
           cancel: Optional[threading.Event] = None) -> Deployment:
    """Deploy `artifact` (an export with its manifest) to `device` and write the bundle into `out`.

    Raises DeployError when an output on the device differs from PyTorch's beyond export's tolerance (the
    bundle is written all the same, marked failed, with what the device computed), ArtifactError when the
    artifact changed on the device after its upload check, DeviceError (a subclass saying what) when the
    device cannot be reached, locked or run. `precision`: a TensorRT engine's (fp16 by default; int8 for
    an int8 export; fp32)."""
    artifact, kind, manifest, sha = checked_artifact(artifact, None)
    if manifest is None:
        raise ArtifactError(f"{artifact}: no manifest beside it: deploy takes an artifact edgeprune export wrote "
                            f"(its manifest says its precision, plan and reference outputs)")
    try:
        plan = Plan.from_dict(manifest["plan"]) if manifest.get("plan") else None
    except MalformedError as exc:
        raise MalformedError(f"{artifact}'s manifest: key 'plan': {exc}") from None
    if isinstance(device, str):
        device = get_device(device, devices)
    out = Path(out)
    bundle.recover(out)
    _check_out(out, force)
    tensorrt, build, compare_at = _precisions(kind, manifest, precision)
    reference, source = _reference(artifact, manifest, model, example_inputs, verify_inputs)

    with tempfile.TemporaryDirectory(prefix="edgeprune-deploy-") as tmp:
        tmp = Path(tmp)
        inputs = reference.write(tmp / "reference-inputs.npz", inputs_only=True)
        inputs_sha = sha256_file(inputs)
        fetched = tmp / "fetched"
        fetched.mkdir()
        with hold(device, kind, {artifact: sha, inputs: inputs_sha}, trust_new_host_key=trust_new_host_key,
                  progress=progress, cancel=cancel) as held:
            remote_out = f"{held.rundir}/deploy-out"
            extra = ["--deploy-reference", held.remote[(inputs, inputs_sha)], "--deploy-sha256", sha,
                     "--deploy-out", remote_out]
            if kind == "onnx":
                extra += ["--engine", "trtexec", "--trt-precision", build] if tensorrt else ["--engine", "onnxruntime"]
            settings = BenchSettings(threads=device.threads, cores=device.cores)
            result = held.timed("run_s", run_harness, held.session, device, kind, held.rundir,
                                held.remote[(artifact, sha)], settings, held.deadline, held.report, extra,
                                ("schema", "runtime", "files"))
            for name, info in checked_result(result, kind, tensorrt, device).items():
                held.report("download", {"file": name, "bytes": info["bytes"]})
                held.timed("download_s", held.session.get, f"{remote_out}/{name}", fetched / name,
                           held.cmd_timeout("download"), info["bytes"])
                if sha256_file(fetched / name) != info["sha256"]:
                    raise ArtifactError(f"device '{device.name}': {name} arrived corrupted: its sha256 differs from "
                                        f"the one the device reported")
        got = device_outputs(fetched / OUTPUTS, reference, device)
        checks = compare_outputs(reference.outputs, got, compare_at)
        layers, warnings = (), ()
        if tensorrt:
            layers, warnings = _tensorrt_report(plan, artifact, fetched, result)
        passed = all(c["passed"] for c in checks)
        record = _manifest(device, artifact, sha, manifest, result, checks, compare_at, source, layers, warnings,
                           passed, held.overhead)
        written, record = bundle.write(out, artifact, manifest, fetched, reference, record, force)
    deployment = Deployment(out, written, result["runtime"], str(result.get("runtime_version")), passed,
                            tuple(checks), tuple(layers), tuple(warnings), record)
    if not passed:
        failing = "; ".join(f"output {c['output']}: max |a-b| {c['max_abs_err']:.3g}, cosine {c['cosine']:.4f} "
                            f"(tolerance {c['tolerance']})" for c in checks if not c["passed"])
        raise DeployError(f"{artifact.name} on device '{device.name}' ({result['runtime']} "
                          f"{result.get('runtime_version')}) differs from PyTorch on {source}: {failing}. What the "
                          f"device computed is in {out / bundle.DEVICE_OUTPUTS}")
    return deployment


def checked_result(result: dict, kind: str, tensorrt: bool, device: Device) -> dict[str, dict]:
    """The device's report, checked before anything of it is used: the runtime the harness can report, the
    TensorRT details' types, and the files to bring back (plain names, a sha256 and a size within
    MAX_DOWNLOAD each; the outputs always, the engine and its layer information from a TensorRT build).
    Returns the files; ArtifactError naming the device otherwise."""
    def refuse(what: str) -> ArtifactError:
        return ArtifactError(f"device '{device.name}': the deploy run reported {what}; nothing was brought back")

    runtime = result.get("runtime")
    if runtime not in RUNTIMES[kind] or (runtime == "tensorrt") != tensorrt:
        raise refuse(f"runtime {runtime!r}, expected {'tensorrt' if tensorrt else ' or '.join(RUNTIMES[kind])}")
    files = result.get("files")
    if not isinstance(files, dict):
        raise refuse("no files")
    for name, info in files.items():
        if not (isinstance(name, str) and _SAFE_NAME.fullmatch(name) and isinstance(info, dict)
                and isinstance(info.get("sha256"), str) and isinstance(info.get("bytes"), int)
                and 0 <= info["bytes"] <= MAX_DOWNLOAD):
            raise refuse(f"a file {name!r} that is not a plain name with its sha256 and a size of at most "
                         f"{MAX_DOWNLOAD >> 30} GiB")
    needed = {OUTPUTS} | ({ENGINE, LAYER_INFO} if tensorrt else set())
    if needed - set(files):
        raise refuse(f"no {', '.join(sorted(needed - set(files)))}")
    if tensorrt:
        trt = result.get("tensorrt")
        sparsity = trt.get("sparsity") if isinstance(trt, dict) else None
        if not isinstance(trt, dict) or not isinstance(trt.get("flags"), list) \
                or not all(isinstance(f, str) for f in trt["flags"]) \
                or not (sparsity is None or (isinstance(sparsity, dict) and all(
                    isinstance(sparsity.get(k, []), list) and all(isinstance(n, str) for n in sparsity.get(k, []))
                    for k in ("eligible", "picked")))):
            raise refuse("TensorRT build details that are not flags and layer-name lists")
    return files


def device_outputs(path: Path, reference: Reference, device: Device) -> list[list[np.ndarray]]:
    """The outputs the device computed, as many per sample as the reference has and each of its shape.
    Only those arrays are read, and only after their stored size is checked against the reference's (a
    compressed member could claim gigabytes)."""
    def refuse(what: str) -> ArtifactError:
        return ArtifactError(f"device '{device.name}': its outputs ({OUTPUTS}) {what}")

    try:
        with np.load(path, allow_pickle=False) as npz:
            sizes = {info.filename: info.file_size for info in npz.zip.infolist()}
            got = []
            for i, expected in enumerate(reference.outputs):
                row = []
                for k, ref in enumerate(expected):
                    key = f"output_{i}_{k}"
                    if f"{key}.npy" not in sizes:
                        raise refuse(f"lack {key}: sample {i} has {len(expected)} output(s)")
                    if sizes[f"{key}.npy"] > 8 * np.asarray(ref).size + 4096:  # float64 and the .npy header
                        raise refuse(f"hold {sizes[f'{key}.npy']} bytes for {key}, of shape {list(np.shape(ref))}")
                    array = npz[key]
                    if array.shape != np.shape(ref):
                        raise refuse(f"have {key} of shape {list(array.shape)}; PyTorch's is {list(np.shape(ref))}")
                    row.append(array)
                extra = [n for n in sizes if n.startswith(f"output_{i}_") and n[:-4] not in
                         {f"output_{i}_{k}" for k in range(len(expected))}]
                if extra:
                    raise refuse(f"hold {extra[0][:-4]}: the model has {len(expected)} output(s)")
                got.append(row)
    except ArtifactError:
        raise
    except Exception as exc:  # noqa: BLE001 - a bad zip, an object array
        raise refuse(f"cannot be read: {exc}") from None
    return got


def _tensorrt_report(plan: Optional[Plan], artifact: Path, fetched: Path, result: dict):
    trt = result["tensorrt"]
    try:
        layer_info = json.loads((fetched / LAYER_INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return (), (f"TensorRT's layer information could not be read ({exc}): which layers run sparse is unknown",)
    if plan is None:
        return (), ("the artifact has no plan (not pruned by edgeprune): no per-layer sparse-kernel report",)
    try:
        rows = kernels(plan, artifact, layer_info, trt.get("sparsity"), list(trt["flags"]))
    except ImportError:
        return (), ("no per-layer sparse-kernel report: the onnx package is not installed on this host "
                    "(pip install 'edgeprune[export]')",)
    warnings = [f"{r.layer}: planned 2:4 but TensorRT runs it with a dense kernel: {r.reason}"
                for r in rows if r.method == "n:m" and not r.sparse_kernel]
    if trt.get("sparsity") is None:
        warnings.append("the build log has no '(Sparsity)' lines: sparse kernels are judged from the tactic names")
    return tuple(rows), tuple(warnings)


def _manifest(device: Device, artifact: Path, sha: str, manifest: dict, result: dict, checks: list, compare_at: str,
              source: str, layers, warnings, passed: bool, overhead: dict) -> dict:
    state = result.get("state_after") or {}
    record = {
        "schema": SCHEMA,
        "passed": passed,
        "deployed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": {"name": device.name, "target": device.target, "address": device.address},
        "source_artifact": {"name": artifact.name, "sha256": sha, "format": manifest.get("format"),
                            "precision": manifest.get("precision"), "target": manifest.get("target"),
                            "sha256_checked_on_device": True},
        "runtime": result["runtime"],
        "runtime_version": result.get("runtime_version"),
        "engine": result.get("engine"),
        "threads": result.get("threads"),
        "system": result.get("facts") or {},
        "power": {"nvpmodel": state.get("nvpmodel"), "governor": state.get("governor"),
                  "cur_mhz": state.get("cur_mhz"), "max_mhz": state.get("max_mhz"), "thermal": state.get("thermal")},
        "checks": {"outputs": checks, "compared_at": compare_at, "samples": result.get("samples"),
                   "reference": source},
        "notes": list(result.get("notes") or []) + (
            [f"the artifact was exported for {manifest['target']}; this device is '{device.name}' ({device.target})"]
            if manifest.get("target") and manifest.get("target") != device.target else []),
        "overhead_s": {k: round(v, 3) for k, v in overhead.items()},
    }
    if result.get("tensorrt"):
        trt = result["tensorrt"]
        record["tensorrt"] = {"flags": trt.get("flags"), "build_s": trt.get("build_s"),
                              "sparsity": trt.get("sparsity"), "layers": [r.to_dict() for r in layers],
                              "warnings": list(warnings)}
    return record
