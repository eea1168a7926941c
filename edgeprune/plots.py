"""PNG charts: sensitivity curves, per-layer sparsity by target, accuracy against latency.

matplotlib with the Agg backend (no display). Every file is written atomically (a temp file in the same
directory, then `os.replace`) and an existing file is replaced only with `overwrite=True`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ._atomic import write_with
from .errors import ArtifactError

if TYPE_CHECKING:  # pragma: no cover
    from .plan import Plan
    from .sensitivity import Sensitivity


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: "str | Path", overwrite: bool) -> Path:
    plt = _pyplot()
    try:
        return write_with(path, lambda fh: fig.savefig(fh, format="png", dpi=120, bbox_inches="tight"),
                          overwrite=overwrite)
    finally:
        plt.close(fig)


def _plot(path: "str | Path", overwrite: bool, draw: Callable, size=(7, 4.5)) -> Path:
    path = Path(path)
    if path.exists() and not overwrite:  # refuse before drawing anything
        raise ArtifactError(f"{path}: already exists; pass overwrite=True to replace it")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=size)
    draw(ax)
    return _save(fig, path, overwrite)


def plot_sensitivity(sens: "Sensitivity", path: "str | Path", *, overwrite: bool = False) -> Path:
    """One line per layer: the metric against the amount pruned; the dense baseline dashed."""

    def draw(ax):
        for row in sens.rows:
            style = "o" if len(row.amounts) == 1 else "o-"
            ax.plot([0.0, *row.amounts], [sens.baseline, *row.values], style, label=f"{row.layer} ({row.method})")
        ax.axhline(sens.baseline, linestyle="--", color="grey", label=f"dense baseline {sens.baseline:.3g}")
        ax.set_xlabel("fraction pruned (this layer only)")
        ax.set_ylabel(sens.metric)
        ax.set_title(f"per-layer sensitivity, {sens.target}")
        ax.legend(fontsize=7, loc="lower left")

    return _plot(path, overwrite, draw)


def plot_layer_sparsity(plan_by_target: "dict[str, Plan]", path: "str | Path", *, overwrite: bool = False) -> Path:
    """Per layer, the fraction of its weights removed or zeroed, one bar series per target."""
    if not plan_by_target:
        raise ValueError("plot_layer_sparsity needs at least one plan")

    def removed(d) -> float:
        if d.method in ("n:m", "unstructured"):
            kept_shape = (d.out_channels[1] * d.in_channels[1]) / max(1, d.out_channels[0] * d.in_channels[0])
            return 1 - kept_shape * (1 - d.amount)
        if d.method == "structured" or d.out_channels[1] != d.out_channels[0] or d.in_channels[1] != d.in_channels[0]:
            return 1 - (d.out_channels[1] * d.in_channels[1]) / max(1, d.out_channels[0] * d.in_channels[0])
        return 0.0

    layers = list(dict.fromkeys(d.layer for p in plan_by_target.values() for d in p.layers))

    def draw(ax):
        width = 0.8 / len(plan_by_target)
        for i, (name, p) in enumerate(plan_by_target.items()):
            by_layer = {d.layer: removed(d) for d in p.layers}
            xs = [j + (i - (len(plan_by_target) - 1) / 2) * width for j in range(len(layers))]
            ax.bar(xs, [by_layer.get(n, 0.0) for n in layers], width, label=name)
        ax.set_xticks(range(len(layers)))
        ax.set_xticklabels(layers, rotation=60, ha="right", fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_ylabel("fraction of weights removed or zeroed")
        ax.set_title("per-layer pruning by target")
        ax.legend(fontsize=8)

    return _plot(path, overwrite, draw, size=(max(7, 0.45 * len(layers) + 3), 4.5))


def plot_accuracy_vs_latency(points: list[dict], path: "str | Path", *, overwrite: bool = False) -> Path:
    """Accuracy against latency; points are dicts {label, accuracy, latency_ms, device, runtime, proxy}.
    Proxy latencies (estimated, not measured on the device) are drawn hollow and labelled "proxy"."""
    required = ("label", "accuracy", "latency_ms")
    for p in points:
        missing = [k for k in required if k not in p]
        if missing:
            raise ValueError(f"point {p!r}: missing {', '.join(missing)}")

    def draw(ax):
        devices = list(dict.fromkeys(p.get("device", "") for p in points))
        colors = {d: f"C{i % 10}" for i, d in enumerate(devices)}
        seen = set()
        for p in points:
            proxy = bool(p.get("proxy", False))
            c = colors[p.get("device", "")]
            key = (p.get("device", ""), p.get("runtime", ""), proxy)
            legend = f"{p.get('device', '')} / {p.get('runtime', '')}" + (" (proxy)" if proxy else "")
            ax.scatter([p["latency_ms"]], [p["accuracy"]], s=60, edgecolors=c,
                       facecolors="none" if proxy else c, label=None if key in seen else legend)
            seen.add(key)
            ax.annotate(p["label"] + (" (proxy)" if proxy else ""), (p["latency_ms"], p["accuracy"]),
                        textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xlabel("latency (ms)")
        ax.set_ylabel("accuracy")
        ax.set_title("accuracy vs latency")
        if points:
            ax.legend(fontsize=7)

    return _plot(path, overwrite, draw)
