"""What people can do with a run that waits for them, in one place for the web page, the terminal and
file imports: take the next item, label it, skip it, undo their last label, see the round's progress.

Every call opens its own connection to the run's store (SQLite in WAL mode allows one writer and many
readers across threads and processes), so the web server, a terminal session and the loop can work on
the same run at once. The checks live in ``Store`` transactions: a label is accepted only for a pending
item of the waiting round, from a label in the set, and not for an item another person holds.

``People`` is who may use the annotation page, each with their own token (``imfl people add``). Until the first
person is registered the page takes one shared token and the name the person types (one expert); from then on only
personal tokens are accepted, and a label is recorded under the person the token belongs to.

People may also review the LLM's labels while a round waits for them (``Labeling.review_next`` / ``review``): the
labels the fidelity policy doubts most come first (``review_order``), each held for one reviewer at a time; a
confirmation or a correction costs ``human.review_cost``, and a correction is the reviewer's human label of the item.

With ``human.overlap``, some items of each round's batch go to two different people (``Store.lease`` never hands an
item to someone who answered it); where their answers differ an admin settles the item (``adjudication_next``,
``adjudicate``), and the round's batch is done only when every such dispute is settled.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import tomllib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, cast

import numpy as np
from pydantic import Field, TypeAdapter, ValidationError

from imfl.errors import ConfigError, Conflict, InvalidLabel, Rejected
from imfl.store import Store

__all__ = [
    "ROLES",
    "Labeling",
    "Name",
    "People",
    "Person",
    "Rejected",
    "check_name",
    "has_role",
    "read_guidelines",
    "review_order",
]

# A person's name as recorded with their labels (and shown in exports and on the page): one rule for the web page
# (its API models use ``Name``), the terminal and file imports, so no path records a name another would refuse.
Name = Annotated[str, Field(min_length=1, max_length=80, pattern=r"^[\w .@-]+$")]
_name = TypeAdapter(Name)


def check_name(name: str, what: str = "annotator") -> str:
    """``name`` if it is a usable name, else a ConfigError naming ``what`` gave it (an option, a field)."""
    try:
        return _name.validate_python(name)
    except ValidationError:
        raise ConfigError(
            f"{what} {name!r} is not a usable name: use 1 to 80 letters, digits, spaces and . @ - _, e.g. dr-b"
        ) from None


# Roles, each allowed what the ones before it are: an annotator labels and reviews LLM labels; an admin also manages
# people and exports. ``has_role`` is the one check the server's endpoints use.
ROLES = ("annotator", "admin")


def has_role(role: str, needed: str) -> bool:
    """Whether a person with ``role`` may do what ``needed`` may (an admin may do everything an annotator may)."""
    return ROLES.index(role) >= ROLES.index(needed)


def check_role(role: str, what: str = "--role") -> str:
    if role not in ROLES:
        raise ConfigError(f"{what} {role!r} is unknown; use {' or '.join(ROLES)}")
    return role


@dataclass(frozen=True)
class Person:
    """Who a personal token belongs to."""

    name: str
    role: str


def token_sha256(token: str) -> str:
    """What the store keeps of a token. A token is 192 random bits, so a plain hash cannot be turned back into it by
    guessing, and no salt or slow hash is needed (those protect guessable passwords)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class People:
    """The people registered for the run in ``run_dir`` (table ``people`` of its store)."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / "store.sqlite"
        if not self.path.is_file():
            raise ConfigError(f"{Path(run_dir)} has no store.sqlite: create the project first (imfl init CONFIG)")

    @contextmanager
    def _store(self):
        store = Store.open(self.path)
        try:
            yield store
        finally:
            store.close()

    def add(self, name: str, role: str = "annotator") -> tuple[str, bool]:
        """Register ``name`` as ``role``; returns their new token (shown to them once, kept only as a hash) and whether
        they had been removed before. Raises ConfigError for an unusable name or role, Rejected (409) for a name that
        is registered already; nothing is written then."""
        check_name(name, "name")
        check_role(role, "role")
        token = secrets.token_urlsafe(24)
        with self._store() as store:
            again = store.add_person(name, role, token_sha256(token))
        return token, again

    def remove(self, name: str) -> int:
        """End ``name``'s access at once; returns how many labels of theirs stay. Rejected (404) when nobody of that
        name is registered now."""
        with self._store() as store:
            store.remove_person(name)
            return next(p["labels"] for p in store.people() if p["name"] == name)

    def list(self) -> list[dict]:
        """name, role, added_at, removed_at (None while registered) and labels (standing human labels) of everyone
        ever registered."""
        with self._store() as store:
            return store.people()

    def registered(self) -> bool:
        """Whether the run is in per-person mode: someone was registered (even if removed since: removing the last
        person does not bring the shared token back)."""
        with self._store() as store:
            return store.has_people()

    def identify(self, token: str) -> tuple[bool, Person | None]:
        """Whether the run is in per-person mode, and the person ``token`` belongs to (None: nobody registered now).
        Compares against every registered hash, each in constant time, in one read of the store."""
        given = token_sha256(token).encode()
        found = None
        with self._store() as store:
            registered = store.has_people()
            for name, role, digest in store.active_people():
                if secrets.compare_digest(given, digest.encode()):
                    found = Person(name, role)
        return registered, found


def fidelity_doubts(run_dir: Path) -> dict[str, tuple[float, bool]]:
    """What the latest fidelity state (``state/fidelity_round<t>.json``, its ``training`` entries, written when a round's
    student was trained) says of each LLM label: item id -> (P(right), whether routing, cleanlab's filter or the
    small-loss filter left it out). Empty without fidelity state."""
    found: list[tuple[int, Path]] = []
    for path in (run_dir / "state").glob("fidelity_round*.json"):
        digits = path.stem.removeprefix("fidelity_round")
        if digits.isdigit():
            found.append((int(digits), path))
    for _, path in sorted(found, reverse=True):
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # being replaced: the round before then
            continue
        if state.get("training"):
            return {
                e["id"]: (float(e["p_correct"]), bool(e.get("routed") or e.get("filtered") or e.get("small_loss")))
                for e in state["training"]
            }
    return {}


def review_order(candidates: list[dict], run_dir: Path) -> list[dict]:
    """The review queue: LLM labels the fidelity policy doubts first. Those in the latest fidelity state by P(right)
    ascending, a label it left out (routed, filtered) before another of the same P(right); then the others (LLM labels
    newer than that state, or every one without fidelity state) by the LLM's own confidence ascending (unknown last);
    ties by annotation id. Each candidate gains ``p_correct`` and ``flagged``."""
    doubts = fidelity_doubts(run_dir)
    out = []
    for c in candidates:
        p, flagged = doubts.get(c["item_id"], (None, False))
        out.append({**c, "p_correct": p, "flagged": flagged})

    def key(c: dict) -> tuple:
        conf = c["confidence"]
        known = c["p_correct"] is not None
        return (not known, c["p_correct"] if known else 0.0, not c["flagged"], conf is None, conf or 0.0, c["id"])

    return sorted(out, key=key)


MAX_GUIDELINES_BYTES = 1_000_000  # a guidelines file is read whole and sent to every page that asks


def read_guidelines(path: Path | None) -> str:
    """The Markdown text of the guidelines file ``path`` (``human.guidelines``; "" for None), or a ConfigError naming
    the file and what to do."""
    if path is None:
        return ""
    try:
        size = path.stat().st_size
        if size > MAX_GUIDELINES_BYTES:
            raise ConfigError(
                f"{path}: human.guidelines has {size:,} bytes, over the {MAX_GUIDELINES_BYTES:,} the page takes: "
                "shorten it, or link to longer material"
            )
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: human.guidelines file not found; give the path of a Markdown file, or remove the setting"
        ) from None
    except UnicodeDecodeError:
        from imfl.io import not_utf8

        raise ConfigError(not_utf8(path)) from None
    except OSError as exc:
        raise ConfigError(
            f"{path}: human.guidelines cannot be read ({exc.strerror}); check the path and its permissions"
        ) from None


class Labeling:
    """People's side of one run (``run_dir`` holds ``store.sqlite``)."""

    def __init__(
        self,
        run_dir: str | Path,
        lease_seconds: float = 600,
        cost: float = 1.0,
        show_guesses: bool = False,
        llm_guesses: dict[str, str | None] | None = None,
        descriptions: dict[str, str] | None = None,
        guidelines: str = "",
        review_cost: float = 0.25,
    ):
        self.run_dir = Path(run_dir)
        self.guidelines = guidelines  # Markdown (human.guidelines, see read_guidelines); the server renders it safely
        self.lease_seconds = lease_seconds
        self.cost = cost
        self.review_cost = review_cost  # human.review_cost: what confirming or correcting one LLM label costs
        self.show_guesses = show_guesses
        self.llm_guesses = llm_guesses or {}  # labels an LLM already gave (recorded); the LLM is never asked for them
        if not (self.run_dir / "store.sqlite").is_file():
            raise ConfigError(f"{self.run_dir} has no store.sqlite: create the project first (imfl init CONFIG)")
        with self._store() as store:
            self.labels = tuple(json.loads(store.get_meta("labels") or "[]"))
            self.rounds = int(tomllib.loads(store.get_meta("config") or "")["budget"]["rounds"])
        # what each label means (data.label_descriptions), in label order; labels without one are left out
        self.descriptions = {label: (descriptions or {})[label] for label in self.labels if (descriptions or {}).get(label)}

    @contextmanager
    def _store(self):
        store = Store.open(self.run_dir / "store.sqlite")
        try:
            yield store
        finally:
            store.close()

    def status(self) -> dict:
        """Where the run is: ``labeling`` (a round waits for people), ``busy`` (the loop is working),
        ``finished``, or ``new`` (nothing selected yet); with the waiting round's progress."""
        with self._store() as store:
            latest = store.latest_round()
            if latest is None:
                return {"state": "new", "round": None, "done": 0, "total": 0}
            t, state = latest
            total = len(store.selection(t, "human"))
            pending = len(store.pending_human(t)) if state in ("selected", "human_pending") else 0
            disputes = len(store.disputes(t)) if state == "human_pending" else 0
            if state == "human_pending":
                phase = "labeling"
            elif state == "evaluated" and t >= self.rounds:
                phase = "finished"
            else:
                phase = "busy"
            out = {"state": phase, "round": t, "done": max(total - pending - disputes, 0), "total": total}
            if store.overlap_items(t):  # human.overlap: items waiting for an admin's settlement count as not done
                out["disputes"] = disputes
            return out

    def pending_items(self) -> list[dict]:
        """The waiting round's items still without a human label (id, text, text_pair), most wanted first."""
        with self._store() as store:
            latest = store.latest_round()
            if latest is None or latest[1] != "human_pending":
                return []
            return [store.item(i) for i in store.pending_human(latest[0])]

    def next(self, annotator: str) -> dict:
        """The item ``annotator`` should label now (held for them for ``lease_seconds``), or why there is none."""
        check_name(annotator)  # the name is recorded from here on (as the item's holder)
        status = self.status()
        if status["state"] != "labeling":
            return status
        with self._store() as store:
            try:
                got = store.lease(annotator, self.lease_seconds)
            except Rejected:  # the round moved on between the two reads
                return self.status()
            if got is None:
                return {**status, "state": "others"}  # every pending item is held by someone else
            t, item_id = got
            item = store.item(item_id)
        out = {**status, "item": item, "labels": list(self.labels)}
        if self.show_guesses:
            student, llm = self._student_guess(t, item_id), self.llm_guesses.get(item_id)
            if student or llm:
                out["guess"] = {"student": student, "llm": llm}
        return out

    def label(self, annotator: str, item_id: str, label: str) -> dict:
        check_name(annotator)
        with self._store() as store:
            store.add_human_label(annotator, item_id, label, self.labels, cost=self.cost)
        return self.status()

    def skip(self, annotator: str, item_id: str) -> dict:
        with self._store() as store:
            store.skip(annotator, item_id)
        return self.status()

    def undo(self, annotator: str) -> dict:
        with self._store() as store:
            item_id = store.undo(annotator, self.lease_seconds)
        if item_id is None:
            raise Conflict("you have no label in this round to take back")
        return {**self.status(), "undone": item_id}

    def review_next(self, reviewer: str) -> dict:
        """The LLM label ``reviewer`` should review now (held for them for ``lease_seconds``), most doubted first, or why
        there is none: the run's status, with ``state`` ``reviewed`` (nothing left to review) or ``others`` (everything
        left is held by other reviewers) while a round waits. ``remaining``: LLM labels still open for review."""
        check_name(reviewer)
        status = self.status()
        if status["state"] != "labeling":
            return status
        with self._store() as store:
            candidates = review_order(store.review_candidates(), self.run_dir)
            try:
                got = store.lease_review(reviewer, [c["id"] for c in candidates], self.lease_seconds)
            except Rejected:  # the round moved on between the two reads
                return self.status()
            if got is None:
                return {**status, "state": "others" if candidates else "reviewed", "remaining": len(candidates)}
            chosen = next(c for c in candidates if c["id"] == got)
            item = store.item(chosen["item_id"])
        return {
            **status,
            "remaining": len(candidates),
            "item": item,
            "labels": list(self.labels),
            "review": {
                "annotation_id": chosen["id"],
                "llm_label": chosen["label"],
                "llm_confidence": chosen["confidence"],
                "llm_round": chosen["round"],
                "p_correct": chosen.get("p_correct"),
                "flagged": chosen.get("flagged", False),
            },
        }

    def review(
        self, reviewer: str, verdict: str, label: str | None = None, annotation_id: int | None = None, item_id: str | None = None
    ) -> dict:
        """Record ``reviewer``'s verdict (``confirm`` or ``correct`` with the right ``label``) on an LLM label, given by
        its annotation id or its item's id (then the item's newest LLM label); see ``Store.add_review``."""
        check_name(reviewer)
        if (annotation_id is None) == (item_id is None):
            raise InvalidLabel("annotation_id or item_id: give one of them, the LLM label to review")
        with self._store() as store:
            if annotation_id is None:
                annotation_id = store.llm_label_of(cast(str, item_id))
            done = store.add_review(reviewer, annotation_id, verdict, label, self.labels, cost=self.review_cost)
        return {**self.status(), "reviewed": done}

    def adjudication_next(self) -> dict:
        """The oldest open dispute of the waiting round (an overlap item whose two answers differ) for an admin to settle:
        the run's status with ``item``, ``answers`` ([{annotator, label}]) and ``labels``; or the status with ``state``
        ``settled`` when no dispute is open."""
        status = self.status()
        if status["state"] != "labeling":
            return status
        with self._store() as store:
            open_ = store.disputes(status["round"])
            if not open_:
                return {**status, "state": "settled", "open": 0}
            first = open_[0]
            item = store.item(first["item_id"])
        answers = [{"annotator": who, "label": label} for who, label in first["answers"].items()]
        return {**status, "open": len(open_), "item": item, "answers": answers, "labels": list(self.labels)}

    def adjudicate(self, admin: str, item_id: str, label: str) -> dict:
        """Record ``admin``'s settled ``label`` of a disputed item (see ``Store.adjudicate``); the student trains on it."""
        check_name(admin, "admin")
        with self._store() as store:
            done = store.adjudicate(admin, item_id, label, self.labels)
        return {**self.status(), "adjudicated": done}

    def agreement(self) -> dict:
        """Agreement of the people on the items two of them answered: the waiting (or latest) round's and the run's
        (``imfl.agreement``)."""
        from imfl.agreement import agreement

        with self._store() as store:
            latest = store.latest_round()
            settled = store.adjudications()
            this = agreement(store.human_answers(latest[0]), settled) if latest else None
            return {
                "round": latest[0] if latest else None,
                "this_round": this,
                "overall": agreement(store.human_answers(), settled),
            }

    def export_rows(self) -> list[dict]:
        """Every standing label with its provenance and the item's text (as ``imfl export`` writes them)."""
        with self._store() as store:
            return store.export_rows()

    def _student_guess(self, t: int, item_id: str) -> dict | None:
        """The student's probabilities for the item, from the previous round's predictions (none in round 1)."""
        path = self.run_dir / "state" / f"proba_round{t - 1}.npz"
        if t <= 1 or not path.is_file():
            return None
        data = np.load(path)
        where = np.flatnonzero(data["ids"] == item_id)
        if not len(where):
            return None
        return {label: round(float(p), 3) for label, p in zip(self.labels, data["proba"][where[0]])}
