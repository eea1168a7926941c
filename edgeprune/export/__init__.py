"""Export for the target's runtime, verified in that runtime before anything is called done.

    art = ep.export(pruned, example_inputs, "raspberry-pi-5", "out/")
    art.path, art.manifest

The format follows the profile (`runtime.export_format`) unless forced: ExecuTorch `.pte` with the XNNPACK
delegate for ARM and x86 CPUs, a full-int8 `.tflite` for MCUs (plus Vela's compiled file for Ethos-U),
ONNX for Jetson; `format="tflite"` is LiteRT, the ARM alternative. Every export runs the artifact on
held-out inputs in its real runtime, reads the weights back out of it to check that the plan's sparsity
and channel counts survived, and — for MCUs — measures the arena and checks SRAM and flash. Files are
staged and moved into place only when every check passed; an existing artifact is never overwritten
unless `force=True`.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import platform
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
import torch
from torch import nn

from .._atomic import check_dir_output, make_dir, sha256_file
from .._jsonfile import read_json_object
from ..errors import ArtifactError, MalformedError
from ..inputs import InputSpec, call, output_shapes
from ..plan import Plan
from ..pruning import finalize, record_of
from ..targets import Target, load_target
from .formats import ExportError
from . import holdout, publish
from .manifest import SCHEMA as MANIFEST_SCHEMA, manifest_file, manifest_path as artifact_manifest_path
from .reference import Reference, as_numpy, reference_path, torch_outputs
from .verify import check_weights, compare_outputs

__all__ = ["Artifact", "ExportError", "export", "verify", "FORMATS"]

# format -> (module implementing formats.py's contract, file extension)
FORMATS = {"pte": ("executorch", ".pte"), "tflite": ("litert", ".tflite"), "onnx": ("onnx", ".onnx")}
VERIFY_INPUTS = holdout.RANDOM_INPUTS
_PACKAGES = ("torch", "executorch", "litert-torch", "ai-edge-litert", "onnx", "onnxruntime", "tflite-micro",
             "ethos-u-vela", "torch-pruning", "edgeprune")


@dataclass
class Artifact:
    path: Path  # the file the device runs
    manifest: dict
    manifest_path: Path
    files: list[Path] = field(default_factory=list)  # everything written, manifest included


def _format_module(fmt: str):
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}: expected one of {', '.join(FORMATS)}")
    return importlib.import_module(f".{FORMATS[fmt][0]}", __name__)


def _versions() -> dict[str, str]:
    found = {}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def _model_hash(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _choose(target: Target, precision: Optional[str], fmt: Optional[str]) -> tuple[str, str]:
    fmt = fmt or target.runtime.export_format
    if precision is None:
        precision = "int8" if target.family == "mcu" else "fp32"
    if precision not in ("fp32", "int8"):
        raise ExportError(f"precision {precision!r}: expected 'fp32' or 'int8'")
    if target.family == "mcu" and (precision != "int8" or fmt != "tflite"):
        raise ExportError(f"{target.name} is an MCU target: it runs full-int8 .tflite only "
                          f"(asked for {precision} {fmt}; profile precision.supported = {target.precision.supported})")
    if precision not in target.precision.supported:
        raise ExportError(f"{target.name} does not run {precision} (precision.supported = {target.precision.supported})")
    return precision, fmt


def _calibration_list(calibration: Optional[Iterable], precision: str) -> list:
    if precision != "int8":
        return []
    items = list(calibration) if calibration is not None else []
    if not items:
        raise ExportError("int8 export needs calibration data: pass calibration=[example inputs, ...] "
                          "(CLI: --calibration) — a few hundred real samples for real accuracy")
    return items


def _held_out(example_inputs: Any, n: int, given: Optional[list] = None) -> list:
    """Inputs to verify on: `given` (export passes the ones `holdout.split` chose), else `n` seeded random
    tensors of the example's shapes."""
    if given:
        return list(given)
    spec = InputSpec.of(example_inputs)
    return [spec.make(seed=1000 + i) for i in range(n)]


def export(
    model: nn.Module,
    example_inputs: Any,
    target: "Target | str",
    out_dir: "str | Path",
    precision: Optional[str] = None,
    calibration: Optional[Iterable] = None,
    format: Optional[str] = None,
    *,
    plan: Optional[Plan] = None,
    force: bool = False,
    name: Optional[str] = None,
    verify_inputs: Optional[Iterable] = None,
    verify_split: float = holdout.VERIFY_SPLIT,
    allow_other_target: bool = False,
) -> Artifact:
    """Export `model` for `target` into `out_dir`, verify it in its runtime and write its manifest.

    `verify_inputs`: examples (each like `example_inputs`) to compare the artifact's outputs with PyTorch's
    on. Default: for int8, `verify_split` of the calibration samples (at most 16), held out of calibration;
    for fp32, seeded random tensors of the example's shapes. The manifest's "verification" says which.
    `allow_other_target`: export a model pruned for another target (its plan follows that target's rules)."""
    target = load_target(target)
    precision, fmt = _choose(target, precision, format)
    plan = plan or (record_of(model).plan if record_of(model) else None)
    if plan is not None and plan.target != target.name and not allow_other_target:
        raise ExportError(f"{type(model).__name__} was pruned for {plan.target}, not {target.name}: its plan "
                          f"follows {plan.target}'s rules (channel alignment, N:M support, memory). Plan and prune "
                          f"for {target.name}, or pass allow_other_target=True (CLI: --allow-other-target) to "
                          f"export it for {target.name} anyway")
    module = _format_module(fmt)
    data = holdout.split(_calibration_list(calibration, precision),
                         list(verify_inputs) if verify_inputs is not None else None, example_inputs, verify_split)
    items, held_out = data.calibration, data.verification
    out_dir = Path(out_dir)
    stem = name or f"{type(model).__name__.lower()}-{target.name}-{precision}"
    final_path = out_dir / f"{stem}{FORMATS[fmt][1]}"
    manifest_path = artifact_manifest_path(final_path)
    check_dir_output(out_dir)  # a file in the way is an ArtifactError naming it
    publish.recover(out_dir)  # an export killed here before is rolled back first: it must not block this one
    reference_name = reference_path(final_path).name
    publish.check_destinations(out_dir, final_path.name, [final_path.name, manifest_path.name, reference_name], force)

    final_model = finalize(model).eval()
    make_dir(out_dir)
    stage = publish.Staging(out_dir, final_path.name)
    staging = stage.new
    try:
        staged = staging / final_path.name
        started = time.perf_counter()
        # an MCU runs only what TFLite-Micro / CMSIS-NN / Vela take: int8 end to end, no float op left over
        options = {"require_full_int8": True} if target.family == "mcu" else {}
        facts = module.export(final_model, example_inputs, staged, precision, items, **options)
        export_seconds = time.perf_counter() - started
        if not staged.is_file():
            raise ExportError(f"the {fmt} exporter wrote no artifact")

        checks = _verify(module, final_model, example_inputs, staged, precision, plan, held_out, facts,
                         reference_to=staging / reference_name)
        checks["source"] = data.source.value
        memory = _memory_fit(target, staged, staging, final_model, example_inputs, held_out)
        memory = _relative_paths(memory, staging)
        manifest = {
            "schema": MANIFEST_SCHEMA,
            "artifact": final_path.name,
            "format": fmt,
            "runtime": target.runtime.preferred if fmt == target.runtime.export_format else FORMATS[fmt][0],
            "target": target.name,
            "plan_target": plan.target if plan else None,
            "precision": precision,
            "calibration_samples": len(items),
            "sha256": sha256_file(staged),
            "size_bytes": staged.stat().st_size,
            "source_model": {"class": f"{type(model).__module__}.{type(model).__qualname__}",
                             "sha256": _model_hash(final_model)},
            "plan": plan.to_dict() if plan else None,
            "export": {**facts, "seconds": round(export_seconds, 3)},
            "verification": checks,
            "memory": memory,
            "versions": _versions(),
            "host": f"{platform.system()} {platform.machine()}, Python {platform.python_version()}",
        }
        failures = _failures(checks, memory)
        if failures:
            raise ExportError(f"{final_path.name} failed verification on {data.describe()}: " + "; ".join(failures))
        # every file beside the manifest with its sha256: what a later forced export may replace, and the proof
        manifest["files"] = {p.relative_to(staging).as_posix(): sha256_file(p)
                             for p in sorted(staging.rglob("*")) if p.is_file()}
        files = stage.publish(json.dumps(manifest, indent=2, default=str), manifest_path.name, force)
    finally:
        stage.discard()
    return Artifact(final_path, manifest, manifest_path, files)


def _verify(module, model, example_inputs, path, precision, plan, inputs: list, facts: dict,
            reference_to: Optional[Path] = None) -> dict:
    """The checks of the artifact at `path` on `inputs`; `reference_to`: also write the inputs and PyTorch's
    outputs there (the reference deploy checks the artifact against on the device)."""
    expected = [torch_outputs(model, x) for x in inputs]
    got = [module.run(path, as_numpy(x)) for x in inputs]
    if len(got[0]) < len(expected[0]):
        expected = [e[: len(got[0])] for e in expected]
    outputs = compare_outputs(expected, got, precision)
    extra = {}
    if reference_to is not None:
        Reference([as_numpy(x) for x in inputs], expected).write(reference_to)
        extra["reference"] = reference_to.name
    # layer paths as the artifact records them -> the model's (litert-torch drops iterated containers)
    aliases = {k.removesuffix(".weight"): v.removesuffix(".weight")
               for k, v in (facts.get("weight_names") or {}).items()}
    weights = check_weights(plan, model, module.weights(path), aliases)
    return {"runtime": module.RUNTIME, "inputs": len(inputs), "outputs": outputs, "weights": weights,
            "output_shapes": [list(s) for s in output_shapes(call(model, example_inputs))], **extra}


def _relative_paths(value: Any, staging: Path) -> Any:
    """Paths into the staging directory, rewritten relative to where the files end up."""
    if isinstance(value, dict):
        return {k: _relative_paths(v, staging) for k, v in value.items()}
    if isinstance(value, str) and value.startswith(str(staging)):
        return str(Path(value).relative_to(staging))
    return value


def _memory_fit(target: Target, path: Path, staging: Path, model: nn.Module, example_inputs: Any,
                held_out: Optional[list] = None) -> dict:
    """SRAM and flash against the profile's budgets, then the artifact run in TFLite-Micro. Flash is checked
    first, from the file alone (Vela's compiled file for Ethos-U), and SRAM from the measured arena before
    the model is run: a model that cannot fit fails with the budget and how many KiB over, and TFLite-Micro
    never has to run a model the device could not hold."""
    if target.family != "mcu":
        return {"checked": False, "note": f"{target.family} targets have no SRAM/flash budget in the profile"}
    from . import mcu

    size = path.stat().st_size
    memory: dict[str, Any] = {"checked": True, "sram_bytes": target.memory.sram_bytes,
                              "flash_bytes": target.memory.flash_bytes, "artifact_bytes": size}
    stored = size
    if target.hardware.accelerator.startswith("ethos-u"):
        vela = mcu.vela_compile(path, target.hardware.accelerator_config, staging / "vela")
        memory["vela"] = vela
        # the compiled file is what the firmware stores (Vela's own flash figure omits CPU-only graphs)
        stored = vela.get("vela_tflite_bytes", size)
    memory["fits_flash"] = stored <= target.memory.flash_bytes
    if not memory["fits_flash"]:
        raise ExportError(f"{path.name} for {target.name} " + _over_budget("flash", stored, target.memory.flash_bytes))

    arena = mcu.tflm_arena_bytes(path)
    sram = max(arena, memory.get("vela", {}).get("sram_bytes", 0))
    memory["tflm_arena_bytes"] = arena
    memory["fits_sram"] = sram <= target.memory.sram_bytes
    if not memory["fits_sram"]:
        raise ExportError(f"{path.name} for {target.name} " + _over_budget("SRAM", sram, target.memory.sram_bytes))

    # the device runs TFLite-Micro, not LiteRT: the artifact must run there too, and agree with PyTorch
    inputs = _held_out(example_inputs, VERIFY_INPUTS, held_out)
    memory["tflm_outputs"] = compare_outputs(
        [torch_outputs(model, x) for x in inputs],
        [mcu.tflm_run(path, as_numpy(x), arena_size=max(arena * 2, 64 * 1024)) for x in inputs], "int8")
    return memory


def _over_budget(budget: str, need: int, have: int) -> str:
    kib = 1024
    return (f"does not fit {budget}: needs {need / kib:.1f} KiB, the target has {have / kib:.1f} KiB "
            f"({(need - have) / kib:.1f} KiB over)")


def _failures(checks: dict, memory: dict) -> list[str]:
    failures = [
        f"{checks['runtime']} output {o['output']}: {o['tolerance']} does not hold "
        f"(max abs err {o['max_abs_err']:.3g}, cosine {o['cosine']:.4f}, top-1 {o['top1_agreement']:.2f})"
        for o in checks["outputs"] if not o["passed"]
    ]
    for layer, result in checks["weights"].get("layers", {}).items():
        if not result["passed"]:
            failures.append(f"layer {layer}: {result['error']}")
    failures += [f"TFLite-Micro output {o['output']}: {o['tolerance']} does not hold (cosine {o['cosine']:.4f})"
                 for o in memory.get("tflm_outputs", []) if not o["passed"]]
    return failures


# what verify reads from a manifest, and its JSON type (None: null allowed)
_MANIFEST_KEYS = {"format": (str,), "precision": (str,), "sha256": (str,), "plan": (dict, type(None)),
                  "export": (dict, type(None))}


def _read_manifest(manifest_path: Path) -> dict:
    """The manifest export wrote, checked for what verify reads: a hand-edited one with a key missing or of
    the wrong type is a MalformedError naming the file and the key, before anything runs."""
    manifest = read_json_object(manifest_path, "the manifest export writes",
                                missing="verify needs the manifest written by export")
    for key, kinds in _MANIFEST_KEYS.items():
        if key not in manifest and type(None) not in kinds:
            raise MalformedError(f"{manifest_path}: key {key!r} is missing")
        if not isinstance(manifest.get(key), kinds):
            raise MalformedError(f"{manifest_path}: key {key!r} is {manifest[key]!r}, expected "
                                 + " or ".join("null" if k is type(None) else "an object" if k is dict else "a string"
                                               for k in kinds))
    if manifest["format"] not in FORMATS:
        raise MalformedError(f"{manifest_path}: key 'format' is {manifest['format']!r}, expected one of "
                             f"{', '.join(FORMATS)}")
    return manifest


def verify(model: nn.Module, example_inputs: Any, artifact: "Artifact | str | Path", plan: Optional[Plan] = None,
           *, verify_inputs: Optional[Iterable] = None) -> dict:
    """Check an exported artifact again against `model` (e.g. after copying it to a device's image).

    Reads the manifest beside the artifact for its format and precision, checks the sha256, runs it in
    its runtime and reads its weights back. Returns the checks; raises `ExportError` naming each output or
    layer that fails. `verify_inputs`: examples to compare outputs on; an int8 artifact needs them (data like
    its calibration data), an fp32 one is compared on seeded random inputs without them.
    """
    path = Path(artifact.path if isinstance(artifact, Artifact) else artifact)
    manifest_path = manifest_file(path)
    manifest = _read_manifest(manifest_path)
    if not path.is_file():
        raise ArtifactError(f"{path}: not found")
    module = _format_module(manifest["format"])
    try:
        plan = plan or (Plan.from_dict(manifest["plan"]) if manifest.get("plan") else None)
    except MalformedError as exc:
        raise MalformedError(f"{manifest_path}: key 'plan': {exc}") from None
    final_model = finalize(model).eval()
    if manifest["precision"] == "int8" and verify_inputs is None:
        raise ExportError(f"{path.name} is int8: it is only meant to agree with PyTorch on data like its calibration "
                          f"data, so pass verify_inputs= (examples like that data) to verify it")
    data = holdout.split([], list(verify_inputs) if verify_inputs is not None else None, example_inputs)
    checks = _verify(module, final_model, example_inputs, path, manifest["precision"], plan, data.verification,
                     manifest.get("export") or {})
    checks["source"] = data.source.value
    failures = _failures(checks, {})
    if sha256_file(path) != manifest["sha256"]:
        failures.append(f"sha256 differs from the manifest's: {path.name} changed after export")
    if failures:
        raise ExportError(f"{path.name} failed verification on {data.describe()}: " + "; ".join(failures))
    return checks
