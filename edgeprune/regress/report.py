"""The session's latency results as a table (the pytest plugin's summary, `edgeprune regress`)."""

from __future__ import annotations

import math


def _ms(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4g} ms"


def _ratio(row: dict) -> str:
    ratio, ci = row.get("ratio"), row.get("ci")
    if ratio is None or (isinstance(ratio, float) and math.isnan(ratio)):
        return "-"
    return f"{ratio:.3f}x [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{ratio:.3f}x"


def summary_lines(rows: list[dict]) -> list[str]:
    """One line per result: test, device, baseline -> candidate p50, ratio with its CI, verdict."""
    header = ("test", "device", "baseline -> candidate p50", "ratio [CI]", "n", "verdict")
    table = [header] + [(r.get("test", r.get("name", "")), r["device"],
                         f"{_ms(r.get('baseline_p50'))} -> {_ms(r.get('candidate_p50'))}", _ratio(r),
                         str(r.get("n", "-")), str(r.get("verdict", "")) + ("" if r.get("judged", True)
                                                                            else " (not judged)"))
                        for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
