"""What state a device is in, before and after a benchmark: CPU frequency and governor, temperatures and
trip points, load, Jetson power mode, Raspberry Pi throttling. Standard library only (Python 3.8+): it runs
on the device, beside the benchmark harnesses (`harness.py`) and the runner's control script (`device.py`).

    sample_state() -> dict
    state_flags(before, after, cores=None) -> list[str]
    cpu_snapshot() -> dict;  window_load(start, end, cpus) -> dict   (the load during a measuring window)

`sample_state()` returns a JSON-serialisable dict:

    time        epoch seconds
    hostname, machine, kernel, cpu_count
    governor    {"cpu0": "schedutil", ...}   /sys/devices/system/cpu/cpuN/cpufreq/scaling_governor
    cur_mhz     {"cpu0": 1800.0, ...}        .../scaling_cur_freq (kHz); without cpufreq, /proc/cpuinfo "cpu MHz"
    max_mhz     {"cpu0": 2400.0, ...}        .../cpuinfo_max_freq (kHz)
    thermal     [{"zone": 0, "type": "cpu-thermal", "temp_c": 51.2,
                  "trips": [{"type": "passive", "temp_c": 85.0}, ...]}, ...]   /sys/class/thermal/thermal_zoneN/
    loadavg     [1 min, 5 min, 15 min]
    runnable    tasks running or ready to run right now (/proc/stat procs_running; this process included)
    nvpmodel    stdout of `nvpmodel -q` (Jetson power mode), or null where there is no nvpmodel
    throttled   "0x50005" from `vcgencmd get_throttled` (Raspberry Pi), or null where there is no vcgencmd

Whatever cannot be read (no cpufreq in a VM, no thermal zones, a file that vanishes between listing and
reading, a command that hangs) is left out or null: sampling the state must never stop a benchmark.

EDGEPRUNE_TEST_SYSFS (a directory; unset on a device) is read in place of /sys, so that the tests can give
a run a CPU clock that drops or a thermal zone past its trip point and follow it through the harness to the
result. It changes only what the state reports: nothing is run or written because of it.

`state_flags(before, after, cores)` turns two samples into human-readable warnings that the measurement
may not reflect the device at its nominal speed: a CPU whose frequency fell by more than 10% during the run
(only the pinned `cores`, when given), a thermal zone at or above a passive/hot/critical trip point, and
Raspberry Pi throttling bits. Softer observations (governor, load average) are the harness's "notes", not
flags.

`cpu_snapshot()` before and after a measuring window, then `window_load(start, end, cpus)`, tell how much of
the CPUs the benchmark may use other processes took during that window (see `window_load`); the harness
flags a run whose share is too high.
"""

from __future__ import annotations

import glob
import os
import platform
import re
import shutil
import socket
import subprocess
import time

SYSFS_ENV = "EDGEPRUNE_TEST_SYSFS"
_CPU_DIR = "devices/system/cpu"  # under sysfs
_THERMAL_DIR = "class/thermal"
_PROC_STAT = "/proc/stat"
_COMMAND_TIMEOUT_S = 5.0
# A CPU whose frequency is more than this fraction lower after the run than before is flagged.
FREQUENCY_DROP = 0.10
# Trip point types that mean the kernel throttles (passive) or is about to shut down (hot, critical);
# "active" trips only switch fans on, which does not slow the CPU.
_THROTTLING_TRIPS = ("passive", "hot", "critical")
# vcgencmd get_throttled bits: https://www.raspberrypi.com/documentation/computers/os.html#get_throttled
_THROTTLED_NOW = {0: "under-voltage detected", 1: "ARM frequency capped", 2: "currently throttled",
                  3: "soft temperature limit active"}
_THROTTLED_SINCE_BOOT = {16: "under-voltage has occurred", 17: "ARM frequency capping has occurred",
                         18: "throttling has occurred", 19: "soft temperature limit has occurred"}


def _read(path: str):
    """The stripped text of a small sysfs/proc file, or None if it cannot be read."""
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except (OSError, ValueError):
        return None


def _number(text, scale: float = 1.0):
    try:
        return float(text) / scale
    except (TypeError, ValueError):
        return None


def _index(path: str, prefix: str) -> int:
    """cpu12 -> 12, thermal_zone3 -> 3 (for numeric sorting; cpu10 after cpu9)."""
    m = re.search(re.escape(prefix) + r"(\d+)$", path.rstrip("/"))
    return int(m.group(1)) if m else -1


def _sysfs(path: str) -> str:
    return os.path.join(os.environ.get(SYSFS_ENV) or "/sys", path)


def _cpu_dirs():
    dirs = [d for d in glob.glob(os.path.join(_sysfs(_CPU_DIR), "cpu[0-9]*")) if os.path.isdir(d)]
    return sorted(dirs, key=lambda d: _index(d, "cpu"))


def _cpufreq():
    governor, cur_mhz, max_mhz = {}, {}, {}
    for d in _cpu_dirs():
        name = "cpu%d" % _index(d, "cpu")
        freq = os.path.join(d, "cpufreq")
        gov = _read(os.path.join(freq, "scaling_governor"))
        if gov:
            governor[name] = gov
        cur = _number(_read(os.path.join(freq, "scaling_cur_freq")), 1000.0)  # kHz -> MHz
        if cur is not None:
            cur_mhz[name] = cur
        top = _number(_read(os.path.join(freq, "cpuinfo_max_freq")), 1000.0)
        if top is not None:
            max_mhz[name] = top
    if not cur_mhz:
        cur_mhz = _cpuinfo_mhz()
    return governor, cur_mhz, max_mhz


def _cpuinfo_mhz():
    """x86 (and VMs without cpufreq) report each processor's current clock in /proc/cpuinfo."""
    text = _read("/proc/cpuinfo") or ""
    out, cpu = {}, None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "processor":
            try:
                cpu = int(value.strip())
            except ValueError:
                cpu = None
        elif key == "cpu mhz" and cpu is not None:
            mhz = _number(value.strip())
            if mhz is not None:
                out["cpu%d" % cpu] = mhz
    return out


def _thermal():
    zones = []
    paths = sorted(glob.glob(os.path.join(_sysfs(_THERMAL_DIR), "thermal_zone[0-9]*")), key=lambda p: _index(p, "zone"))
    for path in paths:
        zone = {"zone": _index(path, "zone"), "type": _read(os.path.join(path, "type")),
                # millidegrees Celsius; reading temp can fail (EIO/ENODATA) on zones whose sensor is off
                "temp_c": _number(_read(os.path.join(path, "temp")), 1000.0), "trips": []}
        trip_files = glob.glob(os.path.join(path, "trip_point_[0-9]*_temp"))
        for temp_file in sorted(trip_files, key=lambda p: _index(p[: -len("_temp")], "trip_point_")):
            temp = _number(_read(temp_file), 1000.0)
            kind = _read(temp_file[: -len("_temp")] + "_type")
            if temp is not None:
                zone["trips"].append({"type": kind, "temp_c": temp})
        zones.append(zone)
    return zones


def _command(argv):
    """stdout of a short status command, or None if it is missing, fails or hangs (5 s)."""
    exe = shutil.which(argv[0])
    if exe is None:
        return None
    try:
        proc = subprocess.run([exe] + list(argv[1:]), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, timeout=_COMMAND_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    return proc.stdout.decode("utf-8", "replace").strip()


def _throttled():
    out = _command(["vcgencmd", "get_throttled"])
    if out is None:
        return None
    m = re.search(r"throttled=(0x[0-9a-fA-F]+)", out)
    return m.group(1) if m else out


def sample_state() -> dict:
    """A snapshot of the device's state (see the module docstring). Never raises."""
    state = {"time": time.time()}
    for key, get in (("hostname", socket.gethostname), ("machine", platform.machine),
                     ("kernel", platform.release), ("cpu_count", os.cpu_count)):
        try:
            state[key] = get()
        except Exception:  # noqa: BLE001 - a snapshot must not fail over one field
            state[key] = None
    try:
        state["governor"], state["cur_mhz"], state["max_mhz"] = _cpufreq()
    except Exception:  # noqa: BLE001
        state["governor"], state["cur_mhz"], state["max_mhz"] = {}, {}, {}
    try:
        state["thermal"] = _thermal()
    except Exception:  # noqa: BLE001
        state["thermal"] = []
    try:
        state["loadavg"] = list(os.getloadavg())
    except (OSError, AttributeError):
        state["loadavg"] = None
    try:
        state["runnable"] = _proc_stat()[1]
    except Exception:  # noqa: BLE001
        state["runnable"] = None
    state["nvpmodel"] = _command(["nvpmodel", "-q"])
    state["throttled"] = _throttled()
    return state


# ------------------------------------------------------------------------------- load during a window

def _proc_stat():
    """({"cpu0": {"busy": ticks, "steal": ticks, "total": ticks}, ...}, procs_running) from /proc/stat;
    ({}, None) where it cannot be read (not Linux).

    Columns: user nice system idle iowait irq softirq steal [guest guest_nice]. guest time is already
    counted in user, so only the first eight are summed; idle and iowait are not busy; steal (time the
    hypervisor gave to other guests) is kept apart, since in a VM it is load the guest cannot see as tasks."""
    cpus, running = {}, None
    for line in (_read(_PROC_STAT) or "").splitlines():
        fields = line.split()
        if len(fields) >= 5 and re.fullmatch(r"cpu\d+", fields[0]):
            try:
                v = [int(f) for f in fields[1:9]]
            except ValueError:
                continue
            v += [0] * (8 - len(v))  # kernels before 2.6.11 have no steal column
            user, nice, system, _idle, _iowait, irq, softirq, steal = v
            cpus[fields[0]] = {"busy": user + nice + system + irq + softirq, "steal": steal, "total": sum(v)}
        elif len(fields) == 2 and fields[0] == "procs_running":
            try:
                running = int(fields[1])
            except ValueError:
                pass
    return cpus, running


def _own_cpu_s() -> float:
    """CPU seconds of this process: all its threads, and the children it has waited for (trtexec)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _own_schedstat():
    """(ns on a CPU, ns waiting for one) summed over this process's threads, from /proc/self/task/*/schedstat
    (kernels with CONFIG_SCHED_INFO); None where it cannot be read."""
    run = wait = 0
    found = False
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return None
    for tid in tasks:
        fields = (_read("/proc/self/task/%s/schedstat" % tid) or "").split()
        if len(fields) >= 2:  # a thread that ended since listdir has no file any more
            try:
                run, wait, found = run + int(fields[0]), wait + int(fields[1]), True
            except ValueError:
                continue
    return (run, wait) if found else None


def cpu_snapshot() -> dict:
    """Cumulative CPU counters now, for `window_load`. Never raises; what cannot be read is None or empty."""
    snap = {"mono_s": time.monotonic(), "cpus": {}, "runnable": None, "own_cpu_s": None, "loadavg": None,
            "schedstat": None}
    try:
        snap["cpus"], snap["runnable"] = _proc_stat()
    except Exception:  # noqa: BLE001 - a reading must never stop a benchmark
        pass
    try:
        snap["schedstat"] = _own_schedstat()
    except Exception:  # noqa: BLE001
        pass
    try:
        snap["own_cpu_s"] = _own_cpu_s()
    except Exception:  # noqa: BLE001
        pass
    try:
        snap["loadavg"] = list(os.getloadavg())
    except (OSError, AttributeError):
        pass
    return snap


def _ticks_per_s() -> float:
    try:
        return float(os.sysconf("SC_CLK_TCK"))
    except (AttributeError, ValueError, OSError):
        return 100.0  # USER_HZ is 100 on every Linux architecture


def window_load(start: dict, end: dict, cpus=None) -> dict:
    """How busy other processes kept `cpus` (ints: the CPUs the benchmark may use; None: every CPU) between
    two `cpu_snapshot()`s taken around a measuring window:

        window_s      the window's wall time
        cpus          the CPUs judged
        others_share  (busy + steal ticks of those CPUs - this process's CPU time) / (all ticks of those
                      CPUs): 0 when the benchmark had its CPUs to itself, 1 when other processes (or, in a
                      VM, other guests: steal) kept every one of them busy for the whole window
        steal_share   the part of others_share that was steal
        own_share     this process's CPU time over the same capacity (1 thread on 2 CPUs: about 0.5)
        wait_share    of the time this process's threads were ready to run, the share they spent waiting
                      for a CPU (/proc/self/task/*/schedstat; None where the kernel does not keep it):
                      preemption the benchmark itself felt. It can stay low on a busy machine (the
                      scheduler's autogroups give each login session its fair share), so it is reported
                      beside others_share, not instead of it
        runnable      [before, after]: tasks running or ready to run (this one included), at the two ends
        loadavg_1m    [before, after]: the kernel's 1-minute load average (lags; includes this process)

    This is measured over the whole window, not sampled: a burst of other work between the two snapshots
    counts in full. The kernel's counters tick at CLK_TCK (100 Hz), so a share is good to about
    ±3 / (100 × window_s × number of CPUs). {} where /proc/stat cannot be read (not Linux).
    """
    before, after = start.get("cpus") or {}, end.get("cpus") or {}
    names = sorted(set(before) & set(after), key=lambda name: _index(name, "cpu"))
    if cpus is not None:
        wanted = {"cpu%d" % int(c) for c in cpus}
        names = [name for name in names if name in wanted]
    if not names:
        return {}
    delta = {key: sum(after[n][key] - before[n][key] for n in names) for key in ("busy", "steal", "total")}
    if delta["total"] <= 0:
        return {}
    own_ticks = 0.0
    if start.get("own_cpu_s") is not None and end.get("own_cpu_s") is not None:
        own_ticks = max(0.0, (end["own_cpu_s"] - start["own_cpu_s"]) * _ticks_per_s())
    others = min(max(0.0, delta["busy"] + delta["steal"] - own_ticks), float(delta["total"]))
    wait_share = None
    if start.get("schedstat") and end.get("schedstat"):
        ran, waited = (b - a for a, b in zip(start["schedstat"], end["schedstat"]))
        if ran >= 0 and waited >= 0 and ran + waited > 0:  # not when a thread ended in between
            wait_share = round(max(0.0, waited / (ran + waited)), 4)
    return {
        "window_s": round(end.get("mono_s", 0.0) - start.get("mono_s", 0.0), 4),
        "cpus": [_index(name, "cpu") for name in names],
        "others_share": round(others / delta["total"], 4),
        "steal_share": round(delta["steal"] / delta["total"], 4),
        "own_share": round(min(own_ticks / delta["total"], 1.0), 4),
        "wait_share": wait_share,
        "runnable": [start.get("runnable"), end.get("runnable")],
        "loadavg_1m": [(start.get("loadavg") or [None])[0], (end.get("loadavg") or [None])[0]],
    }


# ------------------------------------------------------------------------------------------------ flags

def _fmt(value: float) -> str:
    return "%.0f" % value if abs(value) >= 100 else "%.1f" % value


def _frequency_flags(before: dict, after: dict, cores) -> list:
    flags = []
    wanted = None if cores is None else {"cpu%d" % int(c) for c in cores}
    old, new = before.get("cur_mhz") or {}, after.get("cur_mhz") or {}
    for cpu in sorted(new, key=lambda name: _index(name, "cpu")):
        if wanted is not None and cpu not in wanted:
            continue
        a, b = old.get(cpu), new.get(cpu)
        if a and b is not None and b < a * (1.0 - FREQUENCY_DROP):
            flags.append("%s frequency dropped %s → %s MHz during the run" % (cpu, _fmt(a), _fmt(b)))
    return flags


def _reached_trip(zone: dict):
    """The most severe throttling trip point the zone's temperature is at or above, or None."""
    temp = zone.get("temp_c")
    if temp is None:
        return None
    reached = None
    for trip in zone.get("trips") or []:
        # Disabled trips read 0 or negative on some boards (and would match every temperature).
        if trip.get("type") in _THROTTLING_TRIPS and trip.get("temp_c") is not None and trip["temp_c"] > 0 \
                and temp >= trip["temp_c"]:
            if reached is None or trip["temp_c"] > reached["temp_c"]:
                reached = trip
    return reached


def _thermal_flags(before: dict, after: dict) -> list:
    flags = []
    earlier = {z.get("zone"): z for z in before.get("thermal") or []}
    for zone in after.get("thermal") or []:
        label = "thermal zone %s (%s)" % (zone.get("zone"), zone.get("type") or "unknown")
        trip = _reached_trip(zone)
        if trip is not None:
            flags.append("%s reached %.1f °C, its %s trip point %.1f °C"
                         % (label, zone["temp_c"], trip["type"], trip["temp_c"]))
            continue
        start = earlier.get(zone.get("zone"))
        trip = _reached_trip(start) if start else None
        if trip is not None:  # hot when the run started and cooled since: the start of the run was throttled
            flags.append("%s was at %.1f °C when the run started, at or above its %s trip point %.1f °C"
                         % (label, start["temp_c"], trip["type"], trip["temp_c"]))
    return flags


def _throttle_bits(value):
    if value is None:
        return None
    try:
        return int(str(value), 16)
    except ValueError:
        return None


def _throttled_flags(before: dict, after: dict) -> list:
    now = _throttle_bits(after.get("throttled"))
    if now is None:
        return []
    flags = []
    active = [text for bit, text in sorted(_THROTTLED_NOW.items()) if now & (1 << bit)]
    if active:
        flags.append("Raspberry Pi reports %s (get_throttled=%s)" % (", ".join(active), after["throttled"]))
    # The sticky "has occurred" bits (16-19) stay set until reboot; only new ones concern this run.
    old = _throttle_bits(before.get("throttled")) or 0
    new = [text for bit, text in sorted(_THROTTLED_SINCE_BOOT.items()) if now & (1 << bit) and not old & (1 << bit)]
    if new:
        flags.append("Raspberry Pi: %s during the run (get_throttled %s → %s)"
                     % (", ".join(new), before.get("throttled"), after["throttled"]))
    return flags


def state_flags(before: dict, after: dict, cores=None) -> list:
    """Warnings that the device was not at full speed during the run (see the module docstring).

    `cores`: the CPUs the benchmark was pinned to (ints); frequency drops on other CPUs are ignored.
    """
    before, after = before or {}, after or {}
    return _frequency_flags(before, after, cores) + _thermal_flags(before, after) + _throttled_flags(before, after)


if __name__ == "__main__":  # `python3 device_state.py`: print this device's state
    import json

    print(json.dumps(sample_state(), indent=2, ensure_ascii=False))
