"""The device inventory: which machines benchmarks run on, and how to reach them.

    [devices.pi5-lab]
    host = "pi5-lab.local"            # or a Host alias from ~/.ssh/config
    user = "bench"
    identity_file = "~/.ssh/id_ed25519"
    target = "raspberry-pi-5"

A device without `host` is an error, except the built-in `local`, which runs the same harness in a
subprocess on this machine (it is always there; a `[devices.local]` table only changes its settings).
Passwords are never read from the file: keys, from `identity_file` or ssh-agent, only.

Settings resolve in this order: the device's table, then its `Host` entry in `ssh_config`
(HostName, Port, User, IdentityFile, UserKnownHostsFile), then the defaults below.
"""

from __future__ import annotations

import getpass
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import paramiko
from pydantic import BaseModel, ConfigDict, Field

from ._toml import read_toml, validate
from .errors import DeviceError, TargetError
from .targets import load_target

LOCAL = "local"


class _DeviceTable(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    host: Optional[str] = None
    port: Optional[int] = Field(None, ge=1, le=65535)
    user: Optional[str] = None
    identity_file: Optional[str] = None
    known_hosts: Optional[str] = None
    ssh_config: str = "~/.ssh/config"
    target: Optional[str] = None
    python: Optional[str] = None
    workdir: Optional[str] = None
    connect_timeout_s: float = Field(10.0, gt=0, le=600)
    command_timeout_s: float = Field(600.0, gt=0, le=86400)
    deadline_s: float = Field(1800.0, gt=0, le=86400)
    lock_wait_s: float = Field(300.0, ge=0, le=86400)
    lease_s: Optional[float] = Field(None, gt=0, le=86400)
    cores: Optional[list[int]] = None
    threads: Optional[int] = Field(None, ge=1, le=1024)


class _Inventory(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    devices: dict[str, _DeviceTable] = {}


@dataclass(frozen=True)
class Device:
    """One machine to benchmark on, with every setting resolved."""

    name: str
    target: str
    host: Optional[str] = None          # None: the built-in local device (a subprocess here)
    hostname: Optional[str] = None      # what `host` resolved to through ssh_config
    port: int = 22
    user: Optional[str] = None
    identity_files: tuple[Path, ...] = ()  # identity_file, else every IdentityFile of ssh_config
    known_hosts: Path = Path("~/.ssh/known_hosts").expanduser()
    python: str = "python3"
    # per user and private (0700) on the device; `~` is the login user's home there (see remote.trust)
    workdir: str = "~/.cache/edgeprune"
    connect_timeout_s: float = 10.0
    command_timeout_s: float = 600.0
    deadline_s: float = 1800.0
    lock_wait_s: float = 300.0
    lease_s: float = 1800.0
    cores: Optional[tuple[int, ...]] = None
    threads: Optional[int] = None
    source: str = "<built-in>"

    @property
    def is_local(self) -> bool:
        return self.host is None

    @property
    def address(self) -> str:
        if self.is_local:
            return "subprocess on this machine"
        return f"{self.user}@{self.hostname}:{self.port}"


def local_cache_dir() -> Path:
    """This user's cache dir ($XDG_CACHE_HOME when absolute, else ~/.cache): the `local` device's work dir
    lives there, private to the user, rather than in a /tmp that every user of the machine can write."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"


def local_device(**overrides) -> Device:
    defaults = dict(name=LOCAL, target="x86-64-host", python=sys.executable,
                    workdir=str(local_cache_dir() / "edgeprune-local"))
    defaults.update({k: v for k, v in overrides.items() if v is not None})
    return Device(**defaults)


def _expand(path: Optional[str], base: Path) -> Optional[Path]:
    if path is None:
        return None
    p = Path(os.path.expandvars(path)).expanduser()
    return p if p.is_absolute() else (base / p)


def _ssh_config_entry(path: Optional[Path], host: str, where: str) -> dict:
    if path is None or not path.exists():
        return {}
    try:
        return dict(paramiko.SSHConfig.from_path(str(path)).lookup(host))
    except Exception as exc:  # paramiko raises several types for a bad config line
        raise DeviceError(f"{where}: cannot read ssh config {path}: {exc}") from None


def _resolve(name: str, table: _DeviceTable, source: Path) -> Device:
    where = f"{source}: device '{name}'"
    base = source.parent
    if table.target is not None:
        try:
            load_target(table.target)
        except TargetError as exc:
            raise DeviceError(f"{where}: key 'devices.{name}.target': {exc}") from None
    if table.workdir is not None and not (table.workdir.startswith(("/", "~/")) or table.workdir == "~"):
        raise DeviceError(f"{where}: key 'devices.{name}.workdir': must be an absolute path on the device, or "
                          f"start with ~/ (the login user's home there), got {table.workdir!r}")
    if table.lease_s is not None and table.lease_s < table.deadline_s:
        raise DeviceError(f"{where}: key 'devices.{name}.lease_s': {table.lease_s:g} s is shorter than the run's "
                          f"deadline_s ({table.deadline_s:g} s); another runner could take the lock of a live run")
    if table.cores is not None and (not table.cores or min(table.cores) < 0):
        raise DeviceError(f"{where}: key 'devices.{name}.cores': expected a non-empty list of CPU numbers >= 0")
    common = dict(
        connect_timeout_s=table.connect_timeout_s, command_timeout_s=table.command_timeout_s,
        deadline_s=table.deadline_s, lock_wait_s=table.lock_wait_s,
        lease_s=table.lease_s or table.deadline_s, threads=table.threads,
        cores=tuple(table.cores) if table.cores else None, source=str(source),
    )
    if name == LOCAL:
        ssh_keys = [k for k in ("host", "port", "user", "identity_file", "known_hosts") if getattr(table, k) is not None]
        if ssh_keys:
            raise DeviceError(f"{where}: key 'devices.{name}.{ssh_keys[0]}': the built-in 'local' device runs in a "
                              "subprocess, not over SSH; give an SSH device another name")
        return local_device(target=table.target, python=table.python, workdir=table.workdir, **common)
    if table.host is None:
        raise DeviceError(f"{where}: key 'devices.{name}.host': missing (required for an SSH device)")
    if table.target is None:
        raise DeviceError(f"{where}: key 'devices.{name}.target': missing (the target profile of this device)")
    entry = _ssh_config_entry(_expand(table.ssh_config, base), table.host, where)
    identity = _expand(table.identity_file, base)
    identities = (identity,) if identity else tuple(Path(p).expanduser() for p in entry.get("identityfile", ()))
    known = _expand(table.known_hosts, base)
    if known is None and entry.get("userknownhostsfile"):
        known = Path(entry["userknownhostsfile"].split()[0]).expanduser()
    return Device(
        name=name, target=table.target, host=table.host,
        # OpenSSH lowercases host names before matching known_hosts; paramiko does not
        hostname=entry.get("hostname", table.host).lower(),
        port=table.port or int(entry.get("port", 22)),
        user=table.user or entry.get("user") or getpass.getuser(),
        identity_files=identities,
        known_hosts=known or Path("~/.ssh/known_hosts").expanduser(),
        python=table.python or "python3",
        workdir=table.workdir or Device.workdir,
        **common,
    )


def _refuse_passwords(data: dict, path: Path) -> None:
    # Checked before validation so that the secret is never echoed back in a validation message.
    tables = data.get("devices")
    for name, table in (tables.items() if isinstance(tables, dict) else ()):
        for key in (table if isinstance(table, dict) else ()):
            if "password" in key.lower() or "passphrase" in key.lower():
                raise DeviceError(f"{path}: key 'devices.{name}.{key}': passwords are never read from devices.toml; "
                                  "use identity_file (a key) or ssh-agent")


def load_devices(path: "str | Path | None" = None) -> dict[str, Device]:
    """Every device in `path` (and the built-in `local`), settings resolved and checked.

    With no path, `./devices.toml` is read when it exists; otherwise only `local` is known."""
    if path is None:
        path = Path("devices.toml")
        if not path.exists():
            return {LOCAL: local_device()}
    path = Path(path)
    data = read_toml(path, DeviceError)
    _refuse_passwords(data, path)
    inventory = validate(_Inventory, data, path, DeviceError)
    devices = {LOCAL: local_device(source=str(path))}
    for name, table in inventory.devices.items():
        devices[name] = _resolve(name, table, path)
    return devices


def get_device(name: str, path: "str | Path | None" = None) -> Device:
    devices = load_devices(path)
    if name not in devices:
        known = ", ".join(sorted(devices))
        raise DeviceError(f"{path or 'devices.toml'}: no device named '{name}' (known: {known})")
    return devices[name]
