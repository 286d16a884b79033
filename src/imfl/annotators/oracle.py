"""The simulated expert: replays each item's gold label."""

from __future__ import annotations

from collections.abc import Sequence

from imfl.annotators.base import Annotation, AnnotationContext
from imfl.data import Example
from imfl.errors import AnnotatorError


class OracleAnnotator:
    source = "human"
    name = "oracle"

    def __init__(self, cost: float = 1.0):
        self.cost = cost

    def annotate(self, items: Sequence[Example], context: AnnotationContext) -> list[Annotation]:
        out = []
        for e in items:
            if e.label is None:
                raise AnnotatorError(
                    f"item {e.id!r} (pool line {e.line}) has no gold label, so the simulated expert cannot label it; "
                    "give every pool row a label or use a real human annotator"
                )
            out.append(Annotation(e.id, context.round, "human", self.name, e.label, confidence=1.0, cost=self.cost))
            if context.progress:
                context.progress(1)
        return out
