"""Acquisition functions: pure functions over arrays that return indices, never touching data or store.

Each has the signature ``query(embeddings, uncertainty, n, seed) -> indices`` where
``embeddings`` are the unlabeled items' vectors (an array, or from the loop a ``Rows`` view of its memory-mapped
pool: index it for some rows, ``np.asarray`` it for all), ``uncertainty`` their least-confidence scores
(``None`` before any student exists), ``n`` how many to pick; the result indexes the given arrays,
ordered most-wanted first. Register a new one in ``ACQUISITIONS``.
"""

from imfl.query.acquisition import ACQUISITIONS, Rows, eeq, get_query, least_confidence
from imfl.query.schedule import round_plan, split_by_uncertainty

__all__ = ["ACQUISITIONS", "Rows", "eeq", "get_query", "least_confidence", "round_plan", "split_by_uncertainty"]
