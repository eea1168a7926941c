"""What state a device is in, before and after a benchmark: CPU frequency and governor, temperatures and
trip points, load, Jetson power mode, Raspberry Pi throttling. Standard library only (Python 3.8+): it runs
on the device, beside the benchmark harnesses (`harness.py`) and the runner's control script (`device.py`).

    sample_state() -> dict
    state_flags(before, after, cores=None) -> list[str]

`sample_state()` returns a JSON-serialisable dict:

    time        epoch seconds
    hostname, machine, kernel, cpu_count
    governor    {"cpu0": "schedutil", ...}   /sys/devices/system/cpu/cpuN/cpufreq/scaling_governor
    cur_mhz     {"cpu0": 1800.0, ...}        .../scaling_cur_freq (kHz); without cpufreq, /proc/cpuinfo "cpu MHz"
    max_mhz     {"cpu0": 2400.0, ...}        .../cpuinfo_max_freq (kHz)
    thermal     [{"zone": 0, "type": "cpu-thermal", "temp_c": 51.2,
                  "trips": [{"type": "passive", "temp_c": 85.0}, ...]}, ...]   /sys/class/thermal/thermal_zoneN/
    loadavg     [1 min, 5 min, 15 min]
    nvpmodel    stdout of `nvpmodel -q` (Jetson power mode), or null where there is no nvpmodel
    throttled   "0x50005" from `vcgencmd get_throttled` (Raspberry Pi), or null where there is no vcgencmd

Whatever cannot be read (no cpufreq in a VM, no thermal zones, a file that vanishes between listing and
reading, a command that hangs) is left out or null: sampling the state must never stop a benchmark.

`state_flags(before, after, cores)` turns two samples into human-readable warnings that the measurement
may not reflect the device at its nominal speed: a CPU whose frequency fell by more than 10% during the run
(only the pinned `cores`, when given), a thermal zone at or above a passive/hot/critical trip point, and
Raspberry Pi throttling bits. Softer observations (governor, load) are the harness's "notes", not flags.
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

_CPU_DIR = "/sys/devices/system/cpu"
_THERMAL_DIR = "/sys/class/thermal"
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


def _cpu_dirs():
    dirs = [d for d in glob.glob(os.path.join(_CPU_DIR, "cpu[0-9]*")) if os.path.isdir(d)]
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
    paths = sorted(glob.glob(os.path.join(_THERMAL_DIR, "thermal_zone[0-9]*")), key=lambda p: _index(p, "zone"))
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
    state["nvpmodel"] = _command(["nvpmodel", "-q"])
    state["throttled"] = _throttled()
    return state


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
