"""Real SSH servers on 127.0.0.1 for the remote runner's tests: OpenSSH (SSHServer) and dropbear
(DropbearServer, what OpenWrt and many Yocto/Buildroot images ship), each with its own host key, authorized
key and free port, nothing of the system's servers or of ~/.ssh touched.

    server = SSHServer.start(tmp_dir)          # or DropbearServer.start(tmp_dir): the same interface
    server.write_devices_toml(path, name="loopback", python=sys.executable)
    server.kill_all()   # the master and every session process: "the device dropped off the network"
    server.stop()
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


class SSHServerUnavailable(RuntimeError):
    """The server is not installed or would not start here (the reason is the message)."""


def find_sshd() -> str | None:
    return shutil.which("sshd") or next((p for p in ("/usr/sbin/sshd", "/usr/local/sbin/sshd") if os.access(p, os.X_OK)), None)


def find_dropbear() -> str | None:
    return shutil.which("dropbear") or next((p for p in ("/usr/sbin/dropbear", "/usr/local/sbin/dropbear")
                                             if os.access(p, os.X_OK)), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True,
                   stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)


class LoopbackServer:
    """What both servers share: the client key, the pinned host key (host_ed25519.pub, OpenSSH format),
    devices.toml, and killing the server with its sessions."""
    name = "sshd"  # the command name of the server and of its per-connection processes

    def __init__(self, root: Path, port: int, process: subprocess.Popen):
        self.root, self.port, self.process = root, port, process

    client_key = property(lambda self: self.root / "client_ed25519")
    log = property(lambda self: self.root / f"{self.name}.log")

    def _wait_ready(self, timeout: float = 15.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise SSHServerUnavailable(f"{self.name} exited with {self.process.returncode}: "
                                           f"{self.log.read_text()[-500:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(64).startswith(b"SSH-"):
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise SSHServerUnavailable(f"{self.name} did not answer on 127.0.0.1:{self.port} within {timeout:.0f} s")

    def public_host_key_line(self) -> str:
        kind, blob = (self.root / "host_ed25519.pub").read_text().split()[:2]
        return f"[127.0.0.1]:{self.port} {kind} {blob}\n"

    def write_known_hosts(self, path: Path, line: str | None = None) -> Path:
        path.write_text(self.public_host_key_line() if line is None else line)
        return path

    def write_devices_toml(self, path: Path, name: str = "loopback", known_hosts: Path | None = None,
                           **settings) -> Path:
        if known_hosts is None:
            known_hosts = self.write_known_hosts(path.parent / "known_hosts")
        values = {"host": "127.0.0.1", "port": self.port, "user": _user(), "identity_file": str(self.client_key),
                  "known_hosts": str(known_hosts), "target": "x86-64-host", "python": sys.executable,
                  "workdir": str(self.root / "device-work"), "ssh_config": str(self.root / "no-ssh-config"),
                  **settings}
        # a setting given as None is left out: the device's default (workdir=None: ~/.cache/edgeprune)
        lines = [f"[devices.{name}]"] + [f"{k} = {_toml(v)}" for k, v in values.items() if v is not None]
        path.write_text("\n".join(lines) + "\n")
        return path

    def _descendants(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                children.setdefault(ppid, []).append(int(entry.name))
        found, todo = [], [self.process.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo.extend(children.get(pid, []))
        return found

    def kill_all(self) -> None:
        """SIGKILL the server and every session it forked, not the commands those sessions started: like a
        device whose network link died, the processes on it keep running until they notice."""
        sessions = [pid for pid in self._descendants() if _comm(pid).startswith(self.name)]
        for pid in sessions:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.kill_all()


class SSHServer(LoopbackServer):
    host_key = property(lambda self: self.root / "host_ed25519")

    @classmethod
    def start(cls, root: Path, port: int | None = None, sftp: bool = True) -> "SSHServer":
        """sftp=False: no `Subsystem sftp` line, as on hardened or minimal images: SFTP requests are refused."""
        sshd = find_sshd()
        if sshd is None:
            raise SSHServerUnavailable("sshd is not installed (apt-get install -y openssh-server)")
        root.mkdir(parents=True, exist_ok=True)
        if not (root / "host_ed25519").exists():
            _keygen(root / "host_ed25519")
            _keygen(root / "client_ed25519")
            (root / "authorized_keys").write_text((root / "client_ed25519.pub").read_text())
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege-separation dir
        port = port or free_port()
        config = root / "sshd_config"
        config.write_text("\n".join([
            f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {root / 'host_ed25519'}",
            # the second path lets other local users log in (sshd reads it as that user: see authorize)
            f"AuthorizedKeysFile {root / 'authorized_keys'} {root / 'users' / '%u' / 'authorized_keys'}",
            f"PidFile {root / 'sshd.pid'}",
            "StrictModes no", "UsePAM no", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes", "PermitRootLogin prohibit-password",
            *(["Subsystem sftp internal-sftp"] if sftp else []),
            "MaxSessions 32", "MaxStartups 64:30:128", "LogLevel VERBOSE", "",
        ]))
        log = open(root / "sshd.log", "ab")
        process = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stdout=log, stderr=log,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        server = cls(root, port, process)
        server._wait_ready()
        return server

    def authorize(self, name: str, uid: int, gid: int) -> None:
        """Let local user `name` log in with the client key. sshd opens the key file as that user, so the
        server root must be traversable by it (mode 0711, say) and the file is made theirs."""
        folder = self.root / "users" / name
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "users", 0o755)
        keys = folder / "authorized_keys"
        keys.write_text(self.client_key.with_name("client_ed25519.pub").read_text())
        for path in (folder, keys):
            os.chown(path, uid, gid)


SFTP_SERVER = "/usr/lib/sftp-server"  # the path Debian's dropbear is built with (SFTPSERVER_PATH)


class DropbearServer(LoopbackServer):
    """dropbear 2022 reads authorized keys only from ~/.ssh/authorized_keys of the login user's home in the
    password database (2022.83, Debian 12's, has no option for another path). So it runs in a private
    mount namespace of its own in which /etc/passwd is a copy that gives the login user (and any user
    `authorize`d) a home in this server's dir: nothing outside it is changed, and the namespace, with its
    bind mount, ends with the server's last process. Needs root (CI runs as root). SFTP goes through the
    sftp-server that dropbear is built to run (Debian: /usr/lib/sftp-server, from openssh-sftp-server)."""
    name = "dropbear"
    host_key = property(lambda self: self.root / "host_ed25519.dropbear")
    passwd = property(lambda self: self.root / "passwd")

    @classmethod
    def start(cls, root: Path, port: int | None = None, sftp: bool = True) -> "DropbearServer":
        """sftp=False: inside the server's namespace an empty, non-executable file hides sftp-server, as on
        the OpenWrt and Buildroot images that ship dropbear alone: the SFTP subsystem then fails."""
        dropbear = find_dropbear()
        if dropbear is None or shutil.which("dropbearkey") is None:
            raise SSHServerUnavailable("dropbear is not installed (apt-get install -y dropbear-bin)")
        if not os.access(SFTP_SERVER, os.X_OK):
            raise SSHServerUnavailable(f"dropbear serves SFTP with {SFTP_SERVER}, which is missing "
                                       "(apt-get install -y openssh-sftp-server)")
        if os.geteuid() != 0 or shutil.which("unshare") is None:
            raise SSHServerUnavailable("dropbear reads keys only from the login user's ~/.ssh; the loopback "
                                       "server gives it a home of its own in a mount namespace, which needs root "
                                       "and unshare(1)")
        root.mkdir(parents=True, exist_ok=True)
        if not (root / "host_ed25519.dropbear").exists():
            subprocess.run(["dropbearkey", "-t", "ed25519", "-f", str(root / "host_ed25519.dropbear")], check=True,
                           capture_output=True)
            shown = subprocess.run(["dropbearkey", "-y", "-f", str(root / "host_ed25519.dropbear")], check=True,
                                   capture_output=True, text=True).stdout
            (root / "host_ed25519.pub").write_text(next(l for l in shown.splitlines() if l.startswith("ssh-")) + "\n")
            _keygen(root / "client_ed25519")
        server = cls(root, port or free_port(), None)
        server._homes = {_user(): root / "home"}
        server._give_key(root / "home")
        server._write_passwd()
        hide_sftp = ""
        if not sftp:
            (root / "no-sftp-server").write_bytes(b"")
            os.chmod(root / "no-sftp-server", 0o644)
            hide_sftp = f"mount --bind {shlex.quote(str(root / 'no-sftp-server'))} {SFTP_SERVER} && "
        command = (hide_sftp + f"mount --bind {shlex.quote(str(server.passwd))} /etc/passwd && exec "
                   + shlex.join([dropbear, "-F", "-E", "-s", "-j", "-k", "-p", f"127.0.0.1:{server.port}",
                                 "-r", str(server.host_key), "-P", str(root / "dropbear.pid")]))
        log = open(server.log, "ab")
        # unshare and sh exec: the process is dropbear itself. Mounts made outside later (a test's tmpfs)
        # still show inside ("slave"); the bind mount never shows outside.
        server.process = subprocess.Popen(["unshare", "--mount", "--propagation", "slave", "--", "sh", "-c", command],
                                          stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        server._wait_ready()
        return server

    def _give_key(self, home: Path, uid: int = 0, gid: int = 0) -> None:
        """~/.ssh/authorized_keys with the client key; dropbear wants home, .ssh and the file owned by the
        user (or root) and not writable by group or others."""
        (home / ".ssh").mkdir(parents=True, exist_ok=True)
        keys = home / ".ssh" / "authorized_keys"
        keys.write_text((self.root / "client_ed25519.pub").read_text())
        for path, mode in ((home, 0o755), (home / ".ssh", 0o700), (keys, 0o600)):
            os.chown(path, uid, gid)
            os.chmod(path, mode)

    def _write_passwd(self) -> None:
        lines, found = [], set()
        for line in Path("/etc/passwd").read_text().splitlines():
            fields = line.split(":")
            if len(fields) == 7 and fields[0] in self._homes:
                fields[5] = str(self._homes[fields[0]])
                found.add(fields[0])
            lines.append(":".join(fields))
        if found != set(self._homes):
            raise SSHServerUnavailable(f"{', '.join(sorted(set(self._homes) - found))} not in /etc/passwd "
                                       "(a directory service's account): no home can be given to dropbear")
        # in place, not renamed: the bind mount shows this very file
        self.passwd.write_text("\n".join(lines) + "\n")

    def authorize(self, name: str, uid: int, gid: int) -> None:
        """Let local user `name` log in with the client key, with a home in users/NAME here. dropbear reads
        the key file as that user, so the server root must be traversable by it (mode 0711, say)."""
        (self.root / "users").mkdir(exist_ok=True)
        os.chmod(self.root / "users", 0o755)
        self._give_key(self.root / "users" / name, uid, gid)
        self._homes[name] = self.root / "users" / name
        self._write_passwd()


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _user() -> str:
    import getpass
    return getpass.getuser()


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
