"""The run's SQLite file: items, every annotation with its provenance, the selections and the state of
each round. Standard-library ``sqlite3`` in WAL mode with foreign keys on; ``meta.schema_version``
and ``MIGRATIONS`` let later versions change the layout in place.

A round moves through states, each written when its work is committed:
``selected → human_pending → human_done → llm_done → trained → evaluated``. ``human_pending`` is
where a round waits for people (the web page, the terminal, imported files); a simulated expert
passes through it at once. The loop writes every step here first, so that a run can be continued
from the last committed state.

People label through leases: an item handed to one person is not handed to another until the lease
expires or the label arrives. A label a person takes back (undo) is marked retracted, never deleted,
and only while its round still waits for people.

The people who may use the annotation page with their own token (``imfl people``) are in ``people``: a name, a role
and the SHA-256 of the token, never the token itself. A removed person keeps their row (their labels name them) and
loses the hash, so their token matches nothing from then on.

People may also review the LLM's labels (``reviews``, schema 5): each row is one verdict on one LLM annotation, with
who gave it, when, in which waiting round, the LLM's label and the right one, and its cost. A correction also becomes a
human annotation of the item (``method = 'review'``, cost the review's), which the student trains on; a confirmation
is no label, and its cost counts only in ``money_spent``. Reviewers hold what they review through ``review_leases``,
apart from the labeling leases.

Agreement (``human.overlap``, schema 6): the items of a round's human batch chosen to get two answers are marked in
``selections.overlap`` when the batch opens to people. Such an item stays pending until two different people have
answered it (the same person is never handed it twice); both answers are human annotations with their annotators.
When they differ, the item is in dispute until an admin settles it: ``adjudications`` records the settled label, the
admin and the time, and the raw answers stay as they are. The round's batch closes only when nothing is pending and
no dispute is open.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, overload

from imfl.data import Annotation, Example
from imfl.errors import Conflict, DataError, InvalidLabel, NotFound

SCHEMA_VERSION = 6
ROUND_STATES = ("selected", "human_pending", "human_done", "llm_done", "trained", "evaluated")

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
    2: """
    ALTER TABLE annotations ADD COLUMN retracted_at REAL;  -- set when a person takes the label back (undo)
    ALTER TABLE annotations ADD COLUMN prompt_tokens INTEGER;  -- LLM calls: tokens as the server reported them
    ALTER TABLE annotations ADD COLUMN completion_tokens INTEGER;
    CREATE TABLE leases (
        item_id TEXT PRIMARY KEY REFERENCES items(id),
        round INTEGER NOT NULL REFERENCES rounds(round),
        annotator TEXT NOT NULL,
        expires_at REAL NOT NULL
    );
    CREATE TABLE skips (
        round INTEGER NOT NULL REFERENCES rounds(round),
        item_id TEXT NOT NULL REFERENCES items(id),
        annotator TEXT NOT NULL,
        PRIMARY KEY (round, item_id, annotator)
    );
    """,
    3: """
    ALTER TABLE items ADD COLUMN line INTEGER;  -- the row's line in the pool file (for messages)
    ALTER TABLE items ADD COLUMN extra TEXT;    -- JSON: the row's other fields (e.g. recorded LLM labels)
    """,
    4: """
    CREATE TABLE people (
        name TEXT PRIMARY KEY,              -- recorded as the annotator of their labels
        role TEXT NOT NULL CHECK (role IN ('annotator', 'admin')),
        token_sha256 TEXT UNIQUE,           -- hex SHA-256 of their token; NULL once removed
        added_at REAL NOT NULL,
        removed_at REAL                     -- set by imfl people remove; the row stays
    );
    """,
    5: """
    CREATE TABLE reviews (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        annotation_id INTEGER NOT NULL UNIQUE REFERENCES annotations(id),  -- the LLM label reviewed
        item_id TEXT NOT NULL REFERENCES items(id),
        round INTEGER NOT NULL REFERENCES rounds(round),  -- the round waiting for people when it was reviewed
        reviewer TEXT NOT NULL,
        verdict TEXT NOT NULL CHECK (verdict IN ('confirm', 'correct')),
        llm_label TEXT NOT NULL,
        label TEXT NOT NULL,                -- the right label: the LLM's (confirm) or the reviewer's (correct)
        correction_id INTEGER REFERENCES annotations(id),  -- the human annotation a correction became
        cost REAL NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE review_leases (
        annotation_id INTEGER PRIMARY KEY REFERENCES annotations(id),
        reviewer TEXT NOT NULL,
        expires_at REAL NOT NULL
    );
    """,
    6: """
    ALTER TABLE selections ADD COLUMN overlap INTEGER NOT NULL DEFAULT 0;  -- 1: the item needs two people's answers
    CREATE TABLE adjudications (
        item_id TEXT PRIMARY KEY REFERENCES items(id),
        round INTEGER NOT NULL REFERENCES rounds(round),  -- the round whose batch the item was in
        admin TEXT NOT NULL,                -- who settled it
        label TEXT NOT NULL,                -- the settled label: the one the student trains on
        answers TEXT NOT NULL,              -- JSON {annotator: label}: the answers it settled (they stay in annotations)
        created_at REAL NOT NULL
    );
    """,
}

REVIEW_VERDICTS = ("confirm", "correct")


_CHUNK = 500  # ids per query (SQLite limits the parameters of one statement)


class Store:
    """A thin, explicit layer over one SQLite file. Open with ``Store.open(path)``."""

    def __init__(self, conn: sqlite3.Connection, path: Path):
        self.conn = conn
        self.path = path

    @classmethod
    def open(cls, path: str | Path) -> Store:
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

    def __enter__(self) -> Store:
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
                # Read again under the write lock: another process may have migrated since (two opening an old store).
                has_meta = self.conn.execute("SELECT 1 FROM sqlite_master WHERE name='meta'").fetchone()
                if has_meta and int(self.get_meta("schema_version", "0")) >= v:
                    continue
                for statement in _statements(MIGRATIONS[v]):
                    self.conn.execute(statement)
                self.set_meta("schema_version", str(v))

    def transaction(self):
        return _Transaction(self.conn)

    # -- meta ----------------------------------------------------------------------------------
    @overload
    def get_meta(self, key: str, default: str) -> str: ...
    @overload
    def get_meta(self, key: str, default: None = None) -> str | None: ...
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute(
            "INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value", (key, value)
        )

    # -- items ---------------------------------------------------------------------------------
    def add_items(self, examples: Iterable[Example]) -> None:
        """Copy the pool in (streamed: ``examples`` may be a file larger than memory). Items already here (same
        id) get their line and other fields refreshed: stores written before schema 3 did not keep them."""
        with self.transaction():
            self.conn.executemany(
                "INSERT INTO items(idx, id, text, text_pair, gold, line, extra) VALUES(?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(id) DO UPDATE SET line=excluded.line, extra=excluded.extra",
                (
                    (i, e.id, e.text, e.text_pair, e.label, e.line, json.dumps(e.extra, ensure_ascii=False, default=str))
                    for i, e in enumerate(examples)
                ),
            )

    def n_items(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]

    def items_complete(self) -> bool:
        """Whether the pool is here with every item's line and other fields (False before it is copied in, and for a
        pool copied in before schema 3)."""
        row = self.conn.execute("SELECT COUNT(*), COUNT(extra) FROM items").fetchone()
        return row[0] > 0 and row[0] == row[1]

    def item_ids(self) -> list[str]:
        """Every item's id, in pool order."""
        return [r[0] for r in self.conn.execute("SELECT id FROM items ORDER BY idx")]

    def examples(self, ids: Sequence[str]) -> list[Example]:
        """The items with these ids, in this order."""
        found: dict[str, Example] = {}
        for start in range(0, len(ids), _CHUNK):
            part = list(ids[start : start + _CHUNK])
            rows = self.conn.execute(f"SELECT * FROM items WHERE id IN ({','.join('?' * len(part))})", part)
            found.update((r["id"], _example(r)) for r in rows)
        return [found[i] for i in ids]

    def texts(self, start: int, stop: int) -> list[tuple[str, str | None]]:
        """(text, text_pair) of the items at pool positions [start, stop)."""
        rows = self.conn.execute("SELECT text, text_pair FROM items WHERE idx >= ? AND idx < ? ORDER BY idx", (start, stop))
        return [(r[0], r[1]) for r in rows]

    # -- rounds --------------------------------------------------------------------------------
    def round_state(self, round: int) -> str | None:
        row = self.conn.execute("SELECT state FROM rounds WHERE round=?", (round,)).fetchone()
        return row[0] if row else None

    def set_round_state(self, round: int, state: str, metrics: Mapping[str, Any] | None = None) -> None:
        assert state in ROUND_STATES, state
        self.conn.execute(
            "UPDATE rounds SET state=?, updated_at=?, metrics=COALESCE(?, metrics) WHERE round=?",
            (state, time.time(), json.dumps(metrics) if metrics is not None else None, round),
        )

    def rounds(self) -> list[dict]:
        rows = self.conn.execute("SELECT * FROM rounds ORDER BY round").fetchall()
        return [{**dict(r), "metrics": json.loads(r["metrics"]) if r["metrics"] else None} for r in rows]

    def record_selection(
        self,
        round: int,
        planned: tuple[int, int],
        human: Sequence[tuple[str, float | None]],
        llm: Sequence[tuple[str, float | None]],
    ) -> None:
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
                " demo_ids, method, error, prompt_tokens, completion_tokens, created_at)"
                " VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    (
                        a.item_id,
                        a.round,
                        a.source,
                        a.annotator,
                        a.label,
                        json.dumps(a.probs) if a.probs is not None else None,
                        a.confidence,
                        a.cost,
                        a.prompt_hash,
                        json.dumps(list(a.demo_ids)) if a.demo_ids else None,
                        a.method,
                        a.error,
                        a.prompt_tokens,
                        a.completion_tokens,
                        now,
                    )
                    for a in annotations
                ),
            )

    def annotations(self, round: int | None = None, source: str | None = None, ok_only: bool = True) -> list[Annotation]:
        sql, args = "SELECT * FROM annotations WHERE retracted_at IS NULL", list[object]()
        if round is not None:
            sql, args = sql + " AND round=?", args + [round]
        if source is not None:
            sql, args = sql + " AND source=?", args + [source]
        if ok_only:
            sql += " AND label IS NOT NULL"
        return [_annotation(r) for r in self.conn.execute(sql + " ORDER BY id", args)]

    def budget_used(self) -> dict[str, int]:
        rows = self.conn.execute(
            "SELECT source, COUNT(*) FROM annotations WHERE label IS NOT NULL AND retracted_at IS NULL GROUP BY source"
        )
        used = {"human": 0, "llm": 0}
        used.update({r[0]: r[1] for r in rows})
        return used

    def money_spent(self) -> float:
        """The cost of every standing annotation, failed LLM answers included, and of the confirmations of LLM labels (a
        correction's cost is its annotation's)."""
        spent = float(
            self.conn.execute("SELECT COALESCE(SUM(cost), 0) FROM annotations WHERE retracted_at IS NULL").fetchone()[0]
        )
        confirmed = self.conn.execute("SELECT COALESCE(SUM(cost), 0) FROM reviews WHERE verdict='confirm'").fetchone()[0]
        return spent + float(confirmed) if confirmed else spent

    def export_rows(self) -> list[dict]:
        """Every standing label with its provenance and the item's text, in the order they were given."""
        rows = self.conn.execute(
            "SELECT a.*, i.text, i.text_pair FROM annotations a JOIN items i ON i.id = a.item_id"
            " WHERE a.label IS NOT NULL AND a.retracted_at IS NULL ORDER BY a.id"
        )
        out = []
        for r in rows:
            a = _annotation(r)
            out.append(
                {
                    "id": a.item_id,
                    "text": r["text"],
                    "text_pair": r["text_pair"],
                    "label": a.label,
                    "source": a.source,
                    "annotator": a.annotator,
                    "round": a.round,
                    "confidence": a.confidence,
                    "probs": a.probs,
                    "cost": a.cost,
                    "prompt_hash": a.prompt_hash,
                    "demo_ids": list(a.demo_ids),
                    "method": a.method,
                    "prompt_tokens": a.prompt_tokens,
                    "completion_tokens": a.completion_tokens,
                    "created_at": r["created_at"],
                }
            )
        return out

    # -- people ----------------------------------------------------------------------------------
    def latest_round(self) -> tuple[int, str] | None:
        """The newest round and its state (None before the first selection)."""
        row = self.conn.execute("SELECT round, state FROM rounds ORDER BY round DESC LIMIT 1").fetchone()
        return (row[0], row[1]) if row else None

    def pending_human(self, round: int, annotator: str | None = None) -> list[str]:
        """Items of the round's human batch without a (standing) human label, most wanted first; an overlap item
        (``human.overlap``) until two different people answered it. With ``annotator``: only the items they may label
        now (not those they answered already)."""
        sql = (
            "SELECT s.item_id FROM selections s WHERE s.round=? AND s.target='human' AND (SELECT COUNT(DISTINCT a.annotator)"
            " FROM annotations a WHERE a.item_id=s.item_id AND a.source='human' AND a.retracted_at IS NULL)"
            " < (CASE WHEN s.overlap THEN 2 ELSE 1 END)"
        )
        args: list[object] = [round]
        if annotator is not None:
            sql += (
                " AND NOT EXISTS (SELECT 1 FROM annotations b WHERE b.item_id=s.item_id AND b.source='human'"
                " AND b.retracted_at IS NULL AND b.annotator=?)"
            )
            args.append(annotator)
        return [r[0] for r in self.conn.execute(sql + " ORDER BY s.rank", args)]

    def open_human_batch(self, round: int, overlap: Sequence[str] = ()) -> None:
        """Open the round's human batch to people (state ``human_pending``), marking the ``overlap`` items as needing two
        people's answers, in one transaction."""
        with self.transaction():
            self.conn.executemany(
                "UPDATE selections SET overlap=1 WHERE round=? AND item_id=? AND target='human'", [(round, i) for i in overlap]
            )
            self.set_round_state(round, "human_pending")

    def overlap_items(self, round: int | None = None) -> list[str]:
        """The items chosen for two answers (of ``round``, or of every round), in round and rank order."""
        sql, args = "SELECT item_id FROM selections WHERE overlap=1 AND target='human'", list[object]()
        if round is not None:
            sql, args = sql + " AND round=?", [round]
        return [r[0] for r in self.conn.execute(sql + " ORDER BY round, rank", args)]

    def human_answers(self, round: int | None = None) -> list[dict]:
        """Every standing human answer to an overlap item (of ``round``'s batch, or of every round): item_id, round (the
        batch's), annotator, label, oldest first. Reviews' corrections are not answers to a batch and are left out."""
        sql = (
            "SELECT a.item_id, s.round, a.annotator, a.label FROM annotations a JOIN selections s ON s.item_id=a.item_id"
            " AND s.round=a.round AND s.target='human' AND s.overlap=1 WHERE a.source='human' AND a.label IS NOT NULL"
            " AND a.retracted_at IS NULL AND COALESCE(a.method, '') != 'review'"
        )
        args: list[object] = []
        if round is not None:
            sql, args = sql + " AND s.round=?", [round]
        return [dict(r) for r in self.conn.execute(sql + " ORDER BY a.id", args)]

    def disputes(self, round: int | None = None) -> list[dict]:
        """Overlap items whose two answers differ and that no admin settled yet (of ``round``, or of every round), most
        wanted first: item_id, round, answers ({annotator: label}, in the order given)."""
        answers: dict[str, dict] = {}
        for a in self.human_answers(round):
            answers.setdefault(a["item_id"], {"item_id": a["item_id"], "round": a["round"], "answers": {}})["answers"][
                a["annotator"]
            ] = a["label"]
        settled = self.adjudications()
        return [
            d
            for d in answers.values()
            if len(d["answers"]) >= 2 and len(set(d["answers"].values())) > 1 and d["item_id"] not in settled
        ]

    def adjudications(self) -> dict[str, dict]:
        """Every settled dispute: item_id -> round, admin, label, answers ({annotator: label}), created_at."""
        rows = self.conn.execute("SELECT * FROM adjudications ORDER BY created_at")
        return {r["item_id"]: {**dict(r), "answers": json.loads(r["answers"])} for r in rows}

    def adjudicate(self, admin: str, item_id: str, label: str, labels: Sequence[str], now: float | None = None) -> dict:
        """Record ``admin``'s settled ``label`` of a disputed item of the waiting round (its answers stay as they are).
        Raises ``Rejected`` (nothing written): InvalidLabel for a label outside ``labels``, Conflict for an item not in
        dispute (or no round waiting)."""
        now = time.time() if now is None else now
        if label not in labels:
            raise InvalidLabel(f"label {label!r} is not one of {', '.join(labels)}")
        with self.transaction():
            t = self._waiting_round()
            found = next((d for d in self.disputes(t) if d["item_id"] == item_id), None)
            if found is None:
                raise Conflict(
                    f"item {item_id!r} is not in dispute in round {t}; settle one GET /api/adjudication/next hands out"
                )
            self.conn.execute(
                "INSERT INTO adjudications(item_id, round, admin, label, answers, created_at) VALUES(?, ?, ?, ?, ?, ?)",
                (item_id, t, admin, label, json.dumps(found["answers"]), now),
            )
            return {"round": t, "item_id": item_id, "label": label, "answers": found["answers"], "admin": admin}

    def _waiting_round(self) -> int:
        latest = self.latest_round()
        if latest is None or latest[1] != "human_pending":
            raise Conflict("no round is waiting for human labels right now")
        return latest[0]

    def lease(self, annotator: str, seconds: float, now: float | None = None) -> tuple[int, str] | None:
        """Hand ``annotator`` one pending item of the waiting round: the one they already hold, else the most
        wanted item nobody holds (items they skipped last). None when every pending item is held by others."""
        now = time.time() if now is None else now
        with self.transaction():
            t = self._waiting_round()
            self.conn.execute("DELETE FROM leases WHERE expires_at <= ?", (now,))
            held = {r[0]: r[1] for r in self.conn.execute("SELECT item_id, annotator FROM leases WHERE round=?", (t,))}
            pending = self.pending_human(t, annotator)  # an overlap item's second answer: never from its first annotator
            mine = [i for i in pending if held.get(i) == annotator]
            skipped = {r[0] for r in self.conn.execute("SELECT item_id FROM skips WHERE round=? AND annotator=?", (t, annotator))}
            free = [i for i in pending if i not in held]
            choice = next(iter(mine or [i for i in free if i not in skipped] or free), None)
            if choice is None:
                return None
            self.conn.execute(
                "INSERT INTO leases(item_id, round, annotator, expires_at) VALUES(?, ?, ?, ?) ON CONFLICT(item_id) DO UPDATE"
                " SET annotator=excluded.annotator, expires_at=excluded.expires_at",
                (choice, t, annotator, now + seconds),
            )
            return t, choice

    def skip(self, annotator: str, item_id: str) -> None:
        """``annotator`` passes on an item: it goes back to the others, and to them only after the rest."""
        with self.transaction():
            t = self._waiting_round()
            if item_id not in self.pending_human(t):
                raise Conflict(f"item {item_id!r} is not waiting for a human label in round {t}")
            self.conn.execute("DELETE FROM leases WHERE item_id=? AND annotator=?", (item_id, annotator))
            self.conn.execute("INSERT OR IGNORE INTO skips(round, item_id, annotator) VALUES(?, ?, ?)", (t, item_id, annotator))

    def add_human_label(
        self, annotator: str, item_id: str, label: str, labels: Sequence[str], cost: float = 0.0, now: float | None = None
    ) -> int:
        """Record a person's label for a pending item of the waiting round; returns the round. Raises ``Rejected``
        (nothing written) for a label outside ``labels``, an item that is not pending in that round, or an item
        another person holds."""
        now = time.time() if now is None else now
        if label not in labels:
            raise InvalidLabel(f"label {label!r} is not one of {', '.join(labels)}")
        with self.transaction():
            t = self._waiting_round()
            if item_id not in self.pending_human(t):
                raise Conflict(f"item {item_id!r} is not waiting for a human label in round {t}")
            if item_id not in self.pending_human(t, annotator):
                raise Conflict(f"you labeled item {item_id!r} already; it waits for another person's answer")
            row = self.conn.execute("SELECT annotator, expires_at FROM leases WHERE item_id=?", (item_id,)).fetchone()
            if row and row[0] != annotator and row[1] > now:
                raise Conflict(f"item {item_id!r} is being labeled by someone else")
            self.conn.execute(
                "INSERT INTO annotations(item_id, round, source, annotator, label, confidence, cost, created_at)"
                " VALUES(?, ?, 'human', ?, ?, 1.0, ?, ?)",
                (item_id, t, annotator, label, cost, now),
            )
            self.conn.execute("DELETE FROM leases WHERE item_id=?", (item_id,))
            return t

    def undo(self, annotator: str, seconds: float, now: float | None = None) -> str | None:
        """Take back ``annotator``'s latest label of the waiting round (marked retracted, not deleted) and hand
        the item back to them; None when they have nothing to take back."""
        now = time.time() if now is None else now
        with self.transaction():
            t = self._waiting_round()
            row = self.conn.execute(
                "SELECT id, item_id FROM annotations WHERE round=? AND source='human' AND annotator=? AND retracted_at IS NULL"
                " AND COALESCE(method, '') != 'review' ORDER BY id DESC LIMIT 1",  # a review's correction is not undone
                (t, annotator),
            ).fetchone()
            if row is None:
                return None
            if self.conn.execute("SELECT 1 FROM adjudications WHERE item_id=?", (row[1],)).fetchone():
                raise Conflict(f"item {row[1]!r} was settled by an admin already; your label of it stays")
            self.conn.execute("UPDATE annotations SET retracted_at=? WHERE id=?", (now, row[0]))
            self.conn.execute(
                "INSERT INTO leases(item_id, round, annotator, expires_at) VALUES(?, ?, ?, ?) ON CONFLICT(item_id) DO UPDATE"
                " SET annotator=excluded.annotator, expires_at=excluded.expires_at",
                (row[1], t, annotator, now + seconds),
            )
            return row[1]

    def close_human_batch(self, round: int, partial: bool = False) -> bool:
        """Move a waiting round on to ``human_done`` if none of its human items is pending and no dispute is open, or
        anyway with ``partial`` (atomic with respect to labels and undos); True when the round moved on."""
        with self.transaction():
            if (self.pending_human(round) or self.disputes(round)) and not partial:
                return False
            self.conn.execute("DELETE FROM leases WHERE round=?", (round,))
            self.set_round_state(round, "human_done")
            return True

    # -- reviews of the LLM's labels ----------------------------------------------------------------
    def review_candidates(self, annotation_id: int | None = None) -> list[dict]:
        """The LLM labels open for review (or the one of ``annotation_id``, if open): per item, the LLM's newest standing
        label (the one the student trains on), unless the item has a standing human label, is in the newest round's human
        batch, or that label was reviewed already. Each as id (the annotation's), item_id, round, label, confidence."""
        sql = (
            "SELECT a.id, a.item_id, a.round, a.label, a.confidence FROM annotations a"
            " WHERE a.source='llm' AND a.label IS NOT NULL AND a.retracted_at IS NULL"
            " AND a.id = (SELECT MAX(b.id) FROM annotations b WHERE b.item_id=a.item_id AND b.source='llm'"
            " AND b.label IS NOT NULL AND b.retracted_at IS NULL)"
            " AND NOT EXISTS (SELECT 1 FROM annotations h WHERE h.item_id=a.item_id AND h.source='human'"
            " AND h.retracted_at IS NULL)"
            " AND NOT EXISTS (SELECT 1 FROM selections s WHERE s.item_id=a.item_id AND s.target='human'"
            " AND s.round=(SELECT MAX(round) FROM rounds))"
            " AND NOT EXISTS (SELECT 1 FROM reviews r WHERE r.annotation_id=a.id)"
        )
        args: list[object] = []
        if annotation_id is not None:
            sql, args = sql + " AND a.id=?", [annotation_id]
        return [dict(r) for r in self.conn.execute(sql + " ORDER BY a.id", args)]

    def llm_label_of(self, item_id: str) -> int:
        """The id of the LLM's newest standing label of ``item_id`` (what a review of the item reviews); NotFound without
        one."""
        row = self.conn.execute(
            "SELECT MAX(id) FROM annotations WHERE item_id=? AND source='llm' AND label IS NOT NULL AND retracted_at IS NULL",
            (item_id,),
        ).fetchone()
        if row[0] is None:
            raise NotFound(f"item {item_id!r} has no LLM label to review")
        return int(row[0])

    def lease_review(self, reviewer: str, order: Sequence[int], seconds: float, now: float | None = None) -> int | None:
        """Hand ``reviewer`` one LLM label to review, in the order given (annotation ids, most doubted first): the one
        they hold already, else the first still open that nobody holds. Only while a round waits for people (Conflict
        otherwise); None when every open one is held by others."""
        now = time.time() if now is None else now
        with self.transaction():
            self._waiting_round()
            self.conn.execute("DELETE FROM review_leases WHERE expires_at <= ?", (now,))
            still = {c["id"] for c in self.review_candidates()}
            held = {r[0]: r[1] for r in self.conn.execute("SELECT annotation_id, reviewer FROM review_leases")}
            mine = [a for a in order if a in still and held.get(a) == reviewer]
            free = [a for a in order if a in still and a not in held]
            choice = next(iter(mine or free), None)
            if choice is None:
                return None
            self.conn.execute(
                "INSERT INTO review_leases(annotation_id, reviewer, expires_at) VALUES(?, ?, ?) ON CONFLICT(annotation_id)"
                " DO UPDATE SET reviewer=excluded.reviewer, expires_at=excluded.expires_at",
                (choice, reviewer, now + seconds),
            )
            return choice

    def add_review(
        self,
        reviewer: str,
        annotation_id: int,
        verdict: str,
        label: str | None,
        labels: Sequence[str],
        cost: float = 0.0,
        now: float | None = None,
    ) -> dict:
        """Record ``reviewer``'s verdict on the LLM label ``annotation_id``: ``confirm`` (it is right) or ``correct`` with
        the right ``label``, which also becomes the reviewer's human label of the item (method ``review``, ``cost``).
        Only while a round waits for people. Raises ``Rejected`` (nothing written): InvalidLabel for a verdict or label
        that does not fit, NotFound for an annotation that is no LLM label, Conflict for one not open for review (reviewed
        already, the item labeled by a person, a newer LLM label) or held by another reviewer."""
        now = time.time() if now is None else now
        if verdict not in REVIEW_VERDICTS:
            raise InvalidLabel(f"verdict {verdict!r} is not one of {', '.join(REVIEW_VERDICTS)}")
        if label is not None and label not in labels:
            raise InvalidLabel(f"label {label!r} is not one of {', '.join(labels)}")
        if verdict == "correct" and label is None:
            raise InvalidLabel(f"label: a correction needs the right label, one of {', '.join(labels)}")
        with self.transaction():
            t = self._waiting_round()
            row = self.conn.execute(
                "SELECT item_id, source, label FROM annotations WHERE id=? AND retracted_at IS NULL", (annotation_id,)
            ).fetchone()
            if row is None or row["source"] != "llm" or row["label"] is None:
                raise NotFound(f"annotation {annotation_id} is not an LLM label; review one that GET /api/review/next hands out")
            item_id, said = row["item_id"], row["label"]
            if not self.review_candidates(annotation_id):
                done = self.conn.execute("SELECT reviewer FROM reviews WHERE annotation_id=?", (annotation_id,)).fetchone()
                why = (
                    f"was reviewed already (by {done[0]})"
                    if done
                    else "is not open for review (a person labeled it, or the LLM labeled it again)"
                )
                raise Conflict(f"the LLM label of item {item_id!r} {why}")
            if verdict == "correct" and label == said:
                raise InvalidLabel(f"label {label!r} is what the LLM said: confirm it instead")
            if verdict == "confirm" and label not in (None, said):
                raise InvalidLabel(f"label {label!r} differs from the LLM's {said!r}: send verdict correct to change it")
            lease = self.conn.execute(
                "SELECT reviewer, expires_at FROM review_leases WHERE annotation_id=?", (annotation_id,)
            ).fetchone()
            if lease and lease[0] != reviewer and lease[1] > now:
                raise Conflict(f"the LLM label of item {item_id!r} is being reviewed by someone else")
            right = said if verdict == "confirm" else label
            correction = None
            if verdict == "correct":
                correction = self.conn.execute(
                    "INSERT INTO annotations(item_id, round, source, annotator, label, confidence, cost, method, created_at)"
                    " VALUES(?, ?, 'human', ?, ?, 1.0, ?, 'review', ?)",
                    (item_id, t, reviewer, right, cost, now),
                ).lastrowid
            self.conn.execute(
                "INSERT INTO reviews(annotation_id, item_id, round, reviewer, verdict, llm_label, label, correction_id, cost,"
                " created_at) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (annotation_id, item_id, t, reviewer, verdict, said, right, correction, cost, now),
            )
            self.conn.execute("DELETE FROM review_leases WHERE annotation_id=?", (annotation_id,))
            return {
                "round": t,
                "annotation_id": annotation_id,
                "item_id": item_id,
                "verdict": verdict,
                "llm_label": said,
                "label": right,
            }

    def reviews(self) -> list[dict]:
        """Every review, oldest first, with the reviewed LLM label's confidence (``llm_confidence``)."""
        rows = self.conn.execute(
            "SELECT r.*, a.confidence AS llm_confidence FROM reviews r JOIN annotations a ON a.id = r.annotation_id ORDER BY r.id"
        )
        return [dict(r) for r in rows]

    # -- who may label (imfl people) ---------------------------------------------------------------
    def has_people(self) -> bool:
        """Whether anyone was ever registered (removed people count: see ``imfl.people``)."""
        return self.conn.execute("SELECT 1 FROM people LIMIT 1").fetchone() is not None

    def people(self) -> list[dict]:
        """Everyone registered, removed people included, in the order they were added, with their standing human
        labels; never a token or its hash."""
        rows = self.conn.execute(
            "SELECT p.name, p.role, p.added_at, p.removed_at, (SELECT COUNT(*) FROM annotations a WHERE a.annotator = p.name"
            " AND a.source = 'human' AND a.label IS NOT NULL AND a.retracted_at IS NULL) AS labels"
            " FROM people p ORDER BY p.added_at, p.name"
        )
        return [dict(r) for r in rows]

    def active_people(self) -> list[tuple[str, str, str]]:
        """(name, role, token hash) of everyone who may use the page now."""
        rows = self.conn.execute("SELECT name, role, token_sha256 FROM people WHERE removed_at IS NULL ORDER BY name")
        return [(r[0], r[1], r[2]) for r in rows]

    def add_person(self, name: str, role: str, token_sha256: str, now: float | None = None) -> bool:
        """Register ``name`` with ``role`` and the hash of their new token; True when they had been removed before (their
        row comes back with the new token). Raises ``Rejected`` (nothing written) when ``name`` is registered already."""
        now = time.time() if now is None else now
        with self.transaction():
            row = self.conn.execute("SELECT role, removed_at FROM people WHERE name=?", (name,)).fetchone()
            if row is not None and row[1] is None:
                raise Conflict(
                    f"{name!r} is registered already (as {row[0]}); to give them a new token or role, "
                    "remove them first, then add them again",
                )
            self.conn.execute(
                "INSERT INTO people(name, role, token_sha256, added_at) VALUES(?, ?, ?, ?) ON CONFLICT(name) DO UPDATE"
                " SET role=excluded.role, token_sha256=excluded.token_sha256, added_at=excluded.added_at, removed_at=NULL",
                (name, role, token_sha256, now),
            )
            return row is not None

    def remove_person(self, name: str, now: float | None = None) -> None:
        """End ``name``'s access: their token hash goes, the items they hold go back to the others, their labels stay.
        Raises ``Rejected`` (nothing written) for a name that is not registered now."""
        now = time.time() if now is None else now
        with self.transaction():
            row = self.conn.execute("SELECT removed_at FROM people WHERE name=?", (name,)).fetchone()
            if row is None or row[0] is not None:
                known = [r[0] for r in self.conn.execute("SELECT name FROM people WHERE removed_at IS NULL ORDER BY name")]
                why = "was removed already" if row is not None else "is not registered"
                raise NotFound(f"{name!r} {why}; registered now: {', '.join(map(repr, known)) or 'nobody'}")
            self.conn.execute("UPDATE people SET token_sha256=NULL, removed_at=? WHERE name=?", (now, name))
            self.conn.execute("DELETE FROM leases WHERE annotator=?", (name,))

    def item(self, item_id: str) -> dict | None:
        row = self.conn.execute("SELECT id, text, text_pair FROM items WHERE id=?", (item_id,)).fetchone()
        return dict(row) if row else None


def _example(r: sqlite3.Row) -> Example:
    return Example(r["id"], r["text"], r["text_pair"], r["gold"], json.loads(r["extra"]) if r["extra"] else {}, r["line"] or 0)


def _annotation(r: sqlite3.Row) -> Annotation:
    return Annotation(
        r["item_id"],
        r["round"],
        r["source"],
        r["annotator"],
        r["label"],
        json.loads(r["probs"]) if r["probs"] else None,
        r["confidence"],
        r["cost"],
        r["prompt_hash"],
        tuple(json.loads(r["demo_ids"])) if r["demo_ids"] else (),
        r["method"],
        r["error"],
        r["prompt_tokens"],
        r["completion_tokens"],
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
