import sqlite3

from imfl.data import Annotation, Example
from imfl.store import SCHEMA_VERSION, Store


def test_store_layout_and_roundtrip(tmp_path):
    path = tmp_path / "s.sqlite"
    with Store.open(path) as s:
        s.add_items([Example("a", "alpha", None, "x"), Example("b", "beta", "ctx", "y")])
        s.record_selection(1, (1, 1), [("a", 0.7)], [("b", None)])
        ann = Annotation("b", 1, "llm", "local:m", "y", {"x": 0.25, "y": 0.75}, 0.75, 0.01, "abc", ("a",))
        s.add_annotations([ann, Annotation("a", 1, "human", "oracle", "x", confidence=1.0, cost=1.0)])
        assert s.annotations(source="llm") == [ann]
        assert s.budget_used() == {"human": 1, "llm": 1}
        assert s.selection(1, "human") == ["a"] and s.selection(1, "llm") == ["b"]
    with Store.open(path) as s:  # reopening migrates nothing and keeps everything
        assert s.get_meta("schema_version") == str(SCHEMA_VERSION)
        assert s.round_state(1) == "selected"
        assert s.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert s.conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert len(s.annotations()) == 2


def test_failed_annotations_do_not_spend_budget(tmp_path):
    with Store.open(tmp_path / "s.sqlite") as s:
        s.add_items([Example("a", "alpha")])
        s.record_selection(1, (0, 1), [], [("a", None)])
        s.add_annotations([Annotation("a", 1, "llm", "recorded:c", None)])
        assert s.budget_used() == {"human": 0, "llm": 0}
        assert s.annotations() == [] and len(s.annotations(ok_only=False)) == 1


def test_foreign_keys_reject_unknown_items(tmp_path):
    import pytest

    with Store.open(tmp_path / "s.sqlite") as s:
        s.add_items([Example("a", "alpha")])
        s.record_selection(1, (1, 0), [("a", None)], [])
        with pytest.raises(sqlite3.IntegrityError):
            s.add_annotations([Annotation("zzz", 1, "human", "oracle", "x")])
        assert s.annotations(ok_only=False) == []  # the failed transaction left nothing behind
