import sqlite3

import pytest

from imfl.data import Annotation, Example
from imfl.embeddings import embedding_input
from imfl.loop import StoredTexts
from imfl.store import MIGRATIONS, SCHEMA_VERSION, Store, _statements


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
    with Store.open(tmp_path / "s.sqlite") as s:
        s.add_items([Example("a", "alpha")])
        s.record_selection(1, (1, 0), [("a", None)], [])
        with pytest.raises(sqlite3.IntegrityError):
            s.add_annotations([Annotation("zzz", 1, "human", "oracle", "x")])
        assert s.annotations(ok_only=False) == []  # the failed transaction left nothing behind


def test_items_come_back_whole_and_stores_from_before_schema_3_are_completed(tmp_path):
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)  # a store as imfl wrote it at schema 2: items without their line and other fields
    for version in (1, 2):
        for statement in _statements(MIGRATIONS[version]):
            conn.execute(statement)
    conn.execute("INSERT INTO meta VALUES('schema_version', '2')")
    conn.executemany(
        "INSERT INTO items(idx, id, text, text_pair, gold) VALUES(?, ?, ?, ?, ?)",
        [(0, "a", "alpha", None, "x"), (1, "b", "beta", "ctx", None)],
    )
    conn.commit()
    conn.close()
    pool = [
        Example("a", "alpha", None, "x", {"llm_gpt4": "x", "score": 0.5}, line=2),
        Example("b", "beta", "ctx", None, {"llm_gpt4": None}, line=3),
    ]
    with Store.open(path) as s:
        assert s.get_meta("schema_version") == str(SCHEMA_VERSION) and not s.items_complete()
        s.add_items(pool)
        assert s.items_complete() and s.n_items() == 2 and s.item_ids() == ["a", "b"]
        got = s.examples(["b", "a"])
        assert got == pool[::-1]
        assert [e.extra for e in got] == [{"llm_gpt4": None}, {"llm_gpt4": "x", "score": 0.5}] and [e.line for e in got] == [3, 2]
        assert s.texts(1, 10) == [("beta", "ctx")]


def test_many_items_are_fetched_in_the_order_asked_and_read_a_window_at_a_time(tmp_path):
    pool = [Example(f"i{n}", f"text {n}", f"pair {n}" if n % 2 else None) for n in range(1_234)]
    with Store.open(tmp_path / "s.sqlite") as s:
        assert not s.items_complete()  # nothing copied in yet
        s.add_items(iter(pool))  # a stream, as a pool file is read
        ids = [e.id for e in reversed(pool)]
        assert [e.id for e in s.examples(ids)] == ids  # more ids than one query takes
        texts = StoredTexts(s, len(pool))
        expected = [embedding_input(e.text, e.text_pair) for e in pool]
        assert len(texts) == len(pool) and list(texts) == expected
        assert texts[500:503] == expected[500:503] and texts[-1] == expected[-1] and texts[0] == expected[0]
        with pytest.raises(IndexError):
            texts[len(pool)]
