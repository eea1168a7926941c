"""The history of measurements: every bench result and comparison appended to one SQLite file, its trend
per device and model, and the change points in it.

    history = ep.open_history()                          # .edgeprune/history.sqlite (or a path, sqlite:///URL)
    history.record_bench(result)                         # `edgeprune bench` does this for each result
    records = history.records(device="pi5-lab", name="model.pte")
    level_changes(records)                               # {record id: new p50 level / old}
    plot_history(records, "history.png")

Modules: `store` (the database: schema, appending from several processes at once, refusing a damaged or
newer file without touching it), `changes` (change points with ruptures, confirmed by a t-test) and
`plot` (the PNG).
"""

from .changes import change_points, level_changes
from .plot import HistoryPlot, plot_history
from .store import (AUTO, DEFAULT_PATH, ENV_VAR, SCHEMA_VERSION, History, HistoryRecord, git_commit, history_path,
                    open_history)

__all__ = ["AUTO", "DEFAULT_PATH", "ENV_VAR", "SCHEMA_VERSION", "History", "HistoryPlot", "HistoryRecord",
           "change_points", "git_commit", "history_path", "level_changes", "open_history", "plot_history"]
