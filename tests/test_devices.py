"""The device inventory: devices.toml is validated, settings resolve through ssh_config, secrets stay out."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import edgeprune as ep
from edgeprune.devices import LOCAL, get_device, load_devices

REPO = Path(__file__).resolve().parent.parent


def test_the_local_device_exists_without_any_inventory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    devices = load_devices()
    assert list(devices) == [LOCAL]
    assert devices[LOCAL].is_local and devices[LOCAL].python == sys.executable


def test_the_repository_example_inventory_loads():
    devices = load_devices(REPO / "devices.toml")
    assert {"local", "pi5-lab", "orin"} <= set(devices)
    assert devices["pi5-lab"].target == "raspberry-pi-5" and devices["pi5-lab"].cores == (2, 3)


def test_an_ssh_device_takes_hostname_port_user_and_key_from_its_ssh_config_alias(write_toml, tmp_path):
    key = tmp_path / "orin_key"
    key.write_text("not read until connecting")
    (tmp_path / "ssh_config").write_text(
        f"Host orin\n  HostName 192.0.2.7\n  Port 2222\n  User nvidia\n  IdentityFile {key}\n")
    path = write_toml("devices.toml", '[devices.orin]\nhost = "orin"\ntarget = "jetson-orin-nano-8gb"\n'
                                      f'ssh_config = "{tmp_path / "ssh_config"}"\n')
    orin = get_device("orin", path)
    assert (orin.hostname, orin.port, orin.user, orin.identity_files) == ("192.0.2.7", 2222, "nvidia", (key,))
    assert orin.address == "nvidia@192.0.2.7:2222"


def test_settings_in_devices_toml_win_over_ssh_config(write_toml, tmp_path):
    (tmp_path / "ssh_config").write_text("Host pi\n  Port 2222\n  User pi\n")
    path = write_toml("devices.toml", '[devices.pi]\nhost = "pi"\nport = 22\nuser = "bench"\n'
                                      f'target = "raspberry-pi-5"\nssh_config = "{tmp_path / "ssh_config"}"\n')
    pi = get_device("pi", path)
    assert (pi.port, pi.user) == (22, "bench")


def test_a_relative_identity_file_is_relative_to_the_inventory(write_toml, tmp_path):
    path = write_toml("devices.toml", '[devices.pi]\nhost = "pi"\nidentity_file = "keys/pi"\ntarget = "raspberry-pi-5"\n')
    assert get_device("pi", path).identity_files == (tmp_path / "keys" / "pi",)


def test_the_lease_defaults_to_the_overall_deadline(write_toml):
    path = write_toml("devices.toml", '[devices.pi]\nhost = "pi"\ntarget = "raspberry-pi-5"\ndeadline_s = 120\n')
    assert get_device("pi", path).lease_s == 120


@pytest.mark.parametrize("body, key, expected", [
    ('[devices.pi]\nhost = "pi"\ntarget = "raspberry-pi-5"\nport = "22"\n', "devices.pi.port", "integer"),
    ('[devices.pi]\nhost = "pi"\ntarget = "raspberry-pi-5"\nhots = "x"\n', "devices.pi.hots", "unknown key"),
    ('[devices.pi]\nhost = "pi"\ntarget = "raspberry-pi-5"\nport = 70000\n', "devices.pi.port", "65535"),
    ('[devices.pi]\nhost = "pi"\ntarget = "raspberry-pi-5"\ncommand_timeout_s = 0\n', "devices.pi.command_timeout_s", "greater than 0"),
    ('[devices.pi]\ntarget = "raspberry-pi-5"\n', "devices.pi.host", "missing"),
    ('[devices.pi]\nhost = "pi"\n', "devices.pi.target", "missing"),
    ('[devices.pi]\nhost = "pi"\ntarget = "raspbery-pi-5"\n', "devices.pi.target", "raspbery-pi-5"),
    ('[devices.pi]\nhost = "pi"\ntarget = "raspberry-pi-5"\ncores = []\n', "devices.pi.cores", "non-empty"),
    ('[devices.local]\nhost = "pi"\n', "devices.local.host", "subprocess"),
    ('[device.pi]\nhost = "pi"\n', "device", "unknown key"),
    ('[devices.pi]\nhost = "pi"\ntarget = "raspberry-pi-5"\nworkdir = "bench"\n', "devices.pi.workdir", "absolute"),
    ('[devices.pi]\nhost = "pi"\ntarget = "raspberry-pi-5"\ndeadline_s = 600\nlease_s = 60\n', "devices.pi.lease_s",
     "shorter than the run's deadline_s"),
])
def test_a_malformed_inventory_names_the_file_the_device_and_the_key(write_toml, body, key, expected):
    path = write_toml("devices.toml", body)
    with pytest.raises(ep.DeviceError) as info:
        load_devices(path)
    message = str(info.value)
    assert str(path) in message and f"'{key}'" in message and expected in message


def test_a_password_is_refused_without_echoing_it(write_toml):
    path = write_toml("devices.toml", '[devices.pi]\nhost = "pi"\ntarget = "raspberry-pi-5"\npassword = "hunter2"\n')
    with pytest.raises(ep.DeviceError, match="passwords are never read") as info:
        load_devices(path)
    assert "hunter2" not in str(info.value) and "devices.pi.password" in str(info.value)


def test_invalid_toml_names_the_file(write_toml):
    path = write_toml("devices.toml", "[devices.pi\n")
    with pytest.raises(ep.DeviceError, match="not valid TOML"):
        load_devices(path)


def test_an_unknown_device_name_lists_the_known_ones(write_toml):
    path = write_toml("devices.toml", '[devices.pi]\nhost = "pi"\ntarget = "raspberry-pi-5"\n')
    with pytest.raises(ep.DeviceError, match=r"no device named 'pie' \(known: local, pi\)"):
        get_device("pie", path)


def test_host_names_are_matched_in_lower_case_as_openssh_does(write_toml):
    path = write_toml("devices.toml", '[devices.pi]\nhost = "Pi5-Lab.Local"\ntarget = "raspberry-pi-5"\n')
    assert get_device("pi", path).hostname == "pi5-lab.local"


def test_an_unknown_key_in_a_device_entry_lists_the_keys_a_device_takes(write_toml):
    path = write_toml("devices.toml", '[devices.pi]\nhost = "pi"\ntarget = "raspberry-pi-5"\nhots = "x"\n')
    with pytest.raises(ep.DeviceError) as info:
        load_devices(path)
    expected = str(info.value).split("devices.pi.hots", 1)[1]
    assert "expected one of: command_timeout_s, connect_timeout_s, cores," in expected and "host," in expected
    assert "one of: devices" not in expected
