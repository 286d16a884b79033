"""The admins' dashboard (``GET /api/dashboard`` of ``imfl serve``): where a run stands, assembled from its folder
as one JSON-ready dict, without writing anything.

It reads the run's store through a read-only SQLite connection, in one read transaction (so a round finishing
meanwhile shows whole or not at all), and the fidelity state files (``state/fidelity_round<t>.json``):

* ``status`` and ``waiting``: the run's phase (``new``, ``labeling``, ``busy``, ``finished``) and, while a round waits
  for people, how many of its items are still without a label;
* ``rounds``: every round with its state, its plan (human and LLM labels), the labels and cost it took per source,
  and, once evaluated, the numbers the loop recorded (test accuracy and macro-F1, the LLM's self-check accuracy
  ``llm_self_accuracy`` and its accuracy against gold labels ``llm_accuracy``);
* ``curve``: test accuracy and macro-F1 per evaluated round, and ``human_only``, the last round's comparison with a
  student trained on the human labels alone, where the run made it;
* ``totals``: labels and cost per source over the run (cost in ``human.cost``'s unit; the LLM's self-check answers
  are counted apart, as ``self_check_cost``);
* ``llm_per_class``: the LLM per class, with ``basis`` saying from what: ``self-check`` (the confusion of its
  answers on human-labeled items, the latest round's fidelity state), ``gold`` (its labels against the pool's gold
  labels, for simulations and benchmarks) or None (nothing to measure it on yet);
* ``llm_review``: people's reviews of the LLM's labels (the Review tab): how many were confirmed and corrected, their
  cost, and per class the measured precision of the LLM's reviewed labels (``classes``, as ``llm_per_class``'s, with
  the reviewer's label as the truth); zeros and no classes without reviews. Reviewed labels are the ones the fidelity
  policy doubted most, so this precision is a pessimistic one;
* ``people``: labels per person and per round, and labels per hour from the times their labels were recorded
  (the time between consecutive labels of one person, pauses over ``BREAK_SECONDS`` left out);
* ``agreement`` (``human.overlap``): per round with items two people labeled, and over the run, how many such items,
  how many disagreements and how many of them an admin settled, Cohen's kappa per pair of people and Fleiss' kappa
  with more than two people (``imfl.agreement``); ``waiting.disputes``: disagreements of the waiting round still open
  (only with overlap items).

Label counts are standing labels (a retracted one does not count) that carry a label (a failed LLM call does not);
costs count every standing annotation, failed LLM calls included, as the round metrics do.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
import tomllib
from collections import defaultdict
from contextlib import closing
from pathlib import Path
from typing import Any

from imfl.agreement import agreement
from imfl.errors import DataError
from imfl.fidelity import read_state
from imfl.store import SCHEMA_VERSION, Store

__all__ = ["BREAK_SECONDS", "dashboard", "labels_per_hour"]

BREAK_SECONDS = 600.0  # a longer gap between two labels of one person is a pause, not labeling time
SOURCES = ("human", "llm")


def dashboard(run_dir: str | Path) -> dict[str, Any]:
    """Everything the dashboard shows for the run in ``run_dir`` (see the module's notes); DataError (one line) for a
    folder without a usable store."""
    run_dir = Path(run_dir)
    path = run_dir / "store.sqlite"
    if not path.is_file():
        raise DataError(f"{run_dir} has no store.sqlite: not a run folder (imfl init or imfl run creates one)")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise DataError(f"{path}: cannot be opened for reading ({exc})") from None
    with closing(conn):
        conn.row_factory = sqlite3.Row
        try:
            conn.execute("BEGIN")  # one snapshot for every read below
            return _assemble(Store(conn, path), run_dir)
        except sqlite3.Error as exc:
            raise DataError(f"{path}: not a usable imfl store ({exc})") from None
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")


def labels_per_hour(times: list[float]) -> tuple[float | None, float]:
    """(labels per hour, seconds labeling) from the times one person's labels were recorded: each label after a gap
    of at most ``BREAK_SECONDS`` counts, over the sum of those gaps. None when no such gap has any length."""
    times = sorted(times)
    gaps = [b - a for a, b in zip(times, times[1:]) if b - a <= BREAK_SECONDS]
    active = sum(gaps)
    return (round(len(gaps) / active * 3600, 1) if active > 0 else None), round(active, 1)


def _finite(value: Any) -> Any:
    """A metric as JSON can carry it: NaN and infinities become None."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _fidelity_state(run_dir: Path, t: int) -> dict:
    try:
        return read_state(run_dir, t)
    except (OSError, ValueError):  # being rewritten (the loop replaces it atomically, but be safe): shown next time
        return {}


def _assemble(store: Store, run_dir: Path) -> dict[str, Any]:
    version = int(store.get_meta("schema_version", "0"))
    if version != SCHEMA_VERSION:
        raise DataError(
            f"{store.path}: store schema {version}, this imfl reads {SCHEMA_VERSION}; open the run once with imfl status"
        )
    labels: list[str] = json.loads(store.get_meta("labels") or "[]")
    config = tomllib.loads(store.get_meta("config") or "")
    planned_rounds = int(config.get("budget", {}).get("rounds", 0))
    conn = store.conn

    # labels (with a label) and cost (every annotation) per round and source; standing ones only
    done: dict[tuple[int, str], tuple[int, int, float]] = {}
    for r in conn.execute(
        "SELECT round, source, SUM(label IS NOT NULL), SUM(label IS NULL), COALESCE(SUM(cost), 0) FROM annotations"
        " WHERE retracted_at IS NULL GROUP BY round, source"
    ):
        done[(r[0], r[1])] = (int(r[2]), int(r[3]), float(r[4]))

    states = {t: _fidelity_state(run_dir, t) for t in range(1, max(planned_rounds, 0) + 1)}
    rounds = []
    for row in store.rounds():
        t, metrics = row["round"], row["metrics"] or {}
        self_check = states.get(t, {}).get("llm") or {}
        entry: dict[str, Any] = {
            "round": t,
            "state": row["state"],
            "evaluated": row["state"] == "evaluated",
            "planned_human": row["planned_human"],
            "planned_llm": row["planned_llm"],
        }
        for source in SOURCES:
            n, _, cost = done.get((t, source), (0, 0, 0.0))
            entry[f"{source}_labels"], entry[f"{source}_cost"] = n, round(cost, 6)
        entry["llm_unanswered"] = done.get((t, "llm"), (0, 0, 0.0))[1]
        for key in ("test_accuracy", "test_macro_f1", "llm_accuracy"):
            entry[key] = _finite(metrics.get(key))
        # the self-check is measured before the round's LLM labels: shown as soon as it is there
        entry["llm_self_accuracy"] = _finite(metrics.get("llm_self_accuracy", self_check.get("accuracy")))
        entry["llm_self_n"] = metrics.get("llm_self_n", self_check.get("n"))
        rounds.append(entry)

    evaluated = [row["metrics"] for row in store.rounds() if row["state"] == "evaluated" and row["metrics"]]
    curve = [
        {"round": m["round"], "test_accuracy": _finite(m["test_accuracy"]), "test_macro_f1": _finite(m.get("test_macro_f1"))}
        for m in evaluated
        if m.get("test_accuracy") is not None
    ]
    human_only = None
    if evaluated and evaluated[-1].get("human_only"):
        h = evaluated[-1]["human_only"]
        human_only = {"round": evaluated[-1]["round"]} | {
            k: _finite(h.get(k))
            for k in ("test_accuracy", "test_macro_f1", "human_labels", "llm_labels", "gain_accuracy", "gain_macro_f1", "summary")
        }

    self_check_cost = sum(float(p.get("cost") or 0) for s in states.values() for p in s.get("probe", []))
    totals: dict[str, Any] = {
        source: {
            "labels": sum(v[0] for (_, s), v in done.items() if s == source),
            "cost": round(sum(v[2] for (_, s), v in done.items() if s == source), 6),
        }
        for source in SOURCES
    }
    totals["llm"]["unanswered"] = sum(v[1] for (_, s), v in done.items() if s == "llm")
    totals["llm"]["self_check_cost"] = round(self_check_cost, 6)
    reviews = store.reviews()
    confirm_cost = sum(float(r["cost"]) for r in reviews if r["verdict"] == "confirm")  # a correction's is the human cost
    totals["cost"] = round(totals["human"]["cost"] + totals["llm"]["cost"] + self_check_cost + confirm_cost, 6)

    latest = store.latest_round()
    waiting: dict[str, Any] | None = None
    if latest is None:
        status = "new"
    elif latest[1] == "human_pending":
        status, t = "labeling", latest[0]
        held = conn.execute("SELECT COUNT(*) FROM leases WHERE round=? AND expires_at > ?", (t, time.time())).fetchone()[0]
        waiting = {
            "round": t,
            "pending": len(store.pending_human(t)),
            "total": len(store.selection(t, "human")),
            "held": held,
        }
        if store.overlap_items(t):  # human.overlap: disagreements still waiting for an admin
            waiting["disputes"] = len(store.disputes(t))
    elif latest[1] == "evaluated" and latest[0] >= planned_rounds:
        status = "finished"
    else:
        status = "busy"

    return {
        "status": status,
        "labels": labels,
        "planned_rounds": planned_rounds,
        "waiting": waiting,
        "rounds": rounds,
        "curve": curve,
        "human_only": human_only,
        "totals": totals,
        "llm_per_class": _llm_per_class(store, labels, states),
        "llm_review": _llm_review(labels, reviews),
        "people": _people(store),
        "agreement": _agreement(store),
        "break_seconds": BREAK_SECONDS,
    }


def _agreement(store: Store) -> dict[str, Any]:
    """People's agreement on the items two of them answered (``human.overlap``): per round with such items (with its
    disputes still open) and over the run (``imfl.agreement``); no rounds and zeros without overlap."""
    settled = store.adjudications()
    rounds = [r[0] for r in store.conn.execute("SELECT DISTINCT round FROM selections WHERE overlap=1 ORDER BY round")]
    return {
        "overall": agreement(store.human_answers(), settled),
        "rounds": [{"round": t, **agreement(store.human_answers(t), settled), "open": len(store.disputes(t))} for t in rounds],
    }


def _per_class(labels: list[str], pairs: list[tuple[int, int]]) -> list[dict[str, Any]]:
    """Per label: items of that gold class, the LLM's answers of it, the right ones among both, recall (accuracy on
    the class) and precision (how often its answer of the label was right)."""
    gold, said, right = [0] * len(labels), [0] * len(labels), [0] * len(labels)
    for g, p in pairs:
        gold[g] += 1
        said[p] += 1
        right[g] += g == p
    return [
        {
            "label": label,
            "gold": gold[c],
            "said": said[c],
            "correct": right[c],
            "recall": round(right[c] / gold[c], 4) if gold[c] else None,
            "precision": round(right[c] / said[c], 4) if said[c] else None,
        }
        for c, label in enumerate(labels)
    ]


def _llm_per_class(store: Store, labels: list[str], states: dict[int, dict]) -> dict[str, Any]:
    """The LLM per class: from the latest self-check's confusion (its answers on human-labeled items, every round's
    probes so far), else from its labels against the pool's gold labels, else nothing."""
    for t in sorted(states, reverse=True):
        est = states[t].get("llm") or {}
        matrix = est.get("confusion")
        if matrix and est.get("n") and len(matrix) == len(labels):
            pairs = [(g, p) for g, row in enumerate(matrix) for p, n in enumerate(row) for _ in range(int(n))]
            return {"basis": "self-check", "round": t, "n": len(pairs), "classes": _per_class(labels, pairs)}
    index = {label: i for i, label in enumerate(labels)}
    rows = store.conn.execute(
        "SELECT a.label, i.gold FROM annotations a JOIN items i ON i.id = a.item_id WHERE a.source = 'llm'"
        " AND a.label IS NOT NULL AND a.retracted_at IS NULL AND i.gold IS NOT NULL"
    ).fetchall()
    pairs = [(index[g], index[p]) for p, g in rows if p in index and g in index]
    if pairs:
        return {"basis": "gold", "round": None, "n": len(pairs), "classes": _per_class(labels, pairs)}
    return {"basis": None, "round": None, "n": 0, "classes": []}


def _llm_review(labels: list[str], reviews: list[dict]) -> dict[str, Any]:
    """People's verdicts on the LLM's labels, and per class the precision of its reviewed labels."""
    index = {label: i for i, label in enumerate(labels)}
    pairs = [(index[r["label"]], index[r["llm_label"]]) for r in reviews if r["label"] in index and r["llm_label"] in index]
    return {
        "n": len(reviews),
        "confirmed": sum(r["verdict"] == "confirm" for r in reviews),
        "corrected": sum(r["verdict"] == "correct" for r in reviews),
        "cost": round(sum(float(r["cost"]) for r in reviews), 6),
        "classes": _per_class(labels, pairs) if pairs else [],
    }


def _people(store: Store) -> list[dict[str, Any]]:
    """Each person who labeled or is registered: role (None: not registered, e.g. a name typed with the shared token),
    standing human labels in all and per round, their cost, first and last label time, and labels per hour."""
    times: dict[str, list[float]] = defaultdict(list)
    per_round: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    cost: dict[str, float] = defaultdict(float)
    for name, t, at, c in store.conn.execute(
        "SELECT annotator, round, created_at, cost FROM annotations WHERE source = 'human' AND label IS NOT NULL"
        " AND retracted_at IS NULL ORDER BY id"
    ):
        times[name].append(float(at))
        per_round[name][int(t)] += 1
        cost[name] += float(c or 0)
    registered = {p["name"]: p for p in store.people()}
    out: list[dict[str, Any]] = []
    for name in sorted(set(times) | set(registered)):
        person = registered.get(name)
        rate, active = labels_per_hour(times[name]) if name in times else (None, 0.0)
        out.append(
            {
                "name": name,
                "role": person["role"] if person else None,
                "active": (person["removed_at"] is None) if person else None,
                "labels": len(times.get(name, [])),
                "per_round": [{"round": t, "labels": n} for t, n in sorted(per_round[name].items())] if name in times else [],
                "cost": round(cost.get(name, 0.0), 6),
                "first_at": min(times[name]) if name in times else None,
                "last_at": max(times[name]) if name in times else None,
                "seconds_labeling": active,
                "labels_per_hour": rate,
            }
        )
    out.sort(key=lambda p: (-p["labels"], p["name"]))
    return out
