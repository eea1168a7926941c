"""What the user asks pruning to achieve, one small type per kind of budget.

`Budget(macs_ratio=0.5)`, `Budget(latency_ms=2.0)`, ... returns the kind registered for the keyword
(`MacsBudget`, `LatencyBudget`, ...). Each kind knows the quantity it bounds, whether an `Estimate` of a
candidate plan meets it and by how much it misses, so the policy's search, its final check and
`iterative_prune` never ask which kind they hold. A new kind is one more subclass here.

Latency budgets need a device (the latency is measured there, or predicted from a table measured there);
memory budgets are estimated while planning and checked on the exported artifact (TFLite-Micro's arena,
the file's size) or the harness's peak resident memory.
"""

from __future__ import annotations

import math
import numbers
from abc import ABCMeta
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Optional

from .errors import BudgetError, MalformedError

KIB = 1024
MIB = 1024 * 1024


@dataclass(frozen=True)
class Estimate:
    """What a candidate plan costs, as far as it is known: the policy fills in what it can compute (MACs,
    sparsity, weight and activation bytes), a latency table adds latency, a measurement replaces any of them.
    None: not known."""

    macs_ratio: float = 1.0  # effective MACs kept over the dense model's
    sparsity: float = 0.0  # fraction of prunable weights zeroed or removed
    latency_ms: Optional[float] = None  # p50 on the device
    dense_latency_ms: Optional[float] = None  # the dense model's p50 on the same device
    flash_bytes: Optional[int] = None  # the weights as stored (the artifact's size, once exported)
    sram_bytes: Optional[int] = None  # an MCU's tensor arena
    ram_bytes: Optional[int] = None  # a Linux device's peak resident memory

    def but(self, **changes: Any) -> "Estimate":
        """This estimate with some quantities measured instead (None leaves a quantity as it is)."""
        known = {k: v for k, v in changes.items() if v is not None}
        return Estimate(**{**{f.name: getattr(self, f.name) for f in fields(self)}, **known})


class _Kinds(ABCMeta):
    """`Budget(key=value)` builds the kind registered for `key`; a kind's own constructor builds itself."""

    def __call__(cls, *args, **kwargs):
        if cls is Budget:
            return Budget.of(*args, **kwargs)
        return super().__call__(*args, **kwargs)


class Budget(metaclass=_Kinds):
    """A budget: `Budget(macs_ratio=0.5)`, `Budget(sparsity=0.5)`, `Budget(latency_ms=2.0)`,
    `Budget(latency_ratio=0.5)`, `Budget(sram_kib=512)`, `Budget(flash_kib=1024)`, `Budget(ram_mib=64)`."""

    key: ClassVar[str] = ""  # the keyword, the JSON key and the CLI's `--budget KEY=VALUE`
    aliases: ClassVar[tuple[str, ...]] = ()  # shorter CLI spellings (`macs=0.5`)
    meaning: ClassVar[str] = ""  # what the value bounds, for messages
    upper: ClassVar[bool] = True  # the quantity must stay at or under the value (False: at or over it)
    needs_device: ClassVar[bool] = False  # only a device can tell whether a plan meets it
    counts_zeros: ClassVar[bool] = False  # zeroed weights count toward it (unstructured sparsity can meet it)
    _kinds: ClassVar[dict[str, type["Budget"]]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.key:
            for name in (cls.key, *cls.aliases):
                Budget._kinds[name] = cls

    @staticmethod
    def of(*args, **kwargs) -> "Budget":
        given = {k: v for k, v in kwargs.items() if v is not None}
        if args or len(given) != 1:
            shown = given or (args and f"positional {args!r}") or "none"
            raise BudgetError(f"a Budget takes exactly one of {', '.join(k + '=' for k in Budget.keys())} "
                              f"(got {shown})")
        (key, value), = given.items()
        kind = Budget._kinds.get(key)
        if kind is None or key != kind.key:
            raise BudgetError(f"Budget({key}=...): unknown kind; expected one of "
                              f"{', '.join(k + '=' for k in Budget.keys())}")
        return kind(value)

    @staticmethod
    def keys() -> list[str]:
        return list(dict.fromkeys(k.key for k in Budget._kinds.values()))

    def __post_init__(self) -> None:
        value = self.value
        if isinstance(value, bool) or not isinstance(value, numbers.Real):  # `Budget(macs_ratio="0.5")`
            raise BudgetError(f"Budget({self.key}={value!r}): expected a number, got {type(value).__name__} "
                              "(the CLI's text form is Budget.parse('macs=0.5'))")
        if not self._in_range(float(value)):
            raise BudgetError(f"Budget({self.key}={value}): must be in {self.range_text} — {self.meaning}")

    range_text: ClassVar[str] = "(0, ∞)"

    def _in_range(self, value: float) -> bool:
        return math.isfinite(value) and value > 0

    @property
    def kind(self) -> str:
        return self.key

    @property
    def value(self) -> float:
        return getattr(self, self.key)

    def __str__(self) -> str:
        return f"{self.key}={self.value:g}"

    # -- judging an estimate ----------------------------------------------------------------------
    def quantity(self, estimate: Estimate) -> float:
        """The quantity this budget bounds, read off `estimate`, in the budget's own unit."""
        raise NotImplementedError

    def meets(self, estimate: Estimate, slack: float = 1e-9) -> bool:
        q = self.quantity(estimate)
        return q <= self.value + slack if self.upper else q + slack >= self.value

    def miss(self, estimate: Estimate) -> float:
        """How far `estimate` misses, relative to the budget (0.1: 10 % over an upper bound, 10 % short of a
        lower one); 0 when it meets it."""
        q = self.quantity(estimate)
        over = (q - self.value) if self.upper else (self.value - q)
        return max(0.0, over / self.value) if self.value else max(0.0, over)

    def stage(self, k: int, steps: int, original: Estimate, current: Estimate) -> "Budget":
        """The budget for stage `k` of `steps` of an iterative pruning, for the model as pruned so far
        (`current`, both as estimated against the `original` dense model): the bounded quantity moves
        linearly from the dense model's to this budget's."""
        start = self.quantity(original)
        goal = start + (self.value - start) * k / steps
        return self._for_current(goal, original, current)

    def _for_current(self, goal: float, original: Estimate, current: Estimate) -> "Budget":
        return type(self)(goal)  # an absolute bound means the same for every stage's model

    def to_json(self) -> dict:
        return {self.key: self.value}

    @staticmethod
    def from_json(data: Any, where: str = "budget") -> "Budget":
        """The budget `to_json` wrote; an unknown kind (a newer edgeprune's) is a MalformedError naming it."""
        if not isinstance(data, dict) or len(data) != 1:
            raise MalformedError(f"{where}: expected one {{kind: value}} pair, got {data!r}")
        (key, value), = data.items()
        kind = Budget._kinds.get(key)
        if kind is None or key != kind.key:
            raise MalformedError(f"{where}: unknown budget kind {key!r} (this edgeprune knows "
                                 f"{', '.join(Budget.keys())}; was it written by a newer version?)")
        try:
            return kind(value)
        except BudgetError as exc:
            raise MalformedError(f"{where}: {exc}") from None

    @classmethod
    def parse(cls, text: str) -> "Budget":
        """`KEY=VALUE`, the CLI's --budget: `macs=0.5`, `sparsity=0.5`, `latency_ms=2`, `latency_ratio=0.6`,
        `sram_kib=512`, `flash_kib=1024`, `ram_mib=64` (short forms: macs, latency, sram, flash, ram)."""
        forms = ", ".join(f"{k}=" for k in Budget.keys())
        if not isinstance(text, str):
            raise BudgetError(f"budget {text!r}: expected text such as 'macs=0.5', got {type(text).__name__}")
        key, sep, value = text.partition("=")
        kind = Budget._kinds.get(key.strip())
        if not sep or kind is None:
            raise BudgetError(f"budget {text!r}: expected KEY=VALUE with KEY one of {forms} e.g. macs=0.5")
        try:
            number = float(value)
        except ValueError:
            raise BudgetError(f"budget {text!r}: {value!r} is not a number") from None
        return kind(number)


def _ratio_in_range(value: float) -> bool:
    return 0.0 < value <= 1.0


def _need(estimate: Estimate, name: str, budget: Budget, how: str):
    value = getattr(estimate, name)
    if value is None:
        raise BudgetError(f"Budget({budget}): {how}")
    return value


@dataclass(frozen=True)
class MacsBudget(Budget):
    """Keep at most this fraction of the dense model's MACs (effective: N:M at the sparse kernels' rate)."""

    macs_ratio: float
    key: ClassVar[str] = "macs_ratio"
    aliases: ClassVar[tuple[str, ...]] = ("macs",)
    meaning: ClassVar[str] = "the fraction of MACs kept"
    range_text: ClassVar[str] = "(0, 1]"
    _in_range = staticmethod(_ratio_in_range)

    def quantity(self, estimate: Estimate) -> float:
        return estimate.macs_ratio

    def _for_current(self, goal, original, current):
        # the stage's model already runs current.macs_ratio of the dense MACs; its plan's ratio is its own
        return MacsBudget(min(1.0, goal / current.macs_ratio))


@dataclass(frozen=True)
class SparsityBudget(Budget):
    """Zero (or remove) at least this fraction of the prunable weights."""

    sparsity: float
    key: ClassVar[str] = "sparsity"
    meaning: ClassVar[str] = "the fraction of weights zeroed"
    range_text: ClassVar[str] = "[0, 1)"
    upper: ClassVar[bool] = False
    counts_zeros: ClassVar[bool] = True

    @staticmethod
    def _in_range(value: float) -> bool:
        return 0.0 <= value < 1.0

    def quantity(self, estimate: Estimate) -> float:
        return estimate.sparsity

    def stage(self, k, steps, original, current):
        raise BudgetError(f"Budget({self}) cannot be met in stages of channel pruning (each stage's model has "
                          "fewer weights than the last): zero weights gradually with finetune(gradual=...)")


_NO_DEVICE = ("a latency budget needs a device to measure on (device='local', a name from devices.toml or an "
              "ep.Device) or a latency table measured there")


@dataclass(frozen=True)
class LatencyBudget(Budget):
    """Measured p50 latency on the device at most this many milliseconds."""

    latency_ms: float
    key: ClassVar[str] = "latency_ms"
    aliases: ClassVar[tuple[str, ...]] = ("latency",)
    meaning: ClassVar[str] = "the p50 latency on the device, in milliseconds"
    needs_device: ClassVar[bool] = True

    def quantity(self, estimate: Estimate) -> float:
        return _need(estimate, "latency_ms", self, _NO_DEVICE)


@dataclass(frozen=True)
class LatencyRatioBudget(Budget):
    """Measured p50 at most this fraction of the dense model's measured p50 on the same device."""

    latency_ratio: float
    key: ClassVar[str] = "latency_ratio"
    meaning: ClassVar[str] = "the p50 latency kept, as a fraction of the dense model's on the same device"
    range_text: ClassVar[str] = "(0, 1]"
    needs_device: ClassVar[bool] = True
    _in_range = staticmethod(_ratio_in_range)

    def quantity(self, estimate: Estimate) -> float:
        latency = _need(estimate, "latency_ms", self, _NO_DEVICE)
        return latency / _need(estimate, "dense_latency_ms", self, _NO_DEVICE)

    def absolute(self, dense_latency_ms: float) -> LatencyBudget:
        return LatencyBudget(self.latency_ratio * dense_latency_ms)

    def _for_current(self, goal, original, current):
        return LatencyRatioBudget(min(1.0, goal / self.quantity(current)))


class _BytesBudget(Budget):
    """A memory budget: bytes of the estimate, in the budget's unit (KiB, MiB)."""

    reads: ClassVar[str] = ""  # the Estimate field it bounds
    unit: ClassVar[int] = KIB
    unknown: ClassVar[str] = ""  # why the estimate may lack it

    def quantity(self, estimate: Estimate) -> float:
        return _need(estimate, self.reads, self, self.unknown) / self.unit


@dataclass(frozen=True)
class SramBudget(_BytesBudget):
    """An MCU's tensor arena (activations, in SRAM) at most this many KiB."""

    sram_kib: float
    key: ClassVar[str] = "sram_kib"
    aliases: ClassVar[tuple[str, ...]] = ("sram",)
    meaning: ClassVar[str] = "the tensor arena in SRAM, in KiB"
    reads: ClassVar[str] = "sram_bytes"
    unknown: ClassVar[str] = "the arena is not estimated for this plan"


@dataclass(frozen=True)
class FlashBudget(_BytesBudget):
    """The model as stored (weights; the exported artifact's size once exported) at most this many KiB."""

    flash_kib: float
    key: ClassVar[str] = "flash_kib"
    aliases: ClassVar[tuple[str, ...]] = ("flash",)
    meaning: ClassVar[str] = "the model's size in flash, in KiB"
    reads: ClassVar[str] = "flash_bytes"
    unknown: ClassVar[str] = "the model's size is not estimated for this plan"


@dataclass(frozen=True)
class RamBudget(_BytesBudget):
    """A Linux device's peak resident memory while running the model at most this many MiB."""

    ram_mib: float
    key: ClassVar[str] = "ram_mib"
    aliases: ClassVar[tuple[str, ...]] = ("ram",)
    meaning: ClassVar[str] = "the peak resident memory, in MiB"
    reads: ClassVar[str] = "ram_bytes"
    unit: ClassVar[int] = MIB
    unknown: ClassVar[str] = "the peak memory is not estimated for this plan"
