"""Benchmark: what pruning costs in accuracy on the demo task, and which recovery wins it back.

The demo's task: `zoo.SmallCNN` on scikit-learn's bundled digits (1,437 training images, of which 15 %
validate; 360 held-out test images, one image = 0.28 points). Per seed, a dense model is trained (its own
initialisation and data order), then each pruning family is taken to 2× and 4× fewer MACs and recovered
each of these ways, every one that trains with the same 8 epochs (and that seed's data order):

* no fine-tune (and "BN recal": only the BatchNorm statistics recomputed on training images);
* FT: fine-tune with cross-entropy; FT+KD: fine-tune with distillation from the dense model;
* gradual+KD: structured → `iterative_prune` (4 plan/prune steps, 2 epochs each); unstructured and 2:4 →
  `finetune(gradual=GradualSchedule(...))` from the dense model (cubic schedule over the first 60 % of the
  steps); unstructured also → `lottery` (magnitude pruning with rewinding to epoch 1: train 4 epochs,
  prune, rewind, train 4 epochs).

Families: structured channels as the policy plans them for a Raspberry Pi 5 (XNNPACK alignment); 2:4 on
every middle layer (not the first, not the head) whose shape allows it (forced by a recipe: these layers are narrower than Orin's 256-channel
threshold, so this measures accuracy, not speed), alone at 2× and with channel pruning at 4× (the Jetson
policy); unstructured per-layer magnitude (the Ethos-U flash case). "MACs kept" counts non-zero MACs, of
the one-shot plan and, where it differs, of the model gradual pruning ends with.
Then the sensitivity-aware policy against uniform per-layer ratios at the same budget (Pi 5 and the
Ethos-U55's int8 alignment, which cannot go below 0.30 of this model's MACs, so 2× only), with the
sensitivity measured as is and with each pruned copy's BatchNorm recalibrated (`calibration_data=`).

Accuracy is on the held-out test digits; each cell is the median over seeds of the accuracy and of the
paired change against that seed's dense model, with the change's min…max; the sensitivity rows also give
the paired change against that seed's uniform plan. Writes Markdown (--out) and the per-seed numbers as
JSON (--json).

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
from edgeprune.metrics import accuracy

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


def families(dense, inputs, train, seed: int):
    """(family, ratio, plan, gradual() -> model, lottery() -> model or None) per case."""
    pi5, jetson, u55 = "raspberry-pi-5", "jetson-orin-nano-8gb", "corstone-300-ethos-u55-128"
    kd = dict(teacher=dense, lr=LR, seed=seed, quiet=True)
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
        yield (f"unstructured (per layer {s:.0%})", ratio,
               ep.plan(dense, inputs, u55, ep.Budget(sparsity=0.0), recipe=recipe),
               lambda s=s: ep.finetune(dense, train, epochs=EPOCHS, gradual=gradual_schedule(train, "unstructured", s,
                                                                                              MIDDLE), **kd).model,
               lambda s=s: ep.lottery(dense, train, rounds=1, sparsity_per_round=s, epochs_per_round=EPOCHS // 2,
                                      rewind_epoch=1, layers=MIDDLE, **kd).model)


def recover(pruned, dense, train, in_order, test, seed: int) -> dict[str, float]:
    ft = dict(epochs=EPOCHS, lr=LR, seed=seed, quiet=True)
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
    in_order = DataLoader(train.dataset, batch_size=train.batch_size)  # same BN-recal batches for every plan
    out = {"seed": seed, "dense": accuracy(dense, test), "families": [], "sensitivity": []}
    for family, ratio, plan, gradual, lottery in families(dense, inputs, train, seed):
        pruned = ep.prune(dense, plan)
        row = {"family": family, "ratio": ratio, "macs_kept": nonzero_macs(pruned, inputs) / dense_macs,
               "params_kept": ep.measure(ep.finalize(pruned), inputs).params / ep.measure(dense, inputs).params,
               **recover(pruned, dense, train, in_order, test, seed)}
        for key, make in (("gradual_kd", gradual), ("imp_kd", lottery)):
            if make is not None:
                model = make()
                row[key], row[f"macs_kept_{key}"] = accuracy(model, test), nonzero_macs(model, inputs) / dense_macs
        out["families"].append(row)
        print(f"seed {seed}: {family} at {ratio}: {time.perf_counter() - start:.0f} s", flush=True)
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
                       **recover(pruned, dense, train, in_order, test, seed)}
                out["sensitivity"].append(row)
    out["seconds"] = time.perf_counter() - start
    print(f"seed {seed}: done in {out['seconds']:.0f} s", flush=True)
    return out


def spread(values: list[float], fmt: str = "+.1f") -> str:
    """Median and min…max of per-seed values."""
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}…{max(values):{fmt}})"


def cell(runs: list[dict], rows: list[dict], key: str) -> str:
    """Median accuracy, then the median paired change against each seed's dense model (points) and its min…max."""
    values = [r[key] for r in rows if key in r]
    if not values:
        return "—"
    deltas = [100 * (r[key] - run["dense"]) for run, r in zip(runs, rows) if key in r]
    return (f"{100 * statistics.median(values):.1f} ({statistics.median(deltas):+.1f}; "
            f"{min(deltas):+.1f}…{max(deltas):+.1f})")


def macs_cell(rows: list[dict]) -> str:
    """One-shot MACs kept; the gradual / IMP models' too where they end elsewhere (more than 1 % apart)."""
    one_shot = statistics.median(r["macs_kept"] for r in rows)
    text = f"{one_shot:.3f}"
    for key, label in (("macs_kept_gradual_kd", "gradual"), ("macs_kept_imp_kd", "IMP")):
        if key in rows[0]:
            other = statistics.median(r[key] for r in rows)
            if abs(other - one_shot) > 0.01 * one_shot:
                text += f" ({label} {other:.3f})"
    return text


def report(runs: list[dict], seconds: float) -> list[str]:
    dense = [100 * r["dense"] for r in runs]
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} (1 thread per seed); "
        f"{len(runs)} seeds (seeds {', '.join(str(r['seed']) for r in runs)}), {seconds:.0f} s in all.",
        f"Dense small CNN: test accuracy median {statistics.median(dense):.1f} % (min {min(dense):.1f}, "
        f"max {max(dense):.1f}). Cells: median accuracy % (median paired change against the dense model in "
        f"points; min…max over seeds). Every recovery that trains trains {EPOCHS} epochs.",
        "",
        "### Recovery per family at 2× and 4× fewer MACs",
        "",
        "| family | MACs kept | params kept | " + " | ".join(HEADERS[m] for m in METHODS) + " |",
        "|---|---|---|" + "---|" * len(METHODS),
    ]
    for i, first in enumerate(runs[0]["families"]):
        rows = [r["families"][i] for r in runs]
        lines.append(f"| {first['family']} | {macs_cell(rows)} | "
                     f"{statistics.median(r['params_kept'] for r in rows):.3f} | "
                     + " | ".join(cell(runs, rows, m) for m in METHODS) + " |")
    lines += ["", "### Sensitivity-aware policy against uniform per-layer ratios, same budget", "",
              "Last two columns: the paired change against the same seed's uniform plan, in points: median "
              "(min…max).", "",
              "| target | budget | policy | MACs kept (min…max) | no fine-tune | BN recal | FT | FT+KD | "
              "vs uniform: BN recal | vs uniform: FT+KD |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for i, first in enumerate(runs[0]["sensitivity"]):
        rows = [r["sensitivity"][i] for r in runs]
        uniform = [next(u for u in r["sensitivity"] if u["target"] == first["target"] and u["ratio"] == first["ratio"]
                        and u["policy"] == "uniform") for r in runs]
        versus = ["—", "—"] if first["policy"] == "uniform" else [
            spread([100 * (r[k] - u[k]) for r, u in zip(rows, uniform)]) for k in ("bn_recal", "ft_kd")]
        lines.append(f"| {first['target']} | {first['ratio']} | {first['policy']} | "
                     f"{spread([r['macs_kept'] for r in rows], '.3f')} | "
                     + " | ".join(cell(runs, rows, m) for m in ("none", "bn_recal", "ft", "ft_kd"))
                     + f" | {versus[0]} | {versus[1]} |")
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
