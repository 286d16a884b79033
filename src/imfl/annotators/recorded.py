"""A recorded LLM: replays labels that a real model gave earlier, stored in a column of the pool.

Recorded labels carry no probabilities and could not see demonstrations, so only the query and the
schedule act on them. A missing (null) or out-of-set label is a failed call: no label, no budget spent,
and the item goes back to the pool."""

from __future__ import annotations

from collections.abc import Sequence

from imfl.annotators.base import Annotation, AnnotationContext
from imfl.data import Example, Task
from imfl.errors import AnnotatorError
from imfl.llm.base import parse_label


class RecordedAnnotator:
    source = "llm"

    def __init__(self, task: Task, column: str, cost: float = 0.0):
        self.task = task
        self.column = column
        self.cost = cost

    @property
    def name(self) -> str:
        return f"recorded:{self.column}"

    def check(self, pool: Sequence[Example], path: str = "pool") -> None:
        if not any(self.column in e.extra for e in pool):
            fields = sorted({k for e in pool[:50] for k in e.extra})
            raise AnnotatorError(
                f"{path}: llm.column {self.column!r} is not a field of the pool; fields found: {', '.join(fields) or 'none'}"
            )

    def annotate(self, items: Sequence[Example], context: AnnotationContext) -> list[Annotation]:
        out = []
        for e in items:
            raw = e.extra.get(self.column)
            label = parse_label(str(raw), self.task.labels) if raw is not None else None
            error = None if label else ("no recorded answer" if raw is None else f"unparsed: {str(raw)[:80]!r}")
            out.append(Annotation(e.id, context.round, "llm", self.name, label, cost=self.cost if label else 0.0,
                                  method="recorded", error=error))
            if context.progress:
                context.progress(1)
        return out
