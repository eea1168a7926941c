"""A/B on the device: two artifacts of one runtime, loaded in one process and timed alternately.

    python3 runtimes/bench_<rt>.py CANDIDATE --ab-baseline BASELINE [--rounds 20] [--round-runs 5]
        [--first-round 0] [the harness's other options]

(the options are the harness's: harness.main hands a run with --ab-baseline to `benchmark_ab` here)

Both artifacts are loaded and warmed up, then timed in rounds: each round runs `--round-runs` inferences of
one and then of the other, the order alternating from round to round (A B, B A, A B, ...: A B B A A B ...),
so that both see the same clocks, temperature and background load, and neither always goes first (caches,
a clock ramping up). `--first-round` continues the alternation of an earlier batch.

Prints ONE line of JSON (schema "edgeprune.ab/1"): per-round samples and medians of both artifacts, each
artifact's statistics over all its samples (harness.summarize), the device state before and after, the
CPU load during the rounds, `flags` (the device state's only: a clock drop, a thermal trip, throttling,
which make the rounds unfit to judge) and `notes` (the harness's notes, and "noisy"/"busy" observations,
which the pairing of rounds makes harmless). The decision is the host's (edgeprune.remote.verdict).

Device-side, like the harness: the standard library, numpy and the runtime only.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

import device_state
import harness

SCHEMA = "edgeprune.ab/1"


def order_of(round_index: int) -> str:
    """"AB" or "BA": A first in even rounds."""
    return "AB" if round_index % 2 == 0 else "BA"


def alternate(invoke_a, invoke_b, rounds: int, round_runs: int, first_round: int, ctx):
    """Time the rounds; ([A's ns per run] per round, [B's ...] per round)."""
    perf = time.perf_counter_ns
    invokes = {"A": invoke_a, "B": invoke_b}
    samples = {"A": [], "B": []}
    ctx.progress("measure", 0, force=True)
    for r in range(rounds):
        for side in order_of(first_round + r):
            invoke, out = invokes[side], []
            try:
                for _ in range(round_runs):
                    t0 = perf()
                    invoke()
                    out.append(perf() - t0)
            except harness.HarnessError:
                raise
            except Exception as exc:  # noqa: BLE001 - the runtime failed to run the model
                path = ctx.args.ab_baseline if side == "A" else ctx.args.artifact
                raise harness.UsageError("artifact %s: the runtime failed to run it (round %d): %s"
                                         % (path, first_round + r, harness.first_line(exc)))
            samples[side].append(out)
        ctx.check_deadline("during A/B round %d of %d" % (r + 1, rounds))
        ctx.progress("measure", (r + 1) * round_runs * 2)
    return samples["A"], samples["B"]


def _load(backend, args, path: str, ctx):
    """Load `path` with the backend as if it were the harness's artifact; (session, invoke, arrays, notes)."""
    one = argparse.Namespace(**vars(args))
    one.artifact = path
    session = backend.load(one, ctx)
    if session.measure is not None or session.bind is None:
        raise harness.UsageError("artifact %s: %s times itself (%s); A/B needs a runtime the harness times"
                                 % (path, session.runtime, session.engine))
    notes = list(session.notes)
    arrays = harness.make_inputs(session.inputs, one, notes)
    try:
        invoke = session.bind(arrays)
    except harness.HarnessError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise harness.UsageError("artifact %s: %s cannot take the prepared inputs %s: %s"
                                 % (path, session.runtime, harness.describe_inputs(session.inputs, arrays),
                                    harness.first_line(exc)))
    return session, invoke, arrays, notes


def _side(path: str, size: int, load_s: float, per_round, seed: int) -> dict:
    flat = [ns / 1e6 for runs in per_round for ns in runs]
    stats = harness.summarize(flat, seed)
    return dict(stats, artifact=os.path.basename(path), artifact_bytes=size, load_s=load_s,
                rounds=[float(np.median(runs)) / 1e6 for runs in per_round],
                samples=[[ns / 1e6 for ns in runs] for runs in per_round])


def benchmark_ab(backend, args, ctx) -> dict:
    sizes = {"A": harness.check_artifact(args.ab_baseline), "B": harness.check_artifact(args.artifact)}
    cores = harness.pin_cores(args.cores)
    harness.limit_thread_env(args.threads)
    state_before = device_state.sample_state()

    ctx.progress("load", 0, force=True)
    loaded, load_s = {}, {}
    for side, path in (("A", args.ab_baseline), ("B", args.artifact)):
        t0 = time.perf_counter()
        loaded[side] = _load(backend, args, path, ctx)
        load_s[side] = time.perf_counter() - t0
    (session_a, invoke_a, arrays_a, notes_a), (session_b, invoke_b, arrays_b, notes_b) = loaded["A"], loaded["B"]
    inputs_a = harness.describe_inputs(session_a.inputs, arrays_a)
    inputs_b = harness.describe_inputs(session_b.inputs, arrays_b)
    if [(i["shape"], i["dtype"]) for i in inputs_a] != [(i["shape"], i["dtype"]) for i in inputs_b]:
        raise harness.UsageError("the baseline %s takes inputs %s and the candidate %s takes %s: an A/B "
                                 "comparison needs the same inputs" % (args.ab_baseline, inputs_a, args.artifact,
                                                                       inputs_b))
    ctx.check_deadline("while loading the artifacts")

    warm = {}
    for side, invoke in (("A", invoke_a), ("B", invoke_b)):
        warm[side] = harness.timed_loop(invoke, "warmup", args.warmup_runs, args.warmup_seconds, ctx)
    start = device_state.cpu_snapshot()
    t0 = time.perf_counter()
    per_round_a, per_round_b = alternate(invoke_a, invoke_b, args.rounds, args.round_runs, args.first_round, ctx)
    measure_s = time.perf_counter() - t0
    end = device_state.cpu_snapshot()
    ctx.measurement_done()
    state_after = device_state.sample_state()

    baseline = _side(args.ab_baseline, sizes["A"], load_s["A"], per_round_a, args.seed)
    candidate = _side(args.artifact, sizes["B"], load_s["B"], per_round_b, args.seed)
    load = device_state.window_load(start, end, cores)
    notes = list(notes_a) + [n for n in notes_b if n not in notes_a]
    notes += harness.state_notes(state_before, args.cores)
    for name, side in (("baseline", baseline), ("candidate", candidate)):
        notes += ["%s: %s (the rounds are paired, so this widens the comparison's interval but does not bias it)"
                  % (name, flag) for flag in harness.noise_flags(side["cv"], load, args.max_cv, args.max_busy)]
    return {
        "schema": SCHEMA,
        "runtime": session_b.runtime,
        "runtime_version": session_b.runtime_version,
        "engine": session_b.engine,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "unit": "ms",
        "rounds": args.rounds,
        "round_runs": args.round_runs,
        "first_round": args.first_round,
        "order": [order_of(args.first_round + r) for r in range(args.rounds)],
        "baseline": baseline,
        "candidate": candidate,
        "warmup_runs": warm["A"][0] + warm["B"][0],
        "warmup_s": warm["A"][1] + warm["B"][1],
        "measure_s": measure_s,
        "threads": session_b.threads,
        "cores": cores,
        "settings": dict(vars(args)),
        "inputs": inputs_b,
        "load": load,
        "state_before": state_before,
        "state_after": state_after,
        "flags": device_state.state_flags(state_before, state_after, args.cores),
        "notes": notes,
    }
