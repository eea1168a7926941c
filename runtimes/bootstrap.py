"""Runs an uploaded script from the bytes whose sha256 was checked, and nothing else.

Uploaded with the rest, and run only through the runner's inline loader (edgeprune/remote/trust.py LOADER),
which checks this file's sha256 first; the digests below come from the runner's own copies, so this check
cannot itself have been tampered with on the device.
Standard library only, python3 3.8+.

    python3 -c LOADER RUNDIR BOOTSTRAP_SHA256 SCRIPT NAME=SHA256 [NAME=SHA256 ...] -- ARGS...

Opens RUNDIR once (no symlink followed; it must be ours and mode 0700) and reads each NAME in it once,
through that open directory, checking the bytes against SHA256. Then runs SCRIPT's verified bytes as
__main__ with ARGS, and serves every other NAME (harness.py, device_state.py, ...) to `import` from its
verified bytes too. What is on disk afterwards no longer matters: a file swapped after this check is never
read. A module in RUNDIR that was not verified is refused rather than imported.

Errors: one line `error: ...` and exit 7 (the same code as the work dir's trust checks).
"""

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import stat
import sys
import types

TAMPERED = 7


def fail(message):
    sys.stderr.write("error: %s\n" % message)
    sys.stderr.flush()
    os._exit(TAMPERED)


def read_verified(rundir, expected):
    try:
        dir_fd = os.open(rundir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        fail("run dir %s: %s (a symlink, or not a directory?); nothing was run" % (rundir, exc.strerror or exc))
    st = os.fstat(dir_fd)
    if st.st_uid != os.geteuid() or st.st_mode & 0o077:
        fail("run dir %s is not private to you (owner uid %d, mode %04o); nothing was run"
             % (rundir, st.st_uid, stat.S_IMODE(st.st_mode)))
    sources = {}
    for name, digest in expected.items():
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
        except OSError as exc:
            fail("%s in %s: %s; nothing was run" % (name, rundir, exc.strerror or exc))
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                fail("%s in %s is not a regular file; nothing was run" % (name, rundir))
            data = fh.read()
        got = hashlib.sha256(data).hexdigest()
        if got != digest:
            fail("%s in %s changed after its sha256 check (sha256 now %s..., uploaded %s...): another process "
                 "wrote to the run dir; refused to run it" % (name, rundir, got[:16], digest[:16]))
        sources[name] = data
    os.close(dir_fd)
    return sources


class VerifiedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves the verified modules; refuses any other module that would be imported from the run dir."""

    def __init__(self, rundir, sources):
        self.rundir = rundir
        self.sources = {name[:-3]: (os.path.join(rundir, name), data) for name, data in sources.items()
                        if name.endswith(".py")}

    def find_spec(self, fullname, path=None, target=None):
        if fullname in self.sources:
            return importlib.util.spec_from_file_location(fullname, self.sources[fullname][0], loader=self)
        if path is None and importlib.machinery.PathFinder.find_spec(fullname, [self.rundir]) is not None:
            raise ImportError("module %r in the run dir %s was not verified; refused" % (fullname, self.rundir))
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        path, data = self.sources[module.__name__]
        exec(compile(data, path, "exec", dont_inherit=True), module.__dict__)

    def is_package(self, fullname):
        return False


def main(argv):
    try:
        split = argv.index("--")
        rundir, script = argv[0], argv[1]
        expected = dict(item.split("=", 1) for item in argv[2:split])
    except (ValueError, IndexError):
        fail("usage: RUNDIR SCRIPT NAME=SHA256... -- ARGS")
    if script not in expected:
        fail("%s has no sha256 to check" % script)
    sources = read_verified(rundir, expected)
    finder = VerifiedModules(rundir, sources)
    sys.meta_path.insert(0, finder)
    path = os.path.join(rundir, script)
    main_module = types.ModuleType("__main__")
    main_module.__file__ = path
    main_module.__builtins__ = __builtins__
    sys.modules["__main__"] = main_module
    sys.argv = [path] + argv[split + 1:]
    sys.path[0] = rundir  # as for `python3 SCRIPT`; the finder above still refuses what was not verified
    code = compile(sources[script], path, "exec", dont_inherit=True)
    del sources, argv
    exec(code, main_module.__dict__)


main(sys.argv[1:])
