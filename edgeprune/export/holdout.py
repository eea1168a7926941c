"""Which inputs an export is verified on, and which it is calibrated on.

An int8 model is calibrated for the value ranges of its calibration data, and is only meant to agree with
PyTorch on data like it. Random normal inputs are not: real 8x8 digits lie in [0, 1], N(0, 1) noise does
not, so its activations clip at the calibrated ranges and a sound model fails verification (cosine 0.56,
top-1 0.25). So without `verify_inputs`, an int8 export holds out part of its calibration samples,
calibrates on the rest and verifies on the held-out ones. fp32 agrees element-wise on any input: without
`verify_inputs` it is verified on seeded random inputs of the example's shapes.

    data = split(calibration, verify_inputs, example_inputs, fraction)
    data.calibration   # what the quantizer sees
    data.verification  # what the artifact and PyTorch are compared on
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Optional

import numpy as np

from ..inputs import InputSpec
from .formats import ExportError

VERIFY_SPLIT = 0.2  # the fraction of the calibration samples held out to verify an int8 export on
MAX_HELD_OUT = 16  # each held-out sample runs through the runtime (and TFLite-Micro): enough to judge top-1
RANDOM_INPUTS = 4  # an fp32 export without verify_inputs
_SEED = 0  # the held-out samples are a seeded draw: a given list always splits the same way


class Source(str, Enum):
    HELD_OUT = "held-out calibration"
    GIVEN = "verify_inputs"
    RANDOM = "random"


@dataclass(frozen=True)
class Split:
    calibration: list
    verification: list
    source: Source

    def describe(self) -> str:
        """The verification inputs, for error messages: how many, and where they came from."""
        n = len(self.verification)
        if self.source is Source.HELD_OUT:
            return (f"{n} held-out calibration sample(s) (calibrated on the other {len(self.calibration)}; "
                    f"pass verify_inputs= to choose the verification data)")
        if self.source is Source.GIVEN:
            return f"the {n} verify_inputs"
        return f"{n} seeded random input(s) (pass verify_inputs= to verify on real data)"


def split(calibration: list, verify_inputs: Optional[list], example_inputs: Any,
          fraction: float = VERIFY_SPLIT) -> Split:
    """`calibration`: the int8 calibration samples (empty for fp32). `verify_inputs`, when given, is used as
    it is and all of `calibration` calibrates. Otherwise round(fraction * N) samples (at least 1, at most
    MAX_HELD_OUT) are held out of N >= 2 calibration samples, drawn with a fixed seed so that samples in
    any order (sorted by class, say) give a mixed held-out set."""
    if not 0 < fraction < 1:
        raise ExportError(f"verify_split={fraction!r}: expected the fraction of calibration samples to verify "
                          f"on, between 0 and 1 (default {VERIFY_SPLIT})")
    if verify_inputs is not None:
        if not verify_inputs:
            raise ExportError("verify_inputs is empty: pass examples to verify on (each like example_inputs), "
                              "or leave it out")
        return Split(list(calibration), list(verify_inputs), Source.GIVEN)
    if calibration:
        n = len(calibration)
        if n < 2:
            raise ExportError("int8 export: 1 calibration sample, none to spare for verification (an int8 model "
                              "is verified on samples held out of its calibration data): pass more calibration "
                              "samples, or verify_inputs= (CLI: --verify-data)")
        count = min(MAX_HELD_OUT, max(1, round(fraction * n)))
        held = set(np.random.default_rng(_SEED).permutation(n)[:count].tolist())
        return Split([x for i, x in enumerate(calibration) if i not in held],
                     [x for i, x in enumerate(calibration) if i in held], Source.HELD_OUT)
    spec = InputSpec.of(example_inputs)
    # seeded apart from the example (seed 0) and from `random:N` calibration (10_000 + i)
    return Split([], [spec.make(seed=1000 + i) for i in range(RANDOM_INPUTS)], Source.RANDOM)
