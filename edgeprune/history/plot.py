"""The history as a PNG: p50 with its CI per device and model over the records, `slower` verdicts and
change points marked. Drawn and written as edgeprune's other plots are (plots.py: Agg, atomic, no silent
replacing)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..errors import HistoryError
from ..plots import _MARKERS, _plot
from .changes import level_changes


@dataclass(frozen=True)
class HistoryPlot:
    """What the written plot shows, read back from the figure's artists before it was saved: the series'
    legend labels, the (x, p50) points marked `slower` and flagged, the x of each change-point line (x is
    the record's id, the "#" of `edgeprune history`'s table)."""

    path: Path
    series: tuple[str, ...]
    slower: tuple[tuple[float, float], ...]
    flagged: tuple[tuple[float, float], ...]
    change_points: tuple[float, ...]


def plot_history(records: Iterable, path: "str | Path", *, overwrite: bool = False) -> HistoryPlot:
    """Plot HistoryRecords (as `History.records()` returns them, oldest first) to a PNG at `path`.

    One line per device, model name and kind, in the device's colour: a bench result's p50 with its 95 %
    CI; a comparison's candidate p50 with its ratio's CI relative to the ratio (candidate p50 × CI / ratio:
    how precisely the interleaved rounds fixed the change). A red X marks a `slower` verdict, an orange
    ring a flagged result or a comparison that was not judged, a dotted line the first record of a new p50
    level (`level_changes`), labelled with the change."""
    records = list(records)
    if not any(r.p50 is not None for r in records):
        raise HistoryError(f"{path}: no records with a p50 to plot (is the --device or --name right?)")
    x_of = {r.id: r.id for r in records}  # the table's "#": a point in the plot is found in the table
    changes = level_changes(records)
    shown: dict = {}

    def draw(ax):
        from matplotlib.ticker import MaxNLocator

        series: dict[tuple, list] = {}
        for r in records:
            if r.p50 is not None:
                series.setdefault((r.device, r.name, r.kind), []).append(r)
        devices = list(dict.fromkeys(r.device for r in records))
        color_of = {}
        for i, ((device, name, kind), members) in enumerate(series.items()):
            color = color_of[(device, name, kind)] = f"C{devices.index(device) % 10}"
            lows, highs = zip(*(_interval(r) for r in members))
            ys = [r.p50 for r in members]
            label = f"{device} · {name}" + (" (A/B: the ratio's relative CI)" if kind == "comparison" else "")
            ax.errorbar([x_of[r.id] for r in members], ys, yerr=[[max(0.0, y - lo) for y, lo in zip(ys, lows)],
                                                                  [max(0.0, hi - y) for y, hi in zip(ys, highs)]],
                        fmt=_MARKERS[i % len(_MARKERS)] + ("-" if kind == "bench" else "--"), color=color,
                        ms=5, lw=1, capsize=3, label=label)
        marked = [r for r in records if r.p50 is not None]
        for gid, pick, style in (
                ("flagged", lambda r: not r.valid, {"marker": "o", "s": 140, "facecolors": "none",
                                                    "edgecolors": "orange", "linewidths": 1.5,
                                                    "label": "flagged / not judged"}),
                ("slower", lambda r: r.slower, {"marker": "X", "s": 110, "color": "red",
                                                "label": "slower verdict"})):
            chosen = [r for r in marked if pick(r)]
            if chosen:
                ax.scatter([x_of[r.id] for r in chosen], [r.p50 for r in chosen], zorder=4, gid=gid, **style)
        by_id = {r.id: r for r in records}
        for n, (record_id, ratio) in enumerate(changes.items()):
            r = by_id[record_id]
            ax.axvline(x_of[record_id], color=color_of[(r.device, r.name, r.kind)], linestyle=":", lw=1.5,
                       gid="change-point", label="change point (first record of a new level)" if n == 0 else None)
            # one text line per change, stepped down: changes of two devices a record apart would overlap
            ax.annotate(f"{r.device}: {ratio - 1:+.1%}", (x_of[record_id], 1.0), xycoords=("data", "axes fraction"),
                        xytext=(3, -10 - 9 * (n % 4)), textcoords="offset points", fontsize=7,
                        color=color_of[(r.device, r.name, r.kind)])
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("record # (as `edgeprune history` lists them, oldest first)")
        ax.set_ylabel("p50 (ms)")
        ax.set_title("latency history: p50 with its 95 % CI")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
        lines = [float(line.get_xdata()[0]) for line in ax.lines if line.get_gid() == "change-point"]
        marks = {gid: tuple((float(x), float(y)) for c in ax.collections if c.get_gid() == gid
                            for x, y in c.get_offsets()) for gid in ("slower", "flagged")}
        shown.update(series=tuple(c.get_label() for c in ax.containers), change_points=tuple(lines), **marks)

    written = _plot(path, overwrite, draw, size=(min(16.0, max(7.0, 5 + 0.12 * len(records))), 4.8))
    return HistoryPlot(path=written, **shown)


def _interval(r) -> tuple[float, float]:
    if r.kind == "bench" and r.p50_ci is not None:
        return r.p50_ci
    if r.kind == "comparison" and r.ratio_ci is not None and r.ratio:
        return r.p50 * r.ratio_ci[0] / r.ratio, r.p50 * r.ratio_ci[1] / r.ratio
    return r.p50, r.p50
