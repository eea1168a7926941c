"""Runs one command (a benchmark harness) on the device under supervision, and kills all of it.

Used by device.py's `exec` and `kill`; python3 3.8+, standard library only.

What a run is: the command, everything it starts, and everything those start, detached or not. Two ways of
finding them, so that neither a daemon that called setsid() and double-forked nor a supervisor killed
outright lets one escape:
 - the supervisor makes itself a child subreaper (Linux prctl PR_SET_CHILD_SUBREAPER): an orphan of the
   run is reparented to it, not to init, and stays in its tree of descendants (walked in /proc by PPid);
 - every process of the run inherits the environment variable EDGEPRUNE_RUN=<a fresh mark>, which
   /proc/PID/environ shows for as long as it lives, wherever it was reparented.
A kill sends SIGTERM to all of them, SIGKILL to what is left after a grace period (new processes forked
meanwhile included), and checks that none is left; it reports which processes it killed and which survived.

Output: the command's stdout and stderr are read through pipes while it runs. PROGRESS lines on stderr are
passed on at once (dropped, not waited for, when the reader is slow); of the rest only the last
STDOUT_KEEP bytes of stdout (the result line) and STDERR_KEEP of stderr (the error) are kept and written out
when the command ends, so that a command flooding its output cannot exhaust the device's memory or carry
gigabytes over SSH. Then, on stderr, one line each when it applies:

    OUTPUT {"stdout_bytes": N, "stdout_dropped": N, "stderr_bytes": N, "stderr_dropped": N}
    KILLED {"why": "timeout"|"stopped"|"host gone"|"left running", "killed": [PID...], "survivors": [{"pid", "name"}...]}
"""

import errno
import fcntl
import json
import os
import select
import signal
import subprocess
import sys
import time

STDOUT_KEEP = 32 << 20  # the harness's result line, raw samples included (the host keeps as much: RESULT_KEEP)
STDERR_KEEP = 48 << 10  # leaves room in what the host keeps (64 KiB) for the reports written after it
LINE_MAX = 4096         # a PROGRESS line is under 100 bytes
RUN_MARK = "EDGEPRUNE_RUN"
GRACE_S = 1.0           # SIGTERM, then SIGKILL: a harness has nothing to save
GONE_WAIT_S = 3.0       # after SIGKILL, how long to wait for the kernel to finish them off
AFTER_EXIT_S = 0.5      # how long a command's leftovers may hold its output open after it exited
WRITE_S = 20.0          # for writing the kept output to a host that has stopped reading
TIMED_OUT = 124
PR_SET_CHILD_SUBREAPER = 36
# Without /proc (not Linux) a run's processes cannot be listed: only the command's process group is
# signalled, and the reports say the kill is unverified rather than claim that nothing is left.
VERIFIABLE = os.path.isdir("/proc/self")


class Tail(object):
    """The last `limit` bytes of a stream; what came before is counted and dropped as it arrives."""

    def __init__(self, limit):
        self.limit, self.chunks, self.held, self.seen = limit, [], 0, 0

    def feed(self, data):
        if not data:
            return
        self.chunks.append(data)
        self.held += len(data)
        self.seen += len(data)
        if self.held - len(self.chunks[0]) >= self.limit:
            # drop whole chunks from the front, all at once (a list's pop(0) per chunk would be quadratic)
            drop, size = 0, self.held
            while size - len(self.chunks[drop]) >= self.limit:
                size -= len(self.chunks[drop])
                drop += 1
            del self.chunks[:drop]
            self.held = size

    def value(self):
        data = b"".join(self.chunks)
        return data[-self.limit:] if len(data) > self.limit else data

    @property
    def dropped(self):
        return self.seen - min(self.held, self.limit)


class Stderr(object):
    """Passes PROGRESS lines on at once; keeps a tail of everything else, in order."""

    PREFIX = b"PROGRESS "

    def __init__(self, forward):
        self.forward, self.tail, self.pending, self.passing = forward, Tail(STDERR_KEEP), b"", False

    def feed(self, data):
        if self.passing:  # the rest of a line that cannot be a PROGRESS line
            newline = data.find(b"\n")
            if newline < 0:
                self.tail.feed(data)
                return
            self.tail.feed(data[:newline + 1])
            data, self.passing = data[newline + 1:], False
        data = self.pending + data
        last = data.rfind(b"\n")
        complete, rest = data[:last + 1], data[last + 1:]
        if self.PREFIX not in complete:
            self.tail.feed(complete)
        else:
            for line in complete.splitlines(True):
                if line.startswith(self.PREFIX) and len(line) <= LINE_MAX:
                    self.forward(line)
                else:
                    self.tail.feed(line)
        if len(rest) <= LINE_MAX and (rest.startswith(self.PREFIX) or self.PREFIX.startswith(rest)):
            self.pending = rest
        else:
            self.tail.feed(rest)
            self.pending, self.passing = b"", True

    def close(self):
        self.tail.feed(self.pending)
        self.pending = b""


# ------------------------------------------------------------------------------------ finding a run's processes

def _processes():
    """{pid: parent pid} of every live process (zombies left out), from /proc; {} where there is none."""
    table = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return table
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name) as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] not in ("Z", "X"):
            table[int(name)] = int(fields[1])
    return table


def _marked(pid, mark):
    try:
        with open("/proc/%d/environ" % pid, "rb") as fh:
            return ("%s=%s" % (RUN_MARK, mark)).encode() in fh.read().split(b"\0")
    except OSError:  # gone, or not ours to read: not ours to kill either
        return False


def run_processes(root, mark):
    """The live processes of a run: the descendants of `root` and every process carrying `mark`."""
    table = _processes()
    children = {}
    for pid, parent in table.items():
        children.setdefault(parent, []).append(pid)
    found, todo = set(), [root]
    while todo:
        for pid in children.get(todo.pop(), ()):
            if pid not in found:
                found.add(pid)
                todo.append(pid)
    if mark:
        found.update(pid for pid in table if pid not in found and _marked(pid, mark))
    found.discard(os.getpid())
    found.discard(root)
    return found


def _name(pid):
    try:
        with open("/proc/%d/comm" % pid) as fh:
            return fh.read().strip()
    except OSError:
        return "?"


def kill_all(find, reap=lambda: None, group=None):
    """SIGTERM what `find()` returns (and process group `group`), SIGKILL what is left after GRACE_S, until
    nothing is left or GONE_WAIT_S more have passed. Returns (pids killed, [{"pid", "name"} survivors])."""
    seen, termed = set(), set()
    start = time.monotonic()
    while True:
        reap()
        alive = find()
        late = time.monotonic() - start >= GRACE_S
        if group is not None:
            try:
                os.killpg(group, signal.SIGKILL if late else signal.SIGTERM)
            except OSError:
                group = None  # the group is empty
        if not alive and group is None:
            return sorted(seen), []
        for pid in alive:
            if late or pid not in termed:
                try:
                    os.kill(pid, signal.SIGKILL if late else signal.SIGTERM)
                except OSError:
                    pass
                termed.add(pid)
        seen.update(alive)
        if time.monotonic() - start >= GRACE_S + GONE_WAIT_S:
            return sorted(seen), [{"pid": pid, "name": _name(pid)} for pid in sorted(alive)]
        time.sleep(0.05)


def _become_subreaper():
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (ImportError, OSError, AttributeError):  # not Linux, or no ctypes: the run's mark still finds them
        return False


# ------------------------------------------------------------------------------------------------ the supervisor

def _exit_code(status):
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1


def _set_nonblocking(fd):
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
    except OSError:
        pass


def _write_all(fd, data, until):
    """Write to a non-blocking fd until `until` (monotonic); False when the reader is gone or too slow."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            left = until - time.monotonic()
            if left <= 0:
                return False
            select.select([], [fd], [], min(left, 0.5))
        except OSError:  # EPIPE: the host is gone
            return False
    return True


def reader_gone(poller):
    """True when the reader of an fd registered in `poller` with no events (as in host_poller) is gone:
    stdout/stderr are pipes or sockets to sshd (or to the runner on `local`), and poll() reports POLLERR or
    POLLHUP on them once the SSH channel is closed. sshd sends no signal to a command without a terminal."""
    return any(ev & (select.POLLERR | select.POLLHUP) for _fd, ev in poller.poll(0))


def host_poller(fds=(1, 2)):
    poller = select.poll()
    for fd in fds:
        poller.register(fd, 0)  # no events asked: poll() reports only POLLERR/POLLHUP, the reader gone
    return poller


class Supervisor(object):
    def __init__(self, command, timeout, pidfile):
        self.command, self.timeout, self.pidfile = command, timeout, pidfile
        self.mark = "%d.%s" % (os.getpid(), os.urandom(6).hex())
        self.code = None
        self.stop = []
        self.host_gone = False
        self.out = Tail(STDOUT_KEEP)
        self.err = Stderr(self._forward)
        for fd in (1, 2):
            _set_nonblocking(fd)
        self.host = host_poller()

    def _forward(self, line):
        try:
            os.write(2, line)  # one short line: all of it, or nothing when the pipe is full
        except BlockingIOError:
            pass  # progress is a courtesy; the reader is slow, not gone
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                self.host_gone = True

    def _reap(self):
        """Reap our children: the command, and the orphans of the run that were reparented to us."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.child.pid:
                self.code = _exit_code(status)
                self.child.returncode = self.code  # Popen must not wait for it again

    def _host_gone(self):
        if not self.host_gone:
            self.host_gone = reader_gone(self.host)
        return self.host_gone

    def _read(self, streams, wait):
        ready = select.select(list(streams), [], [], wait)[0]
        for fd in ready:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if data:
                streams[fd](data)
            else:
                del streams[fd]
                os.close(fd)

    def run(self):
        subreaper = _become_subreaper()
        env = dict(os.environ)
        env[RUN_MARK] = self.mark
        try:
            self.child = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, start_new_session=True, env=env)
        except OSError as exc:
            sys.stderr.write("error: cannot start %s: %s\n" % (self.command[0], exc.strerror or exc))
            return 127
        with open(self.pidfile + ".tmp", "w") as fh:  # renamed into place: `kill` never reads half of it
            fh.write("%d %d %s\n" % (os.getpid(), self.child.pid, self.mark))
        os.rename(self.pidfile + ".tmp", self.pidfile)
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: self.stop.append(signum))
        streams = {}
        for pipe, sink in ((self.child.stdout, self.out.feed), (self.child.stderr, self.err.feed)):
            fd = os.dup(pipe.fileno())
            pipe.close()
            _set_nonblocking(fd)
            streams[fd] = sink
        deadline = time.monotonic() + self.timeout
        why, exited = None, None
        while True:
            self._reap()
            now = time.monotonic()
            if self.code is not None:
                exited = exited or now
                if not streams or now - exited > AFTER_EXIT_S:
                    why = "left running"  # if anything of the run is still there
                    break
            if self.stop:
                why = "stopped"
                break
            if now >= deadline:
                why = "timeout"
                break
            if self._host_gone():
                why = "host gone"
                break
            self._read(streams, 0.1)
        killed, survivors = kill_all(lambda: run_processes(os.getpid(), self.mark), self._reap,
                                     self.child.pid if self.code is None else None)
        self._reap()
        end = time.monotonic() + AFTER_EXIT_S  # whatever the killed processes wrote last
        while streams and time.monotonic() < end:
            self._read(streams, 0.05)
        for fd in streams:
            os.close(fd)
        self.err.close()
        return self._finish(why, killed, survivors, subreaper)

    def _finish(self, why, killed, survivors, subreaper):
        if self.host_gone:
            return 128 + signal.SIGPIPE
        until = time.monotonic() + WRITE_S
        _write_all(1, self.out.value(), until)
        lines = [self.err.tail.value()]
        if self.out.dropped or self.err.tail.dropped:
            lines.append(b"OUTPUT " + json.dumps({
                "stdout_bytes": self.out.seen, "stdout_dropped": self.out.dropped,
                "stderr_bytes": self.err.tail.seen, "stderr_dropped": self.err.tail.dropped}).encode() + b"\n")
        if killed or survivors or (why != "left running" and not VERIFIABLE):
            lines.append(b"KILLED " + json.dumps({"why": why, "killed": killed, "survivors": survivors,
                                                  "subreaper": subreaper, "verified": VERIFIABLE}).encode() + b"\n")
        if why == "timeout":
            if not VERIFIABLE:
                what = "signalled (pid %d and its process group; without /proc the rest cannot be checked)" % (
                    self.child.pid,)
            elif survivors:
                what = "killed (pid %d), but %d of its processes survived the kill: %s" % (
                    self.child.pid, len(survivors), ", ".join("%d %s" % (s["pid"], s["name"]) for s in survivors))
            else:
                what = "killed (pid %d) with everything it started (%d process%s)" % (
                    self.child.pid, len(killed), "" if len(killed) == 1 else "es")
            lines.append(("error: command ran past its %.0f s timeout and was %s\n" % (self.timeout, what)).encode())
        if lines[0] and not lines[0].endswith(b"\n") and len(lines) > 1:
            lines[0] += b"\n"
        _write_all(2, b"".join(lines), until)
        if why == "timeout":
            return TIMED_OUT
        if why == "stopped":
            return 128 + self.stop[0]
        return self.code


def supervise(command, timeout, pidfile):
    """Run `command` for at most `timeout` seconds; returns the exit code to leave with."""
    return Supervisor(command, timeout, pidfile).run()


# ------------------------------------------------------------------------------------------------------ kill

def _is_supervisor(pid, pidfile):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as fh:
            return pidfile.encode() in fh.read().split(b"\0")
    except OSError:
        return not os.path.isdir("/proc") and _alive(pid)


def _alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def kill_run(pidfile):
    """Kill the run that `exec --pidfile PIDFILE` started: its supervisor, the command, and everything of
    the command's, detached or not. Returns {"killed": [...], "survivors": [...]}."""
    try:
        with open(pidfile) as fh:
            fields = fh.read().split()  # supervisor pid, command pid, the run's mark
        supervisor, mark = int(fields[0]), (fields[2] if len(fields) > 2 else None)
    except (OSError, ValueError, IndexError):
        return {"killed": [], "survivors": [], "note": "no run recorded in %s" % pidfile}

    def find():
        # the pid file may outlive its supervisor, and the pid be someone else's now: checked each time
        own = _is_supervisor(supervisor, pidfile)
        found = run_processes(supervisor if own else -1, mark)
        if own:
            found.add(supervisor)
        return found

    killed, survivors = kill_all(find)
    if not VERIFIABLE:  # without /proc only the supervisor is known: signal it, it kills its group
        try:
            os.kill(supervisor, signal.SIGTERM)
        except OSError:
            pass
    return {"killed": killed, "survivors": survivors, "verified": VERIFIABLE}
