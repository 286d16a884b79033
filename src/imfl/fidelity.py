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

Everything here is a pure function over arrays; ``loop.py`` feeds it and records what it decided.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field

import numpy as np

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
