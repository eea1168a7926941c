"""Saving and loading pruned models without pickle.

A saved model is a directory:

    structure.json        the plan, the channels removed from each group, masked layers, the factory,
                          whether the model was fine-tuned after pruning
    weights.safetensors   every tensor (masks included, so fine-tuning can resume)

`load` rebuilds the dense architecture from the factory, removes the same channels through the same
dependency graph, re-attaches the masks and loads the weights. Nothing is unpickled.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional

import safetensors.torch
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from ._version import __version__
from ._atomic import (abandoned, check_dir_output, foreign_files, in_the_way, make_dir, remove_abandoned, remove_path,
                      temporary_path)
from .costs import PRUNABLE_TYPES
from ._jsonfile import read_json_object
from .errors import ArtifactError
from .factory import Factory, build, spec_of
from .plan import Plan
from .pruning import RECORD_ATTR, PruneRecord, record_of
from .pruning.structured import ChannelGraph, Removal
from ._warn import warn

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


def _recover(directory: Path) -> None:
    """Undo what a save killed beside `directory` left: a model it had moved aside to replace comes back
    when its replacement never arrived; its staging directories go."""
    for left in abandoned(directory.parent, ("old",)):
        if left.final.exists() or left.final.is_symlink():  # the replacement was in place: only the old copy is left
            remove_path(left.path)
            continue
        os.replace(left.path, left.final)
        warn(f"{left.final}: restored the saved model that an interrupted save (process {left.pid}, "
             "now gone) had moved aside to replace")
    remove_abandoned(directory.parent, ("stage", "tmp"))


def _ours(directory: Path) -> set[str]:
    """The files of `directory` that save wrote: both, when structure.json is one of ours."""
    try:
        data = json.loads((directory / STRUCTURE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    return {STRUCTURE, WEIGHTS} if isinstance(data, dict) and data.get("schema") == SCHEMA else set()


def check_save_dir(directory: "str | Path", *, overwrite: bool = False) -> Path:
    """Refuse, before any work is done, a directory `save` must not write: a file, one holding anything
    save did not write (even with `overwrite`: only a saved model, or an empty directory, is ever
    replaced), or an existing directory without `overwrite`."""
    directory = Path(directory)
    # a file is never replaced by a directory, even with overwrite: it is not a model saved here
    check_dir_output(directory)
    _recover(directory)
    if not directory.is_dir():
        return directory
    foreign = foreign_files(directory, _ours(directory))
    if foreign:
        raise in_the_way(directory, foreign, "choose another directory (--out)")
    if not overwrite:
        raise ArtifactError(f"{directory}: already exists; pass --overwrite (overwrite=True) to replace it")
    return directory


def save(pruned: nn.Module, plan: Plan, directory: "str | Path", *, factory: Optional[Factory] = None,
         overwrite: bool = False) -> Path:
    """Write `pruned` (as returned by `prune`) to `directory`, atomically.

    The directory appears complete or not at all. An existing saved model is replaced only with
    `overwrite=True`; a directory holding anything else is never replaced (see `check_save_dir`).
    """
    directory = check_save_dir(directory, overwrite=overwrite)
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
        "finetuned": bool(record and record.finetuned),
    }
    make_dir(directory.parent)
    staging = temporary_path(directory, "stage")
    try:
        staging.mkdir()
    except OSError as exc:
        raise ArtifactError(f"{directory}: cannot be written: {exc.strerror or exc}") from None
    retired = temporary_path(directory, "old")
    try:
        _write_json(staging / STRUCTURE, structure)
        safetensors.torch.save_model(pruned, str(staging / WEIGHTS), metadata={"schema": SCHEMA})
        if directory.exists():  # swap in the new directory, then drop the old one (a kill between: see _recover)
            check_save_dir(directory, overwrite=overwrite)  # again: files may have arrived while we worked
            os.replace(directory, retired)
            os.replace(staging, directory)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, directory)
    except (OSError, safetensors.SafetensorError) as exc:  # a full disk, a read-only directory
        _abandon(staging, retired, directory)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ArtifactError(f"{directory}: cannot be written: {reason}") from None
    except BaseException:
        _abandon(staging, retired, directory)
        raise
    return directory


def _abandon(staging: Path, retired: Path, directory: Path) -> None:
    """Undo a failed save: its staging directory goes, and a model it had moved aside comes back. _recover
    cannot do the latter later: it skips temporaries of a live writer, and this process is one."""
    shutil.rmtree(staging, ignore_errors=True)
    if retired.exists() and not (directory.exists() or directory.is_symlink()):
        try:
            os.replace(retired, directory)
        except OSError as exc:
            raise ArtifactError(f"{directory}: the saved model it held could not be put back "
                                f"({exc.strerror or exc}); it is kept in {retired}") from None


def read_structure(directory: "str | Path") -> dict:
    directory = Path(directory)
    path = directory / STRUCTURE
    if directory.exists() and not directory.is_dir():
        raise ArtifactError(f"{directory}: is a file; a saved model is the directory edgeprune.save "
                            "(or `edgeprune prune --out`) wrote, holding structure.json and weights.safetensors")
    data = read_json_object(path, "the structure edgeprune.save writes",
                            missing=f"is {directory} a directory written by edgeprune.save?")
    if data.get("schema") != SCHEMA:
        raise ArtifactError(f"{path}: 'schema' is {data.get('schema')!r}, expected {SCHEMA!r}")
    return data


def load(factory: Factory, directory: "str | Path", example_inputs: Any = None) -> nn.Module:
    """Rebuild a pruned model saved by `save`: `factory` makes the dense model, the rest comes from disk."""
    directory = Path(directory)
    structure = read_structure(directory)
    try:
        plan = Plan.from_dict(structure["plan"])
        removals = [_removal(n, r) for n, r in enumerate(structure["removals"])]
        masked = list(structure["masked_layers"])
        finetuned = structure.get("finetuned", False)  # absent from models saved before it was recorded
        if not isinstance(finetuned, bool):
            raise TypeError(f"'finetuned' is {finetuned!r}, expected true or false")
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
        graph = ChannelGraph(model, inputs)
        for n, removal in enumerate(removals):
            _check_removal(directory / STRUCTURE, n, removal, graph.modules.get(removal.root))
            graph.remove(removal.root, list(removal.idxs))
    except ArtifactError:
        raise
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
    setattr(model, RECORD_ATTR, PruneRecord(plan, tuple(removals), finetuned=finetuned))
    return model


def _removal(n: int, entry: Any) -> Removal:
    if not isinstance(entry, dict) or not isinstance(entry.get("root"), str):
        raise TypeError(f"removals[{n}]: expected {{\"root\": layer name, \"idxs\": [channel indices]}}, got {entry!r}")
    idxs = entry.get("idxs")
    if not isinstance(idxs, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in idxs):
        raise TypeError(f"removals[{n}] (layer {entry['root']}): 'idxs' must be a list of integers, got {idxs!r}")
    return Removal(entry["root"], tuple(idxs))


def _check_removal(path: Path, n: int, removal: Removal, module: Optional[nn.Module]) -> None:
    """Each recorded removal against the layer as the rebuilt model has it at that point (earlier removals
    applied): torch-pruning would skip an index out of range silently, and the weights file be blamed."""
    where = f"{path}: removals[{n}], layer {removal.root}"
    if not isinstance(module, PRUNABLE_TYPES):
        what = "not in the rebuilt model" if module is None else f"a {type(module).__name__}, not a Conv or Linear layer"
        raise ArtifactError(f"{where}: the layer is {what}")
    channels = module.weight.shape[0]
    seen: set[int] = set()
    for i in removal.idxs:
        if i < 0 or i >= channels:
            raise ArtifactError(f"{where}: channel index {i} is out of range (the layer has {channels} output "
                                "channels at that point)")
        if i in seen:
            raise ArtifactError(f"{where}: channel index {i} is listed twice")
        seen.add(i)
    if len(seen) >= channels:
        raise ArtifactError(f"{where}: removes all {channels} output channels; a layer must keep at least one")


def load_weights(factory: Factory, path: "str | Path") -> nn.Module:
    """The factory's dense model with trained weights from a .safetensors file, e.g. one written by
    `safetensors.torch.save_model(model, path)`. Pickled checkpoints (.pt, .pth) are refused, never read."""
    path = Path(path)
    if path.is_dir():
        raise ArtifactError(f"{path}: is a directory; dense weights are one .safetensors file "
                            "(a pruned model saved by edgeprune.save is read with edgeprune.load)")
    try:
        with open(path, "rb"):  # an OSError (permissions, a symlink loop) says what it is; safetensors' would not
            pass
        with safetensors.safe_open(str(path), framework="pt"):  # reads the header only
            pass
    except FileNotFoundError:
        raise ArtifactError(f"{path}: not found") from None
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except Exception as exc:  # safetensors' header errors have no common base class
        raise ArtifactError(f"{path}: not a safetensors file ({exc}); edgeprune never unpickles .pt/.pth files: "
                            "write the weights with safetensors.torch.save_model(model, 'model.safetensors')") from None
    model = build(factory)
    try:
        missing, unexpected = safetensors.torch.load_model(model, str(path), strict=False)
    except Exception as exc:
        raise ArtifactError(f"{path}: does not fit {spec_of(factory)}'s model ({type(exc).__name__}: {exc})") from None
    if missing or unexpected:
        raise ArtifactError(f"{path}: does not match {spec_of(factory)}'s model (missing: {sorted(missing)[:5]}, "
                            f"unexpected: {sorted(unexpected)[:5]})")
    return model
