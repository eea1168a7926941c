"""The fine-tuning loop: `finetune` and its `FinetuneResult`.

Determinism and resume: the loader's sampler, seeded per epoch from `seed` (data.py), fixes the data order
of each epoch; the global RNGs (torch's, Python's, numpy's) are seeded from `seed` and the caller's states
given back after the run (rng.py); and every epoch writes a checkpoint (checkpoints.py) with weights, masks,
optimizer state, RNG states, history and the best weights. A run killed mid-epoch and started again with the same
`checkpoint_dir` resumes after the last completed epoch and ends bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from .._atomic import check_dir_output, check_writable
from .._copy import copy_model
from ..batchnorm import recalibrate_ as _recalibrate_
from ..distill import kd_loss
from ..errors import EdgepruneError, ModelError, SettingsError
from ..finite import check_finite
from ..metrics import accuracy  # the default metric
from ..metrics import logits as _logits, split_batch as _split
from ..pruning import RECORD_ATTR, record_of
from ..pruning.nm import reduction_size
from ..schedules import cosine_lr
from .checkpoints import latest_checkpoint, optimizer_state, save_checkpoint
from .data import check_loader, first_batch, seeded_epoch, steps_in
from .gradual import GradualSchedule, apply_gradual
from .masks import enforce_masks, ensure_mask, resolve_layers, sparsity
from .optimizers import Hyperparameters, OptimizerFactory, build_optimizer, check as check_optimizer, describe
from . import rng

__all__ = ["FinetuneResult", "finetune"]


@dataclass
class FinetuneResult:
    model: nn.Module
    history: list[dict] = field(default_factory=list)  # per epoch: epoch, loss, metric, lr, sparsity
    best_metric: Optional[float] = None
    best_epoch: Optional[int] = None
    stopped_early: bool = False
    resumed_from: Optional[int] = None  # the last completed epoch of the checkpoint resumed from


def _preflight(model, teacher, train_data, val_data, metric, seed) -> Any:
    """Checks on the first batch (labels in range, teacher shape) and the metric; nothing is written yet."""
    first = first_batch(train_data, seed)
    if first is None:
        raise ModelError("train_data is empty: it yields no batches")
    inputs, labels = _split(first)
    was = model.training
    model.eval()
    with torch.no_grad():
        try:
            out = _logits(model, inputs)
        except Exception as exc:  # the user's data does not fit their model: say so before any training
            shape = f" (inputs {tuple(inputs.shape)})" if isinstance(inputs, torch.Tensor) else ""
            raise ModelError(f"the first batch of train_data{shape} does not run through {type(model).__name__}: "
                             f"{type(exc).__name__}: {exc}") from exc
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
    lr: Optional[float] = None,
    weight_decay: Optional[float] = None,
    optimizer: Union[str, OptimizerFactory] = "adam",
    momentum: Optional[float] = None,
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

    Data: `train_data` as given, its sampler or batch_sampler deciding what each epoch sees, seeded per
    epoch from `seed` (finetune/data.py says how). Optimizer: "adam", "adamw" or "sgd", built with `lr`
    (default 1e-3), `weight_decay` (default 0, 0.01 for AdamW) and, for SGD, `momentum` (default 0.9); or a
    factory, `optimizer=lambda params: torch.optim.AdamW(params, lr=3e-4)`, that sets those itself. LR:
    `cosine_lr` per step with `warmup_steps` of linear warm-up, scaling each param group's initial rate.

    With `early_stopping_patience` (needs `val_data`), training stops after that many epochs without
    improvement of `metric` (default top-1 accuracy, higher is better) and the best epoch's weights are
    returned; with `gradual`, only epochs that ended at the final sparsity count as best. `callback(info)`
    is called after every optimizer step with {epoch, step, global_step, loss}. A non-finite loss raises
    ModelError; the exception's `.model` holds the weights of the last good epoch. A model `ep.prune` made
    comes back with its record saying it was fine-tuned (`PruneRecord.finetuned`).
    """
    _number("epochs", epochs, least=1, whole=True)
    _number("warmup_steps", warmup_steps, least=0, whole=True)
    for name, value in (("lr", lr), ("weight_decay", weight_decay), ("momentum", momentum),
                        ("kd_alpha", kd_alpha), ("kd_temperature", kd_temperature)):
        if value is not None:
            _number(name, value, least=0)
    check_finite(model)
    if teacher is not None:
        check_finite(teacher, role="teacher")
    hyper = Hyperparameters(lr=lr, weight_decay=weight_decay, momentum=momentum)
    check_optimizer(optimizer, hyper)
    if early_stopping_patience is not None and val_data is None:
        raise EdgepruneError("early_stopping_patience needs val_data to measure the metric on")
    check_loader(train_data, "train_data")
    if val_data is not None:
        check_loader(val_data, "val_data")
    metric = metric or accuracy
    directory = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if directory is not None:  # a file in the way or a read-only disk: said now, not after the first epoch
        check_writable(check_dir_output(directory))
    teacher_was = teacher.training if teacher is not None else None
    if teacher is not None:
        teacher.eval()
    try:
        with rng.seeded(seed):
            return _train(model, train_data, epochs, val_data, metric, teacher, optimizer, hyper, warmup_steps,
                          kd_alpha, kd_temperature, gradual, recalibrate_bn, early_stopping_patience, directory, seed,
                          quiet, callback, _on_epoch_end)
    finally:
        if teacher is not None:
            teacher.train(teacher_was)


def _number(name: str, value: Any, *, least: float, whole: bool = False) -> None:
    """A numeric argument checked before anything is copied or trained: a string, NaN or a negative value
    would otherwise fail inside torch's optimizer, or train on NaN."""
    kind = numbers.Integral if whole else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        raise SettingsError(f"{name}={value!r}: expected {'a whole number' if whole else 'a number'}, "
                            f"got {type(value).__name__}")
    if not math.isfinite(value) or value < least:
        raise SettingsError(f"{name}={value!r}: must be a finite number >= {least:g}")


def _train(model, train_data, epochs, val_data, metric, teacher, optimizer, hyper, warmup_steps, kd_alpha,
           kd_temperature, gradual, recalibrate, patience, directory, seed, quiet, callback, on_epoch_end):
    work = copy_model(model)
    sample_inputs = _preflight(work, teacher, train_data, val_data, metric, seed)
    layers: list[str] = []
    if gradual is not None:
        layers = resolve_layers(work, gradual.layers, sample_inputs)
        modules = dict(work.named_modules())
        for name in layers:
            if gradual.method == "n:m" and reduction_size(modules[name]) % gradual.m:
                raise ModelError(f"layer {name}: input dimension {reduction_size(modules[name])} is not a multiple "
                                 f"of {gradual.m}, so it cannot carry {gradual.n}:{gradual.m} masks")
            ensure_mask(modules[name])
    params = [p for p in work.parameters() if p.requires_grad]
    opt = build_optimizer(optimizer, params, hyper)
    first_group = opt.param_groups[0]
    settings = {"epochs": epochs, "lr": float(first_group["initial_lr"]), "optimizer": describe(optimizer),
                "weight_decay": float(first_group.get("weight_decay", 0.0)), "seed": seed, "warmup_steps": warmup_steps,
                "kd": teacher is not None, "kd_alpha": kd_alpha, "kd_temperature": kd_temperature,
                "gradual": asdict(gradual) if gradual else None}
    settings = json.loads(json.dumps(settings))
    result = FinetuneResult(model=work)
    best_state, since_best, start = None, 0, 1
    found = latest_checkpoint(directory)
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
        try:
            opt.load_state_dict(optimizer_state(tensors, record["optimizer"]))
        except (ValueError, KeyError) as exc:
            raise ModelError(f"{directory}: the checkpoint's optimizer state does not fit this optimizer "
                             f"({exc}); use a fresh checkpoint_dir") from exc
        for g in opt.param_groups:  # checkpoints written before schedules kept each group's base rate
            g.setdefault("initial_lr", settings["lr"])
        rng.restore(tensors)
        if record["has_best"]:
            best_state = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
        result.history = record["history"]
        result.best_metric, result.best_epoch = record["best_metric"], record["best_epoch"]
        since_best, start = record["since_best"], record["epoch"] + 1
        result.resumed_from = record["epoch"]
        result.stopped_early = record["stopped_early"]
    elif recalibrate:
        with seeded_epoch(train_data, seed, 0):
            _recalibrate_(work, train_data)

    steps_per_epoch = steps_in(train_data)
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
            losses, current_lr = [], opt.param_groups[0]["lr"]
            with seeded_epoch(train_data, seed, epoch):
                for i, batch in enumerate(train_data):
                    step = (epoch - 1) * steps_per_epoch + i
                    if gradual is not None:
                        apply_gradual(work, gradual, layers, step)
                    for g in opt.param_groups:
                        g["lr"] = cosine_lr(step, total=total, warmup=warmup_steps, base_lr=g["initial_lr"])
                    current_lr = opt.param_groups[0]["lr"]
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
                        err = ModelError(f"loss became {float(loss.detach())} at epoch {epoch}, step {i + 1} "
                                         f"(global step {step}); weights restored to the end of epoch {epoch - 1}"
                                         + (f", the checkpoint in {directory} is left as it was" if directory else "")
                                         + ": lower lr or check the data")
                        err.model = work
                        raise err
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    enforce_masks(work)
                    loss_value = float(loss.detach())
                    losses.append(loss_value)
                    if progress:
                        progress.update(task, advance=1,
                                        description=f"epoch {epoch}/{epochs} loss {loss_value:.4f}")
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
                     "sparsity": sparsity(work)}
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
                save_checkpoint(directory, epoch, work, opt, best_state, {
                    "settings": settings, "history": result.history, "best_metric": result.best_metric,
                    "best_epoch": result.best_epoch, "since_best": since_best, "stopped_early": result.stopped_early})
    finally:
        if progress:
            progress.stop()
    if patience is not None and best_state is not None:
        work.load_state_dict(best_state)
    record = record_of(work)
    if record is not None:
        setattr(work, RECORD_ATTR, replace(record, finetuned=True))
    work.eval()
    return result
