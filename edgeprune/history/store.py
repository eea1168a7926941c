"""The history database: one SQLite file that bench results and comparisons are appended to, never rewritten.

One row per record. What is queried or shown gets a column of its own (when, which commit, device, model
name, artifact sha256, runtime, p50 and its CI, the verdict and ratio); the rest is JSON text beside it
(settings, the other statistics, raw samples or rounds, device state, flags), so `HistoryRecord.result()`
gives back the BenchResult or Comparison that was recorded, equal to the original.

Several processes may append at once (CI jobs on one runner, `bench -d a -d b` beside a pytest session):
the file is in WAL mode, each append is one short `BEGIN IMMEDIATE` transaction, and a writer waits for the
lock up to `busy_timeout_s` before it gives up with a HistoryError. A file that is not a sound SQLite
database, or is another program's, or was written by a newer edgeprune, is refused before anything is
written to it: the file stays byte for byte as it was.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional
from urllib.parse import unquote

from ..errors import HistoryError

SCHEMA_VERSION = 1
DEFAULT_PATH = Path(".edgeprune") / "history.sqlite"  # relative to the current directory, as git's .git is
ENV_VAR = "EDGEPRUNE_HISTORY"  # the CLI's default --history, when set (CI sets it once for every job)
KINDS = ("bench", "comparison")
BUSY_TIMEOUT_S = 30.0  # an append is milliseconds; 30 s of waiting means a writer is stuck, not busy
GIT_TIMEOUT_S = 5.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    recorded_at TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('bench', 'comparison')),
    git_commit TEXT,
    name TEXT NOT NULL,
    device TEXT NOT NULL,
    artifact TEXT NOT NULL,
    artifact_sha256 TEXT NOT NULL,
    baseline TEXT,
    baseline_sha256 TEXT,
    runtime TEXT NOT NULL,
    runtime_version TEXT NOT NULL,
    measured_at TEXT,
    p50 REAL,
    p50_ci_low REAL,
    p50_ci_high REAL,
    baseline_p50 REAL,
    ratio REAL,
    ratio_ci_low REAL,
    ratio_ci_high REAL,
    verdict TEXT,
    valid INTEGER NOT NULL,
    settings TEXT NOT NULL,
    statistics TEXT NOT NULL,
    samples TEXT NOT NULL,
    device_state TEXT NOT NULL,
    flags TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_by_series ON records (device, name, kind, id);
"""

# the fields of a result's to_dict() the `samples` and `device_state` columns hold (`settings` and `flags` hold
# the fields of those names); every other field goes to `statistics`
_SAMPLES = {"bench": ("samples",), "comparison": ("baseline_rounds", "candidate_rounds")}
_STATE = ("state_before", "state_after", "load")
_DERIVED = ("schema", "valid", "proxy")  # to_dict() adds these; the dataclass computes them


class _Auto:
    def __repr__(self) -> str:
        return "AUTO"


AUTO: Any = _Auto()  # `commit=AUTO`: the current directory's `git rev-parse HEAD`, None outside a repository


@dataclass(frozen=True)
class HistoryRecord:
    """One row of the history, oldest first by `id`.

    `p50` is the bench result's median (ms), or for a comparison the candidate's (median of its per-round
    medians) with `baseline_p50` the baseline's; `p50_ci` is the bench result's 95 % CI of p50 (None for a
    comparison, whose uncertainty is `ratio_ci`, the CI of candidate/baseline). `valid` is the bench
    result's (no flags) or the comparison's `judged`. `commit` is the git commit the record was made at,
    None when there was none."""

    id: int
    recorded_at: str
    kind: str
    commit: Optional[str]
    name: str
    device: str
    artifact: str
    artifact_sha256: str
    baseline: Optional[str]
    baseline_sha256: Optional[str]
    runtime: str
    runtime_version: str
    measured_at: Optional[str]
    p50: Optional[float]
    p50_ci: Optional[tuple[float, float]]
    baseline_p50: Optional[float]
    ratio: Optional[float]
    ratio_ci: Optional[tuple[float, float]]
    verdict: Optional[str]
    valid: bool
    settings: dict
    statistics: dict
    samples: dict
    device_state: dict
    flags: tuple[str, ...]

    @property
    def slower(self) -> bool:
        return self.verdict == "slower"

    def result(self):
        """The BenchResult or Comparison that was recorded."""
        from ..remote import BenchResult, Comparison

        data = {**self.statistics, "settings": self.settings, **self.samples, **self.device_state,
                "flags": list(self.flags)}
        return (BenchResult if self.kind == "bench" else Comparison).from_dict(data)


def git_commit(cwd: "str | Path | None" = None, timeout: float = GIT_TIMEOUT_S) -> Optional[str]:
    """`git rev-parse HEAD` in `cwd`; None without git, outside a repository, before its first commit, or
    when git takes longer than `timeout` (a hung network file system must not hold up a benchmark)."""
    try:
        done = subprocess.run(["git", "rev-parse", "--verify", "--quiet", "HEAD"], cwd=cwd, capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    sha = done.stdout.strip()
    return sha if done.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", sha) else None


def history_path(where: "str | os.PathLike | None" = None) -> Path:
    """The file a `--history` value names: a path, or an SQLite URL as SQLAlchemy writes them —
    `sqlite:///rel/history.sqlite` (relative to the current directory), `sqlite:////abs/history.sqlite`
    (absolute: the path after `sqlite:///` starts with `/`). None: `.edgeprune/history.sqlite`."""
    if where is None:
        return DEFAULT_PATH
    if isinstance(where, os.PathLike):
        return Path(where)
    text = str(where)
    url = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", text)
    if not url:
        if not text:
            raise HistoryError("--history '': expected a file path or sqlite:///PATH")
        return Path(text)
    scheme, rest = url.groups()
    usage = "a file path, sqlite:///relative/path.sqlite or sqlite:////absolute/path.sqlite"
    if scheme.lower() != "sqlite":
        raise HistoryError(f"--history {text}: the history is an SQLite file; '{scheme}://' URLs are not "
                           f"supported (expected {usage})")
    if "?" in rest or "#" in rest:
        raise HistoryError(f"--history {text}: URL options ('?…') are not supported (expected {usage})")
    if not rest.startswith("/"):
        raise HistoryError(f"--history {text}: names a host ('{rest.split('/')[0]}'); an SQLite file has none "
                           f"(expected {usage})")
    path = unquote(rest[1:])
    if not path:
        raise HistoryError(f"--history {text}: names no file (an in-memory database would keep nothing; "
                           f"expected {usage})")
    return Path(path)


def open_history(where: "str | os.PathLike | None" = None, *, create: bool = True,
                 busy_timeout_s: float = BUSY_TIMEOUT_S) -> "History":
    """The history at `where` (a path or an sqlite:/// URL, see `history_path`); `create=False` refuses
    a missing file instead of starting one."""
    return History(history_path(where), create=create, busy_timeout_s=busy_timeout_s)


class History:
    """An append-only history of bench results and comparisons in one SQLite file.

        with ep.open_history() as history:              # .edgeprune/history.sqlite
            history.record_bench(result)
            for r in history.records(device="pi5-lab"):
                print(r.recorded_at, r.commit, r.p50, r.p50_ci)
    """

    def __init__(self, path: "str | os.PathLike" = DEFAULT_PATH, *, create: bool = True,
                 busy_timeout_s: float = BUSY_TIMEOUT_S):
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        self._lock = threading.Lock()
        if self.path.is_dir():
            raise HistoryError(f"{self.path}: is a directory; name the history's file")
        if not self.path.exists():
            if not create:
                raise HistoryError(f"{self.path}: no history database here (`edgeprune bench` starts one; "
                                   "--history names another)")
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise HistoryError(f"{self.path}: cannot create its directory: {exc.strerror or exc}") from None
        try:
            self._conn = sqlite3.connect(str(self.path), timeout=busy_timeout_s, isolation_level=None,
                                         check_same_thread=False)
        except sqlite3.Error as exc:
            raise self._error("cannot be opened", exc) from None
        try:
            self._open_when_free()
        except sqlite3.Error as exc:
            self._conn.close()
            raise self._error("cannot be opened", exc) from None
        except BaseException:
            self._conn.close()
            raise

    def __enter__(self) -> "History":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._conn.close()

    def __repr__(self) -> str:
        return f"History({str(self.path)!r})"

    # ---------------------------------------------------------------------------------------- opening

    def _error(self, what: str, exc: sqlite3.Error) -> HistoryError:
        reason = str(exc)
        if isinstance(exc, sqlite3.OperationalError) and "locked" in reason:
            return HistoryError(f"{self.path}: {what}: still locked by another writer after "
                                f"{self.busy_timeout_s:g} s ({reason})")
        if type(exc) is sqlite3.DatabaseError or "malformed" in reason or "not a database" in reason:
            return HistoryError(f"{self.path}: not a readable history database ({reason}); it was left as it is: "
                                "move it aside (or restore it from a backup) to start a new history there")
        return HistoryError(f"{self.path}: {what}: {reason}")

    def _open_when_free(self) -> None:
        """Check the file, switch it to WAL (readers never block the writer, nor it them) and create its
        tables. Several processes opening a new file at once meet "database is locked" at once, not after
        the busy timeout: SQLite does not wait for the exclusive lock that switching to WAL needs (4 writers
        on one new file: 2 of 15 runs failed so). So the whole opening is retried, up to the timeout."""
        deadline = time.monotonic() + self.busy_timeout_s
        while True:
            try:
                self._check()
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._migrate()
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.02)

    def _check(self) -> None:
        """Read the whole file's structure before anything writes to it: garbage fails on its header
        ("file is not a database"), a truncated or damaged file on its pages ("malformed")."""
        problems = [row[0] for row in self._conn.execute("PRAGMA quick_check").fetchall()]
        if problems != ["ok"]:
            raise sqlite3.DatabaseError("database disk image is malformed: " + "; ".join(problems[:3]))
        tables = {row[0] for row in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        tables.discard("sqlite_sequence")
        if tables and not {"schema_version", "records"} <= tables:
            raise HistoryError(f"{self.path}: an SQLite database, but not an edgeprune history (its tables: "
                               f"{', '.join(sorted(tables))}); it was left as it is: name another --history")

    def _version(self) -> Optional[int]:
        if not self._conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'schema_version'").fetchone():
            return None
        return self._conn.execute("SELECT max(version) FROM schema_version").fetchone()[0]

    def _migrate(self) -> None:
        """Create the tables in a new file; refuse a newer schema. An existing history is only read here,
        so opening one never waits for another process's append."""
        if self._version() is None:
            self._conn.execute("BEGIN IMMEDIATE")  # two first writers: one creates, the other finds it made
            try:
                for statement in filter(str.strip, _SCHEMA.split(";")):  # executescript would COMMIT first
                    self._conn.execute(statement)
                if self._version() is None:
                    self._conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
        version = self._version()
        if version > SCHEMA_VERSION:
            raise HistoryError(f"{self.path}: a history of schema version {version}, written by a newer edgeprune "
                               f"(this one reads version {SCHEMA_VERSION}); upgrade edgeprune to use it. Nothing was "
                               "written to it")

    # ---------------------------------------------------------------------------------------- writing

    def record_bench(self, result, *, name: Optional[str] = None, commit: Any = AUTO) -> HistoryRecord:
        """Append a BenchResult; `name` is the model's (default: the artifact's file name)."""
        data = result.to_dict()
        lo, hi = result.ci95_p50
        return self._append("bench", data, commit, name=name or Path(result.artifact).name,
                            artifact=result.artifact, artifact_sha256=result.artifact_sha256,
                            runtime=result.runtime, runtime_version=result.runtime_version,
                            measured_at=result.measured_at, p50=result.p50, p50_ci_low=lo, p50_ci_high=hi,
                            valid=int(result.valid))

    def record_comparison(self, comparison, *, commit: Any = AUTO) -> HistoryRecord:
        """Append a Comparison; its name is `comparison.name` (default: the candidate's file name)."""
        c = comparison
        lo, hi = c.ci
        return self._append("comparison", c.to_dict(), commit, name=c.name or Path(c.candidate).name,
                            artifact=c.candidate, artifact_sha256=c.candidate_sha256, baseline=c.baseline,
                            baseline_sha256=c.baseline_sha256, runtime=c.runtime,
                            runtime_version=c.runtime_version, measured_at=c.measured_at, p50=c.candidate_p50,
                            baseline_p50=c.baseline_p50, ratio=c.ratio, ratio_ci_low=lo, ratio_ci_high=hi,
                            verdict=str(c.verdict), valid=int(c.judged))

    def _append(self, kind: str, data: dict, commit: Any, **columns) -> HistoryRecord:
        row = {"recorded_at": datetime.now(timezone.utc).isoformat(timespec="microseconds"), "kind": kind,
               "git_commit": git_commit() if commit is AUTO else commit, "device": data["device"], **columns}
        rest = {k: v for k, v in data.items() if k not in _DERIVED}
        row.update(settings=_dumps(rest.pop("settings")), flags=_dumps(rest.pop("flags")),
                   samples=_dumps({f: rest.pop(f) for f in _SAMPLES[kind]}),
                   device_state=_dumps({f: rest.pop(f) for f in _STATE if f in rest}))
        row["statistics"] = _dumps(rest)
        sql = f"INSERT INTO records ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})"
        with self._lock:  # one connection, one transaction at a time, whichever thread appends
            try:
                self._conn.execute("BEGIN IMMEDIATE")  # the write lock now, waiting up to the busy timeout
                try:
                    record_id = self._conn.execute(sql, list(row.values())).lastrowid
                    self._conn.execute("COMMIT")
                except BaseException:
                    if self._conn.in_transaction:  # SQLite rolls back by itself on a full disk or I/O error
                        self._conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise self._error("cannot append to it", exc) from None
            return self._read(record_id)

    # ---------------------------------------------------------------------------------------- reading

    def records(self, device: Optional[str] = None, name: Optional[str] = None,
                kind: Optional[str] = None) -> list[HistoryRecord]:
        """The records, oldest first; only those of `device`, `name` and `kind` ("bench", "comparison")
        where given."""
        if kind is not None and kind not in KINDS:
            raise HistoryError(f"kind={kind!r}: expected one of {', '.join(KINDS)}")
        where = [(column, value) for column, value in (("device", device), ("name", name), ("kind", kind))
                 if value is not None]
        sql = "SELECT * FROM records" + (" WHERE " + " AND ".join(f"{c} = ?" for c, _ in where) if where else "")
        return self._select(sql + " ORDER BY id", [v for _, v in where])

    def _read(self, record_id: int) -> HistoryRecord:
        return self._select("SELECT * FROM records WHERE id = ?", [record_id])[0]

    def _select(self, sql: str, args: list) -> list[HistoryRecord]:
        try:
            cursor = self._conn.execute(sql, args)
            columns = [d[0] for d in cursor.description]
            rows = [dict(zip(columns, values)) for values in cursor.fetchall()]
        except sqlite3.Error as exc:
            raise self._error("cannot be read", exc) from None
        return [self._record(row) for row in rows]

    def _record(self, row: dict) -> HistoryRecord:
        def loads(column: str):
            try:
                return json.loads(row[column])
            except (TypeError, ValueError) as exc:
                raise HistoryError(f"{self.path}: record {row['id']}: column {column} is not the JSON edgeprune "
                                   f"wrote ({exc})") from None

        def pair(lo: str, hi: str) -> Optional[tuple[float, float]]:
            return None if row[lo] is None or row[hi] is None else (row[lo], row[hi])

        return HistoryRecord(
            id=row["id"], recorded_at=row["recorded_at"], kind=row["kind"], commit=row["git_commit"],
            name=row["name"], device=row["device"], artifact=row["artifact"], artifact_sha256=row["artifact_sha256"],
            baseline=row["baseline"], baseline_sha256=row["baseline_sha256"], runtime=row["runtime"],
            runtime_version=row["runtime_version"], measured_at=row["measured_at"], p50=row["p50"],
            p50_ci=pair("p50_ci_low", "p50_ci_high"), baseline_p50=row["baseline_p50"], ratio=row["ratio"],
            ratio_ci=pair("ratio_ci_low", "ratio_ci_high"), verdict=row["verdict"], valid=bool(row["valid"]),
            settings=loads("settings"), statistics=loads("statistics"), samples=loads("samples"),
            device_state=loads("device_state"), flags=tuple(loads("flags")))


def _dumps(value: Any) -> str:
    # NaN and infinities are kept (Python's JSON reads them back); a p50 column holding NaN reads as None
    return json.dumps(value, sort_keys=True, default=_jsonable)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if hasattr(value, "item"):  # a numpy scalar in a hand-made result
        return value.item()
    return str(value)
