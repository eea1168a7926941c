"""A candidate against a baseline on one device: interleaved rounds, taken in batches until the verdict is
known, with the device state checked before anything is judged.

    c = ep.compare("base.onnx", "candidate.onnx", "pi5-lab", devices="devices.toml", max_slowdown=0.05)
    c.verdict, c.ratio, c.ci, c.summary()

One hold of the device (runner.hold: connect, upload both artifacts and check them, take the lock), then
batches of rounds in the harness's A/B mode (runtimes/interleave.py): the first batch of
`settings.rounds`, then `settings.more_rounds` at a time while the verdict (compare.judge over all rounds
so far) is inconclusive, up to `max_rounds` rounds and `max_seconds` of measuring. A batch whose device
state is flagged is set aside, not judged: after a cool-down it is run again, and if it stays flagged the
comparison ends `inconclusive`, with the flags, judged=False.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import numpy as np

from ..devices import Device, get_device
from ..errors import ArtifactError
from .verdict import CompareSettings, Comparison, Verdict, judge
from .results import BenchSettings
from .runner import Held, checked_artifact, hold, reclaim_notes, run_harness

AB_KEYS = ("runtime", "runtime_version", "baseline", "candidate", "state_before", "state_after", "flags")


def governor_flags(state: dict, governor: Optional[str], cores) -> list[str]:
    """A flag when a CPU (of `cores`, if pinned) runs another frequency governor than the one asked for."""
    if governor is None:
        return []
    wanted = None if cores is None else {f"cpu{c}" for c in cores}
    other = {cpu: g for cpu, g in (state.get("governor") or {}).items()
             if g != governor and (wanted is None or cpu in wanted)}
    if not other:
        return []
    cpus = sorted(other, key=lambda cpu: int(cpu[3:]) if cpu[3:].isdigit() else 0)
    return [f"governor: {', '.join(f'{cpu} runs {other[cpu]!r}' for cpu in cpus)}, not {governor!r} as asked"]


def _batch_flags(result: dict, settings: CompareSettings) -> list[str]:
    cores = result.get("cores") if settings.cores else None
    flags = list(result.get("flags") or [])
    for state in (result.get("state_before") or {}, result.get("state_after") or {}):
        flags += [f for f in governor_flags(state, settings.governor, cores) if f not in flags]
    return flags


def _kind(note: str) -> str:
    """A note with its numbers blanked: each batch says "noisy: CV 184.1 %" anew, and one of each is enough."""
    return re.sub(r"\d+(\.\d+)?", "#", note)


def _wait(seconds: float, cancel: Optional[threading.Event]) -> None:
    """Sleep through a cool-down; Ctrl-C, or `cancel`, ends it at once."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        if cancel is not None and cancel.wait(min(left, 0.25)):
            raise KeyboardInterrupt("stopped during the cool-down")
        if cancel is None:
            time.sleep(min(left, 0.25))


def _run_batch(held: Held, kind: str, baseline: str, candidate: str, rounds: int, first_round: int,
               settings: CompareSettings) -> dict:
    bench = BenchSettings(warmup_runs=settings.warmup_runs, warmup_seconds=settings.warmup_seconds,
                          threads=settings.threads if settings.threads is not None else held.device.threads,
                          cores=settings.cores if settings.cores is not None else held.device.cores,
                          seed=settings.seed)
    extra = ["--ab-baseline", baseline, "--rounds", str(rounds), "--round-runs", str(settings.round_runs),
             "--first-round", str(first_round)]
    return held.timed("run_s", run_harness, held.session, held.device, kind, held.rundir, candidate, bench,
                      held.deadline, held.report, extra, AB_KEYS)


def checked_pair(baseline: "str | Path", candidate: "str | Path", runtime: Optional[str]):
    """((baseline path, sha256), (candidate path, sha256), harness kind); ArtifactError if they cannot be
    compared (missing, changed since export, or of two runtimes)."""
    base_path, kind, _, base_sha = checked_artifact(baseline, runtime)
    cand_path, cand_kind, _, cand_sha = checked_artifact(candidate, runtime)
    if cand_kind != kind:
        raise ArtifactError(f"{cand_path}: a {cand_kind} artifact cannot be compared with the {kind} baseline "
                            f"{base_path}: an A/B comparison runs both in one runtime")
    return (base_path, base_sha), (cand_path, cand_sha), kind


def compare(baseline: "str | Path", candidate: "str | Path", device: "str | Device" = "local", *,
            devices: "str | Path | None" = None, max_slowdown: Optional[float] = None,
            settings: Optional[CompareSettings] = None, runtime: Optional[str] = None, name: Optional[str] = None,
            trust_new_host_key: bool = False, progress=None, cancel: Optional[threading.Event] = None) -> Comparison:
    """Judge `candidate` against `baseline` on `device` (see the module docstring). `max_slowdown`, when
    given, overrides the settings' (default 5 %). Raises DeviceError naming the device when it cannot be
    used; a comparison the device state spoiled is returned, `inconclusive` and judged=False."""
    settings = with_max_slowdown(settings, max_slowdown)
    base, cand, kind = checked_pair(baseline, candidate, runtime)
    if isinstance(device, str):
        device = get_device(device, devices)
    with hold(device, kind, dict((base, cand)), trust_new_host_key=trust_new_host_key, progress=progress,
              cancel=cancel) as held:
        result = compare_held(held, kind, base, cand, settings, name, cancel)
    return replace(result, device_s=round(held.overhead["total_s"], 4),
                   extra={**result.extra, "overhead_s": {k: round(v, 4) for k, v in held.overhead.items()}})


def with_max_slowdown(settings: Optional[CompareSettings], max_slowdown: Optional[float]) -> CompareSettings:
    settings = settings or CompareSettings()
    return settings if max_slowdown is None else replace(settings, max_slowdown=max_slowdown)


def compare_held(held: Held, kind: str, base: tuple[Path, str], cand: tuple[Path, str], settings: CompareSettings,
                 name: Optional[str] = None, cancel: Optional[threading.Event] = None) -> Comparison:
    """The comparison, on a device already held with both artifacts uploaded."""
    started = time.monotonic()
    flags: list[str] = []
    notes = reclaim_notes(held.lock_info.get("reclaimed", []))
    rounds_a: list[float] = []
    rounds_b: list[float] = []
    samples_a: list[float] = []
    samples_b: list[float] = []
    first = last = None
    batches, measured_s = 0, 0.0
    want, retries_left = settings.rounds, settings.retries
    while True:
        batch = _run_batch(held, kind, held.remote[base], held.remote[cand], want, len(rounds_a), settings)
        batches += 1
        measured_s += float(batch.get("measure_s", 0.0))
        first = first or batch
        last = batch
        notes += [n for n in batch.get("notes", []) if _kind(n) not in {_kind(m) for m in notes}]
        spoiled = _batch_flags(batch, settings)
        if spoiled:
            if retries_left > 0:
                retries_left -= 1
                notes.append(f"batch {batches} not judged ({'; '.join(spoiled)}); run again after a "
                             f"{settings.cooldown_s:g} s cool-down")
                held.report("cooldown", {"seconds": settings.cooldown_s, "flags": spoiled})
                held.timed("cooldown_s", _wait, settings.cooldown_s, cancel)
                continue
            flags = spoiled
            break
        rounds_a += [float(v) for v in batch["baseline"]["rounds"]]
        rounds_b += [float(v) for v in batch["candidate"]["rounds"]]
        samples_a += [float(v) for runs in batch["baseline"]["samples"] for v in runs]
        samples_b += [float(v) for runs in batch["candidate"]["samples"] for v in runs]
        verdict = judge(rounds_a, rounds_b, max_slowdown=settings.max_slowdown, min_effect=settings.min_effect,
                        confidence=settings.confidence)
        held.report("judge", {"rounds": len(rounds_a), "verdict": verdict.verdict.value})
        if verdict.verdict is not Verdict.INCONCLUSIVE or len(rounds_a) >= settings.max_rounds \
                or measured_s >= settings.max_seconds:
            break
        want = min(settings.more_rounds, settings.max_rounds - len(rounds_a))
    judged = not flags
    if judged:
        j = judge(rounds_a, rounds_b, max_slowdown=settings.max_slowdown, min_effect=settings.min_effect,
                  confidence=settings.confidence)
        verdict, ratio, ci, stat, p = j.verdict, j.ratio, j.ci, j.statistic, j.p_value
    else:
        nan = float("nan")
        verdict, ratio, ci, stat, p = Verdict.INCONCLUSIVE, nan, (nan, nan), nan, nan
    return Comparison(
        device=held.device.name, baseline=str(base[0]), baseline_sha256=base[1], candidate=str(cand[0]),
        candidate_sha256=cand[1], runtime=str(last["runtime"]), runtime_version=str(last["runtime_version"]),
        verdict=verdict, ratio=ratio, ci=ci, confidence=settings.confidence, statistic=stat, p_value=p,
        n=len(rounds_a),
        # the median of the per-round medians: what the rounds say each artifact takes
        baseline_p50=float(np.median(rounds_a)) if rounds_a else float("nan"),
        candidate_p50=float(np.median(rounds_b)) if rounds_b else float("nan"),
        max_slowdown=settings.max_slowdown, min_effect=settings.min_effect, judged=judged, flags=tuple(flags),
        notes=tuple(notes), state_before=first.get("state_before", {}), state_after=last.get("state_after", {}),
        baseline_rounds=tuple(rounds_a), candidate_rounds=tuple(rounds_b), settings=asdict(settings),
        device_s=round(time.monotonic() - started, 4), batches=batches,
        measured_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), name=name,
        extra={"measure_s": round(measured_s, 4)}, baseline_samples=tuple(samples_a),
        candidate_samples=tuple(samples_b),
    )
