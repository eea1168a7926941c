"""What may run on a device, and from where: a work dir only the benchmarking user can write, and only the
bytes whose sha256 was checked.

Both device-side programs (runtimes/workdir.py, runtimes/bootstrap.py) travel inline, as `python3 -c`
arguments built from this package's own copies: they decide whether uploaded files may run, so they are
never themselves read from the device's disk."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

from .._atomic import sha256_file
from ..devices import Device
from ..errors import DeviceError, WorkdirError
from .session import Completed, Session, error_line
from .upload import last_json, runtimes_dir

UNTRUSTED = 7  # the exit code of both programs when a path is not private or a file changed after its check
DEVICE_MODULES = ("device_state.py", "supervisor.py")  # what device.py imports
HARNESS_MODULES = ("harness.py", "device_state.py")  # what every bench_*.py imports


@lru_cache(maxsize=None)
def program(name: str) -> str:
    return (runtimes_dir() / name).read_text(encoding="utf-8")


@lru_cache(maxsize=None)
def digest(name: str) -> str:
    return sha256_file(runtimes_dir() / name)


@dataclass(frozen=True)
class Workspace:
    """The device's work dir (`~` expanded there) and the fresh private dir made in it for one run."""
    workdir: str
    path: str

    @property
    def lockdir(self) -> str:
        return posixpath.join(self.workdir, "lock")


def untrusted(device: Device, done: Completed) -> WorkdirError:
    return WorkdirError(f"device '{device.name}': {error_line(done.stderr)} (the work dir is set by "
                        f"`devices.{device.name}.workdir` in {device.source}; default ~/.cache/edgeprune)")


def prepare(session: Session, device: Device, name: str, timeout: float, timed: Callable) -> Workspace:
    """Check the work dir (and its ancestors, lock and guard) and make the fresh private dir `name` in it,
    before anything is uploaded. Raises WorkdirError when a path is not private to the login user."""
    done = timed("setup_s", session.run, [device.python, "-c", program("workdir.py"), "prepare", device.workdir,
                                          name], timeout, step="mkdir")
    if done.rc == 127:
        raise DeviceError(f"device '{device.name}': cannot run python '{device.python}' there "
                          f"({error_line(done.stderr)}); set `python` in devices.toml")
    if done.rc == UNTRUSTED:
        raise untrusted(device, done)
    if done.rc != 0:
        raise DeviceError(f"device '{device.name}': remote work dir '{device.workdir}' (workdir) is not "
                          f"writable: {error_line(done.stderr)}")
    info = last_json(done, device, "the work dir check")
    return Workspace(info["workdir"], info["dir"])


def verified_run(device: Device, rundir: str, script: str, modules: tuple[str, ...], *args: str) -> list[str]:
    """argv running `script` from `rundir` on the device through the inline bootstrap: `script` and
    `modules` are read once, checked against our sha256, and only those bytes run."""
    sums = [f"{name}={digest(name)}" for name in (script, *modules)]
    return [device.python, "-c", program("bootstrap.py"), rundir, script, *sums, "--", *args]


def device_py(device: Device, rundir: str, *args: str) -> list[str]:
    """argv of `device.py ARGS` (lock, unlock, probe, exec, kill) run from its verified bytes."""
    return verified_run(device, rundir, "device.py", DEVICE_MODULES, *args)


def harness_py(device: Device, rundir: str, harness: str, *args: str) -> list[str]:
    """argv of the harness script `harness` (bench_*.py) run from its verified bytes."""
    return verified_run(device, rundir, harness, HARNESS_MODULES, *args)


def remove_argv(device: Device, rundir: str) -> list[str]:
    """argv removing `rundir`, a run dir of ours directly in the work dir, and nothing else: a symlink, or a
    directory of another user's, put in its place is left alone."""
    workdir, name = posixpath.split(rundir.rstrip("/"))
    return [device.python, "-c", program("workdir.py"), "remove", workdir, name]


def raise_if_untrusted(done: Completed, device: Device) -> None:
    if done.rc == UNTRUSTED:
        raise untrusted(device, done)
