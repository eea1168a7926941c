"""`make demo` / `edgeprune demo`: the whole flow on real data, for three kinds of hardware.

A small CNN is trained on scikit-learn's bundled handwritten digits (1,797 real 8×8 images shipped in the
package; nothing is downloaded), then for a Jetson Orin Nano, a Raspberry Pi 5 and a Cortex-M55 +
Ethos-U55: per-layer sensitivity → plan (half the MACs) → prune → fine-tune with knowledge distillation
from the dense model → export to the runtime the target uses → verify → measure dense and pruned
artifacts on a device (`local` by default: a subprocess here) → one summary table and a report folder.

Every latency is labelled with the device and runtime that measured it. A Jetson or Ethos-U artifact
timed on this machine is a proxy for the real board, never its latency; the Ethos-U time from Vela is an
estimate.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from rich import box
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from torch.utils.data import DataLoader, TensorDataset

import edgeprune as ep
from edgeprune import plots, zoo
from edgeprune.metrics import accuracy

TARGETS = ("jetson-orin-nano-8gb", "raspberry-pi-5", "corstone-300-ethos-u55-128")
BUDGET = ep.Budget(macs_ratio=0.5)
REPORT = "edgeprune-demo-report"  # under the current directory, where a user looks for it
STAGES = ("sensitivity", "plan + prune", "fine-tune (KD)", "export + verify", "benchmark", "deploy")


@dataclass
class Row:
    target: str
    acc_dense: float
    acc_pruned: float
    acc_finetuned: float
    macs: tuple[int, int]
    params: tuple[int, int]
    size: Optional[tuple[int, int]]  # None: not exported (the plan does not fit the target)
    p50: Optional[tuple[float, float]]
    device: str
    runtime: str
    proxy: bool
    memory: str
    flash: str = ""  # the plan's weights against the target's flash (MCU targets)
    flags: tuple[str, ...] = ()  # what makes either measurement suspect ("dense: noisy: CV 40 % > 5 %")
    deployed: str = ""  # where the pruned artifact's bundle is, or why it was not deployed


def data(batch: int = 64) -> tuple[DataLoader, DataLoader, DataLoader]:
    """digits: train = first 80 % (of which the last 15 % validate), test = the held-out 20 %."""
    x, y = zoo.digits("train")
    cut = int(0.85 * len(y))
    g = torch.Generator().manual_seed(0)
    train = DataLoader(TensorDataset(x[:cut], y[:cut]), batch_size=batch, shuffle=True, generator=g)
    val = DataLoader(TensorDataset(x[cut:], y[cut:]), batch_size=256)
    tx, ty = zoo.digits("test")
    return train, val, DataLoader(TensorDataset(tx, ty), batch_size=256)


def main(device: str = "local", devices: Optional[str] = None, out: Optional[Path] = None) -> Path:
    console = Console(width=max(Console().width, 150), markup=False)  # paths and device names print as typed
    out = Path(out) if out is not None else default_report()
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    train, val, test = data()
    splits = Splits(validation=len(val.dataset), test=len(test.dataset))
    inputs = zoo.small_cnn.example_inputs()
    console.rule("dense small CNN on scikit-learn's digits")
    dense = ep.finetune(zoo.small_cnn(), train, epochs=15, lr=3e-3, val_data=val, quiet=True).model.eval()
    acc_dense = accuracy(dense, test)
    console.print(f"test accuracy {acc_dense:.1%} ({splits.test} held-out test digits)")
    # int8: calibrated on training digits, verified on held-out test digits (real data both)
    calib = [(x[i : i + 1],) for x, _ in [next(iter(train))] for i in range(len(x))]
    held_out = [(x[i : i + 1],) for x, _ in [next(iter(test))] for i in range(32)]
    in_order = DataLoader(train.dataset, batch_size=256)
    rows, plans, points = [], {}, []
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console) as bar:
        for target_name in TARGETS:
            task = bar.add_task(f"{target_name}", total=len(STAGES))
            target = ep.load_target(target_name)

            def stage(name: str):
                bar.update(task, description=f"{target_name}: {name}")

            stage("sensitivity")
            # BN recalibrated per pruned copy: the drop then shows the layer, not stale statistics (BENCHMARKS.md)
            sens = ep.sensitivity(dense, inputs, val, None, target, calibration_data=in_order)
            plots.plot_sensitivity(sens, out / f"sensitivity-{target_name}.png", measured_on=splits.sensitivity)
            bar.advance(task)
            stage("plan + prune")
            plan = ep.plan(dense, inputs, target, BUDGET, sensitivity=sens)
            pruned = ep.prune(dense, plan)
            plans[target_name] = plan
            acc_pruned = accuracy(pruned, test)
            flash = flash_cell(plan, target)
            bar.advance(task)
            stage("fine-tune (KD)")
            tuned = ep.finetune(pruned, train, epochs=8, teacher=dense, val_data=val, lr=1e-3, quiet=True).model
            acc_tuned = accuracy(tuned, test)
            bar.advance(task)
            dense_cost, pruned_cost = ep.measure(dense, inputs), ep.measure(ep.finalize(tuned), inputs)
            row = Row(target_name, acc_dense, acc_pruned, acc_tuned, (dense_cost.macs, plan.macs_after),
                      (dense_cost.params, pruned_cost.params), None, None, "", "", False,
                      "not exported: the planned model does not fit flash", flash)
            if not fits_flash(plan, target):  # export would refuse it: say so in its row and go on
                rows.append(row)
                bar.advance(task, 3)
                continue
            stage("export + verify")
            int8 = target.family == "mcu"
            kwargs = dict(precision="int8", calibration=calib) if int8 else {}
            kwargs["verify_inputs"] = held_out
            dense_art = ep.export(dense, inputs, target, out / target_name / "dense", name="dense", **kwargs)
            pruned_art = ep.export(tuned, inputs, target, out / target_name / "pruned", plan=plan, name="pruned",
                                   **kwargs)
            bar.advance(task)
            stage("benchmark")
            timed = [ep.bench(a.path, device, devices=devices,
                              settings=ep.BenchSettings(min_runs=200, min_seconds=1.0, threads=1))
                     for a in (dense_art, pruned_art)]
            bar.advance(task)
            row.size = (dense_art.path.stat().st_size, pruned_art.path.stat().st_size)
            row.p50 = (timed[0].p50, timed[1].p50)
            row.device, row.runtime, row.proxy = timed[1].device, timed[1].runtime, timed[1].proxy
            row.flags = tuple(f"{label}: {flag}" for label, r in zip(("dense", "pruned"), timed) for flag in r.flags)
            row.memory = memory_cell(pruned_art.manifest.get("memory") or {})
            rows.append(row)
            for label, r, acc in (("dense", timed[0], acc_dense), ("pruned+KD", timed[1], acc_tuned)):
                points.append({"label": f"{target_name} {label}", "accuracy": acc, "latency_ms": r.p50,
                               "device": r.device, "runtime": r.runtime, "proxy": r.proxy, "group": target_name})
            (out / target_name / "bench.json").write_text(json.dumps([r.to_dict() for r in timed], indent=2))
            stage("deploy")
            try:
                d = ep.deploy(pruned_art.path, device, out / target_name / "bundle", devices=devices)
                row.deployed = (f"{d.artifact.relative_to(out)}: outputs checked in {d.runtime} {d.runtime_version} "
                                f"on '{device}'")
            except ep.EdgepruneError as exc:  # a Jetson's engine needs TensorRT on the device: say so, go on
                row.deployed = f"not deployed: {exc}"
            bar.advance(task)
    plots.plot_layer_sparsity(plans, out / "layer-sparsity.png")
    plots.plot_accuracy_vs_latency(points, out / "accuracy-vs-latency.png")
    console.print(summary(rows, splits))
    for line in notes(rows):
        console.print(line, highlight=False)
    console.print(f"report: {out}  ({time.perf_counter() - start:.0f} s)")
    return out


def default_report() -> Path:
    """./edgeprune-demo-report, or -2, -3, ... when a report is already there: a second run keeps the first."""
    here = Path.cwd() / REPORT
    k = 1
    while here.exists() and (not here.is_dir() or any(here.iterdir())):
        k += 1
        here = Path.cwd() / f"{REPORT}-{k}"
    return here


@dataclass(frozen=True)
class Splits:
    """How many digits each held-out split has: sensitivity is measured on one, the table on the other."""

    validation: int
    test: int

    @property
    def sensitivity(self) -> str:
        return f"validation split ({self.validation} digits)"


def fits_flash(plan: ep.Plan, target: ep.Target) -> bool:
    return not target.memory.flash_bytes or plan.weight_bytes <= target.memory.flash_bytes


def flash_cell(plan: ep.Plan, target: ep.Target) -> str:
    """The planned model's weights against the target's flash, from the plan (before any export)."""
    flash = target.memory.flash_bytes
    if not flash:
        return ""
    kib = 1024
    cell = f"plan: weights {plan.weight_bytes / kib:.0f} / {flash / kib:.0f} KiB flash"
    if plan.weight_bytes > flash:
        return f"{cell}, DOES NOT FIT ({(plan.weight_bytes - flash) / kib:.0f} KiB over)"
    return f"{cell}, fits"


def memory_cell(m: dict) -> str:
    """SRAM/flash fit of an MCU artifact, and Vela's time, which is an estimate, never a measurement."""
    if not m.get("checked"):
        return ""
    kib = 1024
    cell = (f"artifact: arena {m['tflm_arena_bytes'] / kib:.1f} / {m['sram_bytes'] / kib:.0f} KiB SRAM, "
            f"{'fits' if m['fits_sram'] and m['fits_flash'] else 'DOES NOT FIT'}")
    vela = m.get("vela") or {}
    if vela.get("estimated_inference_s"):
        cell += f"; Vela estimates {vela['estimated_inference_s'] * 1000:.3f} ms on the NPU (an estimate)"
    return cell


def summary(rows: list[Row], splits: Splits) -> Table:
    table = Table(title="edgeprune demo: small CNN on digits, half the MACs, fine-tuned with KD", box=box.SIMPLE_HEAD,
                  caption=f"accuracy: the held-out test split ({splits.test} digits); the sensitivity plots' baseline: "
                          f"the {splits.sensitivity}.\n* proxy: timed here, not on the target: never that board's "
                          "latency. † flagged: a run was noisy, busy or lost clock speed (below, and bench.json): "
                          "repeat it before trusting the speed-up.", caption_justify="left")
    # a target name cut to "jetson-orin-nan…" names no target: that column is never cut or wrapped
    table.add_column("target", no_wrap=True)
    table.add_column("test accuracy\ndense → pruned → FT", no_wrap=True)
    for col in ("MACs", "params", "artifact", "p50 (µs)\ndense → pruned", "speed-up", "measured by"):
        table.add_column(col, overflow="fold")  # a narrow terminal folds a long word, never hides it
    for r in rows:
        timed = r.p50 is not None and r.size is not None
        table.add_row(
            r.target, f"{r.acc_dense:.1%} → {r.acc_pruned:.1%} → {r.acc_finetuned:.1%}",
            f"{r.macs[0] / 1e3:.0f}k → {r.macs[1] / 1e3:.0f}k", f"{r.params[0]} → {r.params[1]}",
            f"{r.size[0] / 1024:.0f} → {r.size[1] / 1024:.0f} KiB" if timed else "—",
            f"{r.p50[0] * 1000:.1f} → {r.p50[1] * 1000:.1f}" if timed else "—",
            (f"{r.p50[0] / r.p50[1]:.2f}×" + ("†" if r.flags else "")) if timed else "—",
            (f"{r.device} / {r.runtime}" + ("*" if r.proxy else "")) if timed else "not exported")
    return table


def notes(rows: list[Row]) -> list[str]:
    """Per target, what does not fit a table cell: memory against the target's budgets, why a measurement
    is flagged, and where the deploy bundle is (or why there is none)."""
    lines = [f"{r.target}: " + "; ".join(x for x in (r.flash, r.memory) if x) for r in rows if r.flash or r.memory]
    return (lines + [f"{r.target}: † " + "; ".join(r.flags) for r in rows if r.flags]
            + [f"{r.target}: deploy: {r.deployed}" for r in rows if r.deployed])


if __name__ == "__main__":
    # through the CLI, so a device error or a bad --out is a one-line message, not a traceback
    import sys

    from .cli import app

    app(["demo", *sys.argv[1:]])
