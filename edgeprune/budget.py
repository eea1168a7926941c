"""What the user asks pruning to achieve.

One field per kind of budget; exactly one is set today. Latency and memory budgets join as new fields
(the policy dispatches on `kind`), so code that builds a `Budget(macs_ratio=...)` keeps working.
"""

from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass
from typing import Optional

from .errors import BudgetError


@dataclass(frozen=True)
class Budget:
    macs_ratio: Optional[float] = None  # keep at most this fraction of the dense MACs
    sparsity: Optional[float] = None  # zero (or remove) at least this fraction of the prunable weights

    def __post_init__(self) -> None:
        given = {k: v for k, v in asdict(self).items() if v is not None}
        if len(given) != 1:
            raise BudgetError(f"a Budget takes exactly one of macs_ratio=, sparsity= (got {given or 'none'})")
        for key, value in given.items():  # `Budget("0.5")` must not reach the range checks as a string
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise BudgetError(f"Budget({key}={value!r}): expected a number, got {type(value).__name__} "
                                  "(the CLI's text form is Budget.parse('macs=0.5'))")
        if self.macs_ratio is not None and not 0.0 < self.macs_ratio <= 1.0:
            raise BudgetError(f"Budget(macs_ratio={self.macs_ratio}): must be in (0, 1] — the fraction of MACs kept")
        if self.sparsity is not None and not 0.0 <= self.sparsity < 1.0:
            raise BudgetError(f"Budget(sparsity={self.sparsity}): must be in [0, 1) — the fraction of weights zeroed")

    @property
    def kind(self) -> str:
        return "macs_ratio" if self.macs_ratio is not None else "sparsity"

    @property
    def value(self) -> float:
        return getattr(self, self.kind)

    def __str__(self) -> str:
        return f"{self.kind}={self.value:g}"

    @classmethod
    def parse(cls, text: str) -> "Budget":
        """`macs=0.5`, `macs_ratio=0.5` or `sparsity=0.5` (the CLI's --budget)."""
        if not isinstance(text, str):
            raise BudgetError(f"budget {text!r}: expected text such as 'macs=0.5', got {type(text).__name__}")
        key, sep, value = text.partition("=")
        key = {"macs": "macs_ratio"}.get(key.strip(), key.strip())
        if not sep or key not in ("macs_ratio", "sparsity"):
            raise BudgetError(f"budget {text!r}: expected macs=R or sparsity=S, e.g. macs=0.5")
        try:
            number = float(value)
        except ValueError:
            raise BudgetError(f"budget {text!r}: {value!r} is not a number") from None
        return cls(**{key: number})
