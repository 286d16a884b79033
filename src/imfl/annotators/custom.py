"""Annotators the user brings: any object with ``annotate(items, context)``, passed to ``imfl.run(config,
llm=..., human=...)``, e.g. a call to one's own LLM or a bridge to a labeling tool. No registry entry is needed.

For each item, in the order given, ``annotate`` returns one of:

- a label string, one of the task's labels (recorded with confidence None and the configured ``llm.cost`` or
  ``human.cost``);
- an :class:`imfl.Annotation` for that item (``source`` "llm" or "human" as asked, ``round`` = ``context.round``),
  to record probabilities, a confidence, a cost or tokens too;
- ``None``: no label for this item; it spends no budget and goes back to the pool.

What comes back is checked before anything is stored; a wrong count or a label outside the label set stops the run
with a one-line ``AnnotatorError`` naming the item. The annotator's name is the object's ``name`` attribute, else
its class name; the run's recorded configuration says ``llm.annotator = "custom:<name>"`` (or ``human.annotator``),
so a run continues only with an annotator of the same name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from imfl.annotators.base import AnnotationContext
from imfl.data import Annotation, Example, Task
from imfl.errors import AnnotatorError

PREFIX = "custom:"


def annotator_name(obj: object) -> str:
    """The ``name`` attribute when it is a non-empty string, else the class name."""
    name = getattr(obj, "name", None)
    return name if isinstance(name, str) and name.strip() else type(obj).__name__


def check_annotator(obj: object, source: str) -> None:
    """An AnnotatorError unless ``obj`` can be called as an annotator (``annotate(items, context)``)."""
    if isinstance(obj, type):
        raise AnnotatorError(f"{source}= got the class {obj.__name__}, not an object: pass an instance, e.g. {obj.__name__}()")
    if not callable(getattr(obj, "annotate", None)):
        raise AnnotatorError(
            f"{source}= got {type(obj).__name__} {_short(obj)}, which has no method annotate(items, context): "
            "pass an object with that method, returning one label per item"
        )


class CustomAnnotator:
    """A user's annotator object in the loop's place for ``source`` ("llm" or "human"), with its answers checked."""

    inner: Any  # the user's object: check_annotator made sure it has annotate(items, context)

    def __init__(self, obj: object, source: str, task: Task, cost: float = 0.0):
        check_annotator(obj, source)
        self.inner, self.source, self.task, self.cost = obj, source, task, cost
        self.name = annotator_name(obj)
        self.setting = PREFIX + self.name  # what the run's configuration records as {source}.annotator
        self._labels = set(task.labels)

    @property
    def stats(self) -> dict:
        stats = getattr(self.inner, "stats", None)
        return stats if isinstance(stats, dict) else {}

    def annotate(self, items: Sequence[Example], context: AnnotationContext) -> list[Annotation]:
        items = list(items)
        # The object need not report progress: the loop's bar moves by the batch when the answers are in.
        answers = self.inner.annotate(items, dataclasses.replace(context, progress=None))
        if answers is None or isinstance(answers, (str, bytes, Annotation)) or not hasattr(answers, "__iter__"):
            raise AnnotatorError(
                f"{self.name}.annotate returned {type(answers).__name__} {_short(answers)} for {len(items)} "
                "items: return a list with one label (or Annotation, or None) per item, in the order given"
            )
        answers = list(answers)
        if len(answers) != len(items):
            raise AnnotatorError(
                f"{self.name}.annotate returned {len(answers)} answers for {len(items)} items "
                f"(first item {items[0].id!r}): return one per item, in the order given"
            )
        out = [self._check(e, a, context.round) for e, a in zip(items, answers)]
        if context.progress:
            context.progress(len(items))
        return out

    def _check(self, item: Example, answer: object, round: int) -> Annotation:
        if answer is None:
            return Annotation(item.id, round, self.source, self.name, None, error=f"no label from {self.name}")
        if isinstance(answer, Annotation):
            if answer.item_id != item.id:
                raise AnnotatorError(
                    f"{self.name}.annotate returned an Annotation for item {answer.item_id!r} in the place "
                    f"of item {item.id!r}: return one per item, in the order given"
                )
            if answer.source != self.source:
                raise AnnotatorError(
                    f"{self.name}.annotate returned an Annotation with source {answer.source!r} for item "
                    f"{item.id!r}, but it labels as the {self.source} annotator: use source={self.source!r}"
                )
            if answer.round != round:
                raise AnnotatorError(
                    f"{self.name}.annotate returned an Annotation of round {answer.round!r} for item "
                    f"{item.id!r} in round {round}: use round=context.round"
                )
            if answer.label is not None:
                self._check_label(item, answer.label)
            return answer
        if isinstance(answer, str):
            self._check_label(item, answer)
            return Annotation(item.id, round, self.source, self.name, str(answer), confidence=None, cost=self.cost)
        raise AnnotatorError(
            f"{self.name}.annotate returned {type(answer).__name__} {_short(answer)} for item {item.id!r}: "
            f"return a label ({', '.join(self.task.labels)}), an imfl.Annotation or None"
        )

    def _check_label(self, item: Example, label: object) -> None:
        if not isinstance(label, str) or label not in self._labels:
            raise AnnotatorError(
                f"{self.name} gave item {item.id!r} the label {label!r}, which is not one of the task's labels "
                f"({', '.join(self.task.labels)})"
            )


def _short(value: object, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."
