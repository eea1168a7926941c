"""Uploads to SSH servers that offer no SFTP (dropbear alone, an OpenSSH without `Subsystem sftp`): the
files are streamed over an exec channel instead, and the sha256 check on the device still holds."""

from __future__ import annotations

import getpass

import paramiko
import pytest

import edgeprune as ep
from edgeprune.remote import open_session
from helpers import QUICK_BENCH
from remote_helpers import loopback


def test_the_server_really_refuses_sftp(no_sftp_server, tmp_path):
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect("127.0.0.1", port=no_sftp_server.port, username=getpass.getuser(),
                   key_filename=str(no_sftp_server.client_key),
                   look_for_keys=False, allow_agent=False, timeout=10)
    try:
        with pytest.raises((paramiko.SSHException, EOFError, OSError)):  # dropbear: "Socket is closed"
            client.open_sftp()
    finally:
        client.close()


def test_a_bench_uploads_over_exec_channels_and_measures(no_sftp_server, bench_artifacts, tmp_path):
    result = ep.bench(bench_artifacts.onnx, loopback(no_sftp_server, tmp_path), settings=QUICK_BENCH)
    assert result.n >= QUICK_BENCH.min_runs and result.artifact_sha256
    assert list((tmp_path / "device-work").glob("run-*")) == []


def test_a_streamed_file_arrives_byte_for_byte_with_progress(no_sftp_server, tmp_path):
    device = loopback(no_sftp_server, tmp_path)
    data = bytes(range(256)) * 1500 + b"tail"  # several blocks, not a multiple of one
    local = tmp_path / "payload.bin"
    local.write_bytes(data)
    (tmp_path / "device-work").mkdir()
    seen = []
    session = open_session(device)
    try:
        session.put(local, str(tmp_path / "device-work" / "payload.bin"), 30, lambda done, total: seen.append(done))
    finally:
        session.close()
    assert (tmp_path / "device-work" / "payload.bin").read_bytes() == data
    assert seen[-1] == len(data) and seen == sorted(seen)


def test_without_sftp_or_a_python_to_receive_the_error_says_what_the_server_lacks(no_sftp_server, tmp_path):
    device = loopback(no_sftp_server, tmp_path, python="/nonexistent/python3")
    local = tmp_path / "x.bin"
    local.write_bytes(b"x")
    session = open_session(device)
    try:
        with pytest.raises(ep.DeviceError, match=r"x.bin .*offers no SFTP .*/nonexistent/python3.* exec channel "
                                                 r"failed \(exit 127"):
            session.put(local, str(tmp_path / "x.bin.uploaded"), 30)
    finally:
        session.close()
    assert not (tmp_path / "x.bin.uploaded").exists()
