"""The machine edgeprune runs on: CPU name, the cores this process may use, clock and SIMD level.

A target profile may say `"host"` for `hardware.cpu`, `cores`, `clock_hz`, `simd` or `simd_width_bits`
(the shipped `x86-64-host` does): those values are read here when the profile loads, so the profile
describes the machine in front of the user, not the one it was written on.
"""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

HOST = "host"  # the profile value that asks for detection

_CPUINFO = Path("/proc/cpuinfo")
_MAX_FREQ = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")  # kHz


def _cpuinfo() -> str:
    try:
        return _CPUINFO.read_text(errors="replace")
    except OSError:
        return ""


def _field(info: str, name: str) -> str:
    match = re.search(rf"^{re.escape(name)}\s*:\s*(.+)$", info, re.MULTILINE)
    return match.group(1).strip() if match else ""


def memory_available() -> int:
    """Bytes of memory this machine can give a new allocation without swapping (the kernel's MemAvailable),
    else its physical memory; 0 when neither can be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return 0


def cores() -> int:
    """Cores this process may run on (its CPU affinity: a container or `taskset` may allow fewer than the
    machine has), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def simd(info: str | None = None) -> tuple[str, int]:
    """The widest SIMD level XNNPACK would pick here and its register width in bits."""
    info = _cpuinfo() if info is None else info
    flags = set(_field(info, "flags").split()) | set(_field(info, "Features").split())
    if "avx512f" in flags:
        return "avx512", 512
    if "avx2" in flags:
        return "avx2", 256
    if "asimd" in flags or platform.machine().lower() in ("arm64", "aarch64"):
        return "neon", 128
    return "none", 0


def clock_hz(info: str | None = None) -> int:
    """The maximum clock the kernel reports, else the current clock of the first core, else 1 GHz
    (a placeholder, not a measurement: some VMs report neither)."""
    try:
        return int(_MAX_FREQ.read_text().strip()) * 1000
    except (OSError, ValueError):
        pass
    mhz = _field(_cpuinfo() if info is None else info, "cpu MHz")
    try:
        return int(float(mhz) * 1e6)
    except ValueError:
        return 1_000_000_000


def cpu_name(info: str | None = None) -> str:
    info = _cpuinfo() if info is None else info
    return _field(info, "model name") or platform.processor() or platform.machine() or "unknown CPU"


def detect() -> dict:
    """Every `hardware` value a profile may leave to the host, read now."""
    info = _cpuinfo()
    level, width = simd(info)
    return {"cpu": f"{cpu_name(info)} (detected)", "cores": cores(), "clock_hz": clock_hz(info),
            "simd": level, "simd_width_bits": width}
