"""Host keys (edgeprune.remote.hostkeys): fingerprints as OpenSSH prints them, known_hosts read the way OpenSSH
reads it (comments, markers, hashed names, `[host]:port` for a port other than 22, bytes that are not UTF-8),
and a key recorded on first use (--trust-new-host-key) appended to a private file. Real keys made by
`ssh-keygen`, real files, a real paramiko client; the end-to-end cases against a loopback sshd are in
test_remote_ssh.py."""

from __future__ import annotations

import base64
import locale
import os
import re
import subprocess
from pathlib import Path

import paramiko
import pytest

import edgeprune as ep
from edgeprune import remote
from edgeprune.devices import get_device
from edgeprune.remote.hostkeys import RecordNewKey, fingerprint, load_known_hosts
from remote_helpers import loopback

HOST = "pi5-lab.local"


def ssh_keygen(path: Path, kind: str = "ed25519") -> paramiko.PKey:
    """A new key pair made by OpenSSH's ssh-keygen; returns its public key."""
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "", "-f", str(path)], check=True,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    key_type, blob = Path(f"{path}.pub").read_text().split()[:2]
    return paramiko.PKey.from_type_string(key_type, base64.b64decode(blob))


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> list[paramiko.PKey]:
    folder = tmp_path_factory.mktemp("keys")
    return [ssh_keygen(folder / f"key{i}") for i in range(3)]


def line(names: str, key: paramiko.PKey) -> str:
    return f"{names} {key.get_name()} {key.get_base64()}"


def device(tmp_path: Path, port: int = 22, host: str = HOST, known_hosts: "str | Path" = "known_hosts") -> ep.Device:
    """Device 'pi5-lab' of a devices.toml of the test's own (no ssh_config), its known_hosts in tmp_path."""
    toml = tmp_path / "devices.toml"
    toml.write_text(f'[devices.pi5-lab]\nhost = "{host}"\nport = {port}\ntarget = "x86-64-host"\n'
                    f'known_hosts = "{known_hosts}"\nssh_config = "{tmp_path / "no-ssh-config"}"\n', encoding="utf-8")
    return get_device("pi5-lab", toml)


def pinned(device: ep.Device) -> paramiko.HostKeys:
    """What load_known_hosts pins for `device`: the host keys of a fresh client."""
    client = paramiko.SSHClient()
    load_known_hosts(client, device)
    return client.get_host_keys()


def exactly(message: str) -> str:
    return "^" + re.escape(message) + "$"


@pytest.fixture
def ascii_locale():
    """The C locale's character set (ASCII) for this process, as on a board or runner with no UTF-8 locale."""
    before = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")
    try:
        yield
    finally:
        locale.setlocale(locale.LC_CTYPE, before)


# -- fingerprints -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["ed25519", "ecdsa", "rsa"])
def test_a_fingerprint_is_the_one_ssh_keygen_prints(tmp_path, kind):
    key = ssh_keygen(tmp_path / "key", kind)
    printed = subprocess.run(["ssh-keygen", "-lf", str(tmp_path / "key.pub")], check=True, capture_output=True,
                             text=True).stdout.split()[1]
    assert printed.startswith("SHA256:") and not printed.endswith("=")  # what OpenSSH shows: unpadded base64
    assert fingerprint(key) == printed


# -- reading known_hosts ----------------------------------------------------------------------------------

def test_a_known_hosts_that_is_not_a_regular_file_is_refused_naming_it(tmp_path):
    (tmp_path / "known_hosts").mkdir()
    dev = device(tmp_path)
    with pytest.raises(ep.HostKeyError, match=exactly(
            f"device 'pi5-lab': known_hosts {tmp_path / 'known_hosts'} is not a regular file; host keys must be "
            "pinned in a file (set known_hosts in devices.toml)")):
        pinned(dev)


def test_a_known_hosts_that_cannot_be_read_is_an_error_naming_it_and_the_reason(tmp_path):
    # a regular file whose read fails with EIO, as a failing disk's would (root reads a chmod 000 file)
    dev = device(tmp_path, known_hosts="/proc/self/mem")
    with pytest.raises(ep.HostKeyError, match=exactly(
            "device 'pi5-lab': cannot read known_hosts /proc/self/mem: Input/output error")):
        pinned(dev)


def test_every_host_name_of_a_line_is_pinned_to_its_key(tmp_path, keys):
    (tmp_path / "known_hosts").write_text(line(f"{HOST},192.0.2.7", keys[0]) + "\n")
    found = pinned(device(tmp_path))
    assert sorted(found.keys()) == ["192.0.2.7", HOST]
    assert found.lookup(HOST)["ssh-ed25519"] == keys[0] and found.lookup("192.0.2.7")["ssh-ed25519"] == keys[0]


def test_comments_and_blank_lines_pin_nothing_and_the_lines_after_them_still_count(tmp_path, keys):
    (tmp_path / "known_hosts").write_text("\n   \n" + "#" + line("old.lab", keys[1]) + "\n# the lab's boards\n"
                                          + line(HOST, keys[0]) + "\n")
    found = pinned(device(tmp_path))
    assert list(found.keys()) == [HOST] and found.lookup(HOST)["ssh-ed25519"] == keys[0]


def test_a_cert_authority_line_pins_nothing_and_hides_none_of_the_lines_after_it(tmp_path, keys):
    (tmp_path / "known_hosts").write_text("@cert-authority " + line("*.local", keys[1]) + "\n"
                                          + line(HOST, keys[0]) + "\n")
    found = pinned(device(tmp_path))
    assert list(found.keys()) == [HOST] and found.lookup(HOST)["ssh-ed25519"] == keys[0]


def test_a_line_that_is_not_utf8_does_not_hide_the_pinned_key(tmp_path, keys):
    (tmp_path / "known_hosts").write_bytes(b"# \xe9quipe r\xe9seau (latin-1)\n" + line(HOST, keys[0]).encode() + b"\n")
    assert pinned(device(tmp_path)).lookup(HOST)["ssh-ed25519"] == keys[0]


def test_known_hosts_is_read_as_utf8_whatever_the_locale(tmp_path, keys, ascii_locale):
    host = "bücher.local"  # an mDNS name may be UTF-8
    (tmp_path / "known_hosts").write_text(line(host, keys[0]) + "\n", encoding="utf-8")
    assert list(pinned(device(tmp_path, host=host)).keys()) == [host]


def test_a_device_rekeyed_and_pinned_again_by_appending_its_new_key_is_connected_to(sshd, tmp_path, keys):
    # README: `ssh-keyscan -p PORT HOST >> known_hosts`; the stale line of the reinstalled device stays above
    known = tmp_path / "known_hosts"
    known.write_text(line(f"[127.0.0.1]:{sshd.port}", keys[0]) + "\n" + sshd.public_host_key_line())
    remote.open_session(loopback(sshd, tmp_path, known_hosts=str(known))).close()


# -- @revoked ---------------------------------------------------------------------------------------------

def revoked_message(tmp_path: Path) -> str:
    return exactly(f"device 'pi5-lab': {tmp_path / 'known_hosts'} marks a key of {HOST} @revoked; refusing to "
                   "connect until the line is resolved")


def test_a_revoked_key_of_the_device_refuses_it(tmp_path, keys):
    (tmp_path / "known_hosts").write_text(line(HOST, keys[0]) + "\n@revoked " + line(HOST, keys[1]) + "\n")
    with pytest.raises(ep.HostKeyError, match=revoked_message(tmp_path)):
        pinned(device(tmp_path))


def test_a_revoked_hashed_entry_for_the_devices_port_refuses_it(tmp_path, keys):
    hashed = tmp_path / "to-hash"
    hashed.write_text(line(f"[{HOST}]:2222", keys[1]) + "\n")
    subprocess.run(["ssh-keygen", "-H", "-f", str(hashed)], check=True, capture_output=True)  # as HashKnownHosts does
    entry = hashed.read_text().strip()
    assert entry.startswith("|1|")
    (tmp_path / "known_hosts").write_text(f"@revoked {entry}\n")
    with pytest.raises(ep.HostKeyError, match=revoked_message(tmp_path)):
        pinned(device(tmp_path, port=2222))


def test_a_revoked_line_that_repeats_the_devices_name_still_refuses_it(tmp_path, keys):
    (tmp_path / "known_hosts").write_text("@revoked " + line(f"{HOST},{HOST}", keys[1]) + "\n")
    with pytest.raises(ep.HostKeyError, match=revoked_message(tmp_path)):
        pinned(device(tmp_path))


def test_revoked_keys_of_other_hosts_or_of_port_22_do_not_refuse_a_device_on_another_port(tmp_path, keys):
    # OpenSSH looks a device on port 2222 up as [host]:2222 only: a bare `host` line is port 22's
    (tmp_path / "known_hosts").write_text("@revoked " + line(HOST, keys[1]) + "\n"
                                          "@revoked " + line("other.lab", keys[2]) + "\n"
                                          + line(f"[{HOST}]:2222", keys[0]) + "\n")
    assert pinned(device(tmp_path, port=2222)).lookup(f"[{HOST}]:2222")["ssh-ed25519"] == keys[0]


# -- recording a new key (--trust-new-host-key) -----------------------------------------------------------

def record(dev: ep.Device, key: paramiko.PKey, hostname: str = f"[{HOST}]:2222") -> paramiko.SSHClient:
    """What paramiko does on connecting to an unknown key with RecordNewKey as the policy."""
    client = paramiko.SSHClient()
    RecordNewKey(dev).missing_host_key(client, hostname, key)
    return client


def test_recording_a_key_creates_the_missing_folders_of_known_hosts(tmp_path, keys):
    dev = device(tmp_path, port=2222, known_hosts=str(tmp_path / "home" / ".ssh" / "known_hosts"))
    record(dev, keys[0])
    assert (tmp_path / "home" / ".ssh" / "known_hosts").is_file()


def test_a_known_hosts_made_by_recording_a_key_is_private(tmp_path, keys):
    dev = device(tmp_path, port=2222)
    umask = os.umask(0o022)  # the usual umask: a file made without a mode would be 0644 (0755 with 0777)
    try:
        record(dev, keys[0])
    finally:
        os.umask(umask)
    assert (tmp_path / "known_hosts").stat().st_mode & 0o777 == 0o600


def test_a_known_hosts_made_by_recording_a_key_holds_just_its_line(tmp_path, keys):
    record(device(tmp_path, port=2222), keys[0])
    assert (tmp_path / "known_hosts").read_text() == line(f"[{HOST}]:2222", keys[0]) + "\n"


@pytest.mark.parametrize("last", ["one-character", "host-line"])
def test_a_recorded_key_is_not_glued_to_a_last_line_without_newline(tmp_path, keys, last):
    last_line = "#" if last == "one-character" else line("other.lab", keys[1])
    (tmp_path / "known_hosts").write_text(last_line)
    record(device(tmp_path, port=2222), keys[0])
    assert (tmp_path / "known_hosts").read_text() == last_line + "\n" + line(f"[{HOST}]:2222", keys[0]) + "\n"


def test_a_recorded_key_adds_no_blank_line_after_a_file_that_ends_with_a_newline(tmp_path, keys):
    (tmp_path / "known_hosts").write_text(line("other.lab", keys[1]) + "\n")
    record(device(tmp_path, port=2222), keys[0])
    assert (tmp_path / "known_hosts").read_text() == (line("other.lab", keys[1]) + "\n"
                                                      + line(f"[{HOST}]:2222", keys[0]) + "\n")


def test_a_recorded_key_is_written_as_utf8_whatever_the_locale(tmp_path, keys, ascii_locale):
    host = "bücher.local"
    record(device(tmp_path, host=host), keys[0], hostname=host)
    assert (tmp_path / "known_hosts").read_bytes() == (line(host, keys[0]) + "\n").encode("utf-8")


def test_a_recorded_key_is_trusted_by_the_client_that_recorded_it(tmp_path, keys):
    client = record(device(tmp_path, port=2222), keys[0])
    assert client.get_host_keys().lookup(f"[{HOST}]:2222")["ssh-ed25519"] == keys[0]


def test_a_recorded_key_replaces_the_key_of_its_type_the_client_held_for_the_host(tmp_path, keys):
    client = paramiko.SSHClient()
    client.get_host_keys().add(f"[{HOST}]:2222", keys[1].get_name(), keys[1])
    RecordNewKey(device(tmp_path, port=2222)).missing_host_key(client, f"[{HOST}]:2222", keys[0])
    assert client.get_host_keys().lookup(f"[{HOST}]:2222")["ssh-ed25519"] == keys[0]


def test_a_key_is_not_recorded_in_a_known_hosts_that_is_not_a_regular_file(tmp_path, keys):
    (tmp_path / "known_hosts").mkdir()
    with pytest.raises(ep.HostKeyError, match=exactly(
            f"device 'pi5-lab': cannot record the host key in {tmp_path / 'known_hosts'}: not a regular file; "
            "set known_hosts in devices.toml")):
        record(device(tmp_path, port=2222), keys[0])
