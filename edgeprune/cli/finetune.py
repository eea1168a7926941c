"""`edgeprune finetune`: recover a pruned model's accuracy, its masks kept in force."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .. import _atomic
from ..errors import EdgepruneError
from ._app import FORCE_OPTION, MODEL_OPTION, app, console, fail, overwrite_option
from .data import labelled
from .models import dense


@app.command("finetune")
def finetune_cmd(
    pruned: Path = typer.Argument(..., help="a pruned model saved by `edgeprune prune --out` (a directory)"),
    model: str = MODEL_OPTION,
    weights: Optional[Path] = typer.Option(None, "--weights", "-w", help="the dense model's trained weights "
                                           "(.safetensors): distil from it as the teacher"),
    digits: bool = typer.Option(False, "--digits", help="train on scikit-learn's digits (training split), "
                                "report accuracy on its test split"),
    data: Optional[Path] = typer.Option(None, "--data", help="training data: .safetensors with tensors x (inputs) "
                                        "and y (labels)"),
    val_data: Optional[Path] = typer.Option(None, "--val-data", help="validation data, like --data: accuracy "
                                            "after each epoch"),
    epochs: int = typer.Option(10, "--epochs", min=1),
    lr: float = typer.Option(1e-3, "--lr", min=0.0),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    seed: int = typer.Option(0, "--seed"),
    out: Path = typer.Option(..., "--out", "-o", help="directory to save the fine-tuned model in"),
    overwrite: bool = overwrite_option("an existing --out directory"), force: bool = FORCE_OPTION,
) -> None:
    """Fine-tune a pruned model (its masks stay in force) to recover accuracy, and save it for `export`."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from ..finetune import finetune
    from ..pruning import record_of
    from ..serialization import check_save_dir, load, save

    overwrite = overwrite or force
    try:
        check_save_dir(out, overwrite=overwrite)
        _atomic.check_writable(out)
        if digits == (data is not None):
            raise EdgepruneError("pass exactly one of --digits or --data F.safetensors")
        if digits and val_data is not None:
            raise EdgepruneError("--val-data goes with --data; --digits validates on the digits test split")
        if digits:
            from ..zoo import digits as load_digits

            train, val = load_digits("train"), load_digits("test")
        else:
            train, val = labelled("--data", data), labelled("--val-data", val_data) if val_data else None
        student = load(model, pruned)
        teacher = dense(model, weights) if weights is not None else None
        loader = DataLoader(TensorDataset(*train), batch_size=batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(seed))
        val_loader = DataLoader(TensorDataset(*val), batch_size=256) if val is not None else None
        result = finetune(student, loader, epochs=epochs, val_data=val_loader, teacher=teacher, lr=lr, seed=seed)
        save(result.model, record_of(result.model).plan, out, factory=model, overwrite=overwrite)
        if result.history and result.history[-1].get("metric") is not None:
            console.print(f"validation accuracy after {len(result.history)} epochs: {result.history[-1]['metric']:.1%}")
        console.print(f"saved to {out}")
    except EdgepruneError as exc:
        fail(exc)
