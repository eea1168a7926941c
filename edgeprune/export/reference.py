"""The reference an artifact is checked against wherever it runs: the inputs export verified it on, and
PyTorch's outputs on them. Export writes it beside the artifact (`<artifact>.reference.npz`), so that
`edgeprune deploy` can check the artifact on the device, in the device's runtime, without the model.

Arrays `input_<sample>_<k>` and `output_<sample>_<k>` in an .npz (read with allow_pickle=False: numbers
only, never objects).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._atomic import write_with
from ..errors import MalformedError
from ..inputs import call, normalize

SUFFIX = ".reference.npz"


def reference_path(artifact: "str | Path") -> Path:
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + SUFFIX)


@dataclass(frozen=True)
class Reference:
    inputs: list[list[np.ndarray]]   # inputs[i][k]: sample i, model input k (flattened positional order)
    outputs: list[list[np.ndarray]]  # outputs[i][k]: PyTorch's output k on sample i

    def arrays(self, outputs: bool = True) -> dict[str, np.ndarray]:
        named = {f"input_{i}_{k}": np.asarray(x) for i, xs in enumerate(self.inputs) for k, x in enumerate(xs)}
        if outputs:
            named |= {f"output_{i}_{k}": np.asarray(y) for i, ys in enumerate(self.outputs) for k, y in enumerate(ys)}
        return named

    def write(self, path: "str | Path", *, inputs_only: bool = False, overwrite: bool = False) -> Path:
        arrays = self.arrays(outputs=not inputs_only)
        return write_with(path, lambda fh: np.savez(fh, **arrays), overwrite=overwrite)


def as_numpy(example_inputs: Any) -> list[np.ndarray]:
    """One input sample as the runtimes take it: its tensors in positional-then-keyword order."""
    args, kwargs = normalize(example_inputs)
    return [t.detach().cpu().numpy() for t in list(args) + list(kwargs.values())]


def torch_outputs(model: nn.Module, example_inputs: Any) -> list[np.ndarray]:
    """PyTorch's outputs on one sample, flattened, as float arrays (a ModelOutput as its tuple)."""
    with torch.no_grad():
        out = call(model, example_inputs)
    if hasattr(out, "to_tuple"):
        out = out.to_tuple()
    flat = out if isinstance(out, (list, tuple)) else [out]
    return [t.detach().float().cpu().numpy() for t in flat if isinstance(t, torch.Tensor)]


def reference_of(model: nn.Module, samples: list) -> Reference:
    """The reference of `model` (final, in eval mode) on `samples` (each like example_inputs)."""
    return Reference([as_numpy(x) for x in samples], [torch_outputs(model, x) for x in samples])


def _numbered(data: dict[str, np.ndarray], prefix: str, path: Path) -> list[list[np.ndarray]]:
    rows: dict[int, dict[int, np.ndarray]] = {}
    for key, value in data.items():
        head, _, rest = key.partition("_")
        if head != prefix:
            continue
        i, _, k = rest.partition("_")
        if not (i.isdigit() and k.isdigit()):
            raise MalformedError(f"{path}: unexpected array {key!r} (expected {prefix}_<sample>_<k>)")
        rows.setdefault(int(i), {})[int(k)] = value
    if sorted(rows) != list(range(len(rows))) or any(sorted(r) != list(range(len(r))) for r in rows.values()):
        raise MalformedError(f"{path}: the {prefix} arrays are not numbered 0..N-1 for every sample")
    return [[rows[i][k] for k in range(len(rows[i]))] for i in range(len(rows))]


def read_reference(path: "str | Path") -> Reference:
    """The reference export wrote; MalformedError naming the file if it is not one."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {key: npz[key] for key in npz.files}
    except FileNotFoundError:
        raise MalformedError(f"{path}: not found") from None
    except Exception as exc:  # noqa: BLE001 - a bad zip, an object array (pickle refused)
        raise MalformedError(f"{path}: not an .npz of arrays ({exc})") from None
    unknown = sorted(k for k in data if not k.startswith(("input_", "output_")))
    if unknown:
        raise MalformedError(f"{path}: unexpected array {unknown[0]!r} (expected input_<sample>_<k> and "
                             f"output_<sample>_<k>)")
    inputs, outputs = _numbered(data, "input", path), _numbered(data, "output", path)
    if not inputs or len(inputs) != len(outputs):
        raise MalformedError(f"{path}: {len(inputs)} input sample(s) and {len(outputs)} output sample(s); "
                             f"expected the same number, at least 1")
    return Reference(inputs, outputs)
