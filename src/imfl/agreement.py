"""How well people agree on the items they both labeled (``human.overlap``): Cohen's kappa per pair of people on the
items both answered, and Fleiss' kappa over the items with two answers when more than two people took part.

``agreement`` takes the human answers to overlap items (``Store.human_answers``) and the settled disputes
(``Store.adjudications``) and returns one JSON-ready dict, the same for ``imfl status``, the round metrics and the
dashboard. A kappa is None where it is undefined: no item to compare on, or every answer the same single label (chance
agreement is then 1 and kappa 0/0).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from itertools import combinations
from typing import Any

__all__ = ["agreement", "fleiss_kappa"]


def fleiss_kappa(items: Iterable[Iterable[str]]) -> float | None:
    """Fleiss' kappa of items each answered by the same number n >= 2 of raters (the answers per item, in any order):
    P_i = (sum_j n_ij^2 - n) / (n (n - 1)), P = mean P_i, p_j = share of all answers that are label j, P_e = sum p_j^2,
    kappa = (P - P_e) / (1 - P_e). None without items or when P_e is 1."""
    rows = [list(answers) for answers in items]
    if not rows:
        return None
    n = len(rows[0])
    if n < 2 or any(len(r) != n for r in rows):
        raise ValueError("fleiss_kappa needs the same number (2 or more) of answers for every item")
    totals: dict[str, int] = {}
    p_items = []
    for answers in rows:
        counts: dict[str, int] = {}
        for label in answers:
            counts[label] = counts.get(label, 0) + 1
            totals[label] = totals.get(label, 0) + 1
        p_items.append((sum(c * c for c in counts.values()) - n) / (n * (n - 1)))
    p_bar = sum(p_items) / len(rows)
    p_e = sum((c / (len(rows) * n)) ** 2 for c in totals.values())
    if math.isclose(p_e, 1.0):
        return None
    return (p_bar - p_e) / (1 - p_e)


def _cohen(a: list[str], b: list[str]) -> float | None:
    if not a or len(set(a) | set(b)) < 2:
        return None
    import warnings

    from sklearn.metrics import cohen_kappa_score

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kappa = float(cohen_kappa_score(a, b))
    return None if math.isnan(kappa) else kappa


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 4)


def agreement(answers: Iterable[dict], settled: dict[str, dict] | None = None) -> dict[str, Any]:
    """Agreement over ``answers`` (dicts with item_id, annotator, label; oldest first): ``items_double`` (items with two
    answers), ``disagreements`` (of those, the ones whose answers differ), ``settled`` (disagreements an admin settled,
    from ``settled``: item_id -> adjudication), ``people`` (who answered), ``pairs`` (per pair of people: the items
    both answered, how many they agreed on and Cohen's kappa), ``cohen_kappa`` (with exactly two people: their pair's)
    and ``fleiss_kappa`` (with more than two: over the items with two answers, each item's first two)."""
    per_item: dict[str, dict[str, str]] = {}
    for answer in answers:
        per_item.setdefault(answer["item_id"], {})[answer["annotator"]] = answer["label"]
    double = {i: got for i, got in per_item.items() if len(got) >= 2}
    people = sorted({name for got in double.values() for name in got})
    pairs = []
    for x, y in combinations(people, 2):
        both = [(got[x], got[y]) for got in double.values() if x in got and y in got]
        if both:
            kappa = _cohen([p[0] for p in both], [p[1] for p in both])
            pairs.append({"a": x, "b": y, "items": len(both), "agreed": sum(p == q for p, q in both), "kappa": _round(kappa)})
    disagreed = [i for i, got in double.items() if len(set(got.values())) > 1]
    return {
        "items_double": len(double),
        "disagreements": len(disagreed),
        "settled": sum(i in (settled or {}) for i in disagreed),
        "people": people,
        "pairs": pairs,
        "cohen_kappa": pairs[0]["kappa"] if len(people) == 2 and pairs else None,
        "fleiss_kappa": _round(fleiss_kappa(list(got.values())[:2] for got in double.values())) if len(people) > 2 else None,
    }
