"""Data given as .safetensors files (`--data`, `--val-data`, `--calibration`, `--verify-data`, `--bn-data`):
read, and checked against what the command needs, with the option and the file named in every error."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from ..errors import ArtifactError, EdgepruneError


def load_tensors(option: str, path) -> dict:
    import safetensors.torch

    path = Path(path)
    if path.is_dir():
        raise ArtifactError(f"{option} {path}: is a directory; name a .safetensors file")
    try:
        with open(path, "rb"):  # an OSError (permissions, a symlink loop) says what it is; safetensors' would not
            pass
        return safetensors.torch.load_file(str(path))
    except FileNotFoundError:
        raise ArtifactError(f"{option} {path}: file not found") from None
    except OSError as exc:
        raise ArtifactError(f"{option} {path}: cannot read: {exc.strerror or exc}") from None
    except Exception as exc:
        raise ArtifactError(f"{option} {path}: not a safetensors file ({exc})") from None


def labelled(option: str, path: Path):
    """(x, y) from a .safetensors file holding tensors `x` (inputs, samples along the first dimension) and
    `y` (integer labels, one per sample)."""
    tensors = load_tensors(option, path)
    missing = [k for k in ("x", "y") if k not in tensors]
    if missing:
        raise EdgepruneError(f"{option} {path}: no tensor named {missing[0]!r} (has: {', '.join(tensors)}); "
                             "expected x (inputs) and y (labels)")
    if len(tensors["x"]) != len(tensors["y"]):
        raise EdgepruneError(f"{option} {path}: x has {len(tensors['x'])} samples but y has {len(tensors['y'])} labels")
    return tensors["x"], tensors["y"].long()


def samples(option: str, path: Path, example: Any) -> list:
    """The samples in a .safetensors file whose tensors are named like the example's inputs (`input_0`,
    `input_1`, ... for positional inputs, the keyword for keyword inputs), samples along the first dimension."""
    from ..inputs import normalize

    tensors = load_tensors(option, path)
    args, kwargs = normalize(example)
    names = list(kwargs) if kwargs else [f"input_{i}" for i in range(len(args))]
    missing = [n for n in names if n not in tensors]
    if missing:
        raise EdgepruneError(f"{option} {path}: no tensor named {missing[0]!r} (has: {', '.join(tensors)}); "
                             f"the model's inputs are {', '.join(names)}")
    examples = dict(kwargs) if kwargs else {f"input_{i}": a for i, a in enumerate(args)}
    for n in names:
        got, want = tuple(tensors[n].shape[1:]), tuple(getattr(examples[n], "shape", ())[1:])
        if got != want:
            raise EdgepruneError(f"{option} {path}: tensor {n!r} holds samples of shape {got}, but the model's "
                                 f"input {n} takes {want} (samples along the first dimension)")
    counts = {n: len(tensors[n]) for n in names}
    if len(set(counts.values())) > 1:
        raise EdgepruneError(f"{option} {path}: the inputs hold different numbers of samples ({counts})")
    count = counts[names[0]]
    items = [{n: tensors[n][i : i + 1] for n in names} for i in range(count)]
    return items if kwargs else [tuple(item[n] for n in names) for item in items]


def calibration_inputs(spec: Optional[str], example: Any) -> Optional[list]:
    """`random:N` (N random inputs shaped like the example — a smoke test, not real calibration) or a
    .safetensors file of inputs (see `data.samples`)."""
    if spec is None:
        return None
    from ..inputs import InputSpec

    if spec.startswith("random:"):
        try:
            count = int(spec.split(":", 1)[1])
        except ValueError:
            raise EdgepruneError(f"--calibration {spec!r}: expected random:N, e.g. random:16") from None
        shape_spec = InputSpec.of(example)
        return [shape_spec.make(seed=10_000 + i) for i in range(count)]
    return samples("--calibration", Path(spec), example)
