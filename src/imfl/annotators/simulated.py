"""A simulated LLM for experiments: each label is drawn from a class-conditional confusion matrix around the
gold label (right with probability ``accuracy``, otherwise any other label, equally likely). It answers the
question "how good must the LLM be for its labels to pay off?" without a real LLM. Its name,
``simulated:<accuracy>``, marks every label it gives in the store, the outputs and the reports.

The draw for an item depends only on the run's seed and the item's id, so a probe of an item and its
annotation agree, and a resumed run gives the same labels."""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence

import numpy as np

from imfl.annotators.base import Annotation, AnnotationContext
from imfl.data import Example, Task
from imfl.errors import AnnotatorError


def confusion_matrix(n_labels: int, accuracy: float) -> np.ndarray:
    """Rows = gold label, columns = given label: ``accuracy`` on the diagonal, the rest spread evenly."""
    if n_labels == 1:
        return np.ones((1, 1))
    m = np.full((n_labels, n_labels), (1.0 - accuracy) / (n_labels - 1))
    np.fill_diagonal(m, accuracy)
    return m


class SimulatedAnnotator:
    source = "llm"

    def __init__(self, task: Task, accuracy: float, seed: int = 0, cost: float = 0.0):
        self.task = task
        self.accuracy = accuracy
        self.seed = seed
        self.cost = cost

    @property
    def name(self) -> str:
        return f"simulated:{self.accuracy:g}"

    def check(self, pool: Iterable[Example], path: str = "pool") -> None:
        missing = [e.line for e in pool if e.label is None]
        if missing:
            raise AnnotatorError(
                f"{path}:{missing[0]}: {len(missing)} pool rows have no label, but the simulated LLM "
                "(llm.annotator = 'simulated') draws its labels around the gold ones; label them or use another LLM"
            )

    def annotate(self, items: Sequence[Example], context: AnnotationContext) -> list[Annotation]:
        matrix = confusion_matrix(len(self.task.labels), self.accuracy)
        out = []
        for e in items:
            if e.label is None:
                raise AnnotatorError(f"item {e.id!r} (pool line {e.line}) has no gold label for the simulated LLM to start from")
            rng = np.random.default_rng([self.seed, zlib.crc32(e.id.encode("utf-8"))])
            given = self.task.labels[int(rng.choice(len(self.task.labels), p=matrix[self.task.index(e.label)]))]
            out.append(Annotation(e.id, context.round, "llm", self.name, given, cost=self.cost, method="simulated"))
            if context.progress:
                context.progress(1)
        return out
