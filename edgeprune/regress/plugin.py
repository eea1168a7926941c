"""pytest plugin: on-device latency regression tests (registered as the `pytest11` entry point `edgeprune`).

    def test_detector_latency(ep_latency):
        ep_latency.check("build/detector.onnx", name="detector", max_slowdown=0.05)

    pytest --ep-devices devices.toml --ep-device pi5-lab --ep-baselines latency-baselines
    pytest ... --ep-update-baselines      # record the artifacts as the new baselines, judge nothing

Each test using `ep_latency` runs once per `--ep-device`. The device is reserved (ep.reserve: its lock taken,
the lease renewed) from its first test to the end of the session, and released on exit and on Ctrl-C.
`check` compares the artifact with the baseline recorded for that name and device (ep.compare: interleaved
A/B rounds) and fails the test when it is `slower`, or `inconclusive` (unless --ep-inconclusive=warn),
with the ratio, its CI, n and the device state. A device that cannot be reached is an error, never a pass.
At the end: a summary table, and with --ep-report FILE the results as JSON.
"""

from __future__ import annotations

import json
import warnings
from contextlib import ExitStack
from pathlib import Path
from typing import Optional

import pytest

_KEY = pytest.StashKey["LatencySession"]()


def pytest_addoption(parser) -> None:
    group = parser.getgroup("edgeprune", "on-device latency regression tests (edgeprune)")
    group.addoption("--ep-devices", default=None, metavar="FILE",
                    help="the devices.toml to read (default: ./devices.toml, else only the built-in `local`)")
    group.addoption("--ep-device", action="append", default=[], metavar="NAME",
                    help="run each ep_latency test on this device (repeatable)")
    group.addoption("--ep-baselines", default="latency-baselines", metavar="DIR",
                    help="where the baselines are kept, per device and name")
    group.addoption("--ep-update-baselines", action="store_true",
                    help="record the checked artifacts as the new baselines instead of judging them")
    group.addoption("--ep-inconclusive", choices=("fail", "warn"), default="fail",
                    help="what an inconclusive comparison does to its test")
    group.addoption("--ep-report", default=None, metavar="FILE", help="write the session's results as JSON here")
    group.addoption("--ep-history", default=None, metavar="URL",
                    help="append every comparison (and recorded baseline's measurement) to this history database "
                         "(default: $EDGEPRUNE_HISTORY, else .edgeprune/history.sqlite)")
    group.addoption("--ep-no-history", action="store_true", help="append nothing to the history")


def pytest_configure(config) -> None:
    session = LatencySession(config)
    config.stash[_KEY] = session
    config.pluginmanager.register(session, "edgeprune-latency-session")


def pytest_generate_tests(metafunc) -> None:
    if "ep_latency" in metafunc.fixturenames:
        names = metafunc.config.getoption("ep_device") or [None]
        metafunc.parametrize("ep_device", names, ids=[n or "no-device" for n in names])


@pytest.fixture
def ep_latency(request, ep_device) -> "LatencyCheck":
    """Check artifacts' latency on the device this test runs for (see the module docstring)."""
    session = request.config.stash[_KEY]
    if ep_device is None:
        raise pytest.UsageError("ep_latency: no device to measure on; pass --ep-device NAME (repeatable), "
                                "e.g. --ep-device local")
    return LatencyCheck(session, ep_device, request.node.nodeid)


class LatencySession:
    """The session's reservations and results."""

    def __init__(self, config):
        self.config = config
        self.stack = ExitStack()
        self.reservations: dict[str, object] = {}
        self.failures: dict[str, BaseException] = {}
        self.rows: list[dict] = []

    def option(self, name: str):
        return self.config.getoption(name)

    def reservation(self, device: str):
        """The device, reserved at its first use for the rest of the session; a device that could not be
        reserved raises the same error for every test that asks for it (no second attempt)."""
        if device in self.failures:
            raise self.failures[device]
        if device not in self.reservations:
            from ..remote.reservation import reserve

            try:
                self.reservations[device] = self.stack.enter_context(reserve(device, devices=self.option("ep_devices")))
            except Exception as exc:
                self.failures[device] = exc
                raise
        return self.reservations[device]

    def remember(self, record) -> None:
        """Append to the history (see --ep-history); a history that cannot take it is a warning, never the
        test's failure: the verdict stands and the report keeps it."""
        if self.option("ep_no_history"):
            return
        import os

        from ..errors import EdgepruneError
        from ..history import ENV_VAR, open_history

        try:
            with open_history(self.option("ep_history") or os.environ.get(ENV_VAR)) as history:
                record(history)
        except EdgepruneError as exc:
            warnings.warn(pytest.PytestWarning(f"not added to the history: {exc}"))

    def store(self):
        from .baselines import BaselineStore

        return BaselineStore(self.option("ep_baselines"))

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session, exitstatus) -> None:
        self.stack.close()  # every reservation released, also after Ctrl-C (pytest finishes the session)
        report = self.option("ep_report")
        if report and self.rows:
            from .._atomic import write_text

            write_text(report, json.dumps({"schema": "edgeprune.latency-report/1", "results": self.rows},
                                          indent=1, default=str) + "\n", overwrite=True)

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not self.rows:
            return
        from .report import summary_lines

        terminalreporter.section("edgeprune latency")
        for line in summary_lines(self.rows):
            terminalreporter.write_line(line)


class LatencyCheck:
    """What a test holds as `ep_latency`."""

    def __init__(self, session: LatencySession, device: str, test: str):
        self.session, self.device, self.test = session, device, test
        self._reservation = session.reservation(device)  # in the fixture: an unreachable device is an error

    def check(self, artifact, *, name: Optional[str] = None, max_slowdown: Optional[float] = None,
              settings=None, runtime: Optional[str] = None):
        """Judge `artifact` against the baseline of `name` (default: the file's stem) on this device; returns
        the Comparison (or, with --ep-update-baselines, the Baseline recorded)."""
        from .baselines import check_name

        name = check_name("name", name or Path(artifact).stem)
        store = self.session.store()
        row = {"test": self.test, "device": self.device, "name": name, "candidate": str(artifact)}
        if self.session.option("ep_update_baselines"):
            result = self._reservation.bench(artifact, runtime=runtime)
            baseline = store.record(name, self.device, artifact, result)
            self.session.remember(lambda history: history.record_bench(result, name=name))
            self.session.rows.append({**row, "verdict": "recorded", "baseline_p50": None,
                                      "candidate_p50": result.p50, "ratio": None, "sha256": baseline.sha256})
            return baseline
        baseline = store.get(name, self.device)
        if baseline is None:
            self.session.rows.append({**row, "verdict": "no baseline"})
            pytest.fail(f"no baseline for '{name}' on '{self.device}' in {store.root}; record one with "
                        "--ep-update-baselines", pytrace=False)
        c = self._reservation.compare(baseline.artifact, artifact, max_slowdown=max_slowdown, settings=settings,
                                      runtime=runtime, name=name)
        self.session.rows.append({**row, **c.to_dict(), "test": self.test, "candidate": str(artifact)})
        self.session.remember(lambda history: history.record_comparison(c))
        if c.verdict.value == "slower":
            pytest.fail(c.summary(), pytrace=False)
        if c.verdict.value == "inconclusive":
            if self.session.option("ep_inconclusive") == "fail":
                pytest.fail(c.summary(), pytrace=False)
            warnings.warn(pytest.PytestWarning(c.summary()))
        return c
