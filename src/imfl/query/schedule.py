"""Variable batch size: how many labels each round buys, and from whom."""

from __future__ import annotations

import numpy as np


def _apportion(total: int, weights: np.ndarray, caps: np.ndarray) -> np.ndarray:
    """Split the integer ``total`` in proportion to ``weights`` (largest remainder), never above ``caps``;
    what a capped round cannot take goes to the others in the same proportions."""
    out = np.zeros(len(weights), dtype=int)
    free = np.ones(len(weights), dtype=bool)
    left = total
    while left > 0 and free.any():
        w = np.where(free, weights, 0.0)
        if w.sum() <= 0:
            w = free.astype(float)
        ideal = left * w / w.sum()
        share = np.floor(ideal).astype(int)
        rest = left - share.sum()
        # Largest remainders first; ties go to earlier rounds.
        for i in np.lexsort((np.arange(len(w)), -(ideal - share)))[:rest]:
            share[i] += 1
        share = np.minimum(share, caps - out)
        out += share
        left -= share.sum()
        free &= out < caps
    return out


def round_plan(total: int, human: int, rounds: int, schedule: str = "geometric", decay: float = 0.5) -> list[tuple[int, int]]:
    """Per round, ``(human labels, LLM labels)``. Every round buys about ``total / rounds`` labels;
    the human share decays over rounds (``geometric``: each round ``decay`` times the previous;
    ``linear``: rounds, rounds−1, …, 1; ``fixed``: equal), summing exactly to ``human``."""
    if rounds < 1 or total < rounds or not 0 <= human <= total:
        raise ValueError(f"no plan for total={total}, human={human}, rounds={rounds}")
    per_round = np.full(rounds, total // rounds)
    per_round[: total % rounds] += 1
    t = np.arange(rounds)
    weights = {
        "geometric": decay**t,
        "linear": (rounds - t).astype(float),
        "fixed": np.ones(rounds),
    }[schedule]
    h = _apportion(human, weights, per_round)
    return [(int(a), int(b - a)) for a, b in zip(h, per_round)]


def split_by_uncertainty(selected: np.ndarray, uncertainty: np.ndarray | None, n_human: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``n_human`` most uncertain of ``selected`` go to the human, the rest to the LLM. Without
    uncertainty (no student yet) the query's own order decides."""
    selected = np.asarray(selected)
    if uncertainty is not None:
        selected = selected[np.argsort(-uncertainty[selected], kind="stable")]
    return selected[:n_human], selected[n_human:]
