"""What may run on a device, and from where: a work dir only the benchmarking user can write, and only the
bytes whose sha256 was checked.

The device-side programs that decide whether uploaded files may run are never trusted from the device's disk:
runtimes/workdir.py travels inline, as a `python3 -c` argument built from this package's own copy;
runtimes/bootstrap.py is uploaded with the rest and run only through LOADER, an inline program that checks its
sha256 first. Not the bootstrap itself inline: a command runs the bootstrap twice (device.py exec, then the
harness), and an SSH command must fit in MAX_COMMAND_BYTES (ssh.py): dropbear drops the connection on more."""

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
BOOTSTRAP = "bootstrap.py"  # uploaded; run only through LOADER
DEVICE_MODULES = ("device_state.py", "supervisor.py")  # what device.py imports
HARNESS_MODULES = ("harness.py", "device_state.py", "interleave.py", "deploy_check.py")  # A/B: interleave; deploy


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


# python3 -c LOADER RUNDIR SHA256 ARGS...: runs RUNDIR/bootstrap.py with ARGS if its bytes have SHA256, else
# exits UNTRUSTED; read once, never through a symlink or from a FIFO or device.
LOADER = (
    "import hashlib, os, stat, sys\n"
    "path = os.path.join(sys.argv[1], 'bootstrap.py')\n"
    "try:\n"
    "    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)\n"
    "    with os.fdopen(fd, 'rb') as fh:\n"
    "        data = fh.read() if stat.S_ISREG(os.fstat(fd).st_mode) else b''\n"
    "except OSError as exc:\n"
    "    sys.stderr.write('error: %s: %s; nothing was run\\n' % (path, exc.strerror or exc))\n"
    "    os._exit(7)\n"
    "if hashlib.sha256(data).hexdigest() != sys.argv[2]:\n"
    "    sys.stderr.write('error: bootstrap.py in %s changed after its sha256 check: another process wrote to '\n"
    "                     'the run dir; refused to run it\\n' % sys.argv[1])\n"
    "    os._exit(7)\n"
    "del sys.argv[2]\n"
    "exec(compile(data, path, 'exec', dont_inherit=True))\n")


def verified_run(device: Device, rundir: str, script: str, modules: tuple[str, ...], *args: str) -> list[str]:
    """argv running `script` from `rundir` on the device through the bootstrap (itself checked by LOADER):
    `script` and `modules` are read once, checked against our sha256, and only those bytes run."""
    sums = [f"{name}={digest(name)}" for name in (script, *modules)]
    return [device.python, "-c", LOADER, rundir, digest(BOOTSTRAP), script, *sums, "--", *args]


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
