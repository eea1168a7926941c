"""The optimizer `finetune` trains with: one named here, or one the caller's factory builds.

A factory is any callable taking the list of trainable parameters (of the copy being trained, which is
why it cannot be an optimizer built beforehand) and returning a `torch.optim.Optimizer`; its param groups
keep the learning rates it gave them, and the schedule (warm-up, cosine) scales each from there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
from torch import nn

from ..errors import EdgepruneError

__all__ = ["OptimizerFactory", "Hyperparameters", "NAMED", "check", "build_optimizer", "describe"]

OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]


@dataclass(frozen=True)
class Hyperparameters:
    """What a named optimizer is built with; None: the default of that optimizer."""

    lr: Optional[float] = None
    weight_decay: Optional[float] = None
    momentum: Optional[float] = None

    def given(self) -> list[str]:
        return [k for k, v in vars(self).items() if v is not None]


def _or(value: Optional[float], default: float) -> float:
    return default if value is None else value


def _adam(params, h: Hyperparameters) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=_or(h.lr, 1e-3), weight_decay=_or(h.weight_decay, 0.0))


def _adamw(params, h: Hyperparameters) -> torch.optim.Optimizer:
    # decoupled weight decay is the point of AdamW, so its default is torch's 0.01, not 0
    return torch.optim.AdamW(params, lr=_or(h.lr, 1e-3), weight_decay=_or(h.weight_decay, 0.01))


def _sgd(params, h: Hyperparameters) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=_or(h.lr, 1e-3), momentum=_or(h.momentum, 0.9),
                           weight_decay=_or(h.weight_decay, 0.0))


NAMED: dict[str, Callable[[list[nn.Parameter], Hyperparameters], torch.optim.Optimizer]] = {
    "adam": _adam, "adamw": _adamw, "sgd": _sgd}


def check(choice: Union[str, OptimizerFactory], h: Hyperparameters) -> None:
    """Refuse a choice that cannot work before anything is copied or trained."""
    if isinstance(choice, str):
        if choice not in NAMED:
            raise EdgepruneError(f"optimizer={choice!r}: unknown; expected one of {', '.join(NAMED)}, "
                                 f"or a factory (params -> torch.optim.Optimizer)")
    elif not callable(choice):
        raise EdgepruneError(f"optimizer={choice!r}: expected one of {', '.join(NAMED)}, "
                             f"or a factory (params -> torch.optim.Optimizer)")
    elif h.given():
        raise EdgepruneError(f"optimizer factory given with {', '.join(h.given())}: those belong to the optimizer "
                             f"the factory builds; pass them to it there")


def build_optimizer(choice: Union[str, OptimizerFactory], params: list[nn.Parameter],
                    h: Hyperparameters) -> torch.optim.Optimizer:
    check(choice, h)
    if isinstance(choice, str):
        opt = NAMED[choice](params, h)
    else:
        opt = choice(params)
        if not isinstance(opt, torch.optim.Optimizer):
            raise EdgepruneError(f"optimizer factory {describe(choice)} returned {type(opt).__name__}, "
                                 f"expected a torch.optim.Optimizer")
    for group in opt.param_groups:
        group.setdefault("initial_lr", group["lr"])  # the base the schedule scales, as torch's schedulers keep it
    return opt


def describe(choice: Union[str, OptimizerFactory]) -> str:
    """The choice as a checkpoint records it, so that a resume with another optimizer is refused."""
    if isinstance(choice, str):
        return choice
    return f"{getattr(choice, '__module__', '?')}.{getattr(choice, '__qualname__', type(choice).__qualname__)}"
