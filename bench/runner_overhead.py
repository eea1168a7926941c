"""Benchmark: what the remote runner costs beyond the measured window, and what its numbers can resolve.

1. Overhead over loopback SSH (a real sshd on 127.0.0.1, tests/sshd_server.py) for a 1 MB and a 50 MB
   ONNX artifact: connect, upload, sha256 verify, lock, harness start-up (python + runtime import + model
   load), clean-up — everything outside the harness's warm-up + measuring window. Median of 5 runs each.
2. Spread of p50 across 10 repeated `bench` calls of one artifact on `local`, pinned (one core, one
   thread) and unpinned (one thread, any core), interleaved so both see the same machine noise; for a
   tiny model (tens of µs: timer and scheduler noise) and ResNet-18 at 224×224 (tens of ms).

    .venv/bin/python bench/runner_overhead.py --out bench/out/runner_overhead.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

import edgeprune as ep
from _report import emit
from edgeprune import zoo
from edgeprune.devices import get_device, local_device
from edgeprune.remote import BenchSettings

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from sshd_server import SSHServer  # noqa: E402

STAGES = ("connect_s", "setup_s", "upload_s", "lock_s", "verify_s", "startup_s", "cleanup_s", "outside_window_s")


def linear_artifact(out: Path, width: int) -> Path:
    """An ONNX file that is almost all one fp32 weight matrix: width² × 4 bytes."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(width, width, bias=False)).eval()
    x = (torch.randn(1, width),)
    return ep.export(model, x, "jetson-orin-nano-8gb", out / f"linear{width}", name=f"linear{width}").path


def overhead_rows(device, artifact: Path, repeats: int) -> tuple[list[dict], float]:
    settings = BenchSettings(min_runs=5, min_seconds=0.0, warmup_runs=1, warmup_seconds=0.0, threads=1)
    runs = []
    for _ in range(repeats):
        r = ep.bench(artifact, device, settings=settings)
        o = dict(r.overhead_s)
        window = sum(r.samples) / 1000  # the harness also spends its warm-up; report the whole run beside it
        o["startup_s"] = o["run_s"] - window
        runs.append(o)
    return runs, artifact.stat().st_size / 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--calls", type=int, default=10)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgeprune-runner-bench-"))
    server = SSHServer.start(work / "sshd")
    lines = [f"Machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores, shared VM; "
             f"loopback sshd (OpenSSH) on 127.0.0.1; device python {sys.version.split()[0]}.", ""]
    try:
        loopback = get_device("loopback", server.write_devices_toml(work / "devices.toml", workdir=str(work / "remote")))
        local = local_device(workdir=str(work / "local"))
        small, large = linear_artifact(work, 512), linear_artifact(work, 3584)
        lines += ["### Runner overhead beyond the measured window (median of %d runs, seconds)" % args.repeats, "",
                  "| device | artifact | MB | " + " | ".join(s[:-2] for s in STAGES) + " |",
                  "|---|---|---|" + "---|" * len(STAGES)]
        for device in (loopback, local):
            for artifact in (small, large):
                runs, mb = overhead_rows(device, artifact, args.repeats)
                cells = [f"{statistics.median(r.get(s, 0.0) for r in runs):.3f}" for s in STAGES]
                lines.append(f"| {device.name} | {artifact.name} | {mb:.1f} | " + " | ".join(cells) + " |")
        lines += ["", "`startup` is the harness process outside its measuring window: python start, numpy + runtime "
                  "import, model load, warm-up (1 run). `outside_window` = total − measured window.", ""]

        lines += [f"### Spread of p50 across {args.calls} `bench` calls on `local` (ExecuTorch + XNNPACK .pte; "
                  "pinned and unpinned calls interleaved)", "",
                  "| model | mode | runs per call | median p50 (ms) | CV of p50 across calls | median within-call CV "
                  "| min–max p50 (ms) |", "|---|---|---|---|---|---|---|"]
        for factory, runs, seconds in ((zoo.small_cnn, 200, 1.0), (zoo.resnet18, 20, 2.0)):
            model, x = factory(), factory.example_inputs()
            pte = ep.export(model, x, "x86-64-host", work / factory.__name__, format="pte").path
            modes = {"pinned (core 1, 1 thread)": BenchSettings(runs, seconds, 3, 0.3, threads=1, cores=(1,)),
                     "unpinned (1 thread)": BenchSettings(runs, seconds, 3, 0.3, threads=1)}
            p50s = {m: [] for m in modes}
            cvs = {m: [] for m in modes}
            ns = {m: [] for m in modes}
            for _ in range(args.calls):  # interleaved: both modes see the same drift of the shared machine
                for mode, settings in modes.items():
                    r = ep.bench(pte, local, settings=settings)
                    p50s[mode].append(r.p50)
                    cvs[mode].append(r.cv)
                    ns[mode].append(r.n)
            for mode in modes:
                v = p50s[mode]
                spread = statistics.stdev(v) / statistics.mean(v)
                lines.append(f"| {factory.__name__} | {mode} | {statistics.median(ns[mode]):.0f} | "
                             f"{statistics.median(v):.4f} | {spread:.1%} | {statistics.median(cvs[mode]):.1%} | "
                             f"{min(v):.4f}–{max(v):.4f} |")
    finally:
        server.stop()
    emit(lines, args.out)


if __name__ == "__main__":
    main()
