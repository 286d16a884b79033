"""A recorded LLM: replays labels that a real model gave earlier, stored in a column of the pool or in a
JSONL file of its own (``id``, ``label`` and optionally ``probs`` = {label: probability} per line, e.g. the
results of a batch API job run elsewhere).

Recorded labels could not see demonstrations, so only the query and the schedule act on them. A missing (null) or
out-of-set label is a failed call: no label, no budget spent, and the item goes back to the pool."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

from imfl.annotators.base import Annotation, AnnotationContext
from imfl.data import Example, Task
from imfl.errors import AnnotatorError, DataError
from imfl.io import read_rows
from imfl.llm.base import parse_label


def read_recorded(path: str | Path, labels: Sequence[str]) -> dict[str, tuple[object, dict[str, float] | None]]:
    """id → (recorded answer, probabilities or None) from a JSONL/CSV file; bad rows are reported by line."""
    out: dict[str, tuple[object, dict[str, float] | None]] = {}
    for line, row in read_rows(Path(path), "recorded answers"):
        item_id = row.get("id")
        if item_id is None or str(item_id).strip() == "":
            raise DataError(f"{path}:{line}: field 'id' is missing; every recorded answer needs the item's id")
        probs = row.get("probs")
        if probs is not None:
            ok = (
                isinstance(probs, dict)
                and set(probs) <= set(labels)
                and all(isinstance(v, (int, float)) and v >= 0 and math.isfinite(v) for v in probs.values())
                and sum(probs.values()) > 0
            )
            if not ok:
                raise DataError(f"{path}:{line}: field 'probs' must map labels of {', '.join(labels)} to non-negative numbers")
            total = sum(probs.values())
            probs = {label: float(probs.get(label, 0.0)) / total for label in labels}
        out[str(item_id)] = (row.get("label"), probs)
    return out


class RecordedAnnotator:
    source = "llm"

    def __init__(self, task: Task, column: str | None = None, cost: float = 0.0, file: str | Path | None = None):
        self.task = task
        self.column = column
        self.cost = cost
        self.file = file
        self._answers: dict | None = None

    @property
    def name(self) -> str:
        if self.column:
            return f"recorded:{self.column}"
        assert self.file is not None  # llm.column or llm.file: LLMConfig requires one
        return f"recorded:{Path(self.file).name}"

    def _answer(self, e: Example) -> tuple[object, dict[str, float] | None]:
        if self.file is None:
            return (e.extra.get(self.column) if self.column is not None else None), None
        if self._answers is None:
            self._answers = read_recorded(self.file, self.task.labels)
        return self._answers.get(e.id, (None, None))

    def check(self, pool: Iterable[Example], path: str = "pool") -> None:
        """Fail early when no pool item has a recorded answer (one pass over the pool, stopping at the first that has)."""
        if self.file is not None:
            self._answers = read_recorded(self.file, self.task.labels)
            if not any(e.id in self._answers for e in pool):
                raise AnnotatorError(f"{self.file}: none of its ids is in the pool {path}; check that the ids match")
            return
        fields: set[str] = set()
        for n, e in enumerate(pool):
            if self.column in e.extra:
                return
            if n < 50:
                fields.update(e.extra)
        raise AnnotatorError(
            f"{path}: llm.column {self.column!r} is not a field of the pool; fields found: {', '.join(sorted(fields)) or 'none'}"
        )

    def _label(self, e: Example) -> tuple[str | None, dict[str, float] | None, str | None]:
        """The recorded label of ``e`` (None if there is none or it names no label), its probabilities, and why not."""
        raw, probs = self._answer(e)
        label = parse_label(str(raw), self.task.labels) if raw is not None else None
        error = None if label else ("no recorded answer" if raw is None else f"unparsed: {str(raw)[:80]!r}")
        return label, probs, error

    def accuracy(self, pool: Iterable[Example]) -> float | None:
        """The share of gold-labeled ``pool`` items whose recorded label is right (no usable answer counts as wrong):
        the annotator's real accuracy, as the benchmarks' ladder plots it. None without gold labels."""
        right = [self._label(e)[0] == e.label for e in pool if e.label is not None]
        return sum(right) / len(right) if right else None

    def annotate(self, items: Sequence[Example], context: AnnotationContext) -> list[Annotation]:
        out = []
        for e in items:
            label, probs, error = self._label(e)
            out.append(
                Annotation(
                    e.id,
                    context.round,
                    "llm",
                    self.name,
                    label,
                    probs=probs if label else None,
                    confidence=probs[label] if label and probs else None,
                    cost=self.cost if label else 0.0,
                    method="recorded",
                    error=error,
                )
            )
            if context.progress:
                context.progress(1)
        return out
