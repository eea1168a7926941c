"""Fine-tuning that recovers accuracy after pruning: `finetune`, `recalibrate_bn`, `iterative_prune`, `lottery`.

PyTorch-native: DataLoaders of (inputs, labels) in, an nn.Module out. The caller's model is never changed:
every function works on a copy (`_copy.copy_model`, masks included) and returns it with its
`torch.nn.utils.prune` masks still attached, so `ep.finalize` / `ep.export` work on the result.

One module per concept:

    loop.py         `finetune` and `FinetuneResult`: the training loop
    data.py         how the loop draws its batches from the caller's DataLoader, as given, seeded per epoch
    optimizers.py   the optimizer: "adam", "adamw", "sgd", or the caller's factory
    masks.py        pruning masks held in force while training, per-layer magnitude masks
    gradual.py      `GradualSchedule`: masks that grow during training
    rng.py          the global RNGs (torch, Python, numpy) seeded for a run, their states checkpointed
    checkpoints.py  a safetensors + JSON checkpoint per epoch, and finding the one to resume from
    iterative.py    schemes that call the loop repeatedly: `iterative_prune`, `lottery`
"""

from ..batchnorm import recalibrate_bn
from .gradual import GradualSchedule
from .iterative import iterative_prune, lottery
from .loop import FinetuneResult, finetune

__all__ = ["FinetuneResult", "GradualSchedule", "finetune", "recalibrate_bn", "iterative_prune", "lottery"]
