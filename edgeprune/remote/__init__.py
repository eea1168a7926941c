"""Measure an artifact's latency on a device: ship it, run the device-side harness, bring back statistics.

    result = ep.bench("model.pte", "pi5-lab", devices="devices.toml")   # -> BenchResult
    result.p50, result.ci95_p50, result.flags

One run, on any device (the built-in `local` is a subprocess here; the others are reached over SSH):

    connect (host key checked first) -> make the run dir -> upload the harness -> take the device's lock
    -> upload the artifact -> check every file's sha256 on the device -> run the harness under a
    supervisor that kills it at the command timeout -> parse its JSON -> release the lock -> remove the
    run dir (also on failure)

The harnesses (runtimes/bench_*.py) and the control script (runtimes/device.py) need only the device's
python3, numpy and the runtime. Every wait has a limit: the connect timeout, the per-command timeout and
the device's overall deadline; a command is read while it runs (paramiko's `recv_exit_status` would hang
on large output) and is killed on the device when a limit passes.

Modules: `results` (what a run returns), `session` (run a command / copy a file: the local subprocess),
`ssh` and `hostkeys` (the same over paramiko, host keys pinned), `artifacts` (which harness runs a file),
`upload` (ship files and prove on the device that they arrived intact), `runner` (holding a device: connect,
upload, lock, clean up; one benchmark; several devices at once), `verdict` (the A/B decision and its result type), `ab` (an
A/B comparison on a device, batch by batch), `reservation` (a device held for many runs, the lease renewed), `probe` (`devices check`) and `interrupts` (Ctrl-C: stopping runs in
other threads, clean-up a second Ctrl-C cannot cut short).
"""

from .ab import compare
from .artifacts import HARNESSES, harness_for
from .verdict import CompareSettings, Comparison, Verdict
from .probe import check, check_many
from .reservation import Reservation, reserve
from .results import BenchResult, BenchSettings, DeviceCheck
from .runner import bench, bench_many, open_session

__all__ = ["HARNESSES", "BenchResult", "BenchSettings", "CompareSettings", "Comparison", "DeviceCheck", "Verdict", "compare",
           "Reservation", "reserve", "bench", "bench_many", "check", "check_many",
           "harness_for", "open_session"]
