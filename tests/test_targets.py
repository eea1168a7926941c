"""Target profiles: the seven built-ins, loading by path, and errors that name the file and the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import edgeprune as ep
from helpers import builtin_profile_text, set_key

FAMILIES = {
    "corstone-300-ethos-u55-128": "mcu",
    "jetson-agx-orin-64gb": "jetson",
    "jetson-orin-nano-8gb": "jetson",
    "raspberry-pi-4": "arm-cpu",
    "raspberry-pi-5": "arm-cpu",
    "stm32h743": "mcu",
    "x86-64-host": "x86-cpu",
}

NUMBER_LINE = re.compile(r"^\s*[A-Za-z_][\w.-]*\s*=\s*[-+]?(\d[\d_]*(\.\d+)?([eE][-+]?\d+)?|inf|nan)\b")


def test_builtin_targets_are_the_seven_profiles():
    assert set(ep.builtin_targets()) == set(FAMILIES)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_builtin_target_loads_by_name_with_its_family(name):
    target = ep.load_target(name)
    assert target.name == name
    assert target.family == FAMILIES[name]
    assert Path(target.source) == ep.builtin_targets()[name]


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_number_in_builtin_profile_has_a_comment(name):
    lines = ep.builtin_targets()[name].read_text(encoding="utf-8").splitlines()
    numbers = [line for line in lines if NUMBER_LINE.match(line)]
    assert numbers, "the profile has no numeric keys: the pattern above is wrong"
    uncommented = [line for line in numbers if "#" not in line]
    assert not uncommented, f"numbers without a source comment: {uncommented}"


def test_load_target_by_path(write_toml):
    path = write_toml("my-board.toml", builtin_profile_text("raspberry-pi-5"))
    for given in (path, str(path)):
        target = ep.load_target(given)
        assert target.name == "raspberry-pi-5"
        assert target.source == str(path)


def test_load_target_passes_a_target_through():
    target = ep.load_target("stm32h743")
    assert ep.load_target(target) is target


def test_malformed_toml_names_the_file(write_toml):
    path = write_toml("broken.toml", builtin_profile_text("raspberry-pi-5") + "\n[memory\n")
    with pytest.raises(ep.TargetError, match="not valid TOML") as info:
        ep.load_target(path)
    assert str(path) in str(info.value)


def test_missing_file_names_the_file(tmp_path):
    path = tmp_path / "absent.toml"
    with pytest.raises(ep.TargetError, match="file not found") as info:
        ep.load_target(path)
    assert str(path) in str(info.value)


def test_missing_key_names_file_and_key(write_toml):
    text = re.sub(r"(?m)^sram_bytes\s*=.*\n", "", builtin_profile_text("stm32h743"))
    path = write_toml("no-sram.toml", text)
    with pytest.raises(ep.TargetError) as info:
        ep.load_target(path)
    message = str(info.value)
    assert str(path) in message
    assert "memory.sram_bytes" in message and "missing" in message


def test_wrong_type_names_file_key_and_value(write_toml):
    path = write_toml("string-sram.toml", set_key(builtin_profile_text("stm32h743"), "sram_bytes", '"512K"'))
    with pytest.raises(ep.TargetError) as info:
        ep.load_target(path)
    message = str(info.value)
    assert str(path) in message
    assert "memory.sram_bytes" in message and "'512K'" in message


def test_unknown_key_lists_the_expected_keys(write_toml):
    text = builtin_profile_text("raspberry-pi-5").replace("\nsram_bytes", "\nsramm", 1)
    path = write_toml("typo.toml", text)
    with pytest.raises(ep.TargetError) as info:
        ep.load_target(path)
    message = str(info.value)
    assert str(path) in message
    assert "memory.sramm" in message and "unknown key" in message
    assert "flash_bytes, ram_bytes, sram_bytes" in message


def test_unknown_builtin_name_lists_the_builtins():
    with pytest.raises(ep.TargetError, match="unknown target 'raspberry-pi-6'") as info:
        ep.load_target("raspberry-pi-6")
    for name in FAMILIES:
        assert name in str(info.value)


@pytest.mark.parametrize(
    ("profile", "key", "value", "complaint"),
    [
        ("stm32h743", "supported", '["fp32"]', "family 'mcu' needs 'int8'"),
        ("stm32h743", "flash_bytes", "0", "family 'mcu' needs memory.sram_bytes and memory.flash_bytes"),
        ("jetson-orin-nano-8gb", "accelerator", '"none"', "family 'jetson' needs hardware.accelerator"),
        ("corstone-300-ethos-u55-128", "accelerator_config", '""', "accelerator_config"),
        ("raspberry-pi-4", "default", '"fp16"', "precision.default 'fp16' is not in precision.supported"),
        ("jetson-orin-nano-8gb", "n", "4", r"n \(4\) must be smaller than m \(4\)"),
    ],
    ids=["mcu-without-int8", "mcu-without-flash", "jetson-without-gpu", "ethos-u-without-config",
         "unsupported-default", "nm-n-not-below-m"],
)
def test_family_and_consistency_rules(write_toml, profile, key, value, complaint):
    text = set_key(builtin_profile_text(profile), key, value)
    if key == "supported":  # the default must stay among the supported precisions for the family rule to speak
        text = set_key(text, "default", '"fp32"')
    path = write_toml("edited.toml", text)
    with pytest.raises(ep.TargetError, match=complaint) as info:
        ep.load_target(path)
    assert str(path) in str(info.value)


def test_nm_section_required_exactly_when_nm_is_accelerated(write_toml):
    text = set_key(builtin_profile_text("raspberry-pi-5"), "accelerated", '["structured", "n:m"]')
    with pytest.raises(ep.TargetError, match="sparsity.nm must be given"):
        ep.load_target(write_toml("nm-without-table.toml", text))


def test_unknown_key_in_an_optional_subtable_lists_that_subtables_keys(write_toml):
    text = builtin_profile_text("jetson-orin-nano-8gb").replace("\nmin_in_channels", "\nmin_in_chanels", 1)
    path = write_toml("typo-nm.toml", text)
    with pytest.raises(ep.TargetError) as info:
        ep.load_target(path)
    message = str(info.value)
    assert "sparsity.nm.min_in_chanels" in message
    assert "expected one of: axis, m, max_gemm_speedup, min_in_channels, min_out_channels, n)" in message
