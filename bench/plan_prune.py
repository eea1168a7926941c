"""Benchmark: how long plan() and prune() take, and what they do to MACs and parameters.

transformers' ResNet-50 and ViT-B/16 configs (224×224, random weights), every built-in target at
Budget(macs_ratio=0.5). Times are medians of --repeats runs in one process, torch pinned to one thread.
Writes a Markdown section to stdout (and --out); BENCHMARKS.md holds the last run.

    .venv/bin/python bench/plan_prune.py --repeats 3 --out bench/out/plan_prune.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch

import edgeprune as ep
from _report import emit
from edgeprune import zoo


def _median_time(fn, repeats: int):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="resnet50,vit_b16")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, 1 thread; "
        f"median of {args.repeats} runs.",
        "",
        "| model | target | plan (s) | prune (s) | MACs dense → pruned (effective) | measured dense MACs kept | "
        "params dense → pruned | structured / n:m / keep layers |",
        "|---|---|---|---|---|---|---|---|",
    ]
    budget = ep.Budget(macs_ratio=0.5)
    for model_name in args.models.split(","):
        factory = getattr(zoo, model_name)
        model, inputs = factory(), factory.example_inputs()
        dense = ep.measure(model, inputs)
        for target in ep.builtin_targets():
            try:
                t_plan, plan = _median_time(lambda: ep.plan(model, inputs, target, budget), args.repeats)
            except ep.BudgetError as exc:
                lines.append(f"| {model_name} | {target} | — | — | budget not met: {exc} | | | |")
                continue
            t_prune, pruned = _median_time(lambda: ep.prune(model, plan), args.repeats)
            after = ep.measure(pruned, inputs)
            counts = " / ".join(str(len(plan.by_method(m))) for m in ("structured", "n:m", "keep"))
            lines.append(
                f"| {model_name} | {target} | {t_plan:.2f} | {t_prune:.2f} | "
                f"{dense.macs / 1e9:.2f}G → {plan.macs_after / 1e9:.2f}G ({plan.macs_ratio:.3f}) | "
                f"{after.macs / dense.macs:.3f} | {dense.params / 1e6:.2f}M → {after.params / 1e6:.2f}M | {counts} |"
            )
            print(lines[-1], flush=True)
    emit(lines, args.out)


if __name__ == "__main__":
    main()
