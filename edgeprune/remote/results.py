"""What the runner returns: how a benchmark was asked for, what it measured, what a device check found."""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import asdict, dataclass, field
from typing import Optional

from ..errors import SettingsError


@dataclass(frozen=True)
class BenchSettings:
    """How long to warm up and measure (both a count AND a duration, as benchmark_model and trtexec do)."""

    min_runs: int = 50
    min_seconds: float = 2.0
    warmup_runs: int = 5
    warmup_seconds: float = 0.5
    threads: Optional[int] = None  # None: the device's `threads` in devices.toml (else the runtime's default)
    cores: Optional[tuple[int, ...]] = None  # None: the device's `cores` (else no pinning)
    seed: int = 0
    # a run whose CV exceeds max_cv is flagged "noisy", one whose CPUs other processes used for more than
    # max_busy of the measuring window "busy"; None: the harness's defaults (5 % and 25 %, README says why)
    max_cv: Optional[float] = None
    max_busy: Optional[float] = None

    def __post_init__(self):
        # checked here, before any device is used: the harness would otherwise measure forever (inf, nan
        # never compares) or fail on the device after the upload
        for name, least in (("min_runs", 1), ("warmup_runs", 0), ("seed", 0)):
            _whole(name, getattr(self, name), least)
        for name in ("min_seconds", "warmup_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise SettingsError(f"BenchSettings({name}={value!r}): expected a number of seconds, "
                                    f"got {type(value).__name__}")
            if not math.isfinite(value) or value < 0:
                raise SettingsError(f"BenchSettings({name}={value!r}): must be a finite number of seconds >= 0")
        for name in ("max_cv", "max_busy"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise SettingsError(f"BenchSettings({name}={value!r}): expected a fraction such as 0.05, "
                                    f"got {type(value).__name__}")
            if not math.isfinite(value) or value <= 0:
                raise SettingsError(f"BenchSettings({name}={value!r}): must be a finite fraction > 0")
        if self.threads is not None:
            _whole("threads", self.threads, 1)
        if self.cores is not None:
            if not isinstance(self.cores, (tuple, list)) or not self.cores:
                raise SettingsError(f"BenchSettings(cores={self.cores!r}): expected a non-empty tuple of CPU "
                                    "numbers, e.g. (2, 3), or None")
            object.__setattr__(self, "cores", tuple(self.cores))  # frozen: a list would make it unhashable
            for core in self.cores:
                if isinstance(core, bool) or not isinstance(core, numbers.Integral) or core < 0:
                    raise SettingsError(f"BenchSettings(cores={self.cores!r}): {core!r} is not a CPU number >= 0")
            if len(set(self.cores)) != len(self.cores):
                raise SettingsError(f"BenchSettings(cores={self.cores!r}): a CPU is listed twice")


def _whole(name: str, value, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise SettingsError(f"BenchSettings({name}={value!r}): expected a whole number, got {type(value).__name__}")
    if value < least:
        raise SettingsError(f"BenchSettings({name}={value!r}): must be >= {least}")


@dataclass(frozen=True)
class BenchResult:
    """Latency of one artifact on one device, in milliseconds, with the device's state around the run.

    `flags` lists what makes the numbers suspect (a CPU clock that dropped, a thermal trip point crossed,
    samples that spread more than a CV of 5 % ("noisy"), other processes taking more than a quarter of the
    benchmark's CPUs during the measurement ("busy")); `valid` is False when there is any. `load` is what
    other processes took of the benchmark's CPUs during the measuring window (others_share, steal_share,
    own_share, wait_share, runnable tasks, 1-minute load average; {} for results older than this field).

    `ci95_p50` (percentile bootstrap, samples taken as independent) and `ci95_p50_batches` (batch means:
    allows for correlation between neighbouring samples; None under 50 samples) cover this run only, as
    `ci95_p50_scope` ("within-run") says: neither sees the spread between repeated runs (process start,
    memory layout, clocks, the machine's other load), which only repeated runs measure.

    `proxy` is True when the device is not the artifact's target (a Jetson artifact timed by onnxruntime on
    a laptop is not the Jetson's latency)."""

    device: str
    device_target: str
    artifact: str
    artifact_sha256: str
    artifact_target: Optional[str]
    runtime: str
    runtime_version: str
    engine: str
    n: int
    p50: float
    p90: float
    p99: float
    mean: float
    std: float
    cv: float
    min: float
    max: float
    ci95_p50: tuple[float, float]
    samples: tuple[float, ...]
    warmup_runs: int
    threads: Optional[int]
    cores: Optional[tuple[int, ...]]
    state_before: dict
    state_after: dict
    flags: tuple[str, ...]
    notes: tuple[str, ...]
    overhead_s: dict
    settings: dict
    measured_at: str
    unit: str = "ms"
    # Added after edgeprune.bench-result/1 was first written: defaults let from_dict read older results.
    load: dict = field(default_factory=dict)
    ci95_p50_batches: Optional[tuple[float, float]] = None
    ci95_p50_scope: str = "within-run"

    @property
    def valid(self) -> bool:
        return not self.flags

    @property
    def proxy(self) -> bool:
        return self.artifact_target is not None and self.artifact_target != self.device_target

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(schema="edgeprune.bench-result/1", valid=self.valid, proxy=self.proxy)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict) -> "BenchResult":
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known}
        for key in ("samples", "flags", "notes"):
            values[key] = tuple(values.get(key, ()))
        values["ci95_p50"] = tuple(values["ci95_p50"])
        if values.get("ci95_p50_batches") is not None:
            values["ci95_p50_batches"] = tuple(values["ci95_p50_batches"])
        values["cores"] = tuple(values["cores"]) if values.get("cores") else None
        return cls(**values)


@dataclass(frozen=True)
class DeviceCheck:
    """What `devices check` found: can we reach the device, which runtimes it has, and its state."""

    device: str
    address: str
    reachable: bool
    error: Optional[str] = None
    python: Optional[str] = None
    numpy: Optional[str] = None
    runtimes: dict = field(default_factory=dict)
    workdir_writable: Optional[bool] = None
    state: dict = field(default_factory=dict)
    connect_s: Optional[float] = None

