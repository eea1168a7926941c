"""Fine-tuning checkpoints: one per epoch, safetensors + JSON (no pickle), written atomically.

epoch-NNNN.safetensors holds weights, masks, optimizer tensors, the torch RNG state and the best weights;
epoch-NNNN.json (naming the tensors' sha256) is written second, as the commit marker. A run killed
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
    tensors["rng.torch"] = torch.get_rng_state()
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
        record = json.loads(marker.read_text())
        weights = marker.with_suffix(".safetensors")
        if record.get("schema") != CHECKPOINT_SCHEMA or not weights.exists() or sha256_file(weights) != record["sha256"]:
            continue  # incomplete or corrupt: fall back to an older one
        return record, safetensors.torch.load_file(str(weights))
    return None
