"""Device-side control for edgeprune's runner: locks, checksums, a probe, and a supervised launch.

Uploaded next to the harnesses into the run's work dir, checked by sha256 (with an inline hasher) before
it runs, and run with the device's own python3 (3.8+).
Standard library only: a device has what its image ships.

    python3 device.py lock LOCKDIR --owner ID --lease-s S --wait-s W [--rundir DIR]
        Takes the device's benchmark lock (one benchmark at a time). Prints {"acquired": true, "reclaimed": [...]}.
        A lock whose lease expired (its holder crashed or lost its connection) is reclaimed, and the holder's
        run dir removed. Exit 6 when still busy after W seconds.
    python3 device.py unlock LOCKDIR --owner ID
        Releases the lock if ID still holds it.
    python3 device.py probe [--imports]
        Prints the python, numpy and runtime versions present, and the device state. A runtime counts as
        present when its module is installed; with --imports, only when it also imports.
    python3 device.py exec --pidfile F --timeout S -- COMMAND...
        Runs COMMAND in its own process group, kills the group after S seconds (exit 124) or when this
        process is told to stop (SIGTERM/SIGHUP: the runner's kill, or sshd closing the session).
    python3 device.py kill --pidfile F
        Stops a command started by `exec` (SIGTERM, then SIGKILL after 2 s).

Errors: one line on stderr starting with "error: ", and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

BUSY = 6
TIMED_OUT = 124
_LEASE_FILE = "lease.json"


def _fail(message, code=1):
    sys.stderr.write("error: %s\n" % message)
    sys.exit(code)


def _read_lease(lockdir):
    try:
        with open(os.path.join(lockdir, _LEASE_FILE)) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def _try_lock(lockdir, lease):
    # The lease is written into a private directory which is then renamed into place: rename(2) of a
    # directory onto an existing non-empty one fails, so exactly one contender wins, and the lock is
    # never seen without its lease.
    staging = "%s.new-%s" % (lockdir, lease["owner"])
    os.makedirs(staging)
    with open(os.path.join(staging, _LEASE_FILE), "w") as fh:
        json.dump(lease, fh)
    try:
        os.rename(staging, lockdir)
        return True
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        return False


def _reclaim(lockdir, holder):
    # Renamed away first: of two runners reclaiming the same stale lock, only one rename succeeds.
    grave = "%s.stale-%s-%d" % (lockdir, holder.get("owner", "unknown"), os.getpid())
    try:
        os.rename(lockdir, grave)
    except OSError:
        return False
    shutil.rmtree(grave, ignore_errors=True)
    rundir = holder.get("rundir")
    if rundir and os.path.basename(rundir).startswith("run-"):
        shutil.rmtree(rundir, ignore_errors=True)
    return True


@contextlib.contextmanager
def _guard(lockdir):
    """Serializes the read-check-rename of a lease (reclaim, unlock) between runners: without it, two
    runners that both saw the same expired lease could each rename away a lock, one of them a fresh one.
    flock is released by the kernel when a holder dies."""
    fd = os.open(lockdir + ".guard", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def cmd_lock(args):
    os.makedirs(os.path.dirname(os.path.abspath(args.lockdir)), exist_ok=True)
    started = time.monotonic()  # waiting is timed on the monotonic clock; leases on the wall clock (shared)
    reclaimed = []
    while True:
        now = time.time()
        lease = {"owner": args.owner, "host": socket.gethostname(), "pid": os.getpid(),
                 "rundir": args.rundir, "since": now, "expires": now + args.lease_s}
        if _try_lock(args.lockdir, lease):
            print(json.dumps({"acquired": True, "reclaimed": reclaimed,
                              "waited_s": round(time.monotonic() - started, 3)}))
            return
        with _guard(args.lockdir):
            holder = _read_lease(args.lockdir)
            if holder is None:
                # A lock dir without a readable lease was not made by this script, or was just removed.
                try:
                    age = now - os.stat(args.lockdir).st_mtime
                except OSError:
                    holder = {}
                else:
                    holder = {"owner": "unknown", "expires": now - age + args.lease_s}
            if holder and holder.get("expires", 0) < now and _reclaim(args.lockdir, holder):
                reclaimed.append({"owner": holder.get("owner"), "expired_s_ago": round(now - holder["expires"], 1)})
                continue
        waited = time.monotonic() - started
        if holder and waited >= args.wait_s:
            _fail("device busy: benchmark lock %s held by %s (pid %s on %s) until its lease ends in %.0f s; "
                  "waited %.0f s" % (args.lockdir, holder.get("owner"), holder.get("pid"), holder.get("host"),
                                     holder["expires"] - now, args.wait_s), BUSY)
        time.sleep(min(0.25, max(0.01, args.wait_s - waited)))


def cmd_unlock(args):
    with _guard(args.lockdir):
        holder = _read_lease(args.lockdir)
        if holder is None or holder.get("owner") != args.owner:
            print(json.dumps({"released": False, "holder": holder and holder.get("owner")}))
            return
        _reclaim(args.lockdir, {"owner": args.owner})
    print(json.dumps({"released": True}))


def _version_of(module_name, attr="__version__"):
    try:
        module = __import__(module_name, fromlist=["_"])
    except Exception as exc:  # any import failure means: not usable here
        return None, "%s: %s" % (type(exc).__name__, exc)
    return str(getattr(module, attr, "unknown")), None


def _package_version(dist):
    try:
        from importlib import metadata
        return metadata.version(dist)
    except Exception:
        return None


def _find(module_name):
    """None when `module_name` is installed, else why not; none of its code runs. importlib.util.find_spec
    of a dotted name would import (run the __init__ of) its parent packages, so only the top level goes
    through it (that also sees editable installs) and each submodule is looked for in its parent's dirs.
    A package whose files cannot be listed (a zip/egg, a finder without directories) is imported instead."""
    import importlib.machinery
    import importlib.util

    parts = module_name.split(".")
    try:
        spec = importlib.util.find_spec(parts[0])
    except Exception as exc:  # a broken finder or half-removed package: as good as a failed import
        return "%s: %s" % (type(exc).__name__, exc)
    if spec is None:
        return "ModuleNotFoundError: No module named '%s'" % parts[0]
    dirs = [d for d in (spec.submodule_search_locations or []) if os.path.isdir(d)]
    if len(parts) > 1 and not dirs:
        return _version_of(module_name)[1]
    for depth, part in enumerate(parts[1:], 2):
        hits = [os.path.join(d, part) for d in dirs]
        if any(os.path.isdir(h) for h in hits):  # a package, or a namespace package without __init__.py
            dirs = [h for h in hits if os.path.isdir(h)]
        elif any(os.path.isfile(h + suffix) for h in hits for suffix in importlib.machinery.all_suffixes()):
            dirs = []  # a plain module: nothing lies below it
        else:
            return "ModuleNotFoundError: No module named '%s'" % ".".join(parts[:depth])
    return None


def cmd_probe(args):
    runtimes = {}
    for name, module, dist in (("executorch", "executorch.runtime", "executorch"),
                               ("litert", "ai_edge_litert.interpreter", "ai-edge-litert"),
                               ("tflite_runtime", "tflite_runtime.interpreter", "tflite-runtime"),
                               ("onnxruntime", "onnxruntime", "onnxruntime"),
                               ("tflm", "tflite_micro.python.tflite_micro.runtime", "tflite-micro")):
        # Importing proves a runtime loads but costs seconds (executorch pulls in torch), so `devices check`
        # only looks for the files unless asked; a harness that cannot import its runtime fails clearly anyway.
        if args.imports:
            version, error = _version_of(module)
        else:
            error = _find(module)
            version = None if error else "unknown"
        if version is not None:
            version = _package_version(dist) or version
        runtimes[name] = {"version": version, "error": error}
    trtexec = shutil.which("trtexec") or ("/usr/src/tensorrt/bin/trtexec"
                                          if os.access("/usr/src/tensorrt/bin/trtexec", os.X_OK) else None)
    runtimes["tensorrt"] = {"version": None, "error": None if trtexec else "trtexec not found", "trtexec": trtexec}
    numpy_version, numpy_error = _version_of("numpy")
    import device_state  # next to this file in the run dir
    print(json.dumps({"python": sys.version.split()[0], "executable": sys.executable,
                      "numpy": numpy_version, "numpy_error": numpy_error, "imported": args.imports,
                      "runtimes": runtimes, "state": device_state.sample_state()}))


def _kill_group(pid, grace_s=2.0, child=None):
    """SIGTERM the process group, then SIGKILL what is left after `grace_s`. `child`: our own Popen of
    the group leader, which we must reap ourselves (an unreaped zombie still answers killpg(pid, 0))."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except OSError:
            return
        end = time.time() + grace_s
        while time.time() < end:
            if child is not None and child.poll() is not None:
                child = None  # leader reaped; keep waiting for the rest of its group
            try:
                os.killpg(pid, 0)
            except OSError:
                return
            time.sleep(0.05)


def cmd_exec(args):
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        _fail("exec: no command given", 2)
    try:
        child = subprocess.Popen(command, start_new_session=True)
    except OSError as exc:
        _fail("cannot start %s: %s" % (command[0], exc.strerror or exc), 127)
    with open(args.pidfile, "w") as fh:
        fh.write("%d %d\n" % (os.getpid(), child.pid))

    def stop(signum, frame):
        _kill_group(child.pid, child=child)
        sys.exit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, stop)
    try:
        code = child.wait(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        _kill_group(child.pid, child=child)
        _fail("command ran past its %.0f s timeout and was killed (pid %d)" % (args.timeout, child.pid), TIMED_OUT)
    sys.exit(code if code >= 0 else 128 - code)


def cmd_kill(args):
    try:
        with open(args.pidfile) as fh:
            supervisor, child = (int(v) for v in fh.read().split())
    except (OSError, ValueError):
        print(json.dumps({"killed": []}))
        return
    _kill_group(child)
    try:
        os.kill(supervisor, signal.SIGKILL)
    except OSError:
        pass
    print(json.dumps({"killed": [supervisor, child]}))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="device.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd")
    p = sub.add_parser("lock")
    p.add_argument("lockdir")
    p.add_argument("--owner", required=True)
    p.add_argument("--lease-s", type=float, required=True)
    p.add_argument("--wait-s", type=float, default=0.0)
    p.add_argument("--rundir", default=None)
    p = sub.add_parser("unlock")
    p.add_argument("lockdir")
    p.add_argument("--owner", required=True)
    p = sub.add_parser("probe")
    p.add_argument("--imports", action="store_true",
                   help="import each runtime to prove it loads (slow), not only check it is installed")
    p = sub.add_parser("exec")
    p.add_argument("--pidfile", required=True)
    p.add_argument("--timeout", type=float, required=True)
    p.add_argument("command", nargs=argparse.REMAINDER)
    p = sub.add_parser("kill")
    p.add_argument("--pidfile", required=True)
    args = parser.parse_args(argv)
    handlers = {"lock": cmd_lock, "unlock": cmd_unlock, "probe": cmd_probe,
                "exec": cmd_exec, "kill": cmd_kill}
    if args.cmd not in handlers:
        parser.print_usage(sys.stderr)
        _fail("expected one of: %s" % ", ".join(handlers), 2)
    try:
        handlers[args.cmd](args)
    except OSError as exc:
        _fail("%s: %s" % (getattr(exc, "filename", None) or args.cmd, exc.strerror or exc), 1)


if __name__ == "__main__":
    main()
