"""Measure a model's latency model on the device (`profile`): each prunable layer, with the ops the runtime
fuses after it, exported alone at the channel counts the budget search may choose, in the target's format,
and timed through the runner in the target's runtime with the device's threads and pinning; then the
dense model itself, which sets what runs outside those layers.

The table is kept on disk (`cache_dir`, one file per device, runtime and version, threads, pinning and
input shapes): a second plan for the same device reads it and costs no device time; a runtime upgrade on
the device makes a new table. The policy reads the result as data (`ep.plan(..., latency=model)`).
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from ._copy import copy_model
from .costs import PRUNABLE_TYPES, measure, prunable_layers
from .devices import Device, get_device
from .errors import DeviceError, EdgepruneError, ModelError
from .export import export
from .inputs import InputSpec, call
from .latency import LatencyModel, LatencyTable, LayerConfig, TableIdentity, table_path
from .pruning import finalize
from .remote import BenchSettings, Reservation, check, reserve
from .rules import is_depthwise
from .targets import Target, load_target

# what the runtimes fuse into a convolution or GEMM: measured with the layer, as it runs on the device
FUSED = (nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU, nn.GELU)
# short runs: each config is one small layer, its p50 settles quickly
PROFILE_SETTINGS = BenchSettings(min_runs=30, min_seconds=0.3, warmup_runs=5, warmup_seconds=0.05)
# artifacts measured in one harness run: the runtime starts once a series (most of a small layer's device
# time), and a series of short runs stays far inside the device's command_timeout_s
SERIES = 16
DEFAULT_CACHE = Path.home() / ".cache" / "edgeprune" / "latency"


def layer_configs(model: nn.Module, example_inputs: Any) -> tuple[dict[str, LayerConfig], dict[str, list[nn.Module]]]:
    """Each prunable layer that runs: its config, and the modules the runtime fuses after it (a BatchNorm
    and an activation module that take its output directly)."""
    leaves = [(n, m) for n, m in model.named_modules() if next(m.children(), None) is None]
    calls: list[tuple[str, nn.Module, int, int, tuple]] = []

    def hook(name):
        def record(module, inputs, output):
            first = inputs[0] if inputs and torch.is_tensor(inputs[0]) else None
            if torch.is_tensor(output):
                calls.append((name, module, id(first), id(output), tuple(first.shape) if first is not None else ()))

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in leaves]
    try:
        with torch.no_grad():
            call(model, example_inputs)
    finally:
        for h in handles:
            h.remove()
    configs: dict[str, LayerConfig] = {}
    fused: dict[str, list[nn.Module]] = {}
    for i, (name, module, _, out_id, in_shape) in enumerate(calls):
        if not isinstance(module, PRUNABLE_TYPES) or name in configs:
            continue
        tail, last = [], out_id
        for _, nxt, in_id, nxt_out, _ in calls[i + 1:i + 3]:
            if in_id != last or not isinstance(nxt, FUSED):
                break
            tail.append(nxt)
            last = nxt_out
        fused[name] = tail
        configs[name] = _config(module, in_shape, tail)
    return configs, fused


def _config(module: nn.Module, in_shape: tuple, tail: list[nn.Module]) -> LayerConfig:
    names = tuple(type(m).__name__ for m in tail)
    if isinstance(module, nn.Linear):
        return LayerConfig("Linear", module.in_features, module.out_features, input_shape=tuple(in_shape[1:-1]),
                           fused=names)
    return LayerConfig(type(module).__name__, module.in_channels, module.out_channels, tuple(module.kernel_size),
                       tuple(module.stride), tuple(module.padding) if not isinstance(module.padding, str) else (),
                       is_depthwise(module), tuple(in_shape[2:]), names)


def counts(channels: int, align: int, floor: int, points: int) -> list[int]:
    """`points` channel counts from the smallest the target's alignment allows up to `channels`, each a
    multiple of the alignment (the left edge of a step of the runtime's tile width) or the full count."""
    if channels <= floor or points < 2:
        return [channels]
    out = {channels}
    for k in range(points - 1):
        c = floor + (channels - floor) * k / (points - 1)
        out.add(min(channels, max(floor, align * math.floor(c / align))))
    return sorted(out)


def layer_module(module: nn.Module, tail: list[nn.Module], config: LayerConfig) -> tuple[nn.Module, torch.Tensor]:
    """A standalone layer (and its fused tail) at the config's channel counts, with a seeded input."""
    gen = torch.Generator().manual_seed(0)
    if isinstance(module, nn.Linear):
        layer: nn.Module = nn.Linear(config.in_channels, config.out_channels, bias=module.bias is not None)
        x = torch.randn(1, *config.input_shape, config.in_channels, generator=gen)
    else:
        groups = config.in_channels if config.depthwise else 1
        layer = type(module)(config.in_channels, config.out_channels, module.kernel_size, module.stride,
                             module.padding, module.dilation, groups, module.bias is not None)
        x = torch.randn(1, config.in_channels, *config.input_shape, generator=gen)
    parts = [layer]
    for m in tail:
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            parts.append(type(m)(config.out_channels))
        else:
            parts.append(copy_model(m))
    return nn.Sequential(*parts).eval(), x


def profile(model: nn.Module, example_inputs: Any, target: "Target | str", device: "str | Device" = "local", *,
            devices: "str | Path | None" = None, cache_dir: "str | Path | None" = None, points: int = 3,
            settings: Optional[BenchSettings] = None, trust_new_host_key: bool = False,
            progress: Optional[Callable[[str, int, int], None]] = None) -> LatencyModel:
    """The latency model of `model` on `device`, measured there (or read from `cache_dir` when this device,
    runtime version, thread count and input shapes were profiled before). `points` channel counts per
    dimension per layer shape; `progress(what, done, total)` is called as configs are measured. The device
    is held (`ep.reserve`) for the whole profile."""
    if isinstance(device, str):
        device = get_device(device, devices)
    with reserve(device, trust_new_host_key=trust_new_host_key) as board:
        return profile_on(board, model, example_inputs, target, cache_dir=cache_dir, points=points,
                          settings=settings, trust_new_host_key=trust_new_host_key, progress=progress)


def profile_on(board: Reservation, model: nn.Module, example_inputs: Any, target: "Target | str", *,
               cache_dir: "str | Path | None" = None, points: int = 3, settings: Optional[BenchSettings] = None,
               trust_new_host_key: bool = False,
               progress: Optional[Callable[[str, int, int], None]] = None) -> LatencyModel:
    """As `profile`, on a device already reserved (the closed loop holds it for the profile and its loop)."""
    target, device = load_target(target), board.device
    settings = settings or PROFILE_SETTINGS
    work = finalize(model).eval()
    configs, fused = layer_configs(work, example_inputs)
    if not configs:
        raise ModelError(f"{type(model).__name__} has no Conv or Linear layer that runs on the example inputs")
    runtime = target.runtime.preferred
    found = check(device, trust_new_host_key=trust_new_host_key)
    if not found.reachable or found.error:
        raise DeviceError(f"device '{device.name}': cannot profile there: {found.error}")
    version = str(found.runtimes.get(runtime) or "")
    if not version:
        raise DeviceError(f"device '{device.name}' has no {runtime} (the runtime of {target.name}): it has "
                          f"{', '.join(found.runtimes) or 'none'}")
    threads = settings.threads if settings.threads is not None else device.threads
    cores = settings.cores if settings.cores is not None else device.cores
    identity = TableIdentity(device.name, runtime, version, threads, tuple(cores or ()),
                             json.dumps(InputSpec.of(example_inputs).to_json(), sort_keys=True))
    path = table_path(cache_dir or DEFAULT_CACHE, identity)
    table = LatencyTable.load(path) if path.exists() else LatencyTable(identity)
    if table.identity != identity:  # a file name's digest collision, or a file copied by hand: start afresh
        table = LatencyTable(identity)
    align = target.alignment.multiple(target.precision.default)
    floor = align * math.ceil(max(target.alignment.min_channels, align) / align)
    modules = prunable_layers(work)
    wanted: list[tuple[str, LayerConfig]] = []
    for name, config in configs.items():
        ins = [config.in_channels] if config.depthwise else counts(config.in_channels, align, floor, points)
        for o in counts(config.out_channels, align, floor, points):
            for i in ins:
                wanted.append((name, config.with_channels(i, o)))
    todo = [(n, c) for n, c in dict((c.key(), (n, c)) for n, c in wanted).values() if table.get(c) is None]
    # the dense model is measured every time (the calibration is this model's, not the table's), last in
    # the last series; the layers in series of SERIES, each series one start of the runtime on the device
    jobs: list[tuple[str, Optional[LayerConfig], nn.Module, Any]] = []
    for name, config in todo:
        layer, x = layer_module(modules[name], fused[name], config)
        jobs.append((f"{name} {config.in_channels}→{config.out_channels}", config, layer, (x,)))
    jobs.append(("the dense model", None, work, example_inputs))
    dense = math.nan
    with tempfile.TemporaryDirectory(prefix="edgeprune-profile-") as tmp:
        for start in range(0, len(jobs), SERIES):
            chunk = jobs[start:start + SERIES]
            artifacts = []
            for k, (what, _, module, inputs) in enumerate(chunk, start):
                if progress:
                    progress(what, k, len(jobs))
                artifacts.append(_export(module, inputs, target, Path(tmp) / f"config-{k}"))
            for (_, config, _, _), result in zip(chunk, board.bench_series(artifacts, settings=settings)):
                if config is None:
                    dense = result.p50
                else:
                    table.add(config, result.p50)
            table.save(path)  # an interrupted profile keeps what it measured
    latency = LatencyModel(table, configs)
    layers_ms = latency.raw({})
    latency.rest_ms = max(0.0, dense - layers_ms)
    latency.correct({}, dense)
    return latency


def _export(module: nn.Module, inputs: Any, target: Target, out: Path) -> Path:
    # an int8 target's layer is calibrated on its own seeded input: timing does not depend on the values
    calibration = [inputs] if target.precision.default == "int8" else None
    try:
        return export(module, inputs, target, out, calibration=calibration, verify_inputs=[inputs]).path
    except EdgepruneError as exc:
        raise EdgepruneError(f"profiling: cannot export a layer for {target.name}: {exc}") from exc
