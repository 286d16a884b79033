"""Uncertainty, k-means diversity, and their combination, the exploration–exploitation query (EEQ)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.cluster import KMeans

QueryFn = Callable[[np.ndarray, "np.ndarray | None", int, int], np.ndarray]


def least_confidence(proba: np.ndarray) -> np.ndarray:
    """Uncertainty of each row of class probabilities: 1 − max p (0 = certain)."""
    return 1.0 - np.asarray(proba).max(axis=1)


def kmeans(embeddings: np.ndarray, n_clusters: int, seed: int, max_iter: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Cluster assignment of each row and the cluster centres (k-means++ start, one seeded init)."""
    km = KMeans(n_clusters=n_clusters, n_init=1, max_iter=max_iter, random_state=seed)
    assign = km.fit_predict(np.asarray(embeddings, dtype=np.float32))
    return assign, km.cluster_centers_


def _per_cluster(embeddings: np.ndarray, n: int, seed: int, score: np.ndarray | None) -> np.ndarray:
    """One item per k-means cluster: the highest-``score`` one, or (no score) the one nearest its centre.
    Ordered by score, then by cluster size, largest first (the most representative regions first)."""
    assign, centres = kmeans(embeddings, n, seed)
    dist = np.linalg.norm(embeddings - centres[assign], axis=1)
    # Rank within a cluster: highest score first, then nearest to the centre, then lowest index.
    key = -score if score is not None else np.zeros(len(embeddings))
    order = np.lexsort((np.arange(len(embeddings)), dist, key, assign))
    first = order[np.r_[True, assign[order][1:] != assign[order][:-1]]]
    sizes = np.bincount(assign, minlength=n)[assign[first]]
    primary = -score[first] if score is not None else np.zeros(len(first))
    return first[np.lexsort((first, -sizes, primary))]


def eeq(embeddings: np.ndarray, uncertainty: np.ndarray | None, n: int, seed: int) -> np.ndarray:
    """Exploration–exploitation query: k-means into ``n`` clusters (exploration), then from each cluster
    its most uncertain item (exploitation). Without uncertainty (round 1) it is diversity alone."""
    return _per_cluster(embeddings, n, seed, uncertainty)


def diversity(embeddings: np.ndarray, uncertainty: np.ndarray | None, n: int, seed: int) -> np.ndarray:
    """k-means only: the item nearest each of ``n`` cluster centres."""
    return _per_cluster(embeddings, n, seed, None)


def uncertainty_query(embeddings: np.ndarray, uncertainty: np.ndarray | None, n: int, seed: int) -> np.ndarray:
    """The ``n`` least-confident items; before a student exists, a seeded random sample."""
    if uncertainty is None:
        return random_query(embeddings, None, n, seed)
    return np.lexsort((np.arange(len(uncertainty)), -uncertainty))[:n]


def random_query(embeddings: np.ndarray, uncertainty: np.ndarray | None, n: int, seed: int) -> np.ndarray:
    """A seeded uniform sample without replacement."""
    return np.random.default_rng(seed).choice(len(embeddings), size=n, replace=False)


QUERY_STRATEGIES: dict[str, QueryFn] = {
    "eeq": eeq,
    "random": random_query,
    "uncertainty": uncertainty_query,
    "diversity": diversity,
}


def get_query(name: str) -> QueryFn:
    from imfl.errors import ConfigError

    try:
        return QUERY_STRATEGIES[name]
    except KeyError:
        raise ConfigError(f"query.strategy {name!r} is unknown: use one of {', '.join(QUERY_STRATEGIES)}") from None
