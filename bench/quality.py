"""Benchmark: what pruning costs in accuracy on the demo task, and which recovery wins it back.

The demo's task: `zoo.SmallCNN` on scikit-learn's bundled digits (1,437 training images, of which 15 %
validate; 360 held-out test images, one image = 0.28 points). Per seed, a dense model is trained (its own
initialisation and data order), then each pruning family is taken to 2× and 4× fewer MACs and recovered
four ways, all with the same 8 epochs of training:

* no fine-tune (and "BN recal": only the BatchNorm statistics recomputed on training images);
* FT: fine-tune with cross-entropy; FT+KD: fine-tune with distillation from the dense model;
* gradual+KD: structured → `iterative_prune` (4 plan/prune steps, 2 epochs each); unstructured and 2:4 →
  `finetune(gradual=GradualSchedule(...))` from the dense model (cubic schedule over the first 60 % of the
  steps); unstructured also → `lottery` (iterative magnitude pruning with rewinding, 3 trainings × 3 epochs).

Families: structured channels as the policy plans them for a Raspberry Pi 5 (XNNPACK alignment); 2:4 on
every layer whose shape allows it (forced by a recipe: these layers are narrower than Orin's 256-channel
threshold, so this measures accuracy, not speed), alone at 2× and with channel pruning at 4× (the Jetson
policy); unstructured per-layer magnitude (the Ethos-U flash case). "MACs kept" counts non-zero MACs.
Then the sensitivity-aware policy against uniform per-layer ratios at the same budget (Pi 5 and the
Ethos-U55's int8 alignment, which cannot go below 0.30 of this model's MACs, so 2× only), with the
sensitivity measured as is and with each pruned copy's BatchNorm recalibrated (`calibration_data=`).

Accuracy is on the held-out test digits; each cell is the median over seeds of the accuracy and of the
paired change against that seed's dense model, with the change's min…max. Writes Markdown (--out) and the
per-seed numbers as JSON (--json).

    .venv/bin/python bench/quality.py --seeds 6 --jobs 2 --out bench/out/quality.md --json bench/out/quality.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from torch.utils.data import DataLoader

import edgeprune as ep
from _report import emit
from edgeprune import demo, zoo
from edgeprune.finetune import accuracy

RATIOS = (0.5, 0.25)
EPOCHS = 8
LR = 1e-3
MIDDLE = ("res.0", "res.3", "expand.0", "depthwise.0", "branch_a.0", "branch_b.0", "fc1")  # not first, not head
NM_LAYERS = tuple(n for n in MIDDLE if n != "depthwise.0")  # grouped conv: no dense GEMM to sparsify
METHODS = ("none", "bn_recal", "ft", "ft_kd", "gradual_kd", "imp_kd")
HEADERS = {"none": "no fine-tune", "bn_recal": "BN recal", "ft": "FT", "ft_kd": "FT+KD",
           "gradual_kd": "gradual+KD", "imp_kd": "IMP+rewind+KD"}
# the Ethos-U55's int8 alignment (16 channels) cannot take this 32-channel model below 0.30 of its MACs
SENSITIVITY_CASES = (("raspberry-pi-5", RATIOS), ("corstone-300-ethos-u55-128", (0.5,)))
NM_RECIPE = {"layers": {n: {"method": "n:m"} for n in NM_LAYERS}}


def nonzero_macs(model, inputs) -> float:
    """MACs that do work: each Conv/Linear layer's MACs scaled by its share of non-zero weights."""
    cost = ep.measure(model, inputs)
    return cost.other_macs + sum(c.macs * c.nonzero_weights / c.weights for c in cost.layers.values() if c.weights)


def unstructured_amount(dense, inputs, ratio: float) -> float:
    """The per-layer sparsity of the middle layers that leaves `ratio` of the dense non-zero MACs."""
    cost = ep.measure(dense, inputs)
    middle = sum(cost.layers[n].macs for n in MIDDLE)
    return 1.0 - (ratio * cost.macs - (cost.macs - middle)) / middle


def gradual_schedule(train, method: str, final: float, layers) -> ep.GradualSchedule:
    steps = EPOCHS * len(train)
    return ep.GradualSchedule(method=method, final_sparsity=final, begin_step=0, end_step=int(0.6 * steps),
                              every_k_steps=max(1, len(train) // 2), layers=tuple(layers))


def families(dense, inputs, train):
    """(family, ratio, plan or None, gradual(dense) -> model, lottery(dense) -> model or None) per case."""
    pi5, jetson, u55 = "raspberry-pi-5", "jetson-orin-nano-8gb", "corstone-300-ethos-u55-128"
    kd = dict(teacher=dense, lr=LR, quiet=True)
    for ratio in RATIOS:
        budget = ep.Budget(macs_ratio=ratio)
        yield ("structured (Pi 5 policy)", ratio, ep.plan(dense, inputs, pi5, budget),
               lambda b=budget: ep.iterative_prune(dense, inputs, pi5, b, train, steps=4, epochs_per_step=2, **kd).model,
               None)
    yield ("2:4 only (recipe)", 0.5, ep.plan(dense, inputs, jetson, ep.Budget(macs_ratio=1.0), recipe=NM_RECIPE),
           lambda: ep.finetune(dense, train, epochs=EPOCHS, gradual=gradual_schedule(train, "n:m", 0.5, NM_LAYERS),
                               **kd).model, None)
    budget = ep.Budget(macs_ratio=0.25)
    yield ("2:4 + channels (Jetson policy)", 0.25, ep.plan(dense, inputs, jetson, budget, recipe=NM_RECIPE),
           lambda: ep.iterative_prune(dense, inputs, jetson, budget, train, steps=4, epochs_per_step=2,
                                      recipe=NM_RECIPE, **kd).model, None)
    for ratio in RATIOS:
        s = unstructured_amount(dense, inputs, ratio)
        recipe = {"layers": {n: {"method": "unstructured", "amount": s} for n in MIDDLE}}
        per_round = 1.0 - (1.0 - s) ** 0.5  # two rounds of pruning reach s
        yield (f"unstructured (per layer {s:.0%})", ratio,
               ep.plan(dense, inputs, u55, ep.Budget(sparsity=0.0), recipe=recipe),
               lambda s=s: ep.finetune(dense, train, epochs=EPOCHS, gradual=gradual_schedule(train, "unstructured", s,
                                                                                              MIDDLE), **kd).model,
               lambda p=per_round: ep.lottery(dense, train, rounds=2, sparsity_per_round=p, epochs_per_round=3,
                                              rewind_epoch=1, layers=MIDDLE, **kd).model)


def recover(pruned, dense, train, test, seed: int) -> dict[str, float]:
    ft = dict(epochs=EPOCHS, lr=LR, seed=seed, quiet=True)
    in_order = DataLoader(train.dataset, batch_size=train.batch_size)  # same batches for every plan: comparable
    return {"none": accuracy(pruned, test), "bn_recal": accuracy(ep.recalibrate_bn(pruned, in_order), test),
            "ft": accuracy(ep.finetune(pruned, train, **ft).model, test),
            "ft_kd": accuracy(ep.finetune(pruned, train, teacher=dense, **ft).model, test)}


def run_seed(seed: int) -> dict:
    torch.set_num_threads(1)
    start = time.perf_counter()
    train, val, test = demo.data()
    inputs = zoo.small_cnn.example_inputs()
    torch.manual_seed(seed)
    dense = ep.finetune(zoo.SmallCNN(), train, epochs=15, lr=3e-3, val_data=val, seed=seed, quiet=True).model.eval()
    dense_macs = nonzero_macs(dense, inputs)
    out = {"seed": seed, "dense": accuracy(dense, test), "families": [], "sensitivity": []}
    for family, ratio, plan, gradual, lottery in families(dense, inputs, train):
        pruned = ep.prune(dense, plan)
        row = {"family": family, "ratio": ratio, "macs_kept": nonzero_macs(pruned, inputs) / dense_macs,
               "params_kept": ep.measure(ep.finalize(pruned), inputs).params / ep.measure(dense, inputs).params,
               **recover(pruned, dense, train, test, seed)}
        row["gradual_kd"] = accuracy(gradual(), test)
        if lottery is not None:
            row["imp_kd"] = accuracy(lottery(), test)
        out["families"].append(row)
        print(f"seed {seed}: {family} at {ratio}: {time.perf_counter() - start:.0f} s", flush=True)
    in_order = DataLoader(train.dataset, batch_size=train.batch_size)
    for target, ratios in SENSITIVITY_CASES:
        sens = ep.sensitivity(dense, inputs, val, None, target)
        sens_bn = ep.sensitivity(dense, inputs, val, None, target, calibration_data=in_order)
        for ratio in ratios:
            for policy, kwargs in (("uniform", {}), ("sensitivity-aware", {"sensitivity": sens}),
                                   ("sensitivity-aware, BN-recalibrated", {"sensitivity": sens_bn})):
                plan = ep.plan(dense, inputs, target, ep.Budget(macs_ratio=ratio), **kwargs)
                pruned = ep.prune(dense, plan)
                row = {"target": target, "ratio": ratio, "policy": policy,
                       "macs_kept": nonzero_macs(pruned, inputs) / dense_macs,
                       **recover(pruned, dense, train, test, seed)}
                out["sensitivity"].append(row)
    out["seconds"] = time.perf_counter() - start
    print(f"seed {seed}: done in {out['seconds']:.0f} s", flush=True)
    return out


def cell(runs: list[dict], rows: list[dict], key: str) -> str:
    """Median accuracy, median paired change against the dense model (points) and its min…max."""
    values = [r[key] for r in rows if key in r]
    if not values:
        return "—"
    deltas = [100 * (r[key] - run["dense"]) for run, r in zip(runs, rows) if key in r]
    return (f"{100 * statistics.median(values):.1f} ({statistics.median(deltas):+.1f}; "
            f"{min(deltas):+.1f}…{max(deltas):+.1f})")


def report(runs: list[dict], seconds: float) -> list[str]:
    dense = [100 * r["dense"] for r in runs]
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; {len(runs)} seeds "
        f"(seeds {', '.join(str(r['seed']) for r in runs)}), {seconds:.0f} s in all.",
        f"Dense small CNN: test accuracy median {statistics.median(dense):.1f} % (min {min(dense):.1f}, "
        f"max {max(dense):.1f}). Cells: median accuracy % (median paired change in points; min…max over seeds). "
        f"Every recovery trains {EPOCHS} epochs (IMP+rewind: 9).",
        "",
        "### Recovery per family at 2× and 4× fewer MACs",
        "",
        "| family | MACs kept | params kept | " + " | ".join(HEADERS[m] for m in METHODS) + " |",
        "|---|---|---|" + "---|" * len(METHODS),
    ]
    for i, first in enumerate(runs[0]["families"]):
        rows = [r["families"][i] for r in runs]
        lines.append(f"| {first['family']} | {statistics.median(r['macs_kept'] for r in rows):.3f} | "
                     f"{statistics.median(r['params_kept'] for r in rows):.3f} | "
                     + " | ".join(cell(runs, rows, m) for m in METHODS) + " |")
    lines += ["", "### Sensitivity-aware policy against uniform per-layer ratios, same budget", "",
              "| target | budget (MACs kept) | policy | MACs kept | no fine-tune | BN recal | FT | FT+KD |",
              "|---|---|---|---|---|---|---|---|"]
    for i, first in enumerate(runs[0]["sensitivity"]):
        rows = [r["sensitivity"][i] for r in runs]
        lines.append(f"| {first['target']} | {first['ratio']} | {first['policy']} | "
                     f"{statistics.median(r['macs_kept'] for r in rows):.3f} | "
                     + " | ".join(cell(runs, rows, m) for m in ("none", "bn_recal", "ft", "ft_kd")) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    start = time.perf_counter()
    with ProcessPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(run_seed, range(args.seeds)))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(runs, indent=2))
    emit(report(runs, time.perf_counter() - start), args.out)


if __name__ == "__main__":
    main()
