"""Choosing demonstrations for an LLM prompt from the human-labeled items (prompt retrieval)."""

from __future__ import annotations

import numpy as np


def nearest(query: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    """For each query row, the indices of the ``k`` candidates with the highest cosine similarity
    (rows are unit vectors, so a dot product), most similar first; ties go to the lower index."""
    k = min(k, len(candidates))
    if k == 0:
        return np.zeros((len(query), 0), dtype=int)
    sims = np.asarray(query, dtype=np.float32) @ np.asarray(candidates, dtype=np.float32).T
    idx = np.arange(sims.shape[1])
    return np.stack([np.lexsort((idx, -row))[:k] for row in sims])


def balanced_nearest(query: np.ndarray, candidates: np.ndarray, labels: list[str], k: int) -> np.ndarray:
    """Like ``nearest``, but label-balanced: first the most similar candidate of each label (as many
    labels as ``k`` allows, the labels with the most similar candidates first), then the most similar of
    the rest; most similar first."""
    k = min(k, len(candidates))
    sims = np.asarray(query, dtype=np.float32) @ np.asarray(candidates, dtype=np.float32).T
    idx = np.arange(sims.shape[1])
    out = []
    for row in sims:
        order = np.lexsort((idx, -row))
        first_of_label: dict[str, int] = {}
        for j in order:
            first_of_label.setdefault(labels[j], int(j))
        picked = list(first_of_label.values())[:k]
        chosen = set(picked)
        picked += [int(j) for j in order if j not in chosen][: k - len(picked)]
        out.append(sorted(picked, key=lambda j: (-row[j], j)))
    return np.array(out, dtype=int).reshape(len(sims), k)


def random_choice(n_queries: int, n_candidates: int, k: int, seed: int) -> np.ndarray:
    """``k`` distinct random candidates per query (the ablation of retrieval)."""
    k = min(k, n_candidates)
    rng = np.random.default_rng(seed)
    return (
        np.stack([rng.choice(n_candidates, size=k, replace=False) for _ in range(n_queries)])
        if k
        else np.zeros((n_queries, 0), int)
    )
