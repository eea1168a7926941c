"""Third-party noise is silenced around the calls that make it; our own warnings and errors still come through."""

from __future__ import annotations

import logging
import os
import warnings

import pytest

from edgeprune._quiet import Noise, quiet

NOISE = Noise(warnings=((FutureWarning, r"old_api is deprecated"),),
              logs=(("thirdparty.exporter", r"^optional plugin missing"),),
              stderr=(r"^\[probe\.cpp:\d+\] Reading file",))


def _make_noise_and_news():
    warnings.warn("old_api is deprecated, use new_api", FutureWarning)
    warnings.warn("edgeprune plan for stm32h743: does not fit flash", UserWarning)
    logging.getLogger("thirdparty.exporter").warning("optional plugin missing: skipping it")
    logging.getLogger("thirdparty.exporter").warning("disk full while writing the artifact")
    os.write(2, b"[probe.cpp:71] Reading file /sys/devices/soc0/image_version\n[probe.cpp:90] segmentation fault\n")


def test_quiet_drops_only_the_named_noise_and_passes_everything_else(capfd, caplog):
    with warnings.catch_warnings(record=True) as seen, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        with quiet(NOISE):
            _make_noise_and_news()
    err = capfd.readouterr().err
    assert [str(w.message) for w in seen] == ["edgeprune plan for stm32h743: does not fit flash"]
    assert [r.getMessage() for r in caplog.records] == ["disk full while writing the artifact"]
    assert "Reading file" not in err and "[probe.cpp:90] segmentation fault" in err


def test_quiet_filters_nothing_outside_its_block(capfd, caplog):
    with quiet(NOISE):
        pass
    with warnings.catch_warnings(record=True) as seen, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        _make_noise_and_news()
    assert len(seen) == 2 and len(caplog.records) == 2
    assert "Reading file" in capfd.readouterr().err


def test_quiet_gives_back_what_the_block_wrote_to_stderr_when_it_raises(capfd):
    with pytest.raises(RuntimeError, match="boom"):
        with quiet(NOISE):
            os.write(2, b"[probe.cpp:90] the reason it failed\n")
            raise RuntimeError("boom")
    assert "the reason it failed" in capfd.readouterr().err
