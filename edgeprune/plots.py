"""PNG charts: sensitivity curves, per-layer sparsity by target, accuracy against latency, and the Pareto
plot of `ep.choose`'s candidates.

matplotlib with the Agg backend (no display). Every file is written atomically (a temp file in the same
directory, then `os.replace`) and an existing file is replaced only with `overwrite=True`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ._atomic import write_with
from .errors import ArtifactError

if TYPE_CHECKING:  # pragma: no cover
    from .choosing import Choice
    from .plan import Plan
    from .sensitivity import Sensitivity


# distinct per curve or runtime, so series stay apart where they overlap and in greyscale
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_LINESTYLES = ("-", "--", "-.", ":")


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


def _sensitivity_curves(sens: "Sensitivity") -> "list[tuple[list[str], object]]":
    """(layers, row) per curve: a channel group's layers shrink together, so they share one measurement
    and get one curve; n:m and unstructured layers are measured (and drawn) one by one."""
    curves: dict[str, tuple[list[str], object]] = {}
    for row in sens.rows:
        key = f"group {row.group}" if row.method == "structured" and row.group else f"layer {row.layer}"
        curves.setdefault(key, ([], row))[0].append(row.layer)
    return list(curves.values())


def _layers_label(layers: list[str], most: int = 4) -> str:
    shown = ", ".join(layers[:most])
    return shown + (f" +{len(layers) - most} more" if len(layers) > most else "")


def plot_sensitivity(sens: "Sensitivity", path: "str | Path", *, overwrite: bool = False,
                     measured_on: str = "") -> Path:
    """The metric against the amount pruned: one curve per channel group (labelled with its layers) or
    per n:m / unstructured layer; the dense baseline dashed. `measured_on` names the data the metric was
    measured on ("validation split"), so the plot is not read against numbers taken on other data."""
    curves = _sensitivity_curves(sens)

    def draw(ax):
        for i, (layers, row) in enumerate(curves):
            kind = "channel group" if row.method == "structured" and len(layers) > 1 else row.method
            ax.plot([0.0, *row.amounts], [sens.baseline, *row.values], marker=_MARKERS[i % len(_MARKERS)],
                    linestyle="none" if len(row.amounts) == 1 else _LINESTYLES[i % len(_LINESTYLES)],
                    color=f"C{i % 10}", label=f"{_layers_label(layers)} ({kind})")
        on = f", {measured_on}" if measured_on else ""
        value = f"{sens.baseline:.1%}" if 0.0 <= sens.baseline <= 1.0 else f"{sens.baseline:.3g}"
        ax.axhline(sens.baseline, linestyle="--", color="grey", label=f"dense baseline {value}{on}")
        ax.set_xlabel("fraction pruned (this channel group or layer only)")
        ax.set_ylabel(sens.metric)
        ax.set_title(f"per-layer sensitivity, {sens.target}" + (f"\nmeasured on the {measured_on}" if measured_on else ""))
        ax.legend(fontsize=7, loc="best")

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


def _accuracy_limits(accuracies: list[float], least_span: float = 0.05) -> tuple[float, float]:
    """A y range at least `least_span` wide around the points, inside [0, 1]: points a few tenths of a
    point apart are not stretched over the whole axis as if they differed a lot."""
    lo, hi = min(accuracies), max(accuracies)
    pad = max((least_span - (hi - lo)) / 2, 0.1 * (hi - lo), 0.005)
    lo, hi = lo - pad, hi + pad
    if hi > 1.0:
        lo, hi = max(0.0, lo - (hi - 1.0)), 1.0
    if lo < 0.0:
        lo, hi = 0.0, min(1.0, hi - lo)
    return lo, hi


# label offsets (points) tried in turn until a label overlaps no other label, marker or the axes' edge
# (above the point when dy > 0, below it when dy < 0)
_LABEL_OFFSETS = [(dx, dy) for dy in (6, -6, 20, -20, 34, -34, 48, -48) for dx in (8, -8)]


def _place_labels(ax, xy_labels: list[tuple[float, float, str]]) -> list:
    """Annotate each point with its label where it overlaps no other label, no marker and stays inside the
    axes; a label that had to move away from its point gets a thin leader line."""
    from matplotlib.text import Text

    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    radius = 7 * fig.dpi / 72  # about a marker's radius (s=60 points squared)
    markers = []
    for x, y, _ in xy_labels:
        px, py = ax.transData.transform((x, y))
        markers.append((px - radius, py - radius, px + radius, py + radius))
    placed, texts = [], []
    for i, (x, y, label) in enumerate(xy_labels):
        taken = placed + markers[:i] + markers[i + 1:]  # its own marker is what the offset already clears
        for dx, dy in _LABEL_OFFSETS:
            far = abs(dy) > 6
            text = ax.annotate(label, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=7,
                               ha="left" if dx > 0 else "right", va="bottom" if dy > 0 else "top",
                               arrowprops={"arrowstyle": "-", "color": "grey", "lw": 0.5, "shrinkA": 0,
                                           "shrinkB": 5} if far else None)
            text.update_positions(renderer)  # an annotation's offset is resolved only when drawn
            box = Text.get_window_extent(text, renderer)  # the text alone, not its leader line
            rect = (box.x0 - 2, box.y0 - 2, box.x1 + 2, box.y1 + 2)
            inside = frame.x0 <= rect[0] and rect[2] <= frame.x1 and frame.y0 <= rect[1] and rect[3] <= frame.y1
            if inside and not any(_overlap(rect, t) for t in taken):
                break
            text.remove()
        else:  # no free place: the first one, overlapping rather than missing
            dx, dy = _LABEL_OFFSETS[0]
            text = ax.annotate(label, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=7)
            text.update_positions(renderer)
            box = Text.get_window_extent(text, renderer)
            rect = (box.x0, box.y0, box.x1, box.y1)
        placed.append(rect)
        texts.append(text)
    return texts


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def plot_accuracy_vs_latency(points: list[dict], path: "str | Path", *, overwrite: bool = False) -> Path:
    """Accuracy against latency; points are dicts {label, accuracy, latency_ms, device, runtime, proxy,
    group}. Each device/runtime pair has its own marker and colour; proxy latencies (timed on a machine
    that is not the artifact's target) are drawn hollow and say "proxy" in the legend; points sharing a
    `group` (one target's dense and pruned artifacts, say) are joined by an arrow in the order given.
    Labels are placed where they overlap no other label or marker."""
    required = ("label", "accuracy", "latency_ms")
    for p in points:
        missing = [k for k in required if k not in p]
        if missing:
            raise ValueError(f"point {p!r}: missing {', '.join(missing)}")

    def draw(ax):
        from matplotlib.ticker import PercentFormatter

        kinds = list(dict.fromkeys((p.get("device", ""), p.get("runtime", "")) for p in points))
        style = {k: (f"C{i % 10}", _MARKERS[i % len(_MARKERS)]) for i, k in enumerate(kinds)}
        top = max((p["latency_ms"] for p in points), default=0.0)
        # sub-millisecond latencies read better in µs than as 0.0125 ms
        scale, unit = (1000.0, "µs") if 0 < top < 1.0 else (1.0, "ms")
        if points:
            low = min(p["latency_ms"] for p in points)
            if low > 0 and top / low > 10:  # a slow runtime would squash the fast ones onto one spot
                ax.set_xscale("log")
                ax.set_xlim(low * scale / 1.5, top * scale * 2.5)
            else:
                ax.set_xlim(0, top * scale * 1.35 if top > 0 else 1)
            ax.set_ylim(*_accuracy_limits([p["accuracy"] for p in points]))
        groups: dict = {}
        for p in points:
            if p.get("group") is not None:
                groups.setdefault(p["group"], []).append(p)
        for members in groups.values():
            for a, b in zip(members, members[1:]):
                ax.annotate("", (b["latency_ms"] * scale, b["accuracy"]), (a["latency_ms"] * scale, a["accuracy"]),
                            arrowprops={"arrowstyle": "->", "color": "lightgrey", "lw": 1, "shrinkA": 6, "shrinkB": 6})
        seen = set()
        for p in points:
            proxy = bool(p.get("proxy", False))
            kind = (p.get("device", ""), p.get("runtime", ""))
            color, marker = style[kind]
            legend = f"{kind[0]} / {kind[1]}" + (" (proxy)" if proxy else "")
            ax.scatter([p["latency_ms"] * scale], [p["accuracy"]], s=60, marker=marker, edgecolors=color,
                       linewidths=1.5, facecolors="none" if proxy else color,
                       label=None if (kind, proxy) in seen else legend, zorder=3)
            seen.add((kind, proxy))
        ax.set_xlabel(f"latency, p50 ({unit})" + (", log scale" if ax.get_xscale() == "log" else ""))
        ax.set_ylabel("accuracy")
        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=1))
        ax.set_title("accuracy vs latency")
        if points:
            # below the axes: a legend inside would cover points or labels
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=min(3, len(seen)))
            _place_labels(ax, [(p["latency_ms"] * scale, p["accuracy"], p["label"]) for p in points])

    return _plot(path, overwrite, draw)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the (latency, accuracy) points no other point beats on both (as fast or faster and at
    least as accurate, better on one), fastest first."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -float("inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def plot_pareto(choices: "list[Choice]", path: "str | Path", *, overwrite: bool = False) -> Path:
    """Accuracy against measured latency of every candidate of `choices` (`ep.choose`), one panel per device:
    each candidate kind has its own marker, the dense model a black star, the Pareto front (no candidate both
    faster and more accurate) a step line, each latency budget a dashed line; a choice measured on a device
    that is not its target's (a proxy) is drawn hollow and says so in its panel's title. Labels are placed
    where they overlap no other label or marker."""
    plt = _pyplot()
    path = Path(path)
    if path.exists() and not overwrite:
        raise ArtifactError(f"{path}: already exists; pass overwrite=True to replace it")
    if not choices:
        raise ValueError("plot_pareto: no choices to plot")
    missing = [f"{ch.device}/{c.name}" for ch in choices for c in ch.candidates
               if c.measured_ms is not None and c.accuracy is None]
    if missing or any(ch.dense_accuracy is None for ch in choices):
        raise ValueError("plot_pareto: accuracy is missing (pass val_data to ep.choose): "
                         + ", ".join(missing or [ch.device for ch in choices if ch.dense_accuracy is None]))
    devices = list(dict.fromkeys(ch.device for ch in choices))
    kinds = list(dict.fromkeys(c.name for ch in choices for c in ch.candidates))
    style = {k: (f"C{i % 10}", _MARKERS[i % len(_MARKERS)]) for i, k in enumerate(kinds)}
    fig, axes = plt.subplots(1, len(devices), figsize=(6.5 * len(devices), 4.8), squeeze=False)
    several = len({str(ch.budget) for ch in choices}) > 1
    for ax, device in zip(axes[0], devices):
        mine = [ch for ch in choices if ch.device == device]
        points, labels, seen = [], [], set()
        for ch in mine:
            hollow = ch.proxy
            tag = f" @ {ch.budget}" if several else ""
            rows = [("dense", ch.dense_ms, ch.dense_accuracy, "black", "*")]
            rows += [(c.name, c.measured_ms, c.accuracy, *style[c.name]) for c in ch.candidates
                     if c.measured_ms is not None]
            for name, ms, acc, color, marker in rows:
                legend = name if name not in seen else None
                seen.add(name)
                ax.scatter([ms], [acc], s=90 if marker == "*" else 60, marker=marker, edgecolors=color,
                           facecolors="none" if hollow else color, linewidths=1.5, label=legend, zorder=3)
                points.append((ms, acc))
                chosen = " (chosen)" if name == ch.chosen else ""
                labels.append(f"{name}{tag}{chosen}")
            budget_ms = _budget_ms(ch)
            if budget_ms is not None:
                ax.axvline(budget_ms, color="grey", linestyle="--", linewidth=0.8, zorder=1)
                ax.annotate(f"budget {ch.budget}", (budget_ms, 1.0), xycoords=("data", "axes fraction"),
                            xytext=(3, -10), textcoords="offset points", fontsize=7, color="grey", rotation=90,
                            va="top")
        front = pareto_front(points)
        xs = [points[i][0] for i in front]
        ys = [points[i][1] for i in front]
        ax.step(xs, ys, where="post", color="lightgrey", linewidth=1.2, zorder=2, label="Pareto front")
        top = max(p[0] for p in points)
        ax.set_xlim(0, top * 1.3)
        ax.set_ylim(*_accuracy_limits([p[1] for p in points]))
        proxy = any(ch.proxy for ch in mine)
        targets = ", ".join(dict.fromkeys(ch.target for ch in mine))
        ax.set_title(f"{device}: {targets}" + (" (proxy: hollow, not the target's own device)" if proxy else ""),
                     fontsize=9)
        from matplotlib.ticker import PercentFormatter

        ax.set_xlabel("latency, p50 measured on the device (ms)")
        ax.set_ylabel("accuracy")
        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=1))
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=min(4, len(seen) + 1))
        _place_labels(ax, [(x, y, label) for (x, y), label in zip(points, labels)])
    return _save(fig, path, overwrite)


def _budget_ms(choice: "Choice") -> "float | None":
    """A latency budget in ms on the choice's device (a latency_ratio one against its measured dense p50)."""
    from .budget import LatencyBudget, LatencyRatioBudget

    if isinstance(choice.budget, LatencyRatioBudget):
        return choice.budget.value * choice.dense_ms
    if isinstance(choice.budget, LatencyBudget):
        return choice.budget.value
    return None
