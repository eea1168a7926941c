"""A device reserved for a while (a test session, a CI job): one connection and one lock for many
benchmarks and comparisons, the lease renewed while the reservation lives.

    with ep.reserve("pi5-lab", devices="devices.toml") as board:
        board.compare("base.onnx", "new.onnx", max_slowdown=0.05)
        board.bench("other.pte")

Leaving the block, normally, on an error or on Ctrl-C, releases the lock and removes the run dir
(runner.hold). The lease (`lease_s` in devices.toml) is renewed before each operation and, between
operations, every lease_s / 3 by a background thread, so a reservation outlives the lease as long as this
process does; if this process dies the lease still ends, and `local` frees the lock at once.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Sequence

from ..devices import Device, get_device
from ..errors import DeviceError, SettingsError
from .ab import checked_pair, compare_held, with_max_slowdown
from .results import BenchResult, BenchSettings
from .runner import BENCH_KEYS, Held, bench_result, checked_artifact, device_defaults, hold, run_harness
from .verdict import CompareSettings, Comparison


class Reservation:
    """A held device; use it from one thread at a time (operations are serialized)."""

    def __init__(self, held: Held, cancel: Optional[threading.Event] = None):
        self._held = held
        self._cancel = cancel
        self._busy = threading.Lock()  # one remote command at a time: operations and renewals
        self._stop = threading.Event()
        self._lost: Optional[DeviceError] = None
        self._renewer = threading.Thread(target=self._renew_loop, name=f"renew-{held.device.name}", daemon=True)
        self._renewer.start()

    @property
    def device(self) -> Device:
        return self._held.device

    def bench(self, artifact: "str | Path", *, settings: Optional[BenchSettings] = None,
              runtime: Optional[str] = None) -> BenchResult:
        """As ep.bench, on the reserved device."""
        path, kind, manifest, sha = checked_artifact(artifact, runtime)
        settings = device_defaults(settings or BenchSettings(), self.device)
        with self._operation() as held:
            held.upload({path: sha}, kind)
            result = held.timed("run_s", run_harness, held.session, held.device, kind, held.rundir,
                                held.remote[(path, sha)], settings, held.deadline, held.report)
        return bench_result(held, path, sha, manifest, settings, result)

    def bench_series(self, artifacts: Sequence["str | Path"], *, settings: Optional[BenchSettings] = None,
                     runtime: Optional[str] = None) -> list[BenchResult]:
        """As `bench` for each artifact (all of one runtime), measured one after another in one harness
        process: the runtime starts once, which for many small models (edgeprune.profile's layers) is most
        of the device time. Each result is charged an equal share of the run's overhead."""
        checked = [checked_artifact(a, runtime) for a in artifacts]
        kinds = sorted({kind for _, kind, _, _ in checked})
        if len(kinds) != 1:
            raise SettingsError(f"bench_series: the artifacts must share one runtime, got {', '.join(kinds) or 'none'}")
        settings = device_defaults(settings or BenchSettings(), self.device)
        with self._operation() as held:
            held.upload({path: sha for path, _, _, sha in checked}, kinds[0])
            first, *rest = [held.remote[(path, sha)] for path, _, _, sha in checked]
            result = held.timed("run_s", run_harness, held.session, held.device, kinds[0], held.rundir, first,
                                settings, held.deadline, held.report,
                                extra=["--series", *rest] if rest else [], required=("series",) if rest else BENCH_KEYS)
        each = result["series"] if rest else [result]
        if not isinstance(each, list) or len(each) != len(checked):
            raise DeviceError(f"device '{self.device.name}': the {kinds[0]} harness returned "
                              f"{len(each) if isinstance(each, list) else 'no'} results for {len(checked)} artifacts")
        out = []
        for (path, _, manifest, sha), one in zip(checked, each):
            missing = [k for k in BENCH_KEYS if not isinstance(one, dict) or k not in one]
            if missing:
                raise DeviceError(f"device '{self.device.name}': the {kinds[0]} harness's result for {path.name} "
                                  f"lacks {', '.join(missing)}")
            out.append(bench_result(held, path, sha, manifest, settings, one, share=len(checked)))
        return out

    def compare(self, baseline: "str | Path", candidate: "str | Path", *, max_slowdown: Optional[float] = None,
                settings: Optional[CompareSettings] = None, runtime: Optional[str] = None,
                name: Optional[str] = None) -> Comparison:
        """As ep.compare, on the reserved device."""
        settings = with_max_slowdown(settings, max_slowdown)
        base, cand, kind = checked_pair(baseline, candidate, runtime)
        with self._operation() as held:
            held.upload(dict((base, cand)), kind)
            return compare_held(held, kind, base, cand, settings, name, self._cancel)

    @contextmanager
    def _operation(self) -> Iterator[Held]:
        with self._busy:
            if self._lost is not None:
                raise self._lost
            with self._held.operation():
                yield self._held

    def _renew_loop(self) -> None:
        every = max(1.0, self._held.device.lease_s / 3)
        while not self._stop.wait(every):
            with self._busy:
                if self._stop.is_set():
                    return
                try:
                    self._held.renew()
                except DeviceError as exc:  # reported by the next operation
                    self._lost = exc
                    return

    def _close(self) -> None:
        self._stop.set()
        with self._busy:  # a renewal under way finishes before the lock is released
            pass


@contextmanager
def reserve(device: "str | Device" = "local", *, devices: "str | Path | None" = None,
            trust_new_host_key: bool = False, progress=None,
            cancel: Optional[threading.Event] = None) -> Iterator[Reservation]:
    """Hold `device` for the block (see the module docstring); DeviceBusyError if another run holds it for
    longer than its lock_wait_s."""
    if isinstance(device, str):
        device = get_device(device, devices)
    with hold(device, None, {}, trust_new_host_key=trust_new_host_key, progress=progress, cancel=cancel) as held:
        reservation = Reservation(held, cancel)
        try:
            yield reservation
        finally:
            reservation._close()
