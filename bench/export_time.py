"""Benchmark: export wall time per format, and the time verification adds.

Pruned transformers ResNet-18 (224×224, raspberry-pi-5 plan at macs_ratio=0.5) to every format a built-in
target uses, and our small CNN to the MCU formats (int8, TFLite-Micro, Vela), calibrated on scikit-learn's
digits. One run each: these are seconds-scale, one-off costs, not latencies.

    .venv/bin/python bench/export_time.py --out bench/out/export_time.md
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

import edgeprune as ep
from _report import emit
from edgeprune import zoo
from edgeprune.inputs import InputSpec


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    lines = [f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch 1 thread; one run each.", "",
             "| model | target | format | precision | export (s) | export + verify (s) | size (KiB) |",
             "|---|---|---|---|---|---|---|"]
    out = Path(tempfile.mkdtemp(prefix="edgeprune-export-time-"))
    resnet, x = zoo.resnet18(), zoo.resnet18.example_inputs()
    resnet = ep.prune(resnet, ep.plan(resnet, x, "raspberry-pi-5", ep.Budget(macs_ratio=0.5)))
    calib_resnet = [InputSpec.of(x).make(seed=100 + i) for i in range(8)]
    cnn, cx = zoo.small_cnn(), zoo.small_cnn.example_inputs()
    cnn = ep.prune(cnn, ep.plan(cnn, cx, "stm32h743", ep.Budget(macs_ratio=0.5)))
    images, _ = zoo.digits("train")
    calib_digits = [(images[i: i + 1],) for i in range(64)]
    cases = [
        ("resnet18", resnet, x, "raspberry-pi-5", None, "fp32", None),
        ("resnet18", resnet, x, "raspberry-pi-5", None, "int8", calib_resnet),
        ("resnet18", resnet, x, "raspberry-pi-5", "tflite", "fp32", None),
        ("resnet18", resnet, x, "jetson-orin-nano-8gb", None, "fp32", None),
        ("resnet18", resnet, x, "jetson-orin-nano-8gb", None, "int8", calib_resnet),
        ("small_cnn", cnn, cx, "stm32h743", None, "int8", calib_digits),
        ("small_cnn", cnn, cx, "corstone-300-ethos-u55-128", None, "int8", calib_digits),
    ]
    for i, (name, model, inputs, target, fmt, precision, calibration) in enumerate(cases):
        start = time.perf_counter()
        # one pruned model per family, exported for each of that family's targets
        art = ep.export(model, inputs, target, out / str(i), precision=precision, calibration=calibration, format=fmt,
                        allow_other_target=True)
        total = time.perf_counter() - start
        m = art.manifest
        lines.append(f"| {name} | {target} | {m['format']} | {precision} | {m['export']['seconds']:.1f} | {total:.1f} | "
                     f"{m['size_bytes'] / 1024:.0f} |")
        print(lines[-1], flush=True)
    emit(lines, args.out)


if __name__ == "__main__":
    main()
