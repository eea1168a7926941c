"""Saving and loading pruned models without pickle.

A saved model is a directory:

    structure.json        the plan, the channels removed from each group, masked layers, the factory
    weights.safetensors   every tensor (masks included, so fine-tuning can resume)

`load` rebuilds the dense architecture from the factory, removes the same channels through the same
dependency graph, re-attaches the masks and loads the weights. Nothing is unpickled.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Optional

import safetensors.torch
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from ._version import __version__
from .errors import ArtifactError
from .factory import Factory, build, spec_of
from .plan import Plan
from .pruning import RECORD_ATTR, PruneRecord, record_of
from .pruning.structured import Removal, replay_removals

SCHEMA = "edgeprune.model/1"
STRUCTURE = "structure.json"
WEIGHTS = "weights.safetensors"


def _masked_layers(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if torch_prune.is_pruned(m) and hasattr(m, "weight_mask")]


def _write_json(path: Path, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())


def save(pruned: nn.Module, plan: Plan, directory: "str | Path", *, factory: Optional[Factory] = None,
         overwrite: bool = False) -> Path:
    """Write `pruned` (as returned by `prune`) to `directory`, atomically.

    The directory appears complete or not at all; an existing one is replaced only with `overwrite=True`.
    """
    directory = Path(directory)
    if directory.exists() and not overwrite:
        raise ArtifactError(f"{directory}: already exists; pass overwrite=True to replace it")
    record = record_of(pruned)
    if record is None and any(g.remove for g in plan.groups):
        raise ArtifactError("the model has no record of which channels were removed: save the module ep.prune returned")
    removals = list(record.removals) if record else []
    structure = {
        "schema": SCHEMA,
        "edgeprune": __version__,
        "torch": torch.__version__,
        "factory": spec_of(factory) if factory is not None else None,
        "model_class": f"{type(pruned).__module__}.{type(pruned).__qualname__}",
        "plan": (record.plan if record else plan).to_dict(),
        "removals": [{"root": r.root, "idxs": list(r.idxs)} for r in removals],
        "masked_layers": _masked_layers(pruned),
    }
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = directory.parent / f".{directory.name}.tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        _write_json(staging / STRUCTURE, structure)
        safetensors.torch.save_model(pruned, str(staging / WEIGHTS), metadata={"schema": SCHEMA})
        if directory.exists():  # overwrite=True: swap in the new directory, then drop the old one
            retired = directory.parent / f".{directory.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(directory, retired)
            os.replace(staging, directory)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def read_structure(directory: "str | Path") -> dict:
    path = Path(directory) / STRUCTURE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{path}: not found — is {directory} a directory written by edgeprune.save?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ArtifactError(f"{path}: 'schema' is {data.get('schema') if isinstance(data, dict) else None!r}, expected {SCHEMA!r}")
    return data


def load(factory: Factory, directory: "str | Path", example_inputs: Any = None) -> nn.Module:
    """Rebuild a pruned model saved by `save`: `factory` makes the dense model, the rest comes from disk."""
    directory = Path(directory)
    structure = read_structure(directory)
    try:
        plan = Plan.from_dict(structure["plan"])
        removals = [Removal(r["root"], tuple(r["idxs"])) for r in structure["removals"]]
        masked = list(structure["masked_layers"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{directory / STRUCTURE}: malformed ({type(exc).__name__}: {exc})") from None
    weights = directory / WEIGHTS
    if not weights.is_file():
        raise ArtifactError(f"{weights}: not found")
    model = build(factory)
    inputs = plan.example() if example_inputs is None else example_inputs
    was_training = model.training
    model.eval()
    try:
        replay_removals(model, inputs, removals)
    except Exception as exc:
        raise ArtifactError(
            f"{directory}: cannot rebuild the pruned architecture from {spec_of(factory)}: {exc} "
            f"(was it saved from a model of this factory? it was saved from {structure.get('factory')})"
        ) from exc
    modules = dict(model.named_modules())
    for name in masked:
        if name not in modules:
            raise ArtifactError(f"{directory / STRUCTURE}: masked layer {name!r} is not in the rebuilt model")
        torch_prune.identity(modules[name], "weight")  # creates weight_orig / weight_mask for the saved values
    try:
        missing, unexpected = safetensors.torch.load_model(model, str(weights), strict=False)
    except Exception as exc:
        raise ArtifactError(f"{weights}: cannot be read ({type(exc).__name__}: {exc})") from None
    if missing or unexpected:
        raise ArtifactError(
            f"{weights}: does not match the rebuilt model (missing: {sorted(missing)[:5]}, unexpected: {sorted(unexpected)[:5]})"
        )
    model.train(was_training)
    setattr(model, RECORD_ATTR, PruneRecord(plan, tuple(removals)))
    return model
