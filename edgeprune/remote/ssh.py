"""`Session` over SSH (paramiko), with a limit on every wait."""

from __future__ import annotations

import select
import posixpath
import shlex
import socket
import threading
import time
from pathlib import Path
from typing import Optional

import paramiko

from ..devices import Device
from ..errors import ConnectionLostError, DeviceError, HostKeyError, RemoteTimeoutError
from .hostkeys import RecordNewKey, RefuseUnknownKey, fingerprint, load_known_hosts
from .session import KILL_GRACE_S, STDERR_KEEP, STDOUT_KEEP, Completed, LineSplitter, Session, Tail


READS_PER_ROUND = 64  # of at most 64 KiB each
# The longest command every SSH server takes: dropbear (OpenWrt, Yocto/Buildroot images) drops the whole
# connection on a longer exec request (its MAX_CMD_LEN); OpenSSH takes far more.
MAX_COMMAND_BYTES = 9000
# Where the server offers no SFTP: the device's python writes exactly SIZE bytes of stdin to PATH (a file in
# the private run dir) and fails if the stream ends short. Standard library only, like everything on the device.
RECEIVER = ("import os, sys\n"
            "path, left = sys.argv[1], int(sys.argv[2])\n"
            "fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, 'O_NOFOLLOW', 0), 0o600)\n"
            "src = sys.stdin.buffer\n"
            "while left:\n"
            "    chunk = src.read(min(left, 1 << 16))\n"
            "    if not chunk:\n"
            "        sys.stderr.write('error: %s: the stream ended %d bytes short\\n' % (path, left))\n"
            "        os._exit(1)\n"
            "    view = memoryview(chunk)\n"
            "    while view:\n"
            "        view = view[os.write(fd, view):]\n"
            "    left -= len(chunk)\n"
            "os.fsync(fd)\n"
            "os.close(fd)\n")


# The reverse, for bringing files back without SFTP: the device's python writes the file to stdout.
SENDER = ("import os, sys\n"
          "fd = os.open(sys.argv[1], os.O_RDONLY | getattr(os, 'O_NOFOLLOW', 0))\n"
          "out = sys.stdout.buffer\n"
          "for chunk in iter(lambda: os.read(fd, 1 << 16), b''):\n"
          "    out.write(chunk)\n"
          "out.flush()\n")


class Watchdog:
    """Closes the SSH connection when a step outlives `limit`: the one way to unblock the paramiko calls
    that wait without a limit of their own (opening a channel, the SFTP handshake, a write to a dead link).
    With `cancel` (connecting only, where nothing is left to clean up) a stop request closes it too."""

    def __init__(self, session: "SSHSession", limit: float, step: str, cancel: Optional[threading.Event] = None):
        self.session, self.limit, self.step, self.fired, self.cancelled = session, limit, step, False, False
        self._cancel, self._done = cancel, threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        end = time.monotonic() + self.limit
        poll = 0.1 if self._cancel is not None else float("inf")
        while not self._done.wait(max(0.0, min(poll, end - time.monotonic()))):
            if self._cancel is not None and self._cancel.is_set():
                self.cancelled = True
            elif time.monotonic() < end:
                continue
            else:
                self.fired = True
            self.session.client.close()
            return

    def __enter__(self) -> "Watchdog":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()

    def error(self) -> Optional[RemoteTimeoutError]:
        if not self.fired:
            return None
        return RemoteTimeoutError(f"device '{self.session.device.name}': {self.step} did not finish within "
                                  f"{self.limit:g} s; the connection was closed")


class SSHSession(Session):
    def __init__(self, device: Device, timeout: float, trust_new_host_key: bool = False,
                 cancel: Optional[threading.Event] = None):
        self.device, self.cancel = device, cancel
        missing = [p for p in device.identity_files if not p.is_file()]
        if device.identity_files and len(missing) == len(device.identity_files):
            raise DeviceError(f"{device.source}: device '{device.name}': no identity file exists "
                              f"({', '.join(map(str, missing))}; from identity_file or ssh_config's IdentityFile)")
        self.client = paramiko.SSHClient()
        self._sftp = None
        self._no_sftp: Optional[str] = None  # why the server gave no SFTP, once it refused it
        load_known_hosts(self.client, device)
        self.client.set_missing_host_key_policy(
            RecordNewKey(device) if trust_new_host_key else RefuseUnknownKey(device))
        where = f"device '{device.name}' ({device.address})"
        started = time.monotonic()
        watchdog = Watchdog(self, timeout, "connecting", cancel)
        try:
            with watchdog:
                self.client.connect(
                    device.hostname, port=device.port, username=device.user,
                    key_filename=[str(p) for p in device.identity_files if p.is_file()] or None,
                    look_for_keys=not device.identity_files, allow_agent=True,
                    timeout=timeout, banner_timeout=timeout, auth_timeout=timeout, channel_timeout=timeout,
                    password=None, passphrase=None)
        except HostKeyError:
            self.client.close()
            raise
        except paramiko.BadHostKeyException as exc:
            self.client.close()
            entry = device.hostname if device.port == 22 else f"[{device.hostname}]:{device.port}"
            raise HostKeyError(
                f"{where}: the host key CHANGED (got {exc.key.get_name()} {fingerprint(exc.key)}, "
                f"{device.known_hosts} pins {fingerprint(exc.expected_key)}); refused before anything ran — "
                f"this is what a man-in-the-middle looks like. If the device was reinstalled, remove the old "
                f"entry (`ssh-keygen -R '{entry}' -f {device.known_hosts}`) and pin the new key") from None
        except paramiko.AuthenticationException as exc:
            self.client.close()
            keys = ", ".join(map(str, device.identity_files)) or "ssh-agent / default keys"
            raise DeviceError(f"{where}: authentication failed with {keys}: {exc}") from None
        except Exception as exc:  # paramiko raises plain Exceptions too (e.g. for an unsupported key type)
            self.client.close()
            if watchdog.cancelled:  # stopped while connecting: nothing ran, nothing to clean up
                raise KeyboardInterrupt from None
            # A handshake that timed out surfaces as one of several SSHExceptions ("Error reading SSH
            # protocol banner", "No existing session"): judge by the clock, not the message.
            if watchdog.fired or isinstance(exc, socket.timeout) or time.monotonic() - started >= 0.9 * timeout:
                raise RemoteTimeoutError(f"{where}: no SSH connection (TCP, banner, key exchange and "
                                         f"authentication) within {timeout:g} s (connect_timeout_s)") from None
            raise DeviceError(f"{where}: cannot connect: {type(exc).__name__}: {exc}") from None
        if watchdog.cancelled:
            self.client.close()
            raise KeyboardInterrupt
        # Keepalives make sshd's side notice us gone; a dead link is caught by each step's own limit.
        self.client.get_transport().set_keepalive(5)

    def _lost(self, step: str) -> ConnectionLostError:
        return ConnectionLostError(f"device '{self.device.name}' ({self.device.address}): the SSH connection "
                                   f"was lost during {step}; no result recorded")

    def run(self, argv, timeout, *, cwd=None, on_stderr_line=None, step="command", keep_stdout=STDOUT_KEEP):
        self.check_cancel()
        command = shlex.join(argv)
        if cwd is not None:
            command = f"cd {shlex.quote(cwd)} && exec {command}"
        if len(command.encode()) > MAX_COMMAND_BYTES:
            raise DeviceError(f"device '{self.device.name}': the command for {step} is {len(command.encode())} "
                              f"bytes, more than the {MAX_COMMAND_BYTES} every SSH server takes (dropbear drops the "
                              f"connection on more); nothing was sent (a very long workdir or python path?)")
        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            raise self._lost(step)
        with Watchdog(self, timeout + KILL_GRACE_S, step) as watchdog:
            try:
                channel = transport.open_session(timeout=timeout)
                channel.exec_command(command)
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise watchdog.error() or self._failed_channel(step, exc) from None
            try:
                out, err = Tail(keep_stdout), Tail(STDERR_KEEP)
                self._read_until_done(channel, transport, timeout, on_stderr_line, step, out, err)
            except (OSError, EOFError, paramiko.SSHException):
                raise watchdog.error() or self._lost(step) from None
            finally:
                channel.close()
        return Completed(channel.exit_status, out.value().decode("utf-8", "replace"),
                         err.value().decode("utf-8", "replace"), out.dropped, err.dropped)

    def _read_until_done(self, channel, transport, timeout, on_stderr_line, step, out: Tail, err: Tail) -> None:
        """Read both streams while waiting (a full channel window blocks the remote side, and
        recv_exit_status() would wait forever) until the exit status AND the end of the output have come:
        OpenSSH may send the status before the last data. Only the tails are kept: the device is not
        trusted to bound its output. A stop request abandons the command (the caller kills it)."""
        splitter = LineSplitter(on_stderr_line)
        end = time.monotonic() + timeout
        # The channel's fileno wakes select() for data but not for the exit status, so the wait starts
        # short (a quick command returns in milliseconds) and backs off to 0.2 s while nothing arrives.
        pause = 0.002
        while True:
            if channel.eof_received or channel.closed:
                channel.status_event.wait(pause)
            else:
                select.select([channel], [], [], pause)
            pause = min(0.2, pause * 2)
            # a bounded number of reads per round, so that a command that never stops writing still meets
            # its timeout and a stop request
            for _ in range(READS_PER_ROUND):
                if not channel.recv_ready():
                    break
                out.feed(channel.recv(65536))
                pause = 0.002
            for _ in range(READS_PER_ROUND):
                if not channel.recv_stderr_ready():
                    break
                chunk = channel.recv_stderr(65536)
                err.feed(chunk)
                splitter.feed(chunk)
                pause = 0.002
            drained = not channel.recv_ready() and not channel.recv_stderr_ready()
            done = drained and (channel.eof_received or channel.closed) and channel.status_event.is_set()
            if done and channel.exit_status != -1:
                return
            if done or (channel.closed and drained):
                # No exit status: either the link died (the transport notices within moments) or sshd
                # closed the channel on a command killed by a signal.
                for _ in range(20):
                    if not transport.is_active():
                        raise self._lost(step)
                    time.sleep(0.05)
                raise DeviceError(f"device '{self.device.name}': {step} ended without an exit status "
                                  "(killed by a signal on the device?)")
            if not transport.is_active():
                raise self._lost(step)
            if time.monotonic() > end:
                raise RemoteTimeoutError(f"device '{self.device.name}': {step} ran past its {timeout:g} s timeout")
            self.check_cancel()

    def _failed_channel(self, step: str, exc: BaseException) -> DeviceError:
        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            return self._lost(step)
        # the link is up but sshd refused a channel (MaxSessions, a ForceCommand, ...)
        return DeviceError(f"device '{self.device.name}': sshd refused a session for {step}: {exc}")

    def put(self, local, remote, timeout, on_bytes=None):
        self.check_cancel()
        if self._sftp is None and self._no_sftp is None:
            self._open_sftp(timeout)
        if self._no_sftp is not None:
            return self._put_streamed(local, remote, timeout, on_bytes)
        self._sftp_transfer("upload", Path(local).name, remote, timeout, on_bytes,
                            lambda callback: self._sftp.put(str(local), remote, callback=callback, confirm=True))

    def get(self, remote, local, timeout, size):
        self.check_cancel()
        if self._sftp is None and self._no_sftp is None:
            self._open_sftp(timeout)
        if self._no_sftp is not None:
            return self._get_streamed(remote, local, timeout, size)
        name = posixpath.basename(remote)

        def within(done: int, total: int) -> None:  # the device said `size`: more is refused as it arrives
            if done > size or total > size:
                raise DeviceError(f"device '{self.device.name}': {name} is larger than the {size} bytes the device "
                                  f"reported; the download was stopped")

        self._sftp_transfer("download", name, remote, timeout, within,
                            lambda callback: self._sftp.get(remote, str(local), callback=callback))

    def _sftp_transfer(self, what: str, name: str, remote: str, timeout: float, on_bytes, transfer) -> None:
        """One SFTP transfer, `transfer(callback)`, bounded by `timeout` as a whole and per request."""
        end = time.monotonic() + timeout

        def callback(done, total):
            self.check_cancel()
            if time.monotonic() > end:
                raise RemoteTimeoutError(f"device '{self.device.name}': {what} of {name} ran past its {timeout:g} s "
                                         "timeout")
            if on_bytes:
                on_bytes(done, total)

        watchdog = Watchdog(self, timeout + KILL_GRACE_S, f"the {what} of {name}")
        try:
            with watchdog:
                # the channel timeout bounds each SFTP request; the callback and the watchdog the transfer
                self._sftp.get_channel().settimeout(timeout)
                transfer(callback)
        except RemoteTimeoutError:
            raise
        except socket.timeout:
            raise RemoteTimeoutError(f"device '{self.device.name}': {what} of {name} stalled for "
                                     f"{timeout:g} s") from None
        except Exception as exc:  # IOError from the server, SFTPError (a plain Exception), SSHException, EOFError
            if watchdog.fired:
                raise watchdog.error() from None
            transport = self.client.get_transport()
            if transport is None or not transport.is_active():
                raise self._lost(f"the {what} of {name}") from None
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            where = f"to {remote}" if what == "upload" else f"from {remote}"
            raise DeviceError(f"device '{self.device.name}': cannot {what} {name} {where}: {reason}") from None

    def _open_sftp(self, timeout: float) -> None:
        """SFTP if the server offers it; else remember why not (dropbear without sftp-server, an OpenSSH
        without `Subsystem sftp`) and stream files over exec channels instead."""
        with Watchdog(self, timeout + KILL_GRACE_S, "opening SFTP") as watchdog:
            try:
                self._sftp = self.client.open_sftp()
            except Exception as exc:  # SSHException("Channel closed."), EOFError: the subsystem was refused
                if watchdog.fired:
                    raise watchdog.error() from None
                transport = self.client.get_transport()
                if transport is None or not transport.is_active():
                    raise self._lost("opening SFTP") from None
                self._no_sftp = str(exc) or type(exc).__name__

    def _put_streamed(self, local, remote, timeout, on_bytes=None) -> None:
        """Upload over an exec channel: the device's python reads exactly the file's size from stdin into
        `remote`. The runner's sha256 check on the device follows either way."""
        name, size = Path(local).name, Path(local).stat().st_size
        step = f"the upload of {name}"
        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            raise self._lost(step)
        end = time.monotonic() + timeout
        command = shlex.join([self.device.python, "-c", RECEIVER, remote, str(size)])
        channel = None
        with Watchdog(self, timeout + KILL_GRACE_S, step) as watchdog:
            try:
                channel = transport.open_session(timeout=timeout)
                channel.settimeout(timeout)
                channel.exec_command(command)
                done = 0
                with open(local, "rb") as fh:
                    for block in iter(lambda: fh.read(1 << 16), b""):
                        self.check_cancel()
                        if time.monotonic() > end:
                            raise RemoteTimeoutError(f"device '{self.device.name}': upload of {name} ran past "
                                                     f"its {timeout:g} s timeout")
                        channel.sendall(block)
                        done += len(block)
                        if on_bytes:
                            on_bytes(done, size)
                channel.shutdown_write()
                out, err = Tail(STDOUT_KEEP), Tail(STDERR_KEEP)
                self._read_until_done(channel, transport, max(1.0, end - time.monotonic()), None, step, out, err)
            except (RemoteTimeoutError, KeyboardInterrupt):
                raise
            except socket.timeout:
                raise RemoteTimeoutError(f"device '{self.device.name}': upload of {name} stalled for "
                                         f"{timeout:g} s") from None
            except (OSError, EOFError, paramiko.SSHException) as exc:
                raise watchdog.error() or self._failed_channel(step, exc) from None
            finally:
                if channel is not None:
                    channel.close()
        if channel.exit_status != 0:
            why = err.value().decode("utf-8", "replace").strip().splitlines()
            raise DeviceError(f"device '{self.device.name}': cannot upload {name} to {remote}: the server offers "
                              f"no SFTP ({self._no_sftp}), and streaming it through '{self.device.python}' over an "
                              f"exec channel failed (exit {channel.exit_status}: {why[-1] if why else 'no message'})")

    def _get_streamed(self, remote, local, timeout, size) -> None:
        """Download over an exec channel (no SFTP): the device's python writes the file to stdout; exactly
        `size` bytes are expected, and the caller's sha256 check follows."""
        step = f"the download of {posixpath.basename(remote)}"
        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            raise self._lost(step)
        out, err, channel = Tail(size + 1), Tail(STDERR_KEEP), None
        with Watchdog(self, timeout + KILL_GRACE_S, step) as watchdog:
            try:
                channel = transport.open_session(timeout=timeout)
                channel.exec_command(shlex.join([self.device.python, "-c", SENDER, remote]))
                self._read_until_done(channel, transport, timeout, None, step, out, err)
            except (RemoteTimeoutError, KeyboardInterrupt):
                raise
            except (OSError, EOFError, paramiko.SSHException) as exc:
                raise watchdog.error() or self._failed_channel(step, exc) from None
            finally:
                if channel is not None:
                    channel.close()
        data = out.value()
        if channel.exit_status != 0 or out.dropped or len(data) != size:
            why = err.value().decode("utf-8", "replace").strip().splitlines()
            raise DeviceError(f"device '{self.device.name}': cannot download {remote}: the server offers no SFTP "
                              f"({self._no_sftp}), and streaming it through '{self.device.python}' gave "
                              f"{len(data) + out.dropped} of {size} bytes (exit {channel.exit_status}"
                              f"{': ' + why[-1] if why else ''})")
        Path(local).write_bytes(data)

    def close(self):
        try:
            if self._sftp is not None:
                self._sftp.close()
        finally:
            self.client.close()
