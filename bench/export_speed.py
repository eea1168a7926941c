"""Benchmark: does the pruned model run faster in ExecuTorch + XNNPACK, and by as much as its MACs fell?

For transformers' ResNet-18 and MobileNetV2 configs (224×224, random weights): the dense model, edgeprune's
plan for raspberry-pi-5 at Budget(macs_ratio=0.5), and torch-pruning's default (MetaPruner, L2, no channel
alignment) at the pruning ratio that removes the same MACs. Several profiles' plans can be timed side by
side (`--targets`): their channel alignments differ, and the machine the timing runs on decides which wins. Each is exported to .pte (XNNPACK delegate)
and timed in one process, interleaved (every round runs each model once, in rotating order), one thread,
process pinned to one core. efficiency = speedup ÷ MACs reduction.

    .venv/bin/python bench/export_speed.py --rounds 40 --out bench/out/export_speed.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch_pruning as tp

import edgeprune as ep
from _report import emit
from edgeprune import zoo
from edgeprune.export import executorch as et_format


def torch_pruning_default(model, inputs, macs_ratio: float):
    """torch-pruning's MetaPruner as its README shows it (L2, per-layer ratio, classifier ignored, no
    round_to), with the ratio bisected so the result keeps `macs_ratio` of the MACs like ours does."""
    dense = ep.measure(model, inputs).macs
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1:]

    def pruned_at(ratio):
        m = ep.finalize(model)
        pruner = tp.pruner.MetaPruner(m, example_inputs=inputs, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                      pruning_ratio=ratio, ignored_layers=head)
        pruner.step()
        return m, ep.measure(m, inputs).macs / dense

    lo, hi = 0.0, 0.9
    for _ in range(12):
        mid = (lo + hi) / 2
        _, kept = pruned_at(mid)
        lo, hi = (mid, hi) if kept > macs_ratio else (lo, mid)
    return pruned_at(hi)


def _target(spec: str) -> ep.Target:
    """A profile, or `name@N`: the profile with its channel alignment set to N (to measure alignment alone)."""
    name, _, align = spec.partition("@")
    target = ep.load_target(name)
    if not align:
        return target
    alignment = target.alignment.model_copy(update={"channel_multiple": int(align)})
    return target.model_copy(update={"alignment": alignment})


def _pin() -> str:
    torch.set_num_threads(1)
    try:
        from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

        _unsafe_reset_threadpool(1)
    except ImportError:
        pass
    core = sorted(os.sched_getaffinity(0))[-1]
    os.sched_setaffinity(0, {core})
    return f"pinned to core {core}, 1 thread"


def time_interleaved(paths: dict[str, Path], inputs: list[torch.Tensor], rounds: int, warmup: int = 5) -> dict:
    from executorch.runtime import Runtime

    runtime = Runtime.get()
    methods = {k: runtime.load_program(str(p)).load_method("forward") for k, p in paths.items()}
    for method in methods.values():
        for _ in range(warmup):
            method.execute(inputs)
    samples = {k: [] for k in methods}
    names = list(methods)
    for r in range(rounds):
        for k in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            methods[k].execute(inputs)
            samples[k].append(time.perf_counter() - start)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--models", default="resnet18,mobilenet_v2")
    parser.add_argument("--targets", default="raspberry-pi-5,x86-64-host@16,x86-64-host",
                        help="comma-separated profiles (names or .toml paths), NAME@N overriding the channel "
                             "alignment; each plan is timed beside the others")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    pinning = _pin()
    lines = [
        f"Machine: {platform.machine()} ({platform.processor() or 'unknown CPU'}), {os.cpu_count()} cores, {pinning}; "
        f"ExecuTorch + XNNPACK fp32; {args.rounds} interleaved rounds after 5 warm-up runs; medians.",
        "",
        "| model | variant | MACs | MACs reduction | median ms | p90 ms | speedup | efficiency |",
        "|---|---|---|---|---|---|---|---|",
    ]
    budget = ep.Budget(macs_ratio=0.5)
    work = Path(tempfile.mkdtemp(prefix="edgeprune-bench-"))
    for name in args.models.split(","):
        factory = getattr(zoo, name)
        model, example = factory(), factory.example_inputs()
        variants = {"dense": model}
        for target in args.targets.split(","):
            t = _target(target)
            plan = ep.plan(model, example, t, budget)
            variants[f"edgeprune ({t.name}, align {plan.alignment})"] = ep.prune(model, plan)
        baseline, _ = torch_pruning_default(model, example, budget.macs_ratio)
        variants["torch-pruning default"] = baseline
        paths, macs = {}, {}
        for label, m in variants.items():
            final = ep.finalize(m).eval()
            path = work / f"{name}-{len(paths)}.pte"
            et_format.export(final, example, path, "fp32", [])
            paths[label], macs[label] = path, ep.measure(final, example).macs
        x = [example["pixel_values"]]
        samples = time_interleaved(paths, x, args.rounds)
        dense_ms = statistics.median(samples["dense"]) * 1e3
        for label in variants:
            ms = np.array(samples[label]) * 1e3
            reduction = macs["dense"] / macs[label]
            speedup = dense_ms / float(np.median(ms))
            lines.append(f"| {name} | {label} | {macs[label] / 1e9:.3f}G | {reduction:.2f}× | {np.median(ms):.2f} | "
                         f"{np.percentile(ms, 90):.2f} | {speedup:.2f}× | "
                         f"{speedup / reduction if label != 'dense' else 1:.2f} |")
            print(lines[-1], flush=True)
    emit(lines, args.out)


if __name__ == "__main__":
    main()
