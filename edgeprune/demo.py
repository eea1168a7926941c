"""`make demo`: one model, three kinds of hardware, three different plans — each exported and verified.

transformers' ResNet-18 (built from its config, random weights, nothing downloaded) is planned for a
Jetson (2:4 sparse tensor cores) and a Raspberry Pi 5 (XNNPACK on NEON) at the same budget, pruned and
exported to the format each runs (ONNX for TensorRT, ExecuTorch .pte). An MCU cannot hold ResNet-18, so the
Cortex-M55 + Ethos-U55 gets our small CNN, calibrated on scikit-learn's real handwritten digits, exported
to full-int8 .tflite, run in TFLite-Micro and compiled by Vela. Every artifact is verified in its runtime.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from rich.console import Console

import edgeprune as ep
from edgeprune import zoo
from edgeprune.export.report import manifest_table

CASES = (
    ("jetson-orin-nano-8gb", zoo.resnet18, None),
    ("raspberry-pi-5", zoo.resnet18, None),
    ("corstone-300-ethos-u55-128", zoo.small_cnn, "digits"),
)


def main() -> None:
    console = Console(width=max(Console().width, 160))
    out = Path(tempfile.mkdtemp(prefix="edgeprune-demo-"))
    budget = ep.Budget(macs_ratio=0.5)
    for target_name, factory, calibration in CASES:
        model, inputs = factory(), factory.example_inputs()
        target = ep.load_target(target_name)
        dense = ep.measure(model, inputs)
        console.rule(f"{target_name}: {factory.__name__}, {dense.macs / 1e6:.1f} MMACs, budget {budget}")
        start = time.perf_counter()
        plan = ep.plan(model, inputs, target, budget)
        pruned = ep.prune(model, plan)
        console.print(plan.table())
        console.print(ep.costs.compare_table(dense, ep.measure(pruned, inputs)))
        counts = {m: len(plan.by_method(m)) for m in ("structured", "n:m", "unstructured", "keep")}
        console.print(f"layers by method: {counts}; plan + prune took {time.perf_counter() - start:.1f} s")
        calib = None
        if calibration == "digits":
            images, _ = zoo.digits("train")
            calib = [(images[i : i + 1],) for i in range(64)]
        art = ep.export(pruned, inputs, target, out, calibration=calib)
        console.print(manifest_table(art.manifest))
        console.print(f"artifact: {art.path}")
    console.print("\nN:M layers keep their shapes (the MACs above are dense counts); the plan's effective MACs count "
                  "them at the sparse tensor cores' rate. Latency is measured on the device, not claimed here.")


if __name__ == "__main__":
    main()
