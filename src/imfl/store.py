"""The run's SQLite file: items, every annotation with its provenance, the selections and the state of
each round. Standard-library ``sqlite3`` in WAL mode with foreign keys on; ``meta.schema_version``
and ``MIGRATIONS`` let later versions change the layout in place.

A round moves through states, each written when its work is committed:
``selected → human_done → llm_done → trained → evaluated``. The loop writes every step here first,
so that a run can be continued from the last committed state.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from imfl.data import Annotation, Example
from imfl.errors import DataError

SCHEMA_VERSION = 1
ROUND_STATES = ("selected", "human_done", "llm_done", "trained", "evaluated")

MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE items (
        idx INTEGER PRIMARY KEY,            -- position in the pool file
        id TEXT NOT NULL UNIQUE,
        text TEXT NOT NULL,
        text_pair TEXT,
        gold TEXT                           -- the pool's label, when it has one (simulation, evaluation)
    );
    CREATE TABLE rounds (
        round INTEGER PRIMARY KEY,
        state TEXT NOT NULL,
        planned_human INTEGER NOT NULL,
        planned_llm INTEGER NOT NULL,
        metrics TEXT,                       -- JSON, once evaluated
        updated_at REAL NOT NULL
    );
    CREATE TABLE selections (
        round INTEGER NOT NULL REFERENCES rounds(round),
        item_id TEXT NOT NULL REFERENCES items(id),
        rank INTEGER NOT NULL,              -- 0 = most wanted
        uncertainty REAL,
        target TEXT NOT NULL CHECK (target IN ('human', 'llm')),
        PRIMARY KEY (round, item_id)
    );
    CREATE TABLE annotations (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        item_id TEXT NOT NULL REFERENCES items(id),
        round INTEGER NOT NULL REFERENCES rounds(round),
        source TEXT NOT NULL CHECK (source IN ('human', 'llm')),
        annotator TEXT NOT NULL,
        label TEXT,                         -- NULL: no usable label (failed call)
        probs TEXT,                         -- JSON {label: p}
        confidence REAL,
        cost REAL NOT NULL DEFAULT 0,
        prompt_hash TEXT,
        demo_ids TEXT,                      -- JSON list of item ids shown as demonstrations
        method TEXT,                        -- how the probabilities were obtained
        error TEXT,                         -- why there is no label
        created_at REAL NOT NULL
    );
    CREATE INDEX annotations_item ON annotations(item_id);
    CREATE INDEX annotations_round ON annotations(round);
    """,
}


class Store:
    """A thin, explicit layer over one SQLite file. Open with ``Store.open(path)``."""

    def __init__(self, conn: sqlite3.Connection, path: Path):
        self.conn = conn
        self.path = path

    @classmethod
    def open(cls, path: str | Path) -> "Store":
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(path, isolation_level=None)  # autocommit; transactions are explicit
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.row_factory = sqlite3.Row
            store = cls(conn, path)
            store._migrate()
        except sqlite3.DatabaseError as exc:
            raise DataError(f"{path}: not a usable imfl store ({exc}); move it away or choose another run name") from None
        return store

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- schema ------------------------------------------------------------------------------
    def _migrate(self) -> None:
        has_meta = self.conn.execute("SELECT 1 FROM sqlite_master WHERE name='meta'").fetchone()
        version = int(self.get_meta("schema_version", "0")) if has_meta else 0
        if version > SCHEMA_VERSION:
            raise DataError(f"{self.path}: written by a newer imfl (schema {version} > {SCHEMA_VERSION}); upgrade imfl")
        for v in range(version + 1, SCHEMA_VERSION + 1):
            with self.transaction():
                for statement in _statements(MIGRATIONS[v]):
                    self.conn.execute(statement)
                self.set_meta("schema_version", str(v))

    def transaction(self):
        return _Transaction(self.conn)

    # -- meta ----------------------------------------------------------------------------------
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute("INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value", (key, value))

    # -- items ---------------------------------------------------------------------------------
    def add_items(self, examples: Sequence[Example]) -> None:
        with self.transaction():
            self.conn.executemany(
                "INSERT INTO items(idx, id, text, text_pair, gold) VALUES(?, ?, ?, ?, ?)",
                ((i, e.id, e.text, e.text_pair, e.label) for i, e in enumerate(examples)),
            )

    def n_items(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]

    # -- rounds --------------------------------------------------------------------------------
    def round_state(self, round: int) -> str | None:
        row = self.conn.execute("SELECT state FROM rounds WHERE round=?", (round,)).fetchone()
        return row[0] if row else None

    def set_round_state(self, round: int, state: str, metrics: dict | None = None) -> None:
        assert state in ROUND_STATES, state
        self.conn.execute(
            "UPDATE rounds SET state=?, updated_at=?, metrics=COALESCE(?, metrics) WHERE round=?",
            (state, time.time(), json.dumps(metrics) if metrics is not None else None, round),
        )

    def rounds(self) -> list[dict]:
        rows = self.conn.execute("SELECT * FROM rounds ORDER BY round").fetchall()
        return [{**dict(r), "metrics": json.loads(r["metrics"]) if r["metrics"] else None} for r in rows]

    def record_selection(self, round: int, planned: tuple[int, int], human: Sequence[tuple[str, float | None]],
                         llm: Sequence[tuple[str, float | None]]) -> None:
        """Open a round: its plan and the items chosen for each fidelity, in one transaction."""
        with self.transaction():
            self.conn.execute(
                "INSERT INTO rounds(round, state, planned_human, planned_llm, updated_at) VALUES(?, 'selected', ?, ?, ?)",
                (round, planned[0], planned[1], time.time()),
            )
            rows = [(round, i, r, u, "human") for r, (i, u) in enumerate(human)]
            rows += [(round, i, len(human) + r, u, "llm") for r, (i, u) in enumerate(llm)]
            self.conn.executemany("INSERT INTO selections(round, item_id, rank, uncertainty, target) VALUES(?, ?, ?, ?, ?)", rows)

    def selection(self, round: int, target: str) -> list[str]:
        rows = self.conn.execute("SELECT item_id FROM selections WHERE round=? AND target=? ORDER BY rank", (round, target))
        return [r[0] for r in rows]

    # -- annotations ---------------------------------------------------------------------------
    def add_annotations(self, annotations: Iterable[Annotation]) -> None:
        now = time.time()
        with self.transaction():
            self.conn.executemany(
                "INSERT INTO annotations(item_id, round, source, annotator, label, probs, confidence, cost, prompt_hash,"
                " demo_ids, method, error, created_at) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    (a.item_id, a.round, a.source, a.annotator, a.label,
                     json.dumps(a.probs) if a.probs is not None else None, a.confidence, a.cost,
                     a.prompt_hash, json.dumps(list(a.demo_ids)) if a.demo_ids else None, a.method, a.error, now)
                    for a in annotations
                ),
            )

    def annotations(self, round: int | None = None, source: str | None = None, ok_only: bool = True) -> list[Annotation]:
        sql, args = "SELECT * FROM annotations WHERE 1=1", []
        if round is not None:
            sql, args = sql + " AND round=?", args + [round]
        if source is not None:
            sql, args = sql + " AND source=?", args + [source]
        if ok_only:
            sql += " AND label IS NOT NULL"
        return [_annotation(r) for r in self.conn.execute(sql + " ORDER BY id", args)]

    def budget_used(self) -> dict[str, int]:
        rows = self.conn.execute("SELECT source, COUNT(*) FROM annotations WHERE label IS NOT NULL GROUP BY source")
        used = {"human": 0, "llm": 0}
        used.update({r[0]: r[1] for r in rows})
        return used


def _annotation(r: sqlite3.Row) -> Annotation:
    return Annotation(
        r["item_id"], r["round"], r["source"], r["annotator"], r["label"],
        json.loads(r["probs"]) if r["probs"] else None, r["confidence"], r["cost"],
        r["prompt_hash"], tuple(json.loads(r["demo_ids"])) if r["demo_ids"] else (), r["method"], r["error"],
    )


def _statements(script: str) -> list[str]:
    body = "\n".join(line.split("--")[0] for line in script.splitlines())
    return [s.strip() for s in body.split(";") if s.strip()]


class _Transaction:
    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, *exc):
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
