"""What every export format provides. One module per format implements these three functions:

    export(model, example_inputs, path, precision, calibration) -> dict
        Write the artifact for `model` (a finalized nn.Module in eval mode: no masks or hooks) to `path`
        (a file inside a staging directory; siblings may be written for extra files). `example_inputs` is a
        tuple of positional tensors or a dict of keyword tensors. `precision` is "fp32" or "int8"; for int8,
        `calibration` is a list of example-input tuples/dicts (already validated as non-empty). Returns
        format facts for the manifest (e.g. delegated vs. non-delegated ops, quantizer used, extra files).
        Raises `ExportError` naming the op or layer at fault when the runtime cannot take the model.

    run(path, inputs) -> list[np.ndarray]
        Load the artifact in its real runtime on this machine and run it once on `inputs` (a list of numpy
        arrays in the model's positional/keyword order, float32 — int8 artifacts quantize inside or the
        module quantizes with the artifact's input scale). Returns the outputs as float32 numpy arrays.
        A corrupt or truncated artifact raises `ArtifactError` and loads nothing.

    weights(path) -> WeightReadback
        The constant weight tensors as stored in the artifact, with the layout each is stored in, so the
        verifier can check N:M patterns, zero fractions and channel counts inside the artifact. In graph
        order (the order the runtime executes them), each with the PyTorch layer it belongs to where the
        artifact records that. When the format keeps weights where they cannot be read back, return an
        empty list and say why in `note`.

    and a constant RUNTIME: the runtime `run` loads the artifact in, as verification errors name it.

    `export`'s facts may hold "weight_names": {parameter name as the artifact records it: the model's
    parameter name}, for formats whose recorded names leave out parts of the module path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import ExportError  # re-exported: the format modules raise it from here

# Layouts a stored weight can have; the verifier maps each to "which axis is the input (reduction) axis".
#   "oihw"  PyTorch / ONNX conv (out, in, kh, kw) and Linear (out, in)
#   "ohwi"  TFLite / XNNPACK conv (out, kh, kw, in)
#   "1hwo"  TFLite depthwise conv (1, kh, kw, out)
#   "io"    a matmul's right-hand side (in, out)
LAYOUTS = ("oihw", "ohwi", "1hwo", "io")


@dataclass
class StoredTensor:
    name: str
    array: np.ndarray  # as stored: float32, float16 or int8
    layout: str  # one of LAYOUTS; "oihw" for 2-D (out, in) matrices
    # The PyTorch module path this is the weight of, where the artifact records it ("res.0"); None where
    # it records none, or several. The verifier matches layers to tensors by it (else by the values):
    # shapes alone cannot tell two layers of equal shape apart.
    layer: str | None = None


@dataclass
class WeightReadback:
    tensors: list[StoredTensor] = field(default_factory=list)
    note: str = ""  # why tensors is empty or partial, when it is


def first_line(exc: BaseException, *, lines: int = 1, with_type: bool = False) -> str:
    """A converter's exception as a short clause for our messages: its first non-empty line(s), at most
    500 characters (their messages can run to pages of graph dumps)."""
    text = f"{type(exc).__name__}: {exc}" if with_type else str(exc)
    kept = [line.strip() for line in text.splitlines() if line.strip()][:lines]
    return " ".join(kept)[:500] if kept else type(exc).__name__
