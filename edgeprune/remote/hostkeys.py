"""Host keys: known_hosts read the way OpenSSH reads it, unknown keys refused (or, when the user opts in,
recorded on first use), and a changed key always refused."""

from __future__ import annotations

import hashlib
import os

import paramiko

from ..devices import Device
from ..errors import HostKeyError


class RefuseUnknownKey(paramiko.MissingHostKeyPolicy):
    def __init__(self, device: Device):
        self.device = device

    def missing_host_key(self, client, hostname, key):
        d = self.device
        raise HostKeyError(
            f"device '{d.name}': the host key of {hostname} ({key.get_name()} {fingerprint(key)}) is not in "
            f"{d.known_hosts}; refused before anything ran. Check that fingerprint on the device "
            f"(`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`), then pin it "
            f"(`ssh-keyscan -p {d.port} {d.hostname} >> {d.known_hosts}`) or run once with --trust-new-host-key")


class RecordNewKey(paramiko.MissingHostKeyPolicy):
    """--trust-new-host-key: trust on first use and record the key, so that a later change is refused."""

    def __init__(self, device: Device):
        self.device = device

    def missing_host_key(self, client, hostname, key):
        path = self.device.known_hosts
        if path.exists() and not path.is_file():
            raise HostKeyError(f"device '{self.device.name}': cannot record the host key in {path}: not a regular "
                               "file; set known_hosts in devices.toml")
        client.get_host_keys().add(hostname, key.get_name(), key)
        path.parent.mkdir(parents=True, exist_ok=True)
        line = paramiko.hostkeys.HostKeyEntry([hostname], key).to_line()
        # O_APPEND keeps other hosts' lines as they are; a new file is created private (0600)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as fh:
            if fh.tell() > 0 and not path.read_bytes().endswith(b"\n"):
                fh.write("\n")  # a last line without its newline would be glued to ours
            fh.write(line)


def fingerprint(key) -> str:
    import base64
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


def load_known_hosts(client: paramiko.SSHClient, device: Device) -> None:
    """known_hosts, line by line: paramiko rejects a whole file for one line it cannot parse (an
    `@cert-authority` line, a key type it lacks), which would lock us out of every device."""
    path = device.known_hosts
    if not path.exists():
        return
    if not path.is_file():
        raise HostKeyError(f"device '{device.name}': known_hosts {path} is not a regular file; host keys must be "
                           "pinned in a file (set known_hosts in devices.toml)")
    keys = client.get_host_keys()
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise HostKeyError(f"device '{device.name}': cannot read known_hosts {path}: {exc.strerror or exc}") from None
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("@"):
            marker, _, rest = line.partition(" ")
            if marker == "@revoked":
                entry = _parse_host_line(rest)
                if entry and _host_matches(entry, device):
                    raise HostKeyError(f"device '{device.name}': {path} marks a key of {device.hostname} @revoked; "
                                       "refusing to connect until the line is resolved")
            continue  # @cert-authority: host certificates are not supported; ordinary lines still apply
        entry = _parse_host_line(line)
        if entry is not None:
            for name in entry.hostnames:
                keys.add(name, entry.key.get_name(), entry.key)


def _parse_host_line(line: str):
    try:
        return paramiko.hostkeys.HostKeyEntry.from_line(line)
    except Exception:  # paramiko raises InvalidHostKey (a plain Exception) and others for a bad line
        return None


def _host_matches(entry, device: Device) -> bool:
    host = device.hostname if device.port == 22 else f"[{device.hostname}]:{device.port}"
    probe = paramiko.HostKeys()
    for name in entry.hostnames:
        probe.add(name, entry.key.get_name(), entry.key)
    return probe.lookup(host) is not None
