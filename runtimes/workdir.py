"""The device's private work dir: made, checked and cleaned before and after anything of ours runs there.

Never uploaded: the runner passes this file's text to the device's python3 inline (`python3 -c`), so the
checks that decide whether uploaded code may run cannot themselves have been tampered with on the device.
Standard library only, python3 3.8+.

    python3 -c SRC prepare WORKDIR NAME
        Expands WORKDIR on the device (`~/...` is the login user's home), checks its ancestors as
        OpenSSH's StrictModes does (each owned by root or the user, not writable by group/others unless
        sticky, like /tmp; a symlink on the way only when root or the user owns it), makes the missing parts
        with mode 0700, refuses a WORKDIR, lock path or run dir
        that is a symlink, not a directory, owned by another user or writable by group/others, then makes
        WORKDIR/NAME (0700, fresh). Prints {"workdir": ..., "dir": ...}, symlinks resolved.
    python3 -c SRC remove WORKDIR NAME
        Removes WORKDIR/NAME, a run-*/check-* dir of this user's, and nothing else (lstat: never follows a
        symlink). Prints {"removed": bool, "left_alone": reason or null}.

Errors: one line `error: ...`; exit 7 when a path is not private to this user (UNTRUSTED), 1 otherwise.
"""

import json
import os
import re
import shutil
import stat
import sys

UNTRUSTED = 7
NAME = re.compile(r"^(run|check)-[A-Za-z0-9._-]+$")


class Untrusted(Exception):
    pass


def who(uid):
    try:
        import pwd
        return "uid %d (%s)" % (uid, pwd.getpwuid(uid).pw_name)
    except (ImportError, KeyError):
        return "uid %d" % uid


def check_ancestor(path, uid):
    """A directory above the work dir: like sshd's StrictModes, owned by root or us, and not writable by
    group/others unless its sticky bit is set (then others cannot rename or delete what is ours in it)."""
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(20, "Not a directory", path)
    if st.st_uid not in (0, uid):
        raise Untrusted("%s (above the work dir) is owned by %s, not by root or you (%s): that user can replace "
                        "the work dir; choose a workdir elsewhere" % (path, who(st.st_uid), who(uid)))
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise Untrusted("%s (above the work dir) is writable by group/others (mode %04o) and not sticky: another "
                        "user can replace the work dir; `chmod go-w %s` or choose a workdir elsewhere"
                        % (path, stat.S_IMODE(st.st_mode), path))


def check_link(path, uid):
    """A symlink on the way to the work dir is followed only when root or we made it: another user's link
    could be repointed after these checks, and every later command would follow it somewhere else."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) and st.st_uid not in (0, uid):
        raise Untrusted("%s (on the way to the work dir) is a symlink owned by %s, not by root or you (%s): that "
                        "user can repoint it; choose a workdir that does not pass through it"
                        % (path, who(st.st_uid), who(uid)))


def check_private(path, uid, what):
    """`path` (never followed) must be a directory of ours that only we can write."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise Untrusted("%s %s is a symlink (to %s): it could point anywhere; remove it, or choose another "
                        "workdir" % (what, path, os.readlink(path)))
    if not stat.S_ISDIR(st.st_mode):
        raise Untrusted("%s %s is not a directory; remove it, or choose another workdir" % (what, path))
    if st.st_uid != uid:
        raise Untrusted("%s %s is owned by %s, not by you (%s): that user controls what runs there; remove it "
                        "(or `chown -R %s %s`), or choose another workdir"
                        % (what, path, who(st.st_uid), who(uid), uid, path))
    if st.st_mode & 0o022:
        raise Untrusted("%s %s is writable by group/others (mode %04o): another user could replace what runs "
                        "there; `chmod 700 %s`" % (what, path, stat.S_IMODE(st.st_mode), path))


def expand(workdir):
    path = os.path.expanduser(workdir)
    if not os.path.isabs(path):
        raise Untrusted("workdir %r is not an absolute path on the device (after ~ expansion: %r)" % (workdir, path))
    return os.path.normpath(path)


def chain(path):
    """`path` and every directory above it, from the root down."""
    parts = [p for p in path.split(os.sep) if p]
    return ["/" + "/".join(parts[:i]) for i in range(len(parts) + 1)]


def prepare(workdir, name, uid):
    path = expand(workdir)
    for ancestor in chain(path)[:-1]:
        if os.path.lexists(ancestor):
            check_link(ancestor, uid)
            check_ancestor(ancestor, uid)  # a symlink of root's or ours is followed here; its target's chain below
        else:
            os.mkdir(ancestor, 0o700)
            check_private(ancestor, uid, "new directory")
    for ancestor in chain(os.path.realpath(os.path.dirname(path))):
        check_ancestor(ancestor, uid)
    if not os.path.lexists(path):
        os.mkdir(path, 0o700)
    check_private(path, uid, "work dir")
    lock = os.path.join(path, "lock")
    if os.path.lexists(lock):
        check_private(lock, uid, "lock dir")
    guard = lock + ".guard"
    if os.path.lexists(guard):
        st = os.lstat(guard)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != uid:
            raise Untrusted("lock guard %s is not a regular file of yours (%s, owned by %s); remove it"
                            % (guard, "a symlink" if stat.S_ISLNK(st.st_mode) else "mode %04o" % st.st_mode,
                               who(st.st_uid)))
    if not NAME.match(name):
        raise Untrusted("bad run dir name %r" % name)
    # every later command (upload, cd, lock, remove) uses the resolved path, never the symlinks again
    path = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
    run = os.path.join(path, name)
    os.mkdir(run, 0o700)  # fresh: never a directory that was there before
    check_private(run, uid, "run dir")
    return {"workdir": path, "dir": run}


def remove(workdir, name, uid):
    path = os.path.join(expand(workdir), name)
    if not NAME.match(name):
        return {"removed": False, "left_alone": "%s: not a run dir name" % path}
    try:
        check_private(os.path.dirname(path), uid, "work dir")
        check_private(path, uid, "run dir")
    except FileNotFoundError:
        return {"removed": False, "left_alone": None}
    except Untrusted as exc:
        return {"removed": False, "left_alone": str(exc)}
    shutil.rmtree(path)  # on Linux rmtree works through dir fds and never follows a symlink inside
    return {"removed": True, "left_alone": None}


def main(argv):
    if len(argv) != 3 or argv[0] not in ("prepare", "remove"):
        sys.stderr.write("error: usage: prepare|remove WORKDIR NAME\n")
        sys.exit(2)
    action, workdir, name = argv
    try:
        out = (prepare if action == "prepare" else remove)(workdir, name, os.geteuid())
    except Untrusted as exc:
        sys.stderr.write("error: %s\n" % exc)
        sys.exit(UNTRUSTED)
    except OSError as exc:
        sys.stderr.write("error: %s: %s\n" % (exc.filename or workdir, exc.strerror or exc))
        sys.exit(1)
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
