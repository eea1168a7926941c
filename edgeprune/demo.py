"""`make demo`: one model, three kinds of hardware, three different plans.

transformers' ResNet-18 (built from its config, random weights, nothing downloaded) is planned for a
Jetson (2:4 sparse tensor cores), a Raspberry Pi 5 (XNNPACK on NEON) and a Cortex-M55 + Ethos-U55 MCU at
the same budget, pruned, and measured. The plans differ because the hardware does.
"""

from __future__ import annotations

import time

from rich.console import Console

import edgeprune as ep
from edgeprune import zoo

TARGETS = ("jetson-orin-nano-8gb", "raspberry-pi-5", "corstone-300-ethos-u55-128")


def main() -> None:
    console = Console(width=max(Console().width, 160))
    model, inputs = zoo.resnet18(), zoo.resnet18.example_inputs()
    budget = ep.Budget(macs_ratio=0.5)
    dense = ep.measure(model, inputs)
    console.rule(f"transformers ResNet-18 (224×224), {dense.macs / 1e9:.2f} GMACs, budget {budget}")
    for name in TARGETS:
        target = ep.load_target(name)
        start = time.perf_counter()
        plan = ep.plan(model, inputs, target, budget)
        pruned = ep.prune(model, plan)
        elapsed = time.perf_counter() - start
        console.rule(f"{name}: {target.description.split(':')[0]}")
        console.print(plan.table())
        console.print(ep.costs.compare_table(dense, ep.measure(pruned, inputs)))
        counts = {m: len(plan.by_method(m)) for m in ("structured", "n:m", "unstructured", "keep")}
        console.print(f"layers by method: {counts}; plan + prune took {elapsed:.1f} s")
    console.print("\nN:M layers keep their shapes (the MACs above are dense counts); the plan's effective MACs count "
                  "them at the sparse tensor cores' rate. Latency is measured on the device, not claimed here.")


if __name__ == "__main__":
    main()
