"""Fidelity-aware IMFL (beyond the paper): how good is the LLM on this task right now, and what to do about it.

The paper's IMFL trusts every LLM label equally. Here each round measures the LLM on items whose truth is
known (a probe of human-labeled items it labels with leave-one-out demonstrations) and a stand-in for the
student on the same kind of items (out-of-fold predictions of a logistic regression on the pool embeddings,
the student's own base encoder: a fine-tuned student per fold would cost several trainings per round), and
acts on the difference with four independent switches:

- weighting: an LLM label trains with weight = its calibrated probability of being right;
- routing: LLM labels whose calibrated probability of being right is below a threshold (by default the
  student's estimated accuracy) are left out of this round's training, and optionally go to humans next round;
- filtering: cleanlab's ``find_label_issues`` on out-of-fold probabilities drops likely-wrong LLM labels;
- adaptive share: while the LLM's estimated accuracy is below the student's, later rounds buy no LLM labels,
  and what they would have spent moves to humans up to a cap (by default: none, the human budget stays).

The functions are pure, over arrays. ``Policy`` is the one object the loop asks: it runs the self-check, decides
whether to keep buying LLM labels, weighs, routes and filters them before training, and keeps what it measured and
did in the run's ``state/fidelity_round<t>.json``.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np

if TYPE_CHECKING:
    from imfl.annotators import AnnotationContext, Annotator
    from imfl.config import RunConfig
    from imfl.data import Annotation, Task
    from imfl.progress import Reporter
    from imfl.records import RoundMetrics

Plan = list[tuple[int, int]]

SMOOTHING = 2.0  # pseudo-counts pulling a class's precision towards the overall accuracy
MIN_DECISION_ITEMS = 10  # no adaptive decision on fewer probed items than this
# Inverse regularisation of the student's stand-in. On random FPB *pool* subsets (3 seeds; the test set was not
# used), out-of-fold accuracy with C = 1 / 10 / 100 was 0.62 / 0.57 / 0.60 at 50 labels, 0.62 / 0.71 / 0.70 at 100
# and 0.70 / 0.725 / 0.72 at 200; the fine-tuned student reaches about 0.72-0.76 with 200 (student.py).
LOGISTIC_C = 10.0


@dataclass
class Calibration:
    """A map from an LLM label (its class and, when known, its confidence) to P(label is right).

    ``isotonic``: an increasing step function of the confidence, fitted on probed items (``x`` → ``y``,
    linear between steps, flat beyond the ends). ``class-precision``: for labels without a usable confidence
    (recorded or simulated annotators), how often the LLM was right when it said that class, smoothed
    towards its overall accuracy."""

    kind: str
    precision: list[float]
    x: list[float] = field(default_factory=list)
    y: list[float] = field(default_factory=list)

    def p_correct(self, predicted: np.ndarray, confidence: np.ndarray | None = None) -> np.ndarray:
        """P(right) for labels ``predicted`` (class indices) with ``confidence`` (NaN where unknown)."""
        predicted = np.asarray(predicted, dtype=int)
        out = np.asarray(self.precision, dtype=float)[predicted] if len(predicted) else np.zeros(0)
        if self.kind == "isotonic" and confidence is not None:
            confidence = np.asarray(confidence, dtype=float)
            known = ~np.isnan(confidence)
            out = np.where(known, np.interp(np.nan_to_num(confidence), self.x, self.y), out)
        return out


@dataclass
class Estimate:
    """How good an annotator is on probed items: accuracy, accuracy per gold class, the confusion matrix
    (rows gold, columns predicted), expected calibration error of its confidences, and a calibration map."""

    n: int
    accuracy: float | None
    per_class: list[float | None]
    confusion: list[list[int]]
    ece: float | None
    calibration: Calibration | None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Estimate:
        cal = d.get("calibration")
        return cls(**{**d, "calibration": Calibration(**cal) if cal else None})


def estimate(predicted, gold, n_labels: int, confidence=None) -> Estimate:
    """Measure an annotator from its ``predicted`` and the ``gold`` class indices of the same items;
    ``confidence`` (NaN where unknown) fits the calibration map when it varies."""
    predicted, gold = np.asarray(predicted, dtype=int), np.asarray(gold, dtype=int)
    n = len(gold)
    confusion = np.zeros((n_labels, n_labels), dtype=int)
    np.add.at(confusion, (gold, predicted), 1)
    if n == 0:
        return Estimate(0, None, [None] * n_labels, confusion.tolist(), None, None)
    hit = (predicted == gold).astype(float)
    accuracy = float(hit.mean())
    rows = confusion.sum(axis=1)
    per_class = [round(float(confusion[c, c] / rows[c]), 4) if rows[c] else None for c in range(n_labels)]
    said = confusion.sum(axis=0)
    precision = [(float(confusion[c, c]) + SMOOTHING * accuracy) / (said[c] + SMOOTHING) for c in range(n_labels)]
    calibration = Calibration("class-precision", [round(p, 4) for p in precision])
    ece = None
    if confidence is not None:
        confidence = np.asarray(confidence, dtype=float)
        known = ~np.isnan(confidence)
        if known.sum() >= 2:
            ece = round(expected_calibration_error(confidence[known], hit[known]), 4)
            if np.ptp(confidence[known]) > 0:
                from sklearn.isotonic import IsotonicRegression

                iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(confidence[known], hit[known])
                calibration.kind = "isotonic"
                calibration.x = [round(float(v), 6) for v in iso.X_thresholds_]
                calibration.y = [round(float(v), 6) for v in iso.y_thresholds_]
    return Estimate(n, round(accuracy, 4), per_class, confusion.tolist(), ece, calibration)


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """Weighted mean gap between confidence and accuracy over equal-width confidence bins."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    gap = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            gap += m.mean() * abs(confidence[m].mean() - correct[m].mean())
    return float(gap)


def out_of_fold_proba(
    features: np.ndarray, labels, n_labels: int, seed: int, folds: int = 5, sample_weight=None
) -> np.ndarray | None:
    """Out-of-fold class probabilities of a logistic regression on ``features`` (stratified folds). None when
    fewer than two classes have two items each.

    When every class present has two items or more, there are at most ``folds`` folds and at most as many as
    the rarest class has items, so every class is in every training fold. Tasks with many classes and few labels
    (Banking77: 77 intents, about 100 human labels in round 1) always have classes with a single item: then there
    are up to ``folds`` folds, and a single item's class is missing from the folds it could be learned from, so
    it counts as predicted wrong. That underestimates the student, which trains on it, rather than leaving
    the student without an estimate (and the fidelity-aware switches without a student to compare with)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    labels = np.asarray(labels, dtype=int)
    counts = np.bincount(labels, minlength=n_labels)
    present = counts[counts > 0]
    if (present >= 2).sum() < 2:
        return None
    k = int(min(folds, present.min() if present.min() >= 2 else present.max()))
    out = np.zeros((len(labels), n_labels))
    weights = None if sample_weight is None else np.asarray(sample_weight, dtype=float)
    with warnings.catch_warnings():  # "the least populated class has only 1 member": the case described above
        warnings.filterwarnings("ignore", "The least populated class", UserWarning)
        splits = list(StratifiedKFold(k, shuffle=True, random_state=seed).split(features, labels))
    for train, held in splits:
        model = LogisticRegression(C=LOGISTIC_C, max_iter=2000)
        model.fit(features[train], labels[train], sample_weight=None if weights is None else weights[train])
        out[np.ix_(held, model.classes_)] = model.predict_proba(features[held])
    return out


def route(p_correct: np.ndarray, threshold: float) -> np.ndarray:
    """Which LLM labels to keep for training: those at or above ``threshold``."""
    return np.asarray(p_correct, dtype=float) >= threshold


def label_issues(labels, pred_probs: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """cleanlab's likely label errors among ``candidates`` (a mask: only these may be flagged, e.g. the LLM's
    labels; the others, human labels, inform the estimate but are never removed)."""
    from cleanlab.filter import find_label_issues

    # n_jobs=1: cleanlab's own process pool loses its shared arrays inside grid workers (and the cores are taken).
    # It never flags the only label of a class, and warns about each such class: with many classes and few
    # labels that is a warning per round and class, about what is intended here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "May not flag all label issues", UserWarning)
        flagged = find_label_issues(np.asarray(labels, dtype=int), pred_probs, n_jobs=1)
    return flagged & np.asarray(candidates, dtype=bool)


@dataclass
class Decision:
    """One adaptive decision: from round ``effective`` on, buy LLM labels or not, and why."""

    round: int
    effective: int
    buy_llm: bool
    reason: str
    moved_to_human: int = 0


def decide(t: int, llm: Estimate | None, student: Estimate | None, llm_done_this_round: bool) -> Decision | None:
    """The adaptive rule: buy LLM labels from the next open round on only while the LLM's estimated accuracy
    is at least the student's. None (no change) without both estimates on enough items."""
    effective = t + 1 if llm_done_this_round else t
    if llm is None or student is None or llm.accuracy is None or student.accuracy is None:
        return None
    if min(llm.n, student.n) < MIN_DECISION_ITEMS:
        return None
    buy = llm.accuracy >= student.accuracy
    sign = ">=" if buy else "<"
    reason = (
        f"LLM {llm.accuracy:.3f} on {llm.n} probed items {sign} student (out-of-fold) {student.accuracy:.3f} "
        f"on {student.n} human labels"
    )
    return Decision(t, effective, buy, reason)


def apply_decision(
    plan: list[tuple[int, int]], base: list[tuple[int, int]], decision: Decision, human_max: int, human_open_from: int
) -> tuple[list[tuple[int, int]], int]:
    """The plan after ``decision`` (rounds 1-based; rounds before ``decision.effective`` keep their entries).

    Stopping: every LLM share from the effective round on drops to 0; those labels move to human batches of
    rounds not yet labeled by humans (from ``human_open_from``), as long as total human labels stay within
    ``human_max``; the rest is not spent. Buying again: the open rounds go back to the base plan. Budget only
    ever moves from the LLM to humans, never the other way, and never past ``human_max``.
    Returns (new plan, labels moved to humans)."""
    new = [list(p) for p in plan]
    start = decision.effective - 1
    if decision.buy_llm:
        for r in range(start, len(new)):
            new[r][1] = base[r][1]
            if r >= human_open_from - 1:
                new[r][0] = base[r][0]
        return [(h, n) for h, n in new], 0
    freed = sum(new[r][1] for r in range(start, len(new)))
    for r in range(start, len(new)):
        new[r][1] = 0
    room = max(0, human_max - sum(h for h, _ in new))
    moved = min(freed, room)
    left = moved
    for r in range(max(start, human_open_from - 1), len(new)):
        if left <= 0:
            break
        take = left if r == len(new) - 1 else min(left, base[r][1])
        new[r][0] += take
        left -= take
    moved -= left  # no open human round left (the decision came in the last round)
    return [(h, n) for h, n in new], moved


# -- the policy the loop asks --------------------------------------------------------------------------------


def read_state(run_dir: Path, t: int) -> dict:
    """What fidelity-aware IMFL measured and did in round ``t`` (state/fidelity_round<t>.json; empty before)."""
    path = Path(run_dir) / "state" / f"fidelity_round{t}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


@dataclass
class Policy:
    """Fidelity-aware IMFL for one run: the loop asks it what the LLM measures on this task (``measure``), whether to
    keep buying its labels (``decide``), what each LLM label weighs in training and which ones are left out
    (``weights``), which items go to people next round (``routed``), and what to report (``metrics``). Everything it
    measures and decides is written to ``state/fidelity_round<t>.json`` before the loop goes on, so a run continued
    after a crash reads it back instead of asking the LLM again."""

    cfg: RunConfig
    task: Task
    run_dir: Path
    embeddings: np.ndarray  # the pool's, one row per item (``index``: item id -> row)
    index: dict[str, int]
    reporter: Reporter

    def state(self, t: int) -> dict:
        return read_state(self.run_dir, t)

    def _save(self, t: int, state: dict) -> None:
        path = self.run_dir / "state" / f"fidelity_round{t}.json"
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state), encoding="utf-8")
        tmp.replace(path)

    def measure(self, t: int, context: AnnotationContext, llm: Annotator, reviews: list[dict]) -> None:
        """Once per round, right after its human labels: how good is the LLM on this task now, and how good would the
        student be on human labels alone. The LLM labels up to llm.eval_sample human-labeled items (``context``) it has
        not labeled before, each with demonstrations from the *other* human-labeled items; the student's stand-in is
        scored out-of-fold on all human labels. Earlier rounds' answers count too, and so do people's ``reviews`` of
        LLM labels: (LLM label, right label) pairs like the probe's answers (their items are not probed again)."""
        if "llm" in self.state(t):
            return
        cfg, task = self.cfg, self.task
        earlier = [row for r in range(1, t) for row in self.state(r).get("probe", [])]
        seen = {row["id"] for row in earlier} | {r["item_id"] for r in reviews}
        candidates = [i for i, (e, _) in enumerate(context.human_labeled) if e.id not in seen]
        rng = np.random.default_rng([cfg.seed, t])
        pick = (
            sorted(rng.choice(candidates, size=min(cfg.llm.eval_sample, len(candidates)), replace=False).tolist())
            if candidates
            else []
        )
        items = [context.human_labeled[i][0] for i in pick]
        rows = []
        if items:
            context.item_embeddings = self.embeddings[[self.index[e.id] for e in items]]
            context.exclude = pick
            with self.reporter.phase(f"round {t}: LLM self-check on {len(items)} human labels", len(items)) as advance:
                context.progress = advance
                answers = llm.annotate(items, context)
            rows = [
                {
                    "id": a.item_id,
                    "gold": context.human_labeled[i][1],
                    "label": a.label,
                    "confidence": a.confidence,
                    "cost": a.cost,
                }
                for i, a in zip(pick, answers)
            ]
        probe = [r for r in earlier + rows if r["label"] is not None]
        probe += [{"label": r["llm_label"], "gold": r["label"], "confidence": r["llm_confidence"]} for r in reviews]
        llm_estimate = estimate(
            [task.index(r["label"]) for r in probe],
            [task.index(r["gold"]) for r in probe],
            len(task.labels),
            [np.nan if r["confidence"] is None else r["confidence"] for r in probe],
        )
        y = np.array([task.index(label) for _, label in context.human_labeled], dtype=int)
        features = self.embeddings[[self.index[e.id] for e, _ in context.human_labeled]]
        oof = out_of_fold_proba(features, y, len(task.labels), cfg.seed)
        student = estimate(oof.argmax(axis=1), y, len(task.labels), oof.max(axis=1)) if oof is not None else None
        state: dict = {"probe": rows, "llm": llm_estimate.to_dict(), "student": student.to_dict() if student else None}
        if reviews:
            state["reviews"] = len(reviews)  # of llm.n, the reviewed LLM labels (the rest are probe answers)
        self._save(t, state)

    def decide(self, t: int, plan: Plan, base_plan: Plan, commit: Callable[[Plan], None]) -> None:
        """The adaptive human share (fidelity.adaptive), once per round after ``measure``: buy LLM labels only while
        the LLM measures at least as good as the student. A changed plan goes to ``commit`` (which stores it) before
        the decision is recorded."""
        state = self.state(t)
        if not self.cfg.fidelity.adaptive or "decision" in state:
            return
        llm = Estimate.from_dict(state["llm"])
        student = Estimate.from_dict(state["student"]) if state["student"] else None
        decision = decide(t, llm, student, llm_done_this_round=self.cfg.budget.order == "llm-first")
        if decision is not None:
            fid = self.cfg.fidelity
            cap = fid.human_max if fid.human_max is not None else self.cfg.budget.human
            new_plan, decision.moved_to_human = apply_decision(plan, base_plan, decision, cap, human_open_from=t + 1)
            if new_plan != plan:
                commit(new_plan)
            verb = "buy LLM labels" if decision.buy_llm else "buy no LLM labels"
            moved = f"; {decision.moved_to_human} labels move to humans" if decision.moved_to_human else ""
            self.reporter.log(f"round {t}: {verb} from round {decision.effective} on: {decision.reason}{moved}")
        state["decision"] = vars(decision) if decision else None
        self._save(t, state)

    def routed(self, t: int) -> list[str]:
        """Items whose LLM label round ``t`` routed out, for people to label next round (fidelity.route_to_human)."""
        fid = self.cfg.fidelity
        return self.state(t).get("routed", []) if fid.routing and fid.route_to_human else []

    def weights(
        self,
        t: int,
        annotations: list[Annotation],
        weights: np.ndarray,
        gold: Callable[[Sequence[str]], dict[str, str | None]],
        one_epoch_proba: Callable[[np.ndarray, np.ndarray], np.ndarray],
    ) -> tuple[np.ndarray, RoundMetrics]:
        """Training weights after calibration weighting, routing, filtering and the small-loss drop of the LLM's labels
        (each as configured), and the counts for the round's metrics. What happened to every LLM label is kept in the
        round's state (``training``), the routed ids for the next round's human batch. ``gold(ids)`` gives the pool's
        labels where known (to count the wrong labels left out); ``one_epoch_proba(labels, weights)`` the
        probabilities, on the LLM-labeled rows, of a student trained one epoch on every label (small loss)."""
        cfg, task = self.cfg, self.task
        state = self.state(t)
        llm_rows = np.array([i for i, a in enumerate(annotations) if a.source == "llm"], dtype=int)
        if "llm" not in state or not len(llm_rows) or state["llm"]["calibration"] is None:
            return weights, {}
        calibration = Estimate.from_dict(state["llm"]).calibration
        assert calibration is not None  # state["llm"]["calibration"] is set (checked above)
        labels = np.array([task.index(cast(str, a.label)) for a in annotations], dtype=int)  # ok_only: labels are set
        conf = np.array([np.nan if annotations[i].confidence is None else annotations[i].confidence for i in llm_rows])
        p = calibration.p_correct(labels[llm_rows], conf)

        def wrong(mask: np.ndarray) -> int | None:
            """How many of these LLM labels disagree with the pool's gold labels (None when one has no gold label)."""
            chosen = [annotations[i] for i in llm_rows[mask]]
            known = gold([a.item_id for a in chosen])
            if any(known.get(a.item_id) is None for a in chosen):
                return None
            return sum(a.label != known[a.item_id] for a in chosen)

        routed = np.zeros(len(llm_rows), dtype=bool)
        filtered = np.zeros(len(llm_rows), dtype=bool)
        dropped = np.zeros(len(llm_rows), dtype=bool)
        info: RoundMetrics = {}
        if cfg.fidelity.routing:
            threshold = cfg.fidelity.route_threshold
            if threshold is None:
                threshold = state["student"]["accuracy"] if state["student"] else 1 / len(task.labels)
            routed = ~route(p, threshold)
            state["routed"] = [annotations[i].item_id for i in llm_rows[routed] if annotations[i].round == t]
            info.update({"route_threshold": round(float(threshold), 4), "llm_routed": int(routed.sum())})
        if cfg.fidelity.filter:
            # cleanlab sees every label still in (human ones inform its estimate) but may only remove LLM ones.
            kept = np.ones(len(annotations), dtype=bool)
            kept[llm_rows[routed]] = False
            rows = np.flatnonzero(kept)
            features = self.embeddings[[self.index[annotations[i].item_id] for i in rows]]
            oof = out_of_fold_proba(features, labels[rows], len(task.labels), cfg.seed)
            if oof is not None:
                flagged = set(rows[label_issues(labels[rows], oof, np.isin(rows, llm_rows))].tolist())
                filtered = np.array([i in flagged for i in llm_rows])
            info.update({"llm_filtered": int(filtered.sum()), "llm_filtered_wrong": wrong(filtered)})
        if cfg.fidelity.small_loss:
            share = cfg.fidelity.small_loss_share
            share = 1 - state["llm"]["accuracy"] if share is None else share
            if share > 0:  # the LLM labels a student trained one epoch on every label fits worst
                proba = one_epoch_proba(labels, weights)
                loss = -np.log(np.clip(proba[np.arange(len(llm_rows)), labels[llm_rows]], 1e-12, None))
                dropped = loss > np.quantile(loss, 1 - share)
            info.update({"llm_small_loss": int(dropped.sum()), "llm_small_loss_wrong": wrong(dropped)})
        weights = weights.copy()
        if cfg.fidelity.weighting:
            weights[llm_rows] *= p
        weights[llm_rows[routed | filtered | dropped]] = 0.0
        used = weights[llm_rows] > 0
        info["llm_weight_mean"] = round(float(weights[llm_rows][used].mean()), 4) if used.any() else 0.0
        state["training"] = [
            {
                "id": annotations[i].item_id,
                "p_correct": round(float(q), 6),
                "routed": bool(r),
                "filtered": bool(f),
                "small_loss": bool(d),
                "weight": float(weights[i]),
            }
            for i, q, r, f, d in zip(llm_rows, p, routed, filtered, dropped)
        ]
        self._save(t, state)
        return weights, info

    def metrics(self, t: int) -> RoundMetrics:
        """Round ``t``'s self-check and decision, for its metrics (empty when nothing was measured)."""
        state = self.state(t)
        if "llm" not in state:
            return {}
        llm, student, decision = state["llm"], state["student"], state.get("decision")
        out: RoundMetrics = {
            "llm_self_n": llm["n"],
            "llm_self_accuracy": llm["accuracy"],
            "llm_self_ece": llm["ece"],
            "llm_probe_cost": round(sum(r["cost"] for r in state["probe"]), 6),
            "student_est_n": student["n"] if student else 0,
            "student_est_accuracy": student["accuracy"] if student else None,
            "fidelity": {"llm": _sparse_confusion(llm), "student": _sparse_confusion(student)},
        }
        if decision:
            out.update(
                {"buy_llm": decision["buy_llm"], "human_moved": decision["moved_to_human"], "decision": decision["reason"]}
            )
        if state.get("reviews"):
            out["llm_self_reviews"] = state["reviews"]
        return out


def _sparse_confusion(est: dict | None) -> dict | None:
    """An estimate for the round metrics with its confusion matrix as ``[gold, predicted, count]`` triples
    of the non-zero cells: a 77-intent matrix is 5,929 numbers, almost all zero."""
    if not est:
        return est
    return {k: v for k, v in est.items() if k != "confusion"} | {
        "confusion_nonzero": [[g, p, n] for g, row in enumerate(est["confusion"]) for p, n in enumerate(row) if n]
    }
