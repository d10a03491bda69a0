"""One tidy results table for every command, and the resumable store a sweep writes it to.

A row is ``{model, layer, method, accel, format, group, metric, value}``:

- ``layer`` is a layer name, or ``'*'`` for the whole model;
- ``method`` is a method spec (``'bitx:keep=5'``, several joined by ``'+'``), or ``''`` for the unmodified model;
- ``accel`` is an accelerator name, or ``''`` where no accelerator applies (profile, accuracy);
- ``format`` and ``group`` are the number format and group size the bits were read in;
- ``metric`` names what was measured, units in the name (``cycles``, ``energy_pj``, ``speedup``...);
- ``value`` is a float.

Metric names shared by the commands (so the report can find them):

=========================  ===============================================================
``values``                 number of weight values
``zero_bit_frac``          zero bits / significand-or-magnitude bits (0..1)
``mean_essential_bits``    mean non-zero bits per value
``occupancy_s<NN>``        fraction of ones in significance plane NN (LSB = 00)
``essential_hist_<NN>``    number of values with NN essential bits (whole model only)
``changed_bit_frac``       share of the original weight bits a method changed
``accuracy``               the task metric (top-1 %, Spearman x100, ...); ``accuracy_delta`` vs original
``cycles`` ``speedup``     cycles on an accelerator; speed-up over the dense baseline (same method)
``energy_pj``              energy; ``energy_pj.<part>`` its breakdown
=========================  ===============================================================

The sweep store is SQLite (stdlib ``sqlite3``, WAL) in the output directory. Every task has a unique key; its
rows and its 'done' mark are written in one transaction, so a sweep killed at any point (even SIGKILL) resumes
without losing or duplicating rows.
"""
from __future__ import annotations

import csv
import io
import json
import math
import sqlite3
import time
from pathlib import Path
from typing import Iterable

from .errors import UserError

FIELDS = ("model", "layer", "method", "accel", "format", "group", "metric", "value")
STORE_NAME = "results.sqlite"
WHOLE = "*"


def row(model: str, layer: str, metric: str, value, *, method: str = "", accel: str = "", format: str = "",
        group: int = 0) -> dict:
    """One tidy row (keys in ``FIELDS`` order)."""
    return {"model": str(model), "layer": str(layer), "method": str(method), "accel": str(accel),
            "format": str(format), "group": int(group), "metric": str(metric), "value": float(value)}


def normalize(r: dict) -> dict:
    """A row with exactly the ``FIELDS`` keys and their types; raises UserError naming what is missing."""
    missing = [k for k in FIELDS if k not in r]
    if missing:
        raise UserError(f"result row lacks {', '.join(missing)}: {r!r}")
    try:
        return row(r["model"], r["layer"], r["metric"], r["value"], method=r["method"] or "",
                   accel=r["accel"] or "", format=r["format"] or "", group=int(r["group"] or 0))
    except (TypeError, ValueError) as e:
        raise UserError(f"bad result row {r!r}: {e}") from None


def key(r: dict) -> tuple:
    """Everything but the value: what a row is about (unique within one result set)."""
    return tuple(r[k] for k in FIELDS[:-1])


def sort_key(r: dict) -> tuple:
    return key(r)


# ---- CSV / JSON ---------------------------------------------------------------------------------------
def _fmt_value(v: float) -> str:
    return repr(float(v)) if math.isfinite(v) else str(v)


def to_csv(rows: Iterable[dict]) -> str:
    """Rows -> CSV text with a header, values written exactly (repr of the float)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(FIELDS)
    for r in rows:
        w.writerow([*(r[k] for k in FIELDS[:-1]), _fmt_value(r["value"])])
    return buf.getvalue()


def from_csv(text: str) -> list[dict]:
    rd = csv.DictReader(io.StringIO(text))
    if rd.fieldnames is None or any(k not in rd.fieldnames for k in FIELDS):
        raise UserError(f"not a results CSV: the header must hold {', '.join(FIELDS)}")
    return [normalize(r) for r in rd]


def to_json(rows: Iterable[dict]) -> str:
    """Rows -> a JSON array of objects (NaN/inf written as null)."""
    return json.dumps([{**r, "value": r["value"] if math.isfinite(r["value"]) else None} for r in rows])


def from_json(text: str) -> list[dict]:
    data = json.loads(text)
    if isinstance(data, dict) and "rows" in data:
        data = data["rows"]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise UserError("not a results JSON: expected a list of rows or {\"rows\": [...]}")
    return [normalize({**r, "value": math.nan if r.get("value") is None else r["value"]}) for r in data]


def load(path) -> list[dict]:
    """Rows from a sweep output directory (or its SQLite file), a CSV or a JSON file."""
    p = Path(path)
    if p.is_dir():
        if not (p / STORE_NAME).exists():
            raise UserError(f"{p} holds no {STORE_NAME} (not a sweep output directory)")
        return Store(p, create=False).rows()
    if not p.exists():
        raise UserError(f"{p} does not exist")
    if not p.is_file():  # a FIFO would block
        raise UserError(f"cannot read {p}: not a regular file")
    if p.suffix in (".sqlite", ".db", ".sqlite3"):
        return Store(p.parent, name=p.name, create=False).rows()
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {p}: {e}") from None
    try:
        if p.suffix == ".json" or text.lstrip().startswith(("[", "{")):
            return from_json(text)
        return from_csv(text)
    except (json.JSONDecodeError, csv.Error, RecursionError) as e:
        raise UserError(f"cannot parse {p}: {e}") from None


def pivot(rows: Iterable[dict], metric: str, layer: str = WHOLE) -> dict:
    """{(model, method, accel, format, group): value} of one metric (whole model by default)."""
    return {(r["model"], r["method"], r["accel"], r["format"], r["group"]): r["value"]
            for r in rows if r["metric"] == metric and r["layer"] == layer}


# ---- the sweep store ----------------------------------------------------------------------------------
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (key TEXT PRIMARY KEY, spec TEXT NOT NULL, wall_s REAL, finished REAL);
CREATE TABLE IF NOT EXISTS rows (
    task TEXT NOT NULL, seq INTEGER NOT NULL,
    model TEXT NOT NULL, layer TEXT NOT NULL, method TEXT NOT NULL, accel TEXT NOT NULL,
    format TEXT NOT NULL, "group" INTEGER NOT NULL, metric TEXT NOT NULL, value REAL,
    PRIMARY KEY (task, seq)
);
"""


_COLUMNS = {"meta": {"key", "value"}, "tasks": {"key", "spec", "wall_s", "finished"},
            "rows": {"task", "seq", *FIELDS}}


class Store:
    """The result store of one sweep: ``DIR/results.sqlite``.

    Only the process driving the sweep writes; workers (local processes or Ray tasks) return their rows to it.
    """

    def __init__(self, directory, *, name: str = STORE_NAME, create: bool = True):
        d = Path(directory)
        self.path = d / name
        if not create and not self.path.exists():
            raise UserError(f"{self.path} does not exist")
        if self.path.exists() and not self.path.is_file():
            raise UserError(f"{self.path} is not a regular file")
        if create:
            d.mkdir(parents=True, exist_ok=True)
        fresh = not self.path.exists() or self.path.stat().st_size == 0
        if fresh and not create:
            raise UserError(f"{self.path} is empty: not a bitsieve result store")
        try:
            # a store only reported on is opened read-only: reading never changes the file (no WAL switch)
            uri = self.path.resolve().as_uri() + ("" if create else "?mode=ro")
            self.conn = sqlite3.connect(uri, uri=True, timeout=60, isolation_level=None)
            if not fresh:
                self._verify()  # before any write: a foreign or damaged file is left exactly as it was
            if create:
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=NORMAL")
                self.conn.executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise UserError(f"{self.path} is damaged or not a bitsieve result store: {e}") from None
        except BaseException:
            if hasattr(self, "conn"):
                self.conn.close()
            raise

    def _verify(self):
        """SQLite's integrity check, then our three tables with their columns."""
        bad = [r[0] for r in self.conn.execute("PRAGMA integrity_check")]
        if bad != ["ok"]:
            said = "; ".join(" ".join(b.split()) for b in bad[:3])
            raise UserError(f"{self.path} is damaged (SQLite integrity check: {said}); remove it to start over")
        for table, cols in _COLUMNS.items():
            have = {r[1] for r in self.conn.execute(f"PRAGMA table_info({table})")}
            if not cols <= have:
                raise UserError(f"{self.path} is not a bitsieve result store: table {table!r} "
                                + ("is missing" if not have else f"lacks {', '.join(sorted(cols - have))}"))

    def close(self):
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # meta: the fingerprint of the sweep that owns the store
    def get_meta(self, k: str) -> str | None:
        r = self.conn.execute("SELECT value FROM meta WHERE key = ?", (k,)).fetchone()
        return None if r is None else r[0]

    def set_meta(self, k: str, v: str):
        self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (k, v))

    def done(self) -> set[str]:
        """Keys of the tasks whose rows are all in."""
        return {k for (k,) in self.conn.execute("SELECT key FROM tasks")}

    def commit_task(self, task_key: str, rows: list[dict], spec: str = "", wall_s: float | None = None) -> bool:
        """Write a task's rows and its 'done' mark in one transaction. False (and nothing written) when the
        task was already done."""
        c = self.conn
        try:
            c.execute("BEGIN IMMEDIATE")
            if c.execute("SELECT 1 FROM tasks WHERE key = ?", (task_key,)).fetchone():
                c.execute("ROLLBACK")
                return False
            c.executemany(
                'INSERT INTO rows (task, seq, model, layer, method, accel, format, "group", metric, value) '
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(task_key, i, r["model"], r["layer"], r["method"], r["accel"], r["format"], int(r["group"]),
                  r["metric"], None if not math.isfinite(r["value"]) else float(r["value"]))
                 for i, r in enumerate(rows)])
            c.execute("INSERT INTO tasks (key, spec, wall_s, finished) VALUES (?, ?, ?, ?)",
                      (task_key, spec, wall_s, time.time()))
            c.execute("COMMIT")
            return True
        except BaseException as e:
            if c.in_transaction:
                c.execute("ROLLBACK")
            if isinstance(e, sqlite3.DatabaseError):  # a full disk, a damaged page: the task stays undone
                raise UserError(f"cannot write {self.path}: {e}") from None
            raise

    def rows(self) -> list[dict]:
        """Every row, in (task key, sequence) order: the same order however the tasks were scheduled."""
        try:
            cur = self.conn.execute(
                'SELECT model, layer, method, accel, format, "group", metric, value FROM rows ORDER BY task, seq')
            return [dict(zip(FIELDS, (*r[:7], math.nan if r[7] is None else r[7]))) for r in cur]
        except sqlite3.DatabaseError as e:
            raise UserError(f"{self.path} is damaged: {e}") from None

    def task_times(self) -> dict[str, float]:
        return {k: w for k, w in self.conn.execute("SELECT key, wall_s FROM tasks")}

    def clear(self):
        """Forget every task and row (a sweep started over with --force)."""
        self.conn.execute("BEGIN IMMEDIATE")
        for t in ("rows", "tasks", "meta"):
            self.conn.execute(f"DELETE FROM {t}")
        self.conn.execute("COMMIT")
