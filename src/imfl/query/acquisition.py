"""Uncertainty, k-means diversity, and their combination, the exploration–exploitation query (EEQ)."""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable

import numpy as np
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning


class Rows:
    """Rows ``index`` of ``array`` (e.g. the run's memory-mapped pool embeddings), read only when indexed: ``rows[a:b]``
    and ``rows[[i, j]]`` read those rows, ``np.asarray(rows)`` reads them all. What the loop hands a query as the
    unlabeled items' vectors, so that a pool of millions is never copied whole."""

    def __init__(self, array: np.ndarray, index: np.ndarray):
        self.array, self.index = array, np.asarray(index)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.index), *self.array.shape[1:])

    def __getitem__(self, key) -> np.ndarray:
        return np.asarray(self.array[self.index[key]])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype, copy=False)


Vectors = np.ndarray | Rows
QueryFn = Callable[[Vectors, "np.ndarray | None", int, int], np.ndarray]


def least_confidence(proba: np.ndarray) -> np.ndarray:
    """Uncertainty of each row of class probabilities: 1 − max p (0 = certain)."""
    return 1.0 - np.asarray(proba).max(axis=1)


#: Pools up to this size are clustered exactly (k-means on every row). Larger ones fit k-means on a seeded sample
#: of ``KMEANS_SAMPLE`` rows (at least ``KMEANS_PER_CLUSTER`` per cluster) and assign every row to its nearest centre
#: in chunks: a pool of 1,000,000 384-d embeddings takes seconds instead of minutes, and no pool-sized temporary
#: array is made (BENCHMARKS.md compares the selections with exact k-means).
KMEANS_EXACT_MAX = 20_000
KMEANS_SAMPLE = 20_000
KMEANS_PER_CLUSTER = 50
_CHUNK = 65_536


def kmeans(
    embeddings: Vectors, n_clusters: int, seed: int, max_iter: int = 100, sample: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cluster assignment of each row, the distance to its centre, and the centres (k-means++ start, one seeded
    init). ``sample``: fit on this many rows (seeded) and assign the rest; default: every row of a pool up to
    ``KMEANS_EXACT_MAX``, else ``max(KMEANS_SAMPLE, KMEANS_PER_CLUSTER * n_clusters)`` rows."""
    n = len(embeddings)
    if sample is None:
        sample = n if n <= KMEANS_EXACT_MAX else max(KMEANS_SAMPLE, KMEANS_PER_CLUSTER * n_clusters)
    km = KMeans(n_clusters=n_clusters, n_init=1, max_iter=max_iter, random_state=seed)
    with warnings.catch_warnings():
        # Repeated texts give fewer distinct points than clusters; sklearn warns and leaves clusters empty. That is
        # expected here, not a fault: _per_cluster fills the batch from the items left.
        warnings.simplefilter("ignore", ConvergenceWarning)
        if sample >= n:
            rows = np.asarray(embeddings, dtype=np.float32)
            assign = km.fit_predict(rows)
            dist = np.linalg.norm(rows - km.cluster_centers_[assign], axis=1)
            return assign, dist, km.cluster_centers_
        fit_rows = np.sort(np.random.default_rng(seed).choice(n, size=sample, replace=False))
        km.fit(np.asarray(embeddings[fit_rows], dtype=np.float32))
    centres = km.cluster_centers_.astype(np.float32)
    c_sq = (centres**2).sum(axis=1)
    assign = np.empty(n, dtype=np.int32)
    dist = np.empty(n, dtype=np.float32)
    for lo in range(0, n, _CHUNK):
        x = np.asarray(embeddings[lo : lo + _CHUNK], dtype=np.float32)
        d2 = (x**2).sum(axis=1, keepdims=True) - 2.0 * (x @ centres.T) + c_sq
        assign[lo : lo + len(x)] = d2.argmin(axis=1)
        dist[lo : lo + len(x)] = np.sqrt(np.maximum(d2[np.arange(len(x)), assign[lo : lo + len(x)]], 0.0))
    return assign, dist, centres


def _per_cluster(
    embeddings: Vectors, n: int, seed: int, score: np.ndarray | None, sample: int | None = None, max_iter: int = 100
) -> np.ndarray:
    """One item per k-means cluster: the highest-``score`` one, or (no score) the one nearest its centre.
    Ordered by score, then by cluster size, largest first (the most representative regions first).
    Repeated texts can leave clusters empty: then the batch is filled with the best of the items not picked
    (highest score, then nearest its centre), so a round buys the labels it planned. ``sample``, ``max_iter``: see
    :func:`kmeans`."""
    assign, dist, _ = kmeans(embeddings, n, seed, max_iter=max_iter, sample=sample)
    # Rank within a cluster: highest score first, then nearest to the centre, then lowest index.
    key = -score if score is not None else np.zeros(len(embeddings))
    order = np.lexsort((np.arange(len(embeddings)), dist, key, assign))
    first = order[np.r_[True, assign[order][1:] != assign[order][:-1]]]
    sizes = np.bincount(assign, minlength=n)[assign[first]]
    primary = -score[first] if score is not None else np.zeros(len(first))
    first = first[np.lexsort((first, -sizes, primary))]
    if len(first) == n:
        return first
    ranked = np.lexsort((np.arange(len(embeddings)), dist, key))
    return np.concatenate([first, ranked[~np.isin(ranked, first)][: n - len(first)]])


def eeq(embeddings: Vectors, uncertainty: np.ndarray | None, n: int, seed: int, *, max_iter: int = 100) -> np.ndarray:
    """Exploration–exploitation query: k-means into ``n`` clusters (at most ``max_iter`` iterations; exploration),
    then from each cluster its most uncertain item (exploitation). Without uncertainty (round 1) it is diversity
    alone. Always ``n`` items (when the pool has them): clusters left empty by repeated texts are made up by the most
    uncertain items left."""
    return _per_cluster(embeddings, n, seed, uncertainty, max_iter=max_iter)


def diversity(embeddings: Vectors, uncertainty: np.ndarray | None, n: int, seed: int, *, max_iter: int = 100) -> np.ndarray:
    """k-means only: the item nearest each of ``n`` cluster centres."""
    return _per_cluster(embeddings, n, seed, None, max_iter=max_iter)


def uncertainty_query(embeddings: Vectors, uncertainty: np.ndarray | None, n: int, seed: int) -> np.ndarray:
    """The ``n`` least-confident items; before a student exists, a seeded random sample."""
    if uncertainty is None:
        return random_query(embeddings, None, n, seed)
    return np.lexsort((np.arange(len(uncertainty)), -uncertainty))[:n]


def random_query(embeddings: Vectors, uncertainty: np.ndarray | None, n: int, seed: int) -> np.ndarray:
    """A seeded uniform sample without replacement."""
    return np.random.default_rng(seed).choice(len(embeddings), size=n, replace=False)


ACQUISITIONS: dict[str, QueryFn] = {
    "eeq": eeq,
    "random": random_query,
    "uncertainty": uncertainty_query,
    "diversity": diversity,
}


def get_query(name: str, kmeans_iter: int | None = None) -> QueryFn:
    """The registered acquisition function ``name``; ``kmeans_iter`` (query.kmeans_iter) reaches those that cluster, which take
    it as the keyword ``max_iter``."""
    from imfl.errors import ConfigError

    try:
        fn = ACQUISITIONS[name]
    except KeyError:
        raise ConfigError(f"query.acquisition {name!r} is unknown: use one of {', '.join(ACQUISITIONS)}") from None
    if kmeans_iter is not None and "max_iter" in inspect.signature(fn).parameters:
        return functools.partial(fn, max_iter=kmeans_iter)  # type: ignore[call-arg]  # QueryFn cannot spell the keyword
    return fn
