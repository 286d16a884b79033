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


def random_choice(n_queries: int, n_candidates: int, k: int, seed: int) -> np.ndarray:
    """``k`` distinct random candidates per query (the ablation of retrieval)."""
    k = min(k, n_candidates)
    rng = np.random.default_rng(seed)
    return np.stack([rng.choice(n_candidates, size=k, replace=False) for _ in range(n_queries)]) if k else np.zeros((n_queries, 0), int)
