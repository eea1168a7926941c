"""A latency model measured on the device: what each prunable layer costs at the channel counts the search
may choose, read as data by the policy (it never measures anything itself; `edgeprune.profiling` fills the
table through the runner).

* `LayerConfig`: what one layer's latency depends on: its op, kernel, stride, padding, whether it is
  depthwise, the spatial size of its input, the ops fused after it (conv + BatchNorm + activation are
  measured together, as the runtime fuses them), and its channel counts.
* `LatencyTable`: measured p50 per config, for one device, runtime and version, thread count and pinning,
  and input shapes; kept on disk (`table_path`) so a second plan for the same device costs no device time.
  A table measured with another runtime version or thread count is a different table.
* `LatencyModel`: a model's layers, the table and its whole-model measurements: the sum of per-layer
  times is not the end-to-end time (what runs outside those layers, and how they overlap), so the
  prediction maps `Σ layers + rest` through the measured points (`calibrated`), `rest` fitted to the dense
  model's measurement.

Between the channel counts the table holds, latency is interpolated bilinearly; it moves in steps of the
runtime's tile width, so the profiler samples counts at multiples of the target's alignment and the
search's counts land on those multiples too.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

from ._atomic import write_text
from ._jsonfile import read_json_object
from .errors import MalformedError

SCHEMA = "edgeprune.latency-table/1"


@dataclass(frozen=True)
class LayerConfig:
    op: str  # Conv2d, Conv1d, Linear
    in_channels: int
    out_channels: int
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    depthwise: bool = False  # groups == in_channels == out_channels: shrinks with its channels as one
    input_shape: tuple[int, ...] = ()  # the input's shape without batch and channel dims (Linear: its tokens)
    fused: tuple[str, ...] = ()  # the ops measured with it, in order ("BatchNorm2d", "ReLU")

    def shape_key(self) -> str:
        """Everything but the channel counts: configs with one shape key differ only in their widths."""
        parts = [self.op, "dw" if self.depthwise else "", "k" + "x".join(map(str, self.kernel)),
                 "s" + "x".join(map(str, self.stride)), "p" + "x".join(map(str, self.padding)),
                 "in" + "x".join(map(str, self.input_shape)), "+".join(self.fused)]
        return "/".join(parts)

    def key(self) -> str:
        return f"{self.shape_key()}/{self.in_channels}->{self.out_channels}"

    def with_channels(self, in_channels: int, out_channels: int) -> "LayerConfig":
        if self.depthwise:
            in_channels = out_channels
        return replace(self, in_channels=in_channels, out_channels=out_channels)

    @classmethod
    def from_json(cls, data: dict) -> "LayerConfig":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


@dataclass(frozen=True)
class TableIdentity:
    """What a latency table is valid for: measured elsewhere, or with another runtime version, thread
    count, pinning or input shape, it is another table."""

    device: str
    runtime: str
    runtime_version: str
    threads: Optional[int]
    cores: tuple[int, ...] = ()
    inputs: str = ""  # the model's input shapes, as InputSpec writes them

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class LatencyTable:
    identity: TableIdentity
    entries: dict[str, float] = field(default_factory=dict)  # LayerConfig.key() -> p50 in ms

    def get(self, config: LayerConfig) -> Optional[float]:
        return self.entries.get(config.key())

    def add(self, config: LayerConfig, p50_ms: float) -> None:
        self.entries[config.key()] = float(p50_ms)

    def grid(self, config: LayerConfig) -> dict[int, dict[int, float]]:
        """{input count: {output count: p50}} the table holds for the config's shape."""
        prefix = config.shape_key() + "/"
        out: dict[int, dict[int, float]] = {}
        for key, ms in self.entries.items():
            if key.startswith(prefix):
                i, o = key[len(prefix):].split("->")
                out.setdefault(int(i), {})[int(o)] = ms
        return out

    # -- on disk ----------------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps({"schema": SCHEMA, "identity": asdict(self.identity), "entries": self.entries}, indent=1)

    def save(self, path: "str | Path") -> Path:
        return write_text(path, self.to_json(), overwrite=True)

    @classmethod
    def load(cls, path: "str | Path") -> "LatencyTable":
        data = read_json_object(path, "latency table")
        if data.get("schema") != SCHEMA:
            raise MalformedError(f"{path}: not an edgeprune latency table ('schema' {data.get('schema')!r}, "
                                 f"expected {SCHEMA!r})")
        try:
            ident = data["identity"]
            identity = TableIdentity(**{**ident, "cores": tuple(ident.get("cores") or ())})
            entries = {str(k): float(v) for k, v in data["entries"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise MalformedError(f"{path}: malformed latency table ({type(exc).__name__}: {exc})") from None
        bad = [k for k, v in entries.items() if not (math.isfinite(v) and v > 0)]
        if bad:
            raise MalformedError(f"{path}: entry {bad[0]!r} is not a positive number of milliseconds")
        return cls(identity, entries)


def table_path(cache_dir: "str | Path", identity: TableIdentity) -> Path:
    """Where the table for `identity` is kept: one file per device, runtime, version, threads and inputs."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{identity.device}-{identity.runtime}")
    return Path(cache_dir) / f"{safe}-{identity.digest()}.json"


def _bracket(values: list[int], x: int) -> tuple[int, int, float]:
    """The two held values around x and x's weight toward the upper one (clamped at the ends)."""
    if x <= values[0]:
        return values[0], values[0], 0.0
    if x >= values[-1]:
        return values[-1], values[-1], 0.0
    hi = next(v for v in values if v >= x)
    lo = max(v for v in values if v <= x)
    return lo, hi, 0.0 if hi == lo else (x - lo) / (hi - lo)


@dataclass
class LatencyModel:
    """Predicts a model's p50 from its layers' channel counts. `layers`: the dense model's config of each
    layer the search may shrink; `rest_ms`: what the dense model spends outside them; `measurements`: the
    whole-model measurements that calibrate the sum (`calibrated`)."""

    table: LatencyTable
    layers: dict[str, LayerConfig]
    rest_ms: float = 0.0
    measurements: list[dict[str, Any]] = field(default_factory=list)  # (predicted, measured) pairs so far

    def layer_ms(self, name: str, in_channels: int, out_channels: int) -> float:
        config = self.layers[name].with_channels(in_channels, out_channels)
        exact = self.table.get(config)
        if exact is not None:
            return exact
        grid = self.table.grid(config)
        if not grid:
            raise MalformedError(f"the latency table for {self.table.identity.device} holds nothing for layer "
                                 f"{name!r} ({config.shape_key()}): profile the model again")
        if config.depthwise:
            outs = sorted(o for i, row in grid.items() for o in row if i == o)
            lo, hi, w = _bracket(outs, config.out_channels)
            return grid[lo][lo] * (1 - w) + grid[hi][hi] * w
        # along the output counts at the two input counts around this one, then between those two: layers of
        # one shape share the table, so the counts held differ from one input count to the next
        i0, i1, wi = _bracket(sorted(grid), config.in_channels)

        def along_outputs(i: int) -> float:
            row = grid[i]
            o0, o1, wo = _bracket(sorted(row), config.out_channels)
            return row[o0] * (1 - wo) + row[o1] * wo

        return along_outputs(i0) * (1 - wi) + along_outputs(i1) * wi

    def raw(self, channels: dict[str, tuple[int, int]]) -> float:
        """Σ layers + rest, before calibration; `channels`: {layer: (in, out)}, dense where not given."""
        total = self.rest_ms
        for name, config in self.layers.items():
            i, o = channels.get(name, (config.in_channels, config.out_channels))
            total += self.layer_ms(name, i, o)
        return total

    def predict(self, channels: dict[str, tuple[int, int]]) -> float:
        return self.calibrated(self.raw(channels))

    def calibrated(self, raw: float) -> float:
        """The sum of per-layer times mapped onto whole-model measurements: piecewise linear through the
        measured (raw, measured) points, each end extended by its own ratio; with none, the sum itself.
        The measured times are made non-decreasing in raw first (noise must not make a smaller model
        predict slower than a larger one: the search bisects on it)."""
        points = sorted((m["raw_ms"], m["measured_ms"]) for m in self.measurements)
        if not points:
            return raw
        monotone, top = [], 0.0
        for x, y in points:
            top = max(top, y)
            monotone.append((x, top))
        if raw <= monotone[0][0]:
            return raw * monotone[0][1] / monotone[0][0]
        if raw >= monotone[-1][0]:
            return raw * monotone[-1][1] / monotone[-1][0]
        for (x0, y0), (x1, y1) in zip(monotone, monotone[1:]):
            if x0 <= raw <= x1:
                return y0 if x1 == x0 else y0 + (y1 - y0) * (raw - x0) / (x1 - x0)
        return raw  # pragma: no cover - the points cover [first, last]

    @property
    def dense_ms(self) -> float:
        return self.predict({})

    def correct(self, channels: dict[str, tuple[int, int]], measured_ms: float) -> None:
        """Add a whole-model measurement of the model at `channels`: predictions near it follow it. A sum of
        per-layer times is not the end-to-end time, and its error changes with the widths (a dense model's
        is not a pruned one's), so each measurement corrects the predictions around it, not everywhere."""
        raw = self.raw(channels)
        # a newer measurement of the same widths replaces the older (the loop's longer runs, the profile's)
        self.measurements = [m for m in self.measurements if m["raw_ms"] != raw]
        self.measurements.append({"raw_ms": raw, "measured_ms": float(measured_ms)})
