"""One round and the whole run of Interactive Multi-Fidelity Learning.

Each round t: the current student's least-confidence uncertainty over the unlabeled pool and the
pool's embeddings feed the query (EEQ by default), which picks b_t items; the b_h(t) most uncertain
go to the human, the rest to the LLM. With ``order = "human-first"`` the human labels are committed
before the LLM's prompts are built, so they are already among its demonstrations. Then a fresh
student is fine-tuned on every label so far and evaluated on the test set.

With ``llm.eval_sample``, the LLM is also measured on human-labeled items right after the human step
(fidelity-aware IMFL, beyond the paper: the run asks ``fidelity.Policy``); the ``[fidelity]`` switches then weight,
route or filter its labels before training and may stop buying them (the plan of later rounds is kept in the
store). A human label of an item always wins over an LLM label of the same item.

A budget in money (``budget.cost``) becomes a number of labels when the run is planned (``planned_total``) and is
checked again before every LLM batch (``Run._affordable``): every annotation's cost and the self-check's answers
count (``money_spent``). ``[self_training]`` adds the previous round's most confident predictions on unlabeled items
to the training (``pseudo.py``); they are no annotations and cost nothing.

People may review the LLM's labels while a round waits for them (``imfl.people``): a correction is a human label of
that round (method ``review``, cost ``human.review_cost``), so it counts in ``budget_used`` and the round's human
labels and cost, and wins over the LLM's label in training; a confirmation is no label, and its cost counts in
``money_spent`` (the round metrics give ``reviews_confirmed``, ``reviews_corrected`` and ``review_cost``). Every review
is (LLM label, right label) evidence for the next self-check's estimate (``fidelity.Policy.measure``), beside the probe
answers.

Every step is committed to the run's store before the next starts; a run whose store already holds
rounds continues after the last evaluated one (same config required).

The pool is read as a stream and copied into the store once; afterwards the run holds, per pool item, only its id,
its embedding (memory-mapped) and the student's probabilities, and reads texts back from the store when it needs
them: the items of a round, the labeled ones for training, the pool a window at a time for embedding and scoring.
"""

from __future__ import annotations

import ctypes
import fcntl
import itertools
import json
import sys
import time
import tomllib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score

from imfl import fidelity
from imfl.agreement import agreement
from imfl.annotators import AnnotationContext, Annotator, make_human, make_llm
from imfl.config import RunConfig, config_to_toml, resolve_strategy, settings_difference
from imfl.data import Dataset, Example, load_dataset
from imfl.embeddings import Embedder, embedding_input
from imfl.engine import make_engine
from imfl.errors import AnnotatorError, BudgetError, ConfigError
from imfl.io import write_csv, write_jsonl
from imfl.progress import Reporter, Silent
from imfl.pseudo import pseudo_label_pick
from imfl.query import Rows, get_query, least_confidence, round_plan, split_by_uncertainty
from imfl.records import HumanOnly, RoundMetrics
from imfl.store import Store

if TYPE_CHECKING:
    from imfl.student import Student

LLM_COMMIT_EVERY = 32  # LLM labels are committed in chunks: a crash loses at most this many calls
POOL_WINDOW = 20_000  # pool items whose texts are in memory at once (embedding the pool, the student scoring it)


@dataclass
class RunResult:
    """What ``run`` returns: the run's folder, one metrics dict per evaluated round, the labels bought, seconds by
    phase, and, when the run stopped for people, the round that waits and how many human labels it needs.
    ``student`` is the student of the last evaluated round (loaded from ``run_dir/adapter`` on first use)."""

    run_dir: Path
    metrics: list[RoundMetrics]
    budget_used: dict[str, int]
    timings: dict[str, float] = field(default_factory=dict)
    waiting_round: int | None = None  # the round that waits for people, if the run stopped for them
    pending: int = 0  # how many human labels it still needs

    @property
    def student(self) -> Student:
        """The trained student of the last evaluated round: ``predict(texts)`` gives label names,
        ``predict_proba(texts)`` probabilities whose columns follow ``classes_``. A ModelError when no round has finished yet."""
        student = getattr(self, "_loaded_student", None)  # not a field: asdict() and == leave it alone
        if student is None:
            from imfl.errors import ModelError
            from imfl.student import Student

            if not self.metrics:
                waits = f": round {self.waiting_round} waits for {self.pending} human labels" if self.waiting_round else ""
                raise ModelError(
                    f"no round of the run in {self.run_dir} has finished yet, so there is no trained student"
                    f"{waits}; run it again once a round is done"
                )
            student = self._loaded_student = Student.load(self.run_dir / "adapter")
        return student


class _WaitingForPeople(Exception):
    def __init__(self, round: int, pending: int):
        self.round, self.pending = round, pending


def self_check_questions(cfg: RunConfig) -> int:
    """The most LLM answers the fidelity self-check can ask over a run: llm.eval_sample a round, each about a different
    human-labeled item."""
    return min(cfg.llm.eval_sample * cfg.budget.rounds, cfg.budget.human) if cfg.llm.eval_sample else 0


def answer_price(cfg: RunConfig) -> float:
    """The most one LLM label can cost: llm.cost, twice with llm.calibrate (its content-free prompt, when no other item
    shares it)."""
    return cfg.llm.cost * (2 if cfg.llm.calibrate else 1)


def planned_total(cfg: RunConfig, pool_size: int) -> int:
    """The labels a run plans to buy: budget.total; with budget.cost, budget.human plus the LLM labels that the money left
    after them and the self-check's questions pays (llm.cost each), up to the whole pool."""
    b = cfg.budget
    if b.cost is None:
        return b.total
    room = max(pool_size - b.human, 0)
    price = answer_price(cfg)
    if price == 0:
        return b.human + room
    left = b.cost - b.human * cfg.human.cost - self_check_questions(cfg) * price
    return b.human + min(room, max(int(left / price + 1e-9), 0))


def _self_check_answers(cfg: RunConfig, run_dir: Path) -> list[dict]:
    """The fidelity self-check's answers of every round so far."""
    return [row for t in range(1, cfg.budget.rounds + 1) for row in fidelity.read_state(run_dir, t).get("probe", [])]


def money_spent(cfg: RunConfig, store: Store, run_dir: Path) -> float:
    """Everything a run has paid for: every standing annotation (failed LLM answers too) and the self-check's answers."""
    return store.money_spent() + sum(row["cost"] for row in _self_check_answers(cfg, run_dir))


def _text_pairs(items: Sequence[Example]) -> list[str]:
    """The items' second inputs, for a task with text pairs (the data loader requires one on every row then)."""
    return cast("list[str]", [e.text_pair for e in items])


def check_budget(cfg: RunConfig, ds: Dataset) -> None:
    if cfg.budget.cost is not None:
        if cfg.budget.human > len(ds.pool):
            raise BudgetError(
                f"budget.human ({cfg.budget.human}) is larger than the pool ({ds.pool.describe()}); lower budget.human "
                f"or {'raise data.pool_sample' if cfg.data.pool_sample else 'add items'}"
            )
        if (total := planned_total(cfg, len(ds.pool))) < cfg.budget.rounds:
            raise BudgetError(
                f"budget.cost ({cfg.budget.cost:g}) buys {total} labels, fewer than budget.rounds ({cfg.budget.rounds}): "
                "each round needs a label; raise budget.cost or lower budget.rounds"
            )
    elif cfg.budget.total > len(ds.pool):
        raise BudgetError(
            f"budget.total ({cfg.budget.total}) is larger than the pool ({ds.pool.describe()}); lower budget.total "
            f"or {'raise data.pool_sample' if cfg.data.pool_sample else 'add items'}"
        )
    if cfg.human.annotator == "oracle" and cfg.budget.human > 0:
        missing = [e.line for e in ds.pool if e.label is None]
        if missing:
            raise AnnotatorError(
                f"{cfg.data.pool}:{missing[0]}: {len(missing)} pool rows have no label, but the simulated expert "
                f"(human.annotator = 'oracle') needs one on every row; label them or use a real human annotator"
            )


def make_student(cfg: RunConfig, seed: int) -> Student:
    """The student the configuration describes (untrained): every [student] setting that is a ``Student`` parameter."""
    from imfl.student import Student

    settings = cfg.student.model_dump()
    return Student(**{name: settings[name] for name in Student._PARAMS if name in settings}, seed=seed)


class Run:
    """A run bound to its directory and store. ``Run(cfg).execute()`` runs or continues it."""

    def __init__(
        self,
        cfg: RunConfig | str | Path | dict,
        reporter: Reporter | None = None,
        continue_partial: bool = False,
        *,
        llm: object | None = None,
        human: object | None = None,
    ):
        import os
        from collections.abc import Mapping

        from imfl.annotators.custom import check_annotator
        from imfl.config import config_from_dict, load_config

        if isinstance(cfg, (str, os.PathLike)):
            cfg = load_config(cfg)
        elif isinstance(cfg, Mapping):
            cfg = config_from_dict(dict(cfg))
        elif not isinstance(cfg, RunConfig):
            raise ConfigError(
                f"the configuration is {type(cfg).__name__}: pass a RunConfig (imfl.load_config, "
                "imfl.config_from_dict), the path of a TOML file, or a dict of settings"
            )
        self.cfg = cfg
        self.reporter = reporter or Silent()
        self.continue_partial = continue_partial  # the round waiting now goes on with the human labels it has
        # Annotator objects given in Python (anything with annotate(items, context)) instead of the configured ones.
        self.custom = {source: obj for source, obj in (("human", human), ("llm", llm)) if obj is not None}
        for source, obj in self.custom.items():
            check_annotator(obj, source)

    # -- set-up ---------------------------------------------------------------------------------
    def _prepare(self) -> None:
        from imfl.annotators import HUMAN_ANNOTATORS, LLM_ANNOTATORS
        from imfl.annotators.custom import PREFIX, CustomAnnotator, annotator_name

        cfg = resolve_strategy(self.cfg)
        if self.custom:  # the recorded configuration names each annotator object, so a rerun needs the same one
            cfg = cfg.model_copy(deep=True)
            for source, obj in self.custom.items():
                getattr(cfg, source).annotator = PREFIX + annotator_name(obj)
        for source, registry in (("human", HUMAN_ANNOTATORS), ("llm", LLM_ANNOTATORS)):
            setting = getattr(cfg, source).annotator
            if source not in self.custom and setting.startswith(PREFIX):
                raise ConfigError(
                    f"{source}.annotator = {setting!r} is an annotator object given in Python: pass it again, as "
                    f"imfl.run(config, {source}=...), or set {source}.annotator to one of {', '.join(registry)}"
                )
        self.cfg = cfg
        self.ds = load_dataset(cfg.data)
        check_budget(cfg, self.ds)
        get_query(cfg.query.acquisition)  # fail early on an unknown acquisition function
        task = self.ds.task
        self.human: Annotator = (
            CustomAnnotator(self.custom["human"], "human", task, cfg.human.cost)
            if "human" in self.custom
            else make_human(cfg, task)
        )
        self.engine = make_engine(cfg)
        self.llm: Annotator = self.engine.wrap_llm(
            CustomAnnotator(self.custom["llm"], "llm", task, cfg.llm.cost) if "llm" in self.custom else make_llm(cfg, task)
        )
        if hasattr(self.llm, "check"):
            self.llm.check(self.ds.pool, str(cfg.data.pool))
        self.run_dir = cfg.run_dir
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            self._open()
        except BaseException:
            if getattr(self, "store", None) is not None:
                self.store.close()
            self._unlock()
            raise

    def _open(self) -> None:
        """The store (created or checked against this configuration), the plan and the pool embeddings."""
        cfg = self.cfg
        self.store = Store.open(self.run_dir / "store.sqlite")
        config_text = config_to_toml(cfg)
        previous = self.store.get_meta("config")
        if previous is None:
            with self.store.transaction():
                self.store.set_meta("config", config_text)
                self.store.set_meta("labels", json.dumps(self.ds.task.labels))
        elif changed := settings_difference(tomllib.loads(previous), tomllib.loads(config_text)):
            raise ConfigError(
                f"{self.run_dir} holds a run with a different configuration ({changed}); choose another name "
                "(--set name=...) or move that folder away"
            )
        (self.run_dir / "config.toml").write_text(config_text, encoding="utf-8")
        copied = self.store.n_items() == 0  # a new run: the store's pool is the file as just read
        if not self.store.items_complete():  # (or a store that predates schema 3: its items get their fields)
            with self.reporter.phase("copying the pool into the run's store", len(self.ds.pool)):
                self.store.add_items(self.ds.pool)
        # The pool itself stays in the store: this process holds its ids, embeddings (memory-mapped) and probabilities.
        self.ids = self.store.item_ids()
        if not copied:
            self._check_pool_unchanged()
        self.index = {item_id: i for i, item_id in enumerate(self.ids)}
        latest = self.store.latest_round()
        self._partial_round = latest[0] if self.continue_partial and latest and latest[1] == "human_pending" else None
        self.base_plan = round_plan(
            planned_total(cfg, len(self.ids)), cfg.budget.human, cfg.budget.rounds, cfg.budget.schedule, cfg.budget.decay
        )
        # The adaptive human share may have changed the plan of the rounds still to come.
        stored_plan = self.store.get_meta("plan")
        self.plan = [tuple(p) for p in json.loads(stored_plan)] if stored_plan else self.base_plan
        self.timings: dict[str, float] = {}
        self._round_extra: dict[int, RoundMetrics] = {}
        start = time.perf_counter()
        with self.reporter.phase("embedding the pool", len(self.ds.pool)) as advance:
            self.embeddings = self.engine.embed(self._embedder(), StoredTexts(self.store, len(self.ids)), advance)
        self._timed("embedding", start)
        self.policy = fidelity.Policy(cfg, self.ds.task, self.run_dir, self.embeddings, self.index, self.reporter)

    def _check_pool_unchanged(self) -> None:
        """The run works on its store's copy of the pool: the pool file must still hold the same items in the same order."""
        for n, (e, item_id) in enumerate(itertools.zip_longest(self.ds.pool, self.ids), 1):
            if e is None or e.id != item_id:
                where = f"{self.cfg.data.pool}:{e.line}" if e else str(self.cfg.data.pool)
                now, then = (f"id {e.id!r}" if e else "missing"), (f"id {item_id!r}" if item_id else "not there")
                raise ConfigError(
                    f"{where}: the pool file changed since the run in {self.run_dir} started (item {n}: {now} "
                    f"now, {then} then); put the file back as it was, or start a new run (--set name=...)"
                )

    def _embedder(self) -> Embedder:
        return Embedder(
            self.cfg.embeddings.model, self.cfg.embeddings.batch_size, self.cfg.cache_dir, self.cfg.embeddings.num_threads
        )

    # -- the run --------------------------------------------------------------------------------
    def init(self) -> Path:
        """Create the run folder, its store and the pool embeddings without starting a round; returns the folder."""
        self._prepare()
        self.store.close()
        self._unlock()
        return self.run_dir

    def execute(self) -> RunResult:
        self._prepare()
        try:
            proba = None
            for t in range(1, self.cfg.budget.rounds + 1):
                if self.store.round_state(t) == "evaluated":
                    proba = self._load_proba(t)
                    continue
                try:
                    proba = self._round(t, proba)
                except _WaitingForPeople as wait:
                    return RunResult(
                        self.run_dir,
                        self.metrics(),
                        self.store.budget_used(),
                        self.timings,
                        waiting_round=wait.round,
                        pending=wait.pending,
                    )
            self._compare_human_only()
            return RunResult(self.run_dir, self.metrics(), self.store.budget_used(), self.timings)
        finally:
            self.store.close()
            self._unlock()

    def _lock(self) -> None:
        """One process at a time runs a project (a killed process's lock goes with it)."""
        self._lock_file = (self.run_dir / "run.lock").open("a+")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise ConfigError(
                f"{self.run_dir} is being run by another imfl process (imfl run or imfl serve); "
                "wait for it to stop, or label through it"
            ) from None

    def _unlock(self) -> None:
        fcntl.flock(self._lock_file, fcntl.LOCK_UN)
        self._lock_file.close()

    def _timed(self, phase: str, start: float) -> float:
        spent = time.perf_counter() - start
        self.timings[phase] = self.timings.get(phase, 0.0) + spent
        _release_memory()
        return spent

    def _labeled_ids(self) -> set[str]:
        return {a.item_id for a in self.store.annotations()}

    def _round(self, t: int, proba: np.ndarray | None) -> np.ndarray | None:
        cfg, store = self.cfg, self.store
        seconds: dict[str, float] = {}
        if store.round_state(t) is None:
            start = time.perf_counter()
            self._select(t, proba)
            seconds["select"] = self._timed("select", start)
        steps = [("human", self.human), ("llm", self.llm)]
        if cfg.budget.order == "llm-first":
            steps.reverse()
        stats_before = dict(getattr(self.llm, "stats", {}))
        for source, annotator in steps:
            start = time.perf_counter()
            self._annotate(t, source, annotator)
            seconds[source] = self._timed(f"{source} annotation", start)
            if source == "human" and cfg.llm.eval_sample:
                start = time.perf_counter()
                self._measure(t)
                seconds["llm_self_eval"] = self._timed("LLM self-evaluation", start)
        store.set_round_state(t, "llm_done")
        stats = getattr(self.llm, "stats", {})
        if "calls" in stats:
            self._round_extra.setdefault(t, {}).update(
                {
                    "llm_calls": stats["calls"] - stats_before.get("calls", 0),
                    "llm_cached": stats["cached"] - stats_before.get("cached", 0),
                }
            )

        start = time.perf_counter()
        student = self._train(t)
        seconds["train"] = self._timed("training", start)
        store.set_round_state(t, "trained")

        start = time.perf_counter()
        metrics, proba = self._evaluate(t, student)
        seconds["evaluate"] = self._timed("evaluation", start)
        metrics["seconds"] = {k: round(v, 2) for k, v in seconds.items()}
        store.set_round_state(t, "evaluated", metrics)
        self._write_outputs(student)
        self.reporter.log(_round_line(metrics))
        return proba

    def _select(self, t: int, proba: np.ndarray | None) -> None:
        """Pick this round's items and split them between human and LLM; commits the round's plan."""
        cfg = self.cfg
        used = self.store.budget_used()
        planned_h = sum(h for h, _ in self.plan[:t])
        planned_l = sum(l for _, l in self.plan[:t])
        # What earlier rounds did not spend (failed LLM calls) is carried into this round.
        n_h, n_l = max(planned_h - used["human"], 0), max(planned_l - used["llm"], 0)
        labeled = self._labeled_ids()
        unlabeled = [i for i, item_id in enumerate(self.ids) if item_id not in labeled]
        # Items that go to the human first: those whose LLM call failed last round (llm.on_failure = "human"),
        # and those whose LLM label was routed out last round (fidelity.route_to_human).
        retry = [self.index[i] for i in self._human_first(t)][:n_h]
        free = np.array(unlabeled + [i for i in retry if self.ids[i] in labeled], dtype=int)
        n_h, n_l = min(n_h, len(free)), min(n_l, max(len(unlabeled) - n_h, 0))
        unc = None
        if proba is not None:
            unc = np.full(len(free), np.nan)
            unc[: len(unlabeled)] = least_confidence(proba[unlabeled])
        seed = cfg.seed * 1000 + t
        first = [int(np.flatnonzero(free == i)[0]) for i in retry]
        rest = np.setdiff1d(np.arange(len(unlabeled)), first)
        n_query = n_h + n_l - len(first)
        picked = (
            rest[
                get_query(cfg.query.acquisition, cfg.query.kmeans_iter)(
                    Rows(self.embeddings, free[rest]), unc[rest] if unc is not None else None, n_query, seed
                )
            ]
            if n_query
            else np.zeros(0, int)
        )
        to_human, to_llm = split_by_uncertainty(picked, unc, n_h - len(first))
        to_human = np.concatenate([np.array(first, dtype=int), to_human])

        def rows(local: np.ndarray) -> list[tuple[str, float | None]]:
            return [(self.ids[free[j]], float(unc[j]) if unc is not None and not np.isnan(unc[j]) else None) for j in local]

        self.store.record_selection(t, (n_h, n_l), rows(to_human), rows(to_llm))

    def _human_first(self, t: int) -> list[str]:
        """Ids of items the human batch of round ``t`` takes before any query pick."""
        if t == 1:
            return []
        out = []
        if self.cfg.llm.on_failure == "human":
            out += [a.item_id for a in self.store.annotations(round=t - 1, source="llm", ok_only=False) if not a.ok]
        if routed := self.policy.routed(t - 1):
            human = {a.item_id for a in self.store.annotations(source="human")}
            out += [i for i in routed if i not in human]
        return list(dict.fromkeys(out))

    def _annotate(self, t: int, source: str, annotator: Annotator) -> None:
        """Label this round's items for ``source`` that have no annotation yet, committing as it goes."""
        if getattr(annotator, "interactive", False):
            self._await_people(t)
            return
        done = {a.item_id for a in self.store.annotations(round=t, source=source, ok_only=False)}
        todo_ids = [i for i in self.store.selection(t, source) if i not in done]
        if source == "llm":  # the adaptive human share may have cancelled LLM labels after selection; money may end them
            room = max(0, min(sum(l for _, l in self.plan[:t]) - self.store.budget_used()["llm"], self._affordable()))
            if self.cfg.llm.relabel and t > 1:  # relabels spend the round's LLM labels first
                room -= self._relabel(t, min(self.cfg.llm.relabel, room), annotator)
            todo_ids = todo_ids[:room]
        if not todo_ids:
            return
        todo = self.store.examples(todo_ids)
        context = self._context(t)
        label = "human experts" if source == "human" else f"LLM ({annotator.name})"
        chunk = len(todo) if source == "human" else LLM_COMMIT_EVERY
        with self.reporter.phase(f"round {t}: {label}", len(todo)) as advance:
            context.progress = advance
            for start in range(0, len(todo), chunk):
                part = todo[start : start + chunk]
                context.item_embeddings = self.embeddings[[self.index[e.id] for e in part]]
                self.store.add_annotations(annotator.annotate(part, context))
        if source == "human":
            self.store.set_round_state(t, "human_done")

    def _relabel(self, t: int, n: int, annotator: Annotator) -> int:
        """FreeAL's collaboration (llm.relabel): the LLM answers again, for up to ``n`` of its labels that round t-1's
        student, trained on them, finds least likely (its highest losses), with demonstrations from the human labels and
        the other LLM labels that student agrees with. One transaction, once per
        round; what changed is kept in state/relabel_round{t}.json. Returns the answers bought."""
        path = self._state_dir() / f"llm_proba_round{t - 1}.npz"
        if n <= 0 or not path.is_file():
            return 0
        selected = set(self.store.selection(t, "llm"))
        if any(a.item_id not in selected for a in self.store.annotations(round=t, source="llm", ok_only=False)):
            return 0  # this round's relabels were bought before a restart
        task = self.ds.task
        data = np.load(path)
        current = {a.item_id: a for a in self._training_labels() if a.source == "llm"}
        asked = Counter(a.item_id for a in self.store.annotations(source="llm", ok_only=False))
        ids = [i for i in data["ids"].tolist() if i in current]
        proba = data["proba"][[row for row, i in enumerate(data["ids"].tolist()) if i in current]]
        given = np.array([task.index(cast(str, current[i].label)) for i in ids], dtype=int)
        p_given = proba[np.arange(len(ids)), given] if ids else np.zeros(0)
        agree = proba.argmax(axis=1) == given if ids else np.zeros(0, dtype=bool)
        doubted = [j for j in np.argsort(p_given, kind="stable") if asked[ids[j]] == 1][:n]
        if not doubted:
            return 0
        context = self._context(t)
        verified = [ids[j] for j in np.flatnonzero(agree) if j not in set(doubted)]
        demos = zip(self.store.examples(verified), [cast(str, current[i].label) for i in verified])
        context.human_labeled = [*context.human_labeled, *demos]
        rows = [self.index[e.id] for e, _ in context.human_labeled]
        context.human_embeddings = self.embeddings[rows] if rows else None
        items = self.store.examples([ids[j] for j in doubted])
        context.item_embeddings = self.embeddings[[self.index[e.id] for e in items]]
        with self.reporter.phase(f"round {t}: LLM relabels {len(items)} labels the student doubts", len(items)) as advance:
            context.progress = advance
            answers = annotator.annotate(items, context)
        self.store.add_annotations(answers)
        gold = self._gold([e.id for e in items])
        changes = [
            {"id": a.item_id, "before": current[a.item_id].label, "after": a.label, "gold": gold.get(a.item_id)} for a in answers
        ]
        (self._state_dir() / f"relabel_round{t}.json").write_text(
            json.dumps({"demos_from_llm": len(verified), "relabeled": changes}), encoding="utf-8"
        )
        ok = [c for c in changes if c["after"] is not None]
        extra: RoundMetrics = {"llm_relabeled": len(ok), "llm_relabel_changed": sum(c["after"] != c["before"] for c in ok)}
        if ok and all(c["gold"] is not None for c in ok):
            extra.update(
                {
                    "llm_relabel_right_before": sum(c["before"] == c["gold"] for c in ok),
                    "llm_relabel_right_after": sum(c["after"] == c["gold"] for c in ok),
                }
            )
        self._round_extra.setdefault(t, {}).update(extra)
        return len(ok)

    def _affordable(self) -> int:
        """With budget.cost: the LLM answers the money left pays, keeping back what the human labels and self-check
        questions still to come will cost (failed answers and re-asked items have been paid too)."""
        cfg, price = self.cfg, answer_price(self.cfg)
        if cfg.budget.cost is None or price == 0:
            return sys.maxsize
        humans_to_come = max(sum(h for h, _ in self.plan) - self.store.budget_used()["human"], 0)
        asked = len(_self_check_answers(cfg, self.run_dir))
        keep = humans_to_come * cfg.human.cost + max(self_check_questions(cfg) - asked, 0) * price
        return max(int((cfg.budget.cost - money_spent(cfg, self.store, self.run_dir) - keep) / price + 1e-9), 0)

    def _await_people(self, t: int) -> None:
        """Open the round's human batch to people, or move on if they have finished it."""
        state = self.store.round_state(t)
        if state not in ("selected", "human_pending"):
            return
        if state == "selected":
            self.store.open_human_batch(t, self._overlap_pick(t))
        if not self.store.close_human_batch(t, partial=t == self._partial_round):
            raise _WaitingForPeople(t, len(self.store.pending_human(t)) + len(self.store.disputes(t)))
        # Items left unlabeled go back to the pool; the human budget they did not spend moves to the next round.

    def _overlap_pick(self, t: int) -> list[str]:
        """The items of round ``t``'s human batch that two different people label (``human.overlap``): round(overlap x
        batch) of them, a choice seeded by the run's seed and the round (none with overlap 0)."""
        batch = self.store.selection(t, "human")
        n = round(self.cfg.human.overlap * len(batch))
        if not n:
            return []
        rng = np.random.default_rng([self.cfg.seed, t, 42])
        return [batch[i] for i in sorted(rng.choice(len(batch), size=n, replace=False).tolist())]

    # -- fidelity (beyond the paper; see fidelity.py) ----------------------------------------------------
    def _measure(self, t: int) -> None:
        """The fidelity self-check of round ``t`` and, with fidelity.adaptive, whether to buy LLM labels from now on."""
        self.policy.measure(t, self._context(t), self.llm, self.store.reviews())
        self.policy.decide(t, self.plan, self.base_plan, self._set_plan)

    def _set_plan(self, plan: list[tuple[int, int]]) -> None:
        self.plan = plan
        self.store.set_meta("plan", json.dumps(plan))

    def _one_epoch_proba(self, t: int, annotations: list) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        """For the small-loss filter: given every label's class and weight, the probabilities on the LLM-labeled rows
        of ``annotations`` of a student trained one epoch on every label."""

        def proba(labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
            task = self.ds.task
            items = self.store.examples([a.item_id for a in annotations])
            warm = make_student(self.cfg, self.cfg.seed).set_params(epochs=1, min_steps=0, contrastive_pairs=0)
            pairs = _text_pairs(items) if task.has_pair else None
            with self.reporter.phase(f"round {t}: one epoch to score the LLM's labels", len(items)) as advance:
                warm.fit(
                    [e.text for e in items],
                    labels.tolist(),
                    len(task.labels),
                    text_pairs=pairs,
                    sample_weight=weights.tolist(),
                    label_names=task.labels,
                    progress=advance,
                )
            scored = [e for e, a in zip(items, annotations) if a.source == "llm"]
            with self.reporter.phase(f"round {t}: scoring {len(scored)} LLM labels", len(scored)) as advance:
                return self._predict(warm, scored, advance)

        return proba

    def _context(self, t: int) -> AnnotationContext:
        human = self._one_human_label(self.store.annotations(source="human"))
        demos = list(zip(self.store.examples([a.item_id for a in human]), [cast(str, a.label) for a in human]))  # ok_only
        return AnnotationContext(
            round=t,
            human_labeled=demos,
            human_embeddings=self.embeddings[[self.index[a.item_id] for a in human]] if human else None,
            seed=self.cfg.seed * 1000 + t,
        )

    def _training_labels(self) -> list:
        """The labels a student learns from: every label, a human one winning over the LLM's for the same item and
        the LLM's newest answer over its older ones (llm.relabel). An item two people answered (``human.overlap``) has
        one label: the admin's settled one where they disagreed (as the admin's annotation, method ``adjudicated``),
        else their first answer (the agreed label; a dispute left open by a partial close keeps the first answer)."""
        annotations = self._one_human_label(self.store.annotations())
        human = {a.item_id for a in annotations if a.source == "human"}
        newest = {a.item_id: row for row, a in enumerate(annotations) if a.source == "llm"}  # ordered by insertion
        return [
            a for row, a in enumerate(annotations) if a.source == "human" or (a.item_id not in human and newest[a.item_id] == row)
        ]

    def _one_human_label(self, annotations: list) -> list:
        """``annotations`` with one human label per overlap item (see ``_training_labels``); unchanged without overlap."""
        overlap = set(self.store.overlap_items())
        if not overlap:
            return annotations
        settled = self.store.adjudications()
        seen: set[str] = set()
        out = []
        for a in annotations:
            if a.source == "human" and a.item_id in overlap:
                if a.item_id in seen:
                    continue
                seen.add(a.item_id)
                if a.item_id in settled:
                    s = settled[a.item_id]
                    a = replace(a, annotator=s["admin"], label=s["label"], method="adjudicated")
            out.append(a)
        return out

    def _train(self, t: int, human_only: bool = False) -> Student:
        """Round ``t``'s student on every label so far (``human_only``: on the human labels alone, unweighted by
        the fidelity measurements, which concern LLM labels)."""
        annotations = [a for a in self._training_labels() if not human_only or a.source == "human"]
        task = self.ds.task
        items = self.store.examples([a.item_id for a in annotations])
        weights = np.array([self.cfg.student.weights.get(a.source, 1.0) for a in annotations], dtype=float)
        if self.cfg.fidelity.active and not human_only:
            weights, info = self.policy.weights(t, annotations, weights, self._gold, self._one_epoch_proba(t, annotations))
            self._round_extra.setdefault(t, {}).update(info)
        labels = [task.index(a.label) for a in annotations]
        if self.cfg.self_training.items and not human_only:
            extra, extra_labels = self._pseudo_labels(t, {a.item_id for a in annotations})
            items, labels = items + extra, labels + extra_labels
            weights = np.concatenate([weights, np.full(len(extra), self.cfg.self_training.weight)])
        target_probs = None
        if self.cfg.student.soft_targets and not human_only:
            target_probs = np.full((len(labels), len(task.labels)), np.nan)
            for row, a in enumerate(annotations):
                if a.source == "llm" and a.probs:
                    target_probs[row] = [a.probs.get(name, 0.0) for name in task.labels]
            self._round_extra.setdefault(t, {})["llm_soft_targets"] = int((~np.isnan(target_probs[:, 0])).sum())
        student = make_student(self.cfg, self.cfg.seed)
        n_used = int((weights > 0).sum())
        what = f"the human-only student on {len(items)} human labels" if human_only else f"the student on {len(items)} labels"
        with self.reporter.phase(f"round {t}: training {what}", student.fit_work(n_used)) as advance:
            student.fit(
                [e.text for e in items],
                labels,
                len(task.labels),
                text_pairs=_text_pairs(items) if task.has_pair else None,
                sample_weight=weights.tolist(),
                label_names=task.labels,
                progress=advance,
                target_probs=target_probs,
            )
        return student

    def _pseudo_labels(self, t: int, labeled: set[str]) -> tuple[list[Example], list[int]]:
        """Round ``t``'s self-training items: the most confident of round t-1's predictions on items still unlabeled,
        labeled with their arg-max; kept in state/pseudo_round{t}.json (ids, labels, confidence) for provenance."""
        path = self._state_dir() / f"proba_round{t - 1}.npz"
        if t == 1 or not path.is_file():
            return [], []
        data = np.load(path)
        keep = np.array([i not in labeled for i in data["ids"].tolist()], dtype=bool)
        ids, proba = data["ids"][keep].tolist(), data["proba"][keep]
        pick = pseudo_label_pick(proba, self.cfg.self_training.items, self.cfg.self_training.mode)
        chosen = [ids[i] for i in pick]
        labels = proba[pick].argmax(axis=1).tolist()
        gold = self._gold(chosen)
        known = [lab == self.ds.task.index(g) for i, lab in zip(chosen, labels) if (g := gold.get(i)) is not None]
        self._round_extra.setdefault(t, {}).update(
            {"pseudo_labels": len(chosen), "pseudo_accuracy": round(float(np.mean(known)), 4) if known else None}
        )
        (self._state_dir() / f"pseudo_round{t}.json").write_text(
            json.dumps(
                [
                    {"id": i, "label": self.ds.task.labels[lab], "confidence": round(float(proba[j].max()), 6)}
                    for i, lab, j in zip(chosen, labels, pick)
                ]
            ),
            encoding="utf-8",
        )
        return self.store.examples(chosen), labels

    def _evaluate(self, t: int, student: Student) -> tuple[RoundMetrics, np.ndarray | None]:
        task, store = self.ds.task, self.store
        this_round = store.annotations(round=t, ok_only=False)
        used = store.budget_used()
        everything = store.annotations()
        llm_missing = [a for a in this_round if a.source == "llm" and not a.ok]
        metrics: RoundMetrics = {
            "round": t,
            "human_labels": sum(a.ok and a.source == "human" for a in this_round),
            "llm_labels": sum(a.ok and a.source == "llm" for a in this_round),
            "llm_failed": sum(not (a.error or "").startswith("unparsed") for a in llm_missing),
            "llm_unparsed": sum((a.error or "").startswith("unparsed") for a in llm_missing),
            "human_total": used["human"],
            "llm_total": used["llm"],
            "human_cost": round(sum(a.cost for a in this_round if a.source == "human"), 6),
            "llm_cost": round(sum(a.cost for a in this_round if a.source == "llm"), 6),
            "human_cost_total": round(sum(a.cost for a in everything if a.source == "human"), 6),
            "llm_cost_total": round(sum(a.cost for a in store.annotations(source="llm", ok_only=False)), 6),
            "llm_prompt_tokens": sum(a.prompt_tokens or 0 for a in this_round if a.source == "llm"),
            "llm_completion_tokens": sum(a.completion_tokens or 0 for a in this_round if a.source == "llm"),
        }
        new_human = {a.item_id: a.label for a in this_round if a.label is not None and a.source == "human"}  # a.ok
        if t > 1 and new_human:
            data = np.load(self._state_dir() / f"proba_round{t - 1}.npz")
            metrics["prequential_n"], metrics["prequential_accuracy"] = prequential_accuracy(
                data["ids"].tolist(), data["proba"], new_human, task.labels
            )
        metrics.update(self.policy.metrics(t))
        reviews = [r for r in store.reviews() if r["round"] == t]
        if reviews:  # people's verdicts on LLM labels in this round (a correction is also among its human labels)
            metrics.update(
                {
                    "reviews_confirmed": sum(r["verdict"] == "confirm" for r in reviews),
                    "reviews_corrected": sum(r["verdict"] == "correct" for r in reviews),
                    "review_cost": round(sum(r["cost"] for r in reviews), 6),
                }
            )
        if store.overlap_items(t):  # human.overlap: how well people agreed on this round's items, and over the run
            metrics["agreement"] = {
                **agreement(store.human_answers(t), store.adjudications()),
                "overall": agreement(store.human_answers(), store.adjudications()),
            }
        metrics.update(self._round_extra.pop(t, {}))
        gold = self._gold([a.item_id for a in this_round if a.ok and a.source == "llm"])
        llm = [a for a in this_round if a.ok and a.source == "llm" and gold.get(a.item_id) is not None]
        metrics["llm_accuracy"] = round(float(np.mean([a.label == gold[a.item_id] for a in llm])), 4) if llm else None
        if self.ds.test:
            metrics.update(self._test_scores(t, student))
        proba = None
        if t < self.cfg.budget.rounds:
            labeled = self._labeled_ids()
            free = [item_id for item_id in self.ids if item_id not in labeled]
            with self.reporter.phase(f"round {t}: student uncertainty on {len(free)} pool items", len(free)) as advance:
                # A window of the pool at a time: its texts come from the store and go when it is scored.
                parts = [
                    self._predict(student, self.store.examples(free[start : start + POOL_WINDOW]), advance)
                    for start in range(0, len(free), POOL_WINDOW)
                ]
            p = np.concatenate(parts) if parts else np.zeros((0, len(task.labels)))
            np.savez(self._state_dir() / f"proba_round{t}.npz", ids=np.array(free), proba=p)
            proba = self._pool_proba(free, p)
            if self.cfg.llm.relabel:  # what the student says of the LLM's labels, for next round's relabeling
                llm_ids = [a.item_id for a in self._training_labels() if a.source == "llm"]
                with self.reporter.phase(f"round {t}: student on {len(llm_ids)} LLM-labeled items", len(llm_ids)) as advance:
                    p_llm = self._predict(student, self.store.examples(llm_ids), advance)
                np.savez(self._state_dir() / f"llm_proba_round{t}.npz", ids=np.array(llm_ids), proba=p_llm)
        return metrics, proba

    def _test_scores(self, t: int, student: Student, what: str = "") -> RoundMetrics:
        """``test_accuracy``, ``test_macro_f1``, ``test_kappa`` and ``test_answered`` of ``student`` on the test file."""
        task, test = self.ds.task, self.ds.test
        with self.reporter.phase(f"round {t}: evaluating {what}on {len(test)} test items", len(test)) as advance:
            pred = self._predict(student, test, advance).argmax(axis=1)
        y = [task.index(cast(str, e.label)) for e in test]  # the test file is read with require_label=True
        answered = np.bincount(pred, minlength=len(task.labels)) / max(1, len(pred))
        return {
            "test_accuracy": round(float(accuracy_score(y, pred)), 4),
            "test_macro_f1": round(float(f1_score(y, pred, average="macro", labels=range(len(task.labels)), zero_division=0)), 4),
            # undefined (NaN) only when the test set and the predictions are both one label: nothing above chance, 0
            "test_kappa": round(float(np.nan_to_num(cohen_kappa_score(y, pred))), 4),
            "test_answered": {label: round(float(q), 4) for label, q in zip(task.labels, answered)},
        }

    def _compare_human_only(self) -> None:
        """What the LLM labels bought: the final student beside one trained, the same way, on the run's human labels
        alone, both on the test file. Kept in the last round's metrics as ``human_only`` (so a run continued after a
        crash here measures it again, and a finished one not at all); reported in one line."""
        rounds = self.metrics()
        if not (self.cfg.compare_human_only and self.ds.test and rounds) or "human_only" in rounds[-1]:
            return
        last = rounds[-1]
        t = last["round"]
        labels = self._training_labels()
        n_human = sum(a.source == "human" for a in labels)
        n_llm = len(labels) - n_human
        if not n_human or "test_accuracy" not in last:
            return  # nothing to compare with: an LLM-only run
        if n_llm or self.cfg.self_training.items:
            start = time.perf_counter()
            scores = self._test_scores(t, self._train(t, human_only=True), "the human-only student ")
            self._timed("human-only comparison", start)
        else:  # the final student already is the human-only one (no LLM label, no pseudo-label)
            scores = RoundMetrics(test_accuracy=last["test_accuracy"], test_macro_f1=last["test_macro_f1"])
        comparison: HumanOnly = {
            "human_labels": n_human,
            "llm_labels": n_llm,
            "test_accuracy": scores["test_accuracy"],
            "test_macro_f1": scores["test_macro_f1"],
            "gain_accuracy": round(last["test_accuracy"] - scores["test_accuracy"], 4),
            "gain_macro_f1": round(last["test_macro_f1"] - scores["test_macro_f1"], 4),
        }
        comparison["summary"] = human_only_summary(last, comparison, rounds, sum(l for _, l in self.base_plan))
        last["human_only"] = comparison
        self.store.set_round_state(t, "evaluated", last)
        self._write_metrics()
        self.reporter.log(comparison["summary"])

    def _pool_proba(self, ids: Sequence[str], p: np.ndarray) -> np.ndarray:
        """The student's probabilities as one row per pool item (NaN for items that had a label)."""
        out = np.full((len(self.ids), p.shape[1]), np.nan)
        out[[self.index[i] for i in ids]] = p
        return out

    def _predict(self, student: Student, items: Sequence[Example], progress) -> np.ndarray:
        pairs = _text_pairs(items) if self.ds.task.has_pair else None
        return self.engine.predict(student, [e.text for e in items], pairs, progress)

    def _gold(self, ids: Sequence[str]) -> dict[str, str | None]:
        return {e.id: e.label for e in self.store.examples(ids)}

    def _state_dir(self) -> Path:
        d = self.run_dir / "state"
        d.mkdir(exist_ok=True)
        return d

    def _load_proba(self, t: int) -> np.ndarray | None:
        if t >= self.cfg.budget.rounds:
            return None
        data = np.load(self._state_dir() / f"proba_round{t}.npz")
        return self._pool_proba(data["ids"].tolist(), data["proba"])

    # -- outputs ----------------------------------------------------------------------------------
    def metrics(self) -> list[RoundMetrics]:
        return [r["metrics"] for r in self.store.rounds() if r["state"] == "evaluated" and r["metrics"]]

    def _write_outputs(self, student: Student) -> None:
        self._write_metrics()
        fields = ("label", "source", "annotator", "round", "confidence")
        rows = ({"id": a.item_id} | {k: getattr(a, k) for k in fields} for a in self.store.annotations())
        write_jsonl(self.run_dir / "labels.jsonl", rows)
        student.save(self.run_dir / "adapter")

    def _write_metrics(self) -> None:
        """metrics.json (every round's metrics as stored) and metrics.csv (one flat row per round)."""
        rows = self.metrics()
        (self.run_dir / "metrics.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
        flat = [
            {k: v for k, v in r.items() if k not in ("seconds", "fidelity", "human_only", "test_answered")}
            | {f"seconds_{k}": v for k, v in r["seconds"].items()}
            | {f"human_only_{k}": v for k, v in r.get("human_only", {}).items() if k != "summary"}
            for r in rows
        ]
        write_csv(self.run_dir / "metrics.csv", flat)


class StoredTexts(Sequence[str]):
    """The pool's embedding inputs, read from the run's store a window at a time (never all in memory)."""

    def __init__(self, store: Store, n: int):
        self.store, self.n = store, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, step = key.indices(self.n)
            if step != 1:
                raise IndexError("StoredTexts supports contiguous slices only")
            return [embedding_input(text, pair) for text, pair in self.store.texts(start, stop)]
        if not -self.n <= key < self.n:
            raise IndexError(key)
        return self[key % self.n : key % self.n + 1][0]

    def __iter__(self):
        for start in range(0, self.n, POOL_WINDOW):
            yield from self[start : start + POOL_WINDOW]


def _release_memory() -> None:
    """Give memory freed by the phase that just ended back to the system: glibc keeps it otherwise, and the process
    grows round after round (four student fits in one process: 1.2-1.4 GiB between fits without, 0.45 GiB with)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


NOISE = 0.005  # test-accuracy differences below this are not called a gain (one test file, one seed)


def human_only_summary(last: RoundMetrics, comparison: HumanOnly, rounds: Sequence[RoundMetrics], planned_llm: int) -> str:
    """One line: what the run's LLM labels bought over its human labels alone, or that they did not help and
    what to try; for a run that declined LLM labels (strategy fidelity), what it declined and why."""
    final, alone, n_h, n_l = (
        last["test_accuracy"],
        comparison["test_accuracy"],
        comparison["human_labels"],
        comparison["llm_labels"],
    )
    if not n_l:
        declined = [m for m in rounds if m.get("buy_llm") is False]
        why = ""
        if declined:
            m = declined[0]
            why = (
                f": from round {m['round']} the LLM measured {m['llm_self_accuracy']:.3f} on human labels against the "
                f"student's {m['student_est_accuracy']:.3f}, so the run declined the {planned_llm} planned LLM labels"
                if m.get("llm_self_accuracy") is not None and m.get("student_est_accuracy") is not None
                else f": the run declined the {planned_llm} planned LLM labels"
            )
        asked = sum(m.get("llm_self_n") or 0 for m in rounds)
        per_label = sum(m.get("llm_probe_cost") or 0 for m in rounds) / asked if asked else 0.0
        if declined and planned_llm and per_label > 0:  # what the declined labels would have cost at the self-check's price
            why += f" (about {planned_llm * per_label:.2f} in LLM cost, in human.cost's unit)"
        return (
            f"No LLM label went into the final student{why}; it is the human-only student, test accuracy {final:.3f} "
            f"from {n_h} human labels."
        )
    gain = final - alone
    both = f"test accuracy {final:.3f} with them, {alone:.3f} from the {n_h} human labels alone"
    if gain > NOISE:
        return f"The {n_l} LLM labels bought {gain:+.3f} test accuracy: {both}."
    return (
        f"The {n_l} LLM labels did not help ({both}): try another LLM, measure it with llm.eval_sample (strategy "
        f"fidelity then buys only what helps), or fewer LLM labels (a larger budget.human)."
    )


def _round_line(m: RoundMetrics) -> str:
    test = f", test accuracy {m['test_accuracy']:.3f}, macro-F1 {m['test_macro_f1']:.3f}" if "test_accuracy" in m else ""
    llm = f", LLM accuracy {m['llm_accuracy']:.3f}" if m.get("llm_accuracy") is not None else ""
    if m.get("llm_failed") or m.get("llm_unparsed"):
        llm += f" ({m['llm_failed']} failed, {m['llm_unparsed']} unparsed: back to the pool)"
    return f"round {m['round']}: +{m['human_labels']} human, +{m['llm_labels']} LLM{llm}{test}"


def run(
    config: RunConfig | str | Path | dict,
    reporter: Reporter | None = None,
    continue_partial: bool = False,
    *,
    llm: object | None = None,
    human: object | None = None,
) -> RunResult:
    """Run (or continue) the IMFL loop described by ``config`` (a RunConfig, the path of a TOML file, or a dict as
    ``config_from_dict`` takes); returns per-round metrics, the labels used and the trained student (``.student``).

    ``llm`` / ``human``: an object with ``annotate(items, context)`` returning one label per item (a label string,
    an ``imfl.Annotation`` or None), used instead of the configured LLM / human annotator; see
    ``imfl.annotators.custom``. With ``continue_partial``, a round waiting for people goes on with the labels it has."""
    return Run(config, reporter, continue_partial, llm=llm, human=human).execute()


def prequential_accuracy(
    ids: Sequence[str], proba: np.ndarray, gold: dict[str, str], labels: Sequence[str]
) -> tuple[int, float | None]:
    """How the student of one round did on the items humans labeled in the next, before it was trained on them.
    ``ids`` and ``proba`` are its saved pool probabilities (``state/proba_round<t>.npz``), ``gold`` the next
    round's human labels by item id. With EEQ these are the most uncertain items, so this sits well below test
    accuracy; they are the kind of items the LLM self-check is measured on. Returns (items scored, accuracy)."""
    row = {item_id: k for k, item_id in enumerate(ids)}
    scored = [item_id for item_id in gold if item_id in row]
    if not scored:
        return 0, None
    hits = [labels[int(proba[row[i]].argmax())] == gold[i] for i in scored]
    return len(scored), round(float(np.mean(hits)), 4)
