"""The tidy results table: rows, CSV/JSON round trips, and the resumable SQLite store."""
import math
import sqlite3

import pytest

from bitsieve import results
from bitsieve.errors import UserError
from bitsieve.results import FIELDS, Store, row


def _rows(task="t", n=5):
    return [row("net", f"layer{i}", "cycles", 10.0 * i + 0.125, method="bitx:keep=5", accel="bitx", format="fp32",
                group=64) for i in range(n)] + [row("net", "*", "accuracy", math.nan, format="fp32", group=64)]


def test_row_shape():
    r = row("m", "*", "speedup", 2)
    assert list(r) == list(FIELDS)
    assert r["method"] == "" and r["accel"] == "" and r["group"] == 0 and r["value"] == 2.0
    assert isinstance(r["value"], float)


def test_csv_json_round_trip_exact():
    rows = _rows() + [row("m", "l", "x", 1 / 3), row("m", "l", "y", 1e-300), row("m", "l", "z", -0.0)]
    back = results.from_csv(results.to_csv(rows))
    assert len(back) == len(rows)
    for a, b in zip(rows, back):
        assert results.key(a) == results.key(b)
        assert (math.isnan(a["value"]) and math.isnan(b["value"])) or a["value"] == b["value"]
    back = results.from_json(results.to_json(rows))
    assert [results.key(r) for r in back] == [results.key(r) for r in rows]
    assert math.isnan(back[5]["value"]) and back[6]["value"] == 1 / 3


def test_load_files(tmp_path):
    rows = _rows()
    (tmp_path / "r.csv").write_text(results.to_csv(rows))
    (tmp_path / "r.json").write_text(results.to_json(rows))
    assert len(results.load(tmp_path / "r.csv")) == len(rows)
    assert len(results.load(tmp_path / "r.json")) == len(rows)
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match="header"):
        results.load(tmp_path / "bad.csv")
    with pytest.raises(UserError, match="does not exist"):
        results.load(tmp_path / "missing.csv")
    with pytest.raises(UserError, match="not a sweep output"):
        results.load(tmp_path)


def test_store_commit_is_atomic_and_unique(tmp_path):
    with Store(tmp_path) as st:
        assert st.commit_task("a", _rows(n=3))
        assert not st.commit_task("a", _rows(n=3))  # a second commit of a done task writes nothing
        assert st.commit_task("b", _rows(n=2))
        assert st.done() == {"a", "b"}
        assert len(st.rows()) == 4 + 3
        with pytest.raises(KeyError):  # a bad row aborts the whole task: no rows, no 'done' mark
            st.commit_task("c", _rows(n=2) + [{"model": "m"}])
        assert st.done() == {"a", "b"} and len(st.rows()) == 7
    with Store(tmp_path, create=False) as st:  # reopened: the same rows, in task order
        rows = st.rows()
    assert [r["layer"] for r in rows[:4]] == ["layer0", "layer1", "layer2", "*"]
    assert len(results.load(tmp_path)) == 7
    assert sqlite3.connect(tmp_path / results.STORE_NAME).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_store_rejects_foreign_file(tmp_path):
    (tmp_path / results.STORE_NAME).write_text("not a database, just text " * 50)
    with pytest.raises(UserError, match="not a bitsieve result store"):
        results.load(tmp_path)


def test_pivot():
    rows = _rows()
    assert results.pivot(rows, "cycles", layer="layer1") == {("net", "bitx:keep=5", "bitx", "fp32", 64): 10.125}
