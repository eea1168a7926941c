"""Fine-tuning checkpoints: one per epoch, safetensors + JSON (no pickle), written atomically.

epoch-NNNN.safetensors holds weights, masks, optimizer tensors, the global RNGs' states (rng.py) and the
best weights; epoch-NNNN.json (naming the tensors' sha256) is written second, as the commit marker. A run killed
mid-epoch resumes from the newest complete pair.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import safetensors.torch
import torch
from torch import nn

from .._atomic import sha256_file, write_file, write_text
from .._jsonfile import read_json_object
from ..errors import MalformedError
from . import rng

__all__ = ["CHECKPOINT_SCHEMA", "save_checkpoint", "latest_checkpoint", "optimizer_state"]

CHECKPOINT_SCHEMA = "edgeprune.finetune-checkpoint/1"


def _flat_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, state_meta = {}, {}
    for idx, entries in sd["state"].items():
        state_meta[str(idx)] = {}
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value.detach().clone().contiguous()
                state_meta[str(idx)][key] = "tensor"
            else:
                state_meta[str(idx)][key] = value
    return tensors, {"state": state_meta, "param_groups": sd["param_groups"]}


def optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """The optimizer state dict a checkpoint holds (`meta` is its record's "optimizer" entry)."""
    state = {}
    for idx, entries in meta["state"].items():
        state[int(idx)] = {k: (tensors[f"optim.{idx}.{k}"] if v == "tensor" else v) for k, v in entries.items()}
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(directory: Path, epoch: int, model: nn.Module, opt, best_state, meta: dict) -> None:
    """epoch-NNNN.safetensors, then epoch-NNNN.json (naming the tensors' sha256) as the commit marker;
    older epochs are removed only after the new one is complete."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if best_state is not None:
        tensors.update({f"best.{k}": v.detach().clone().contiguous() for k, v in best_state.items()})
    opt_tensors, opt_meta = _flat_optimizer(opt)
    tensors.update(opt_tensors)
    tensors.update(rng.states())
    stem = f"epoch-{epoch:04d}"
    weights = directory / f"{stem}.safetensors"
    write_file(weights, lambda p: safetensors.torch.save_file(tensors, p, metadata={"schema": CHECKPOINT_SCHEMA}),
               overwrite=True)
    record = dict(meta, schema=CHECKPOINT_SCHEMA, epoch=epoch, optimizer=opt_meta, sha256=sha256_file(weights),
                  has_best=best_state is not None)
    write_text(directory / f"{stem}.json", json.dumps(record, indent=2), overwrite=True)
    for old in directory.glob("epoch-*.*"):
        if old.stem != stem and old.suffix in (".json", ".safetensors"):
            old.unlink(missing_ok=True)


def latest_checkpoint(directory: Optional[Path]) -> Optional[tuple[dict, dict[str, torch.Tensor]]]:
    if directory is None or not directory.is_dir():
        return None
    for marker in sorted(directory.glob("epoch-*.json"), reverse=True):
        record = _read_record(marker)
        weights = marker.with_suffix(".safetensors")
        if record.get("schema") != CHECKPOINT_SCHEMA or not weights.exists() or sha256_file(weights) != record["sha256"]:
            continue  # incomplete or corrupt: fall back to an older one
        return record, safetensors.torch.load_file(str(weights))
    return None


# what resuming reads from a record, and its JSON type (None: null allowed)
_RECORD_KEYS = {"epoch": (int,), "sha256": (str,), "settings": (dict,), "optimizer": (dict,), "history": (list,),
                "has_best": (bool,), "since_best": (int,), "stopped_early": (bool,),
                "best_metric": (int, float, type(None)), "best_epoch": (int, type(None))}


def _read_record(marker: Path) -> dict:
    """A checkpoint's JSON record. Records are written whole (atomically), so one that does not parse or
    lacks a key was edited or damaged after the fact: an error naming the file and the key, never a silent
    fresh start (which would delete it with the next epoch's clean-up). Another schema is returned as is
    (the caller skips it)."""
    remedy = "move it out of the checkpoint directory to resume from an older checkpoint, or start afresh"
    record = read_json_object(marker, "a checkpoint record", remedy=remedy)
    if record.get("schema") != CHECKPOINT_SCHEMA:
        return record
    for key, kinds in _RECORD_KEYS.items():
        if key not in record:
            raise MalformedError(f"{marker}: key {key!r} is missing from the checkpoint record; {remedy}")
        value = record[key]
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise MalformedError(f"{marker}: key {key!r} is {value!r}, expected "
                                 f"{' or '.join('null' if k is type(None) else k.__name__ for k in kinds)}; {remedy}")
    return record
