"""The report's charts, read as a user reads them: what is drawn, how it is told apart, what it says it shows.

Each test draws through the public plot function and inspects the figure it saved (kept open by
`drawn`, which holds back matplotlib's close)."""

from __future__ import annotations

import itertools

import matplotlib

matplotlib.use("Agg", force=True)
from matplotlib.collections import PathCollection  # noqa: E402
from matplotlib.text import Annotation, Text  # noqa: E402

from edgeprune.plots import plot_accuracy_vs_latency, plot_sensitivity  # noqa: E402
from edgeprune.sensitivity import LayerSensitivity, Sensitivity  # noqa: E402




# the demo's report: three runtimes timed on one machine, accuracies within half a point of each other
RUNTIMES = {"jetson-orin-nano-8gb": "onnxruntime", "raspberry-pi-5": "executorch",
            "corstone-300-ethos-u55-128": "tflite-micro"}
POINTS = [{"label": f"{target} {model}", "accuracy": acc, "latency_ms": ms, "device": "local", "runtime": runtime,
           "proxy": True, "group": target}
          for (target, runtime), (model, acc, ms) in itertools.product(
              RUNTIMES.items(), [("dense", 0.9722, 0.0121), ("pruned+KD", 0.9750, 0.0104)])]
POINTS[3] = {**POINTS[3], "accuracy": 0.9733, "latency_ms": 0.0110}


def _runtime_series(ax) -> dict[str, PathCollection]:
    return {c.get_label(): c for c in ax.collections if isinstance(c, PathCollection) and not c.get_label().startswith("_")}


def test_each_runtime_gets_its_own_marker_and_colour(drawn, tmp_path):
    plot_accuracy_vs_latency(POINTS, tmp_path / "acc.png")
    series = _runtime_series(drawn[-1].axes[0])
    assert len(series) == 3, list(series)
    shapes = {tuple(map(tuple, c.get_paths()[0].vertices.round(3))) for c in series.values()}
    colours = {tuple(c.get_edgecolor()[0].round(3)) for c in series.values()}
    assert len(shapes) == 3 and len(colours) == 3


def test_point_labels_do_not_overlap(drawn, tmp_path):
    plot_accuracy_vs_latency(POINTS, tmp_path / "acc.png")
    fig = drawn[-1]
    renderer = fig.canvas.get_renderer()
    labels = [t for t in fig.axes[0].texts if isinstance(t, Annotation) and t.get_text()]
    assert len(labels) == len(POINTS)
    fig.canvas.draw()
    boxes = [Text.get_window_extent(t, renderer) for t in labels]
    overlapping = [(a.get_text(), b.get_text()) for (a, p), (b, q) in itertools.combinations(zip(labels, boxes), 2)
                   if p.overlaps(q)]
    assert not overlapping


def test_accuracy_axis_spans_at_least_five_points_around_close_accuracies(drawn, tmp_path):
    plot_accuracy_vs_latency(POINTS, tmp_path / "acc.png")
    low, high = drawn[-1].axes[0].get_ylim()
    assert high - low >= 0.05 - 1e-9 and low <= 0.9722 and 0.975 <= high <= 1.0


def _sensitivity() -> Sensitivity:
    """Two layers of one channel group (measured once: identical values) and a layer of its own."""
    grouped = dict(method="structured", amounts=(0.25, 0.5), values=(0.95, 0.80), drops=(0.02, 0.17),
                   removed=(0.25, 0.5), group="features.0")
    return Sensitivity("raspberry-pi-5", 0.97, [LayerSensitivity("features.0", **grouped),
                                                LayerSensitivity("features.3", **grouped),
                                                LayerSensitivity("fc1", "structured", (0.25, 0.5), (0.96, 0.93),
                                                                 (0.01, 0.04), (0.25, 0.5), "fc1")])


def test_coupled_layers_are_one_curve_named_for_every_layer_in_it(drawn, tmp_path):
    plot_sensitivity(_sensitivity(), tmp_path / "sens.png")
    curves = [line for line in drawn[-1].axes[0].get_lines() if not line.get_label().startswith("dense baseline")]
    labels = [line.get_label() for line in curves]
    assert len(curves) == 2, labels
    assert any("features.0" in label and "features.3" in label for label in labels)


def test_sensitivity_plot_names_the_data_its_baseline_was_measured_on(drawn, tmp_path):
    plot_sensitivity(_sensitivity(), tmp_path / "sens.png", measured_on="validation split (270 digits)")
    ax = drawn[-1].axes[0]
    baseline = next(line for line in ax.get_lines() if line.get_label().startswith("dense baseline"))
    assert "validation split (270 digits)" in baseline.get_label()
    assert "validation split" in ax.get_title()


def test_latencies_fifty_times_apart_are_drawn_on_a_log_axis(drawn, tmp_path):
    # the demo's TFLite-Micro times are ~50x its ONNX/ExecuTorch ones: a linear axis puts those on one spot
    points = [{**p, "latency_ms": p["latency_ms"] * (250 if p["runtime"] == "tflite-micro" else 1)} for p in POINTS]
    plot_accuracy_vs_latency(points, tmp_path / "acc.png")
    assert drawn[-1].axes[0].get_xscale() == "log"


# -- the Pareto plot of ep.choose ---------------------------------------------------------------------------

def _choice(device: str, device_target: str, budget, dense_ms: float, rows) -> "Choice":
    from edgeprune.choosing import Candidate, Choice

    candidates = [Candidate(name, name, None, meets, "", ms, (0.99 * ms, 1.01 * ms), acc)
                  for name, ms, acc, meets in rows]
    chosen = next((name for name, _, _, meets in rows if meets), None)
    return Choice("raspberry-pi-5", device, device_target, budget, dense_ms, candidates, chosen, "", 0.975)


def _pareto_choices():
    import edgeprune as ep

    rows = [("rules", 0.60, 0.968, True), ("structured", 0.62, 0.951, True), ("unstructured", 1.02, 0.974, False),
            ("n:m", 0.99, 0.972, False)]
    return [_choice("pi5-lab", "raspberry-pi-5", ep.Budget(latency_ratio=0.7), 1.0, rows),
            _choice("local", "x86-64-host", ep.Budget(latency_ratio=0.7), 0.5,
                    [(n, ms / 2, acc, meets) for n, ms, acc, meets in rows])]


def test_the_pareto_front_keeps_the_points_nothing_beats_on_both_axes():
    from edgeprune.plots import pareto_front

    points = [(0.6, 0.968), (0.62, 0.951), (1.02, 0.974), (0.99, 0.972), (1.0, 0.975)]
    assert pareto_front(points) == [0, 3, 4]  # 0.62/95.1 % is beaten by 0.60/96.8 %; 1.02 by 1.0/97.5 %


def test_the_pareto_plot_has_a_panel_per_device_and_draws_proxies_hollow(drawn, tmp_path):
    from edgeprune.plots import plot_pareto

    plot_pareto(_pareto_choices(), tmp_path / "pareto.png")
    fig = drawn[-1]
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title().split(":")[0] for ax in panels] == ["pi5-lab", "local"]
    assert "proxy" not in panels[0].get_title() and "proxy" in panels[1].get_title()
    for ax, hollow in zip(panels, (False, True)):
        filled = [c.get_facecolor() for c in ax.collections if isinstance(c, PathCollection)]
        assert len(filled) == 5 and all((len(f) == 0 or f[0][3] == 0) == hollow for f in filled)


def test_the_pareto_plot_draws_the_front_and_the_budget(drawn, tmp_path):
    from edgeprune.plots import plot_pareto

    plot_pareto(_pareto_choices(), tmp_path / "pareto.png")
    ax = drawn[-1].axes[0]
    (front,) = [ln for ln in ax.lines if ln.get_label() == "Pareto front"]
    assert sorted(set(front.get_xdata())) == [0.6, 0.99, 1.0]  # rules, n:m, dense
    budget_lines = [ln for ln in ax.lines if ln.get_linestyle() == "--"]
    assert [ln.get_xdata()[0] for ln in budget_lines] == [0.7]  # latency_ratio=0.7 of the dense 1.0 ms
    labels = [t.get_text() for t in ax.texts if isinstance(t, Annotation)]
    assert "rules (chosen)" in labels and "budget latency_ratio=0.7" in labels


def test_pareto_labels_do_not_overlap(drawn, tmp_path):
    from edgeprune.plots import plot_pareto

    plot_pareto(_pareto_choices(), tmp_path / "pareto.png")
    fig = drawn[-1]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        labels = [t for t in ax.texts if isinstance(t, Annotation) and t.get_text() and "budget" not in t.get_text()]
        boxes = [Text.get_window_extent(t, renderer) for t in labels]
        assert not [(a.get_text(), b.get_text()) for (a, p), (b, q) in itertools.combinations(zip(labels, boxes), 2)
                    if p.overlaps(q)]


def test_a_pareto_plot_without_accuracies_says_what_to_pass(tmp_path):
    import pytest

    from edgeprune.plots import plot_pareto

    choice = _pareto_choices()[0]
    choice.dense_accuracy = None
    with pytest.raises(ValueError, match=r"accuracy is missing \(pass val_data to ep.choose\)"):
        plot_pareto([choice], tmp_path / "pareto.png")
