"""Third-party noise, silenced around the calls that make it and nowhere else.

The exporters and runtimes edgeprune drives print things a user can neither act on nor avoid: deprecation
warnings raised inside torch's own pytree code, torchao's "Failed to load" for CUDA kernels a CPU machine
never needs, torch.onnx's "torchvision is not installed", cpuinfo probing /sys files a VM lacks, absl's
banner about log messages before InitializeLog. Each export module names the noise its calls make
(`Noise`) and runs those calls inside `quiet(noise)`:

* matching Python warnings are ignored (a filter that ends with the block);
* matching log records of the named loggers are dropped (a filter removed after the block);
* what is written to file descriptor 2 meanwhile (C and C++ code writes there, bypassing Python) is
  captured, and every line that matches no pattern is written back to `sys.stderr` when the block ends.

Nothing unmatched is lost: our own warnings, errors and a third party's real error all come through
(stderr lines a little later, in order). Nothing is filtered outside the block.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import warnings
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Iterator


@dataclass(frozen=True)
class Noise:
    """What one third-party call prints that is not worth a user's attention; every pattern is a regular
    expression, as narrow as the message allows."""

    # (category, pattern matched at the start of the warning's message)
    warnings: tuple[tuple[type[Warning], str], ...] = ()
    # (logger name, pattern searched in the record's message): records logged by exactly that logger
    logs: tuple[tuple[str, str], ...] = ()
    # patterns searched in each line written to file descriptor 2
    stderr: tuple[str, ...] = ()

    def __add__(self, other: "Noise") -> "Noise":
        return Noise(self.warnings + other.warnings, self.logs + other.logs, self.stderr + other.stderr)


class _DropMatching(logging.Filter):
    def __init__(self, pattern: str):
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


@contextmanager
def _logs_dropped(logs: tuple[tuple[str, str], ...]) -> Iterator[None]:
    attached = [(logging.getLogger(name), _DropMatching(pattern)) for name, pattern in logs]
    for logger, f in attached:
        logger.addFilter(f)
    try:
        yield
    finally:
        for logger, f in attached:
            logger.removeFilter(f)


@contextmanager
def _stderr_filtered(patterns: tuple[str, ...]) -> Iterator[None]:
    compiled = [re.compile(p) for p in patterns]
    try:
        sys.stderr.flush()
    except (AttributeError, ValueError):
        pass
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            try:
                sys.stderr.flush()  # Python's own writes of the block land in the sink too, and come back
            except (AttributeError, ValueError):
                pass
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode("utf-8", "replace")
            kept, dropped = [], False
            for line in text.splitlines(keepends=True):
                # a blank line right after a dropped one is its trailer (absl ends some messages with one)
                dropped = any(p.search(line) for p in compiled) or (dropped and not line.strip())
                if not dropped:
                    kept.append(line)
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


@contextmanager
def quiet(noise: Noise) -> Iterator[None]:
    """Run the block with `noise` silenced (usable as a decorator too); everything else passes through."""
    with ExitStack() as stack:
        stack.enter_context(warnings.catch_warnings())
        for category, pattern in noise.warnings:
            warnings.filterwarnings("ignore", message=pattern, category=category)
        if noise.logs:
            stack.enter_context(_logs_dropped(noise.logs))
        if noise.stderr:
            stack.enter_context(_stderr_filtered(noise.stderr))
        yield


# -- the noise of the libraries edgeprune calls, each named where it comes from ----------------------

# torch.export deep-copies pytree specs; torch's own copy path trips its LeafSpec deprecation
TORCH_EXPORT = Noise(warnings=((FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),))

# importing torchao (ExecuTorch's and litert-torch's quantizers do): CUDA-only kernels it cannot load on a
# CPU machine, and a pytree registration torch now calls deprecated
TORCHAO_IMPORT = Noise(logs=(("torchao", r"^Failed to load .*: Could not load this library"),
                             ("torch.utils._pytree", r"is an Enum subclass and is now natively supported")))

# torch.onnx's exporter registers torchvision's ops and says so for each when torchvision is absent
TORCH_ONNX = Noise(logs=(("torch.onnx._internal.exporter._registration",
                          r"^torchvision is not installed\. Skipping torchvision::"),))

# XNNPACK's cpuinfo (in the ExecuTorch runtime) probing Arm-only /sys files, on its first load
XNNPACK_CPUINFO = Noise(stderr=(r"^\[cpuinfo_utils\.cpp:\d+\] (Reading file|Failed to open midr file|"
                                r"CPU info and manual query on # of cpus dont match)",))

# TensorFlow's converter (litert-torch) and the LiteRT interpreter: absl's banner and INFO lines
TFLITE = Noise(stderr=(
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$",
    r"^I\d{4} [\d:. ]+\d+ port\.cc:\d+\] oneDNN custom operations are on",
    r"^I\d{4} [\d:. ]+\d+ status_scoped_diagnostic_handler\.cc:\d+\] .*: warning: Remove trivial `rescale` op",
    r"^I\d{4} [\d:. ]+\d+ flatbuffer_export\.cc:\d+\] Estimated count of arithmetic ops",
    r"^INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.$",
))
