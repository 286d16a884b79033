"""A persistent cache of LLM answers, so the same prompt to the same model with the same decoding
parameters is never paid for twice: an interrupted run repeats no call it already made.

One SQLite file (WAL) under the cache directory; the key is a hash of the backend's ``cache_key()``
(model, decoding parameters; never the URL or the API key), the label set and the messages. Only
answers are kept (labels or unparsed answers), not transport failures, which are worth retrying.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path

from imfl.llm.base import Scored


def cache_key(backend_key: dict, labels, messages) -> str:
    blob = json.dumps({"b": backend_key, "l": list(labels), "m": messages}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


class AnswerCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, value TEXT NOT NULL, created_at REAL NOT NULL)"
        )

    def get(self, key: str) -> Scored | None:
        row = self.conn.execute("SELECT value FROM answers WHERE key=?", (key,)).fetchone()
        if row is None:
            return None
        return Scored(**json.loads(row[0]), cached=True)

    def put(self, key: str, scored: Scored) -> None:
        if scored.ok or scored.unparsed:
            self.conn.execute(
                "INSERT OR REPLACE INTO answers(key, value, created_at) VALUES(?, ?, ?)",
                (key, json.dumps(scored.to_json()), time.time()),
            )

    def close(self) -> None:
        self.conn.close()
