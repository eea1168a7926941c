"""Fine-tuning that recovers accuracy after pruning: `finetune`, `recalibrate_bn`, `iterative_prune`, `lottery`.

PyTorch-native: DataLoaders of (inputs, labels) in, an nn.Module out. The caller's model is never changed:
every function works on a copy (`_copy.copy_model`, masks included) and returns it with its
`torch.nn.utils.prune` masks still attached, so `ep.finalize` / `ep.export` work on the result.

Masks are enforced twice: the prune hook computes weight = weight_orig * weight_mask, and after every
optimizer step `weight_orig` is zeroed at masked positions, so weight decay or momentum cannot revive a
pruned weight when the mask is later folded or removed.

Determinism and resume: the data order of epoch e comes from a generator seeded with seed*1000 + e
(a RandomSampler over the caller's loader's dataset and batch size), the global torch RNG is seeded
from `seed` inside `torch.random.fork_rng` (the caller's RNG is untouched), and every epoch writes a
checkpoint (safetensors + JSON, atomic; no pickle) with weights, masks, optimizer state, RNG state,
history and the best weights. A run killed mid-epoch and started again with the same `checkpoint_dir`
resumes after the last completed epoch and ends bit-identical to an uninterrupted run.

Gradual pruning (`GradualSchedule`): unstructured per-layer magnitude masks recomputed every k steps
following `cubic_sparsity`; for "n:m" the N:M mask is exact from the start for each layer, and the ramp
is over *which* layers are sparsified: at step t the first ceil(L·s_t/s_final) of the L layers (in module
order) carry N:M masks, s_t following the cubic schedule with s_final = 1 - n/m.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune as torch_prune
from torch.utils.data import DataLoader, IterableDataset, RandomSampler

from ._copy import copy_model
from .budget import Budget
from .costs import measure, prunable_layers
from .distill import kd_loss
from .errors import BudgetError, EdgepruneError, ModelError
from .batchnorm import recalibrate_ as _recalibrate_, recalibrate_bn
from .metrics import accuracy  # the default metric
from .metrics import logits as _logits, split_batch as _split
from .pruning.nm import nm_mask, reduction_size
from .schedules import cosine_lr, cubic_sparsity

__all__ = ["FinetuneResult", "GradualSchedule", "finetune", "recalibrate_bn", "iterative_prune", "lottery"]

CHECKPOINT_SCHEMA = "edgeprune.finetune-checkpoint/1"


@dataclass(frozen=True, kw_only=True)
class GradualSchedule:
    final_sparsity: float
    begin_step: int
    end_step: int
    every_k_steps: int = 1
    initial_sparsity: float = 0.0
    method: str = "unstructured"  # "unstructured" | "n:m"
    n: int = 2
    m: int = 4
    layers: Optional[tuple[str, ...]] = None  # default: every Conv/Linear except the first and the last

    def __post_init__(self):
        if self.method not in ("unstructured", "n:m"):
            raise EdgepruneError(f"GradualSchedule(method={self.method!r}): expected 'unstructured' or 'n:m'")
        if self.end_step <= self.begin_step or self.every_k_steps < 1:
            raise EdgepruneError(f"GradualSchedule: need begin_step < end_step and every_k_steps >= 1 "
                                 f"(got {self.begin_step}, {self.end_step}, {self.every_k_steps})")
        if not 0 <= self.initial_sparsity <= self.final_sparsity < 1:
            raise EdgepruneError(f"GradualSchedule: need 0 <= initial_sparsity <= final_sparsity < 1 "
                                 f"(got {self.initial_sparsity}, {self.final_sparsity})")


@dataclass
class FinetuneResult:
    model: nn.Module
    history: list[dict] = field(default_factory=list)  # per epoch: epoch, loss, metric, lr, sparsity
    best_metric: Optional[float] = None
    best_epoch: Optional[int] = None
    stopped_early: bool = False
    resumed_from: Optional[int] = None  # the last completed epoch of the checkpoint resumed from


# ---------------------------------------------------------------------------------------------- helpers

def _masked(model: nn.Module):
    """(module, tensor name) of every torch.nn.utils.prune mask on `model`."""
    for module in model.modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, torch_prune.BasePruningMethod):
                yield module, hook._tensor_name


def _enforce_masks(model: nn.Module) -> None:
    with torch.no_grad():
        for module, name in _masked(model):
            getattr(module, name + "_orig").mul_(getattr(module, name + "_mask"))


def _refresh_weight(module: nn.Module) -> None:
    """Recompute `weight` = weight_orig * mask after a mask changed (the hook does it on the next forward)."""
    with torch.no_grad():
        module.weight = module.weight_orig * module.weight_mask


def _sparsity(model: nn.Module) -> float:
    zeros = total = 0
    for m in prunable_layers(model).values():
        w = m.weight_orig * m.weight_mask if hasattr(m, "weight_mask") else m.weight
        zeros += int((w == 0).sum())
        total += w.numel()
    return zeros / total if total else 0.0


def _ensure_mask(module: nn.Module) -> None:
    if not hasattr(module, "weight_mask"):
        torch_prune.identity(module, "weight")


def _default_layers(model: nn.Module, inputs: Any) -> list[str]:
    order = measure(model, inputs if isinstance(inputs, dict) else (inputs,)).order
    return list(order[1:-1])


def _resolve_layers(model: nn.Module, names: Optional[Sequence[str]], sample_inputs: Any) -> list[str]:
    layers = prunable_layers(model)
    if names is None:
        return _default_layers(model, sample_inputs)
    unknown = [n for n in names if n not in layers]
    if unknown:
        raise ModelError(f"layers {unknown} are not Conv/Linear layers of {type(model).__name__} "
                         f"(it has {', '.join(layers)})")
    return list(names)


def _magnitude_mask(module: nn.Module, sparsity: float) -> torch.Tensor:
    """Per-layer magnitude mask with exactly round(sparsity·numel) zeros (already-masked weights go first)."""
    w = (module.weight_orig * module.weight_mask).detach().abs().flatten()
    k = int(round(sparsity * w.numel()))
    mask = torch.ones_like(w)
    if k > 0:
        mask[w.topk(k, largest=False).indices] = 0
    return mask.view_as(module.weight_mask) * module.weight_mask


def _apply_gradual(model: nn.Module, schedule: GradualSchedule, layers: list[str], step: int) -> None:
    if step < schedule.begin_step or (step - schedule.begin_step) % schedule.every_k_steps and step < schedule.end_step:
        return
    s = cubic_sparsity(step, initial=schedule.initial_sparsity, final=schedule.final_sparsity,
                       begin=schedule.begin_step, end=schedule.end_step)
    modules = dict(model.named_modules())
    with torch.no_grad():
        if schedule.method == "unstructured":
            for name in layers:
                module = modules[name]
                module.weight_mask.copy_(_magnitude_mask(module, s))
                _refresh_weight(module)
        else:
            count = math.ceil(len(layers) * s / schedule.final_sparsity) if schedule.final_sparsity else len(layers)
            for name in layers[:count]:
                module = modules[name]
                mask = nm_mask(module.weight_orig * module.weight_mask, schedule.n, schedule.m)
                module.weight_mask.mul_(mask.to(module.weight_mask.dtype))
                _refresh_weight(module)
    _enforce_masks(model)


def _epoch_loader(loader: DataLoader, seed: int, epoch: int) -> DataLoader:
    if isinstance(loader.dataset, IterableDataset):
        return loader  # no sampler to seed: order is the dataset's own
    g = torch.Generator().manual_seed(seed * 1000 + epoch)
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=RandomSampler(loader.dataset, generator=g),
                      collate_fn=loader.collate_fn, drop_last=loader.drop_last, num_workers=loader.num_workers)


def _len(loader: DataLoader) -> int:
    try:
        return len(loader)
    except TypeError:
        return sum(1 for _ in loader)


# ------------------------------------------------------------------------------------------ checkpoints

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


def _unflat_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state = {}
    for idx, entries in meta["state"].items():
        state[int(idx)] = {k: (tensors[f"optim.{idx}.{k}"] if v == "tensor" else v) for k, v in entries.items()}
    return {"state": state, "param_groups": meta["param_groups"]}


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _save_checkpoint(directory: Path, epoch: int, model: nn.Module, opt, best_state, meta: dict) -> None:
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
    _atomic_write(weights, lambda p: safetensors.torch.save_file(tensors, p, metadata={"schema": CHECKPOINT_SCHEMA}))
    record = dict(meta, schema=CHECKPOINT_SCHEMA, epoch=epoch, optimizer=opt_meta, sha256=_sha256(weights),
                  has_best=best_state is not None)
    _atomic_write(directory / f"{stem}.json", lambda p: Path(p).write_text(json.dumps(record, indent=2)))
    for old in directory.glob("epoch-*.*"):
        if old.stem != stem and old.suffix in (".json", ".safetensors"):
            old.unlink(missing_ok=True)


def _latest_checkpoint(directory: Optional[Path]) -> Optional[tuple[dict, dict[str, torch.Tensor]]]:
    if directory is None or not directory.is_dir():
        return None
    for marker in sorted(directory.glob("epoch-*.json"), reverse=True):
        record = json.loads(marker.read_text())
        weights = marker.with_suffix(".safetensors")
        if record.get("schema") != CHECKPOINT_SCHEMA or not weights.exists() or _sha256(weights) != record["sha256"]:
            continue  # incomplete or corrupt: fall back to an older one
        return record, safetensors.torch.load_file(str(weights))
    return None


# ------------------------------------------------------------------------------------------------ training

def _check_loader(data: Any, what: str) -> None:
    if not isinstance(data, DataLoader):
        raise ModelError(f"{what} must be a torch DataLoader of (inputs, labels) batches, got {type(data).__name__}")
    if not isinstance(data.dataset, IterableDataset) and len(data.dataset) == 0:
        raise ModelError(f"{what} is empty: its dataset has no samples")


def _preflight(model, teacher, train_data, val_data, metric) -> Any:
    """Checks on the first batch (labels in range, teacher shape) and the metric; nothing is written yet."""
    first = next(iter(train_data), None)
    if first is None:
        raise ModelError("train_data is empty: it yields no batches")
    inputs, labels = _split(first)
    was = model.training
    model.eval()
    with torch.no_grad():
        out = _logits(model, inputs)
        if labels.dtype in (torch.int64, torch.int32, torch.int16, torch.uint8):
            classes = out.shape[-1]
            if int(labels.min()) < 0 or int(labels.max()) >= classes:
                raise ModelError(f"labels out of range: the first batch has labels in [{int(labels.min())}, "
                                 f"{int(labels.max())}] but the model has {classes} outputs")
        if teacher is not None:
            t_out = _logits(teacher, inputs)
            if tuple(t_out.shape) != tuple(out.shape):
                raise ModelError(f"teacher output shape {tuple(t_out.shape)} differs from the student's "
                                 f"{tuple(out.shape)} on the first batch")
    model.train(was)
    if val_data is not None:
        value = metric(model, val_data)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ModelError(f"metric {getattr(metric, '__name__', metric)!r} returned {value!r} on val_data "
                             f"before training: it must return a finite float")
    return inputs


def finetune(
    model: nn.Module,
    train_data: DataLoader,
    *,
    epochs: int,
    val_data: Optional[DataLoader] = None,
    metric: Optional[Callable[[nn.Module, DataLoader], float]] = None,
    teacher: Optional[nn.Module] = None,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    optimizer: str = "adam",
    momentum: float = 0.9,
    warmup_steps: int = 0,
    kd_alpha: float = 0.9,
    kd_temperature: float = 4.0,
    gradual: Optional[GradualSchedule] = None,
    recalibrate_bn: bool = True,
    early_stopping_patience: Optional[int] = None,
    checkpoint_dir: "str | Path | None" = None,
    seed: int = 0,
    quiet: bool = False,
    callback: Optional[Callable[[dict], None]] = None,
    _on_epoch_end: Optional[Callable[[int, nn.Module], None]] = None,
) -> FinetuneResult:
    """Fine-tune a copy of `model` (masks kept in force) and return it in a `FinetuneResult`.

    Loss: cross-entropy, or `kd_loss` against `teacher` (eval mode, no grad). LR: `cosine_lr` per step with
    `warmup_steps` of linear warm-up. With `early_stopping_patience` (needs `val_data`), training stops
    after that many epochs without improvement of `metric` (default top-1 accuracy, higher is better) and
    the best epoch's weights are returned; with `gradual`, only epochs that ended at the final sparsity count
    as best. `callback(info)` is called after every optimizer step with {epoch, step, global_step, loss}.
    A non-finite loss raises ModelError; the exception's `.model` holds the weights of the last good epoch.
    """
    if epochs < 1:
        raise EdgepruneError(f"epochs={epochs}: must be >= 1")
    if optimizer not in ("adam", "sgd"):
        raise EdgepruneError(f"optimizer={optimizer!r}: expected 'adam' or 'sgd'")
    if early_stopping_patience is not None and val_data is None:
        raise EdgepruneError("early_stopping_patience needs val_data to measure the metric on")
    _check_loader(train_data, "train_data")
    if val_data is not None:
        _check_loader(val_data, "val_data")
    metric = metric or accuracy
    directory = Path(checkpoint_dir) if checkpoint_dir is not None else None
    teacher_was = teacher.training if teacher is not None else None
    if teacher is not None:
        teacher.eval()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return _train(model, train_data, epochs, val_data, metric, teacher, lr, weight_decay, optimizer, momentum,
                          warmup_steps, kd_alpha, kd_temperature, gradual, recalibrate_bn, early_stopping_patience,
                          directory, seed, quiet, callback, _on_epoch_end)
    finally:
        if teacher is not None:
            teacher.train(teacher_was)


def _train(model, train_data, epochs, val_data, metric, teacher, lr, weight_decay, optimizer, momentum, warmup_steps,
           kd_alpha, kd_temperature, gradual, recalibrate, patience, directory, seed, quiet, callback, on_epoch_end):
    work = copy_model(model)
    sample_inputs = _preflight(work, teacher, train_data, val_data, metric)
    layers: list[str] = []
    if gradual is not None:
        layers = _resolve_layers(work, gradual.layers, sample_inputs)
        modules = dict(work.named_modules())
        for name in layers:
            if gradual.method == "n:m" and reduction_size(modules[name]) % gradual.m:
                raise ModelError(f"layer {name}: input dimension {reduction_size(modules[name])} is not a multiple "
                                 f"of {gradual.m}, so it cannot carry {gradual.n}:{gradual.m} masks")
            _ensure_mask(modules[name])
    params = [p for p in work.parameters() if p.requires_grad]
    opt = (torch.optim.Adam(params, lr=lr, weight_decay=weight_decay) if optimizer == "adam"
           else torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay))
    settings = {"epochs": epochs, "lr": lr, "weight_decay": weight_decay, "optimizer": optimizer, "seed": seed,
                "warmup_steps": warmup_steps, "kd": teacher is not None, "kd_alpha": kd_alpha,
                "kd_temperature": kd_temperature, "gradual": asdict(gradual) if gradual else None}
    settings = json.loads(json.dumps(settings))
    result = FinetuneResult(model=work)
    best_state, since_best, start = None, 0, 1
    found = _latest_checkpoint(directory)
    if found is not None:
        record, tensors = found
        differs = {k: (record["settings"].get(k), v) for k, v in settings.items() if record["settings"].get(k) != v}
        if differs:
            raise ModelError(f"{directory}: holds a checkpoint of a run with other settings "
                             f"({', '.join(f'{k}: {a!r} there, {b!r} now' for k, (a, b) in differs.items())}); "
                             f"use a fresh checkpoint_dir")
        try:
            work.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        except RuntimeError as exc:
            raise ModelError(f"{directory}: checkpoint does not fit {type(model).__name__}: {exc}") from exc
        opt.load_state_dict(_unflat_optimizer(tensors, record["optimizer"]))
        torch.set_rng_state(tensors["rng.torch"])
        if record["has_best"]:
            best_state = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
        result.history = record["history"]
        result.best_metric, result.best_epoch = record["best_metric"], record["best_epoch"]
        since_best, start = record["since_best"], record["epoch"] + 1
        result.resumed_from = record["epoch"]
        result.stopped_early = record["stopped_early"]
    elif recalibrate:
        _recalibrate_(work, _epoch_loader(train_data, seed, 0))

    steps_per_epoch = _len(_epoch_loader(train_data, seed, 1))
    total = epochs * steps_per_epoch
    progress = None
    if not quiet:
        from rich.progress import Progress
        progress = Progress(transient=False)
        progress.start()
    try:
        for epoch in range(start, epochs + 1):
            if result.stopped_early:
                break
            good = {k: v.detach().clone() for k, v in work.state_dict().items()}
            work.train()
            task = progress.add_task(f"epoch {epoch}/{epochs}", total=steps_per_epoch) if progress else None
            losses, current_lr = [], lr
            for i, batch in enumerate(_epoch_loader(train_data, seed, epoch)):
                step = (epoch - 1) * steps_per_epoch + i
                if gradual is not None:
                    _apply_gradual(work, gradual, layers, step)
                current_lr = cosine_lr(step, total=total, warmup=warmup_steps, base_lr=lr)
                for group in opt.param_groups:
                    group["lr"] = current_lr
                inputs, labels = _split(batch)
                logits = _logits(work, inputs)
                if teacher is not None:
                    with torch.no_grad():
                        t_logits = _logits(teacher, inputs)
                    loss = kd_loss(logits, t_logits, labels, alpha=kd_alpha, temperature=kd_temperature)
                else:
                    loss = F.cross_entropy(logits, labels)
                if not torch.isfinite(loss):
                    work.load_state_dict(good)
                    err = ModelError(f"loss became {float(loss.detach())} at epoch {epoch}, step {i + 1} (global step {step}); "
                                     f"weights restored to the end of epoch {epoch - 1}"
                                     + (f", the checkpoint in {directory} is left as it was" if directory else "")
                                     + ": lower lr or check the data")
                    err.model = work
                    raise err
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                _enforce_masks(work)
                loss_value = float(loss.detach())
                losses.append(loss_value)
                if progress:
                    progress.update(task, advance=1, description=f"epoch {epoch}/{epochs} loss {loss_value:.4f}")
                if callback is not None:
                    callback({"epoch": epoch, "step": i + 1, "global_step": step, "loss": loss_value})
            value = None
            if val_data is not None:
                value = metric(work, val_data)
                if not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise ModelError(f"metric {getattr(metric, '__name__', metric)!r} returned {value!r} after "
                                     f"epoch {epoch}: it must return a finite float")
                value = float(value)
            entry = {"epoch": epoch, "loss": sum(losses) / max(1, len(losses)), "metric": value, "lr": current_lr,
                     "sparsity": _sparsity(work)}
            result.history.append(entry)
            if progress:
                progress.console.print(f"epoch {epoch}: loss {entry['loss']:.4f}"
                                       + (f", metric {value:.4f}" if value is not None else "")
                                       + f", sparsity {entry['sparsity']:.3f}")
            eligible = gradual is None or epoch * steps_per_epoch - 1 >= gradual.end_step
            if value is not None and eligible and (result.best_metric is None or value > result.best_metric):
                result.best_metric, result.best_epoch, since_best = value, epoch, 0
                if patience is not None:
                    best_state = {k: v.detach().clone() for k, v in work.state_dict().items()}
            elif value is not None and eligible:
                since_best += 1
            if patience is not None and since_best >= patience and epoch < epochs:
                result.stopped_early = True
            if on_epoch_end is not None:
                on_epoch_end(epoch, work)
            if directory is not None:
                _save_checkpoint(directory, epoch, work, opt, best_state, {
                    "settings": settings, "history": result.history, "best_metric": result.best_metric,
                    "best_epoch": result.best_epoch, "since_best": since_best, "stopped_early": result.stopped_early})
    finally:
        if progress:
            progress.stop()
    if patience is not None and best_state is not None:
        work.load_state_dict(best_state)
    work.eval()
    return result


# ------------------------------------------------------------------------------------- iterative schemes

def iterative_prune(model: nn.Module, example_inputs: Any, target: Any, budget: Budget, train_data: DataLoader, *,
                    steps: int = 3, epochs_per_step: int = 1, checkpoint_dir: "str | Path | None" = None,
                    recipe: Any = None, importance: str = "l2", **finetune_kwargs) -> FinetuneResult:
    """Structured pruning in `steps` stages: the MACs kept go from 1.0 to `budget.macs_ratio` linearly; each
    stage plans (`ep.plan`, with `recipe` and `importance`) and prunes (`ep.prune`) the current model,
    recalibrates BatchNorm on `train_data`, then fine-tunes for `epochs_per_step`. History entries carry
    `prune_step`, `macs_ratio`."""
    from .policy import plan as make_plan
    from .pruning import finalize, prune

    if not isinstance(budget, Budget) or budget.kind != "macs_ratio":
        raise BudgetError("iterative_prune takes Budget(macs_ratio=r); for sparsity use finetune(gradual=...)")
    if steps < 1:
        raise EdgepruneError(f"steps={steps}: must be >= 1")
    dense = measure(finalize(model).eval(), example_inputs).macs
    current, history, result = model, [], None
    for k in range(1, steps + 1):
        goal = 1.0 - (1.0 - budget.macs_ratio) * k / steps
        now = measure(finalize(current).eval(), example_inputs).macs
        relative = min(1.0, goal * dense / now)
        p = make_plan(current, example_inputs, target, Budget(macs_ratio=relative), recipe=recipe, importance=importance)
        pruned = prune(current, p)
        _recalibrate_(pruned, train_data)
        result = finetune(pruned, train_data, epochs=epochs_per_step, recalibrate_bn=False,
                          checkpoint_dir=None if checkpoint_dir is None else Path(checkpoint_dir) / f"step-{k}",
                          **finetune_kwargs)
        ratio = p.macs_after / dense
        history += [dict(h, prune_step=k, macs_ratio=ratio) for h in result.history]
        current = result.model
    result.history = history
    return result


def lottery(model: nn.Module, train_data: DataLoader, *, rounds: int, sparsity_per_round: float,
            epochs_per_round: int, rewind_epoch: int = 0, layers: Optional[Sequence[str]] = None,
            retrain_final: bool = True, **finetune_kwargs) -> FinetuneResult:
    """Iterative magnitude pruning with rewinding (Frankle et al. 2019): train; remember the weights at the end of
    epoch `rewind_epoch` of the first round (0: the weights given); per round, prune `sparsity_per_round` of
    each layer's surviving weights by magnitude (unstructured, per layer), rewind everything but the masks to
    the remembered state and train again. After `rounds` prunings the sparse network is trained once more
    (`retrain_final=False` returns it rewound, untrained). History entries carry `round`."""
    if rounds < 1 or not 0 < sparsity_per_round < 1 or not 0 <= rewind_epoch <= epochs_per_round:
        raise EdgepruneError(f"lottery: need rounds >= 1, 0 < sparsity_per_round < 1, "
                             f"0 <= rewind_epoch <= epochs_per_round (got {rounds}, {sparsity_per_round}, {rewind_epoch})")
    if rewind_epoch and finetune_kwargs.get("checkpoint_dir"):
        raise EdgepruneError("lottery: checkpoint_dir is supported only with rewind_epoch=0")
    _check_loader(train_data, "train_data")
    work = copy_model(model)
    first = next(iter(train_data), None)
    if first is None:
        raise ModelError("train_data is empty: it yields no batches")
    names = _resolve_layers(work, layers, _split(first)[0])
    modules = dict(work.named_modules())
    for name in names:
        _ensure_mask(modules[name])
    saved: dict[str, dict] = {}

    def remember(epoch, m):
        if epoch == rewind_epoch:
            saved["state"] = {k: v.detach().clone() for k, v in m.state_dict().items()}

    if rewind_epoch == 0:
        remember(0, work)
    base_dir = finetune_kwargs.pop("checkpoint_dir", None)
    history: list[dict] = []
    result = None
    for r in range(1, rounds + 2):
        if r == rounds + 1 and not retrain_final:
            break
        result = finetune(work, train_data, epochs=epochs_per_round,
                          checkpoint_dir=None if base_dir is None else Path(base_dir) / f"round-{r}",
                          _on_epoch_end=remember if (r == 1 and rewind_epoch) else None, **finetune_kwargs)
        history += [dict(h, round=r) for h in result.history]
        work = result.model
        if r == rounds + 1:
            break
        modules = dict(work.named_modules())
        masks = {}
        with torch.no_grad():
            for name in names:
                module = modules[name]
                alive = int(module.weight_mask.sum())
                masks[name] = _magnitude_mask(module, (module.weight_mask.numel() - alive
                                                       + round(sparsity_per_round * alive)) / module.weight_mask.numel())
            work.load_state_dict(saved["state"])
            for name in names:
                modules[name].weight_mask.copy_(masks[name])
                _refresh_weight(modules[name])
            _enforce_masks(work)
    if result is None:
        result = FinetuneResult(model=work)
    result.model, result.history = work, history
    return result
