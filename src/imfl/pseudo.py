"""Self-training (beyond the paper): the student's most confident predictions on unlabeled pool items, used as labels at
no annotation cost. Pure functions over probabilities; the loop decides when and with what weight."""

from __future__ import annotations

import numpy as np

from imfl.query.schedule import _apportion


def pseudo_label_pick(proba: np.ndarray, k: int, mode: str = "proportional") -> np.ndarray:
    """Indices of ``k`` rows of ``proba`` (items × classes) to label with their arg-max: the most confident rows of each
    predicted class. ``proportional``: each class's share follows how often it is predicted; ``balanced``: equal
    shares. A class with too few rows gives its share to the others. Sorted by confidence, highest first."""
    if mode not in ("proportional", "balanced"):
        raise ValueError(f"mode {mode!r}: use 'proportional' or 'balanced'")
    proba = np.asarray(proba, dtype=float)
    if proba.ndim != 2 or k <= 0 or len(proba) == 0:
        return np.zeros(0, dtype=int)
    predicted, confidence = proba.argmax(axis=1), proba.max(axis=1)
    n_classes = proba.shape[1]
    counts = np.bincount(predicted, minlength=n_classes)
    weights = counts.astype(float) if mode == "proportional" else (counts > 0).astype(float)
    quota = _apportion(min(k, len(proba)), weights, counts)
    picked = []
    for c in range(n_classes):
        rows = np.flatnonzero(predicted == c)
        picked.append(rows[np.argsort(-confidence[rows], kind="stable")[: quota[c]]])
    out = np.concatenate(picked)
    return out[np.argsort(-confidence[out], kind="stable")]
