"""Device-side control for edgeprune's runner: locks, checksums, a probe, and a supervised launch.

Uploaded next to the harnesses into the run's work dir, checked by sha256 (with an inline hasher) before
it runs, and run with the device's own python3 (3.8+).
Standard library only: a device has what its image ships.

    python3 device.py lock LOCKDIR --owner ID --lease-s S --wait-s W [--rundir DIR]
        Takes the device's benchmark lock (one benchmark at a time). Prints {"acquired": true, "reclaimed": [...]}.
        A lock whose lease expired, or whose holder process (--holder-pid, else the SSH connection's server
        process) is known to have exited on this machine, is reclaimed at once, with the crashed run's dir:
        WORKDIR/run-<its owner> only, if it is a real directory of ours. Exit 6 when still busy after W
        seconds; exit 7 when the lock path is not private to this user; exit 8, the lock not taken (or
        released again), when the runner closed the connection while it waited.
    python3 device.py unlock LOCKDIR --owner ID
        Releases the lock if ID still holds it.
    python3 device.py renew LOCKDIR --owner ID --lease-s S
        Extends ID's lease to S seconds from now (a reservation held for a whole test session renews it);
        exit 6, {"renewed": false}, when ID does not hold the lock (any more).
    python3 device.py probe [--imports]
        Prints the python, numpy and runtime versions present, and the device state. A runtime counts as
        present when its module is installed; with --imports, only when it also imports.
    python3 device.py exec --pidfile F --timeout S -- COMMAND...
        Runs COMMAND under supervisor.py: kills it, and every process it started (detached ones included),
        after S seconds (exit 124), when told to stop (SIGTERM/SIGHUP/SIGINT: the runner's kill) or when
        the host stops reading (the SSH session closed). Keeps bounded tails of its output.
    python3 device.py kill --pidfile F
        Kills a run started by `exec`, all of it; prints {"killed": [PID...], "survivors": [...]}.

Errors: one line on stderr starting with "error: ", and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import shutil
import socket
import stat
import sys
import time

BUSY = 6
UNTRUSTED = 7  # a lock path that is not private to this user (as runtimes/workdir.py)
HOST_GONE = 8  # the runner closed the connection while the lock was waited for: not taken
_LEASE_FILE = "lease.json"
_OWNER = re.compile(r"^[A-Za-z0-9._-]+$")


def _fail(message, code=1):
    sys.stderr.write("error: %s\n" % message)
    sys.exit(code)


def _host_gone():
    """Exits without a word: nobody reads stdout/stderr any more, and Python's exit-time flush of a broken
    pipe would only add an error of its own."""
    with contextlib.suppress(OSError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        os.dup2(1, 2)
    sys.exit(HOST_GONE)


def _read_lease(lockdir):
    try:  # never through a symlink, never blocking on a FIFO: the lease is data, not a path to follow
        fd = os.open(os.path.join(lockdir, _LEASE_FILE), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd) as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                return None
            lease = json.load(fh)
    except (OSError, ValueError):
        return None
    return lease if isinstance(lease, dict) else None


def _check_private(path):
    """`path`, if it exists, must be a directory of ours that only we can write (never followed)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        _fail("%s is %s, not a directory of yours; remove it" % (path, "a symlink" if stat.S_ISLNK(st.st_mode)
                                                                 else "not a directory"), UNTRUSTED)
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        _fail("%s is owned by uid %d with mode %04o: not private to you (uid %d); remove it, or `chmod 700 %s`"
              % (path, st.st_uid, stat.S_IMODE(st.st_mode), os.geteuid(), path), UNTRUSTED)


def _start_time(pid):
    """The start time of process `pid` (clock ticks since boot), None if it is gone or a zombie: with the
    pid, it tells the holder apart from a later process that was given the same pid."""
    try:
        with open("/proc/%d/stat" % pid) as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError, ValueError):
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def _comm(pid):
    try:
        with open("/proc/%d/comm" % pid) as fh:
            return fh.read().strip()
    except OSError:
        return ""


def _parent(pid):
    try:
        with open("/proc/%d/stat" % pid) as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _holder(holder_pid):
    """The process whose life is the run's: the runner itself on the same machine (--holder-pid), or, over
    SSH, the sshd (or dropbear) process of the runner's connection, which exits when the runner does. None
    when it cannot be told (no /proc, another server): then only the lease's expiry frees the lock."""
    if holder_pid is None:
        if not os.environ.get("SSH_CONNECTION"):
            holder_pid = os.getppid()
        else:
            pid = os.getppid()
            for _ in range(8):  # past the login shell, if it did not exec us
                if pid <= 1 or _comm(pid).startswith(("sshd", "dropbear")):
                    break
                pid = _parent(pid)
            holder_pid = pid if pid > 1 else None
    start = _start_time(holder_pid) if holder_pid else None
    return {"holder_pid": holder_pid, "holder_start": start} if start else {}


def _holder_gone(lease):
    """Why the lease's holder is known to be gone (it was a process on this machine that has exited, or
    its pid now belongs to another process), or None when it may still be running."""
    pid, start = lease.get("holder_pid"), lease.get("holder_start")
    if not isinstance(pid, int) or not start or lease.get("host") != socket.gethostname():
        return None
    now = _start_time(pid)
    if now is None:
        return "its holder, pid %d on %s, has exited" % (pid, lease.get("host"))
    if now != start:
        return "its holder, pid %d on %s, has exited (the pid is another process now)" % (pid, lease.get("host"))
    return None


def _try_lock(lockdir, lease):
    # The lease is written into a private directory which is then renamed into place: rename(2) of a
    # directory onto an existing non-empty one fails, so exactly one contender wins, and the lock is
    # never seen without its lease.
    staging = "%s.new-%s" % (lockdir, lease["owner"])
    os.mkdir(staging, 0o700)
    with open(os.path.join(staging, _LEASE_FILE), "w") as fh:
        json.dump(lease, fh)
    try:
        os.rename(staging, lockdir)
        return True
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        return False


def _reclaim(lockdir, holder, with_rundir=True):
    """Removes the lock, and with it the crashed run's dir: only WORKDIR/run-<the lease's owner>, a real
    directory of ours. A lease is data anyone able to write it could forge: a path it names is never
    deleted. Returns None when another runner reclaimed the lock first, else what was left alone."""
    owner = holder.get("owner")
    owner = owner if isinstance(owner, str) and _OWNER.match(owner) else None
    # Renamed away first: of two runners reclaiming the same stale lock, only one rename succeeds.
    grave = "%s.stale-%s-%d" % (lockdir, owner or "unknown", os.getpid())
    try:
        os.rename(lockdir, grave)
    except OSError:
        return None
    shutil.rmtree(grave, ignore_errors=True)
    left_alone = []
    if not with_rundir:
        return left_alone
    rundir = os.path.join(os.path.dirname(os.path.abspath(lockdir)), "run-%s" % owner) if owner else None
    named = holder.get("rundir")
    if named and named != rundir:
        left_alone.append("%r (the lease names it, but the run's dir can only be run-<owner> in the work dir)"
                          % (named,))
    if rundir is None:
        left_alone.append("the lease names no valid owner (%r): no run dir removed" % (holder.get("owner"),))
        return left_alone
    try:
        st = os.lstat(rundir)
    except OSError:
        return left_alone
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        left_alone.append("%s (%s)" % (rundir, "a symlink" if stat.S_ISLNK(st.st_mode) else
                                       "not a directory" if not stat.S_ISDIR(st.st_mode) else
                                       "owned by uid %d" % st.st_uid))
    else:
        shutil.rmtree(rundir, ignore_errors=True)  # through dir fds: a symlink inside is removed, not followed
    return left_alone


@contextlib.contextmanager
def _guard(lockdir):
    """Serializes the read-check-rename of a lease (reclaim, unlock) between runners: without it, two
    runners that both saw the same expired lease could each rename away a lock, one of them a fresh one.
    flock is released by the kernel when a holder dies."""
    fd = os.open(lockdir + ".guard", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
        os.close(fd)
        _fail("%s.guard is not a regular file of yours (owner uid %d); remove it" % (lockdir, st.st_uid), UNTRUSTED)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def cmd_lock(args):
    if not _OWNER.match(args.owner):
        _fail("--owner %r: letters, digits, '.', '_' and '-' only" % args.owner, 2)
    started = time.monotonic()  # waiting is timed on the monotonic clock; leases on the wall clock (shared)
    reclaimed = []
    holder_process = _holder(args.holder_pid)
    import supervisor  # next to this file in the run dir, verified with it
    host = supervisor.host_poller()
    while True:
        if supervisor.reader_gone(host):
            # the runner stopped waiting (Ctrl-C closes the SSH channel; sshd signals no command without a
            # terminal): a lock taken now would be held by nobody until its lease ends
            _host_gone()
        now = time.time()
        lease = {"owner": args.owner, "host": socket.gethostname(), "pid": os.getpid(),
                 "rundir": args.rundir, "since": now, "expires": now + args.lease_s}
        lease.update(holder_process)
        _check_private(args.lockdir)
        if _try_lock(args.lockdir, lease):
            try:
                print(json.dumps({"acquired": True, "reclaimed": reclaimed,
                                  "waited_s": round(time.monotonic() - started, 3)}), flush=True)
            except OSError:  # the runner went away as the lock was taken: nobody would ever release it
                _release(args.lockdir, args.owner)
                _host_gone()
            return
        with _guard(args.lockdir):
            _check_private(args.lockdir)
            holder = _read_lease(args.lockdir)
            if holder is None:
                # A lock dir without a readable lease was not made by this script, or was just removed.
                try:
                    age = now - os.stat(args.lockdir).st_mtime
                except OSError:
                    holder = {}
                else:
                    holder = {"owner": "unknown", "expires": now - age + args.lease_s}
            expires = holder.get("expires", 0) if holder else 0
            expires = expires if isinstance(expires, (int, float)) else 0
            # a holder known to be dead frees the lock at once; one that may be alive, when its lease ends
            gone = _holder_gone(holder) if holder and expires >= now else None
            if holder and (expires < now or gone):
                left_alone = _reclaim(args.lockdir, holder)
                if left_alone is not None:
                    reclaimed.append({"owner": holder.get("owner"), "holder_gone": gone, "left_alone": left_alone,
                                      "expired_s_ago": None if gone else round(now - expires, 1)})
                    continue
        waited = time.monotonic() - started
        if holder and waited >= args.wait_s:
            _fail("device busy: benchmark lock %s held by %s (pid %s on %s) until its lease ends in %.0f s; "
                  "waited %.0f s" % (args.lockdir, holder.get("owner"), holder.get("holder_pid") or holder.get("pid"),
                                     holder.get("host"),
                                     expires - now, args.wait_s), BUSY)
        time.sleep(min(0.25, max(0.01, args.wait_s - waited)))


def _release(lockdir, owner):
    """Removes the lock if `owner` holds it. Returns None when released, else the holder's lease."""
    with _guard(lockdir):
        holder = _read_lease(lockdir)
        if holder is None or holder.get("owner") != owner:
            return holder or {}
        _reclaim(lockdir, {"owner": owner}, with_rundir=False)
    return None


def cmd_renew(args):
    """Extends the lease of a lock `owner` holds to --lease-s from now (a long reservation renews it)."""
    _check_private(args.lockdir)
    with _guard(args.lockdir):
        holder = _read_lease(args.lockdir)
        if holder is None or holder.get("owner") != args.owner:
            print(json.dumps({"renewed": False, "holder": (holder or {}).get("owner")}))
            sys.exit(BUSY)
        holder["expires"] = time.time() + args.lease_s
        staging = os.path.join(args.lockdir, _LEASE_FILE + ".new")
        with open(staging, "w") as fh:
            json.dump(holder, fh)
        os.replace(staging, os.path.join(args.lockdir, _LEASE_FILE))
    print(json.dumps({"renewed": True, "expires": holder["expires"]}))


def cmd_unlock(args):
    _check_private(args.lockdir)
    holder = _release(args.lockdir, args.owner)
    if holder is not None:
        print(json.dumps({"released": False, "holder": holder.get("owner")}))
        return
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


def cmd_exec(args):
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        _fail("exec: no command given", 2)
    import supervisor  # next to this file in the run dir
    sys.exit(supervisor.supervise(command, args.timeout, args.pidfile))


def cmd_kill(args):
    import supervisor
    print(json.dumps(supervisor.kill_run(args.pidfile)))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="device.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd")
    p = sub.add_parser("lock")
    p.add_argument("lockdir")
    p.add_argument("--owner", required=True)
    p.add_argument("--lease-s", type=float, required=True)
    p.add_argument("--wait-s", type=float, default=0.0)
    p.add_argument("--rundir", default=None)
    p.add_argument("--holder-pid", type=int, default=None,
                   help="the runner's process on this machine; default: the SSH connection's server process, "
                        "else the parent process")
    p = sub.add_parser("unlock")
    p.add_argument("lockdir")
    p.add_argument("--owner", required=True)
    p = sub.add_parser("renew")
    p.add_argument("lockdir")
    p.add_argument("--owner", required=True)
    p.add_argument("--lease-s", type=float, required=True)
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
    handlers = {"lock": cmd_lock, "unlock": cmd_unlock, "renew": cmd_renew, "probe": cmd_probe,
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
