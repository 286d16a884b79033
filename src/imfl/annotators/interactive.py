"""Real people as the high-fidelity annotator. They do not answer a function call: the loop opens the
round's human batch in the store (state ``human_pending``) and stops; people label through
``imfl serve`` (web page), ``imfl annotate`` (terminal) or ``imfl import-labels`` (files), all of which
write to the store through the same checks; ``imfl run`` (or the server, by itself) then continues."""

from __future__ import annotations

from collections.abc import Sequence

from imfl.annotators.base import Annotation, AnnotationContext
from imfl.data import Example
from imfl.errors import AnnotatorError


class PeopleAnnotator:
    source = "human"
    name = "people"
    interactive = True  # the loop waits in the store instead of calling annotate()

    def __init__(self, cost: float = 1.0):
        self.cost = cost

    def annotate(self, items: Sequence[Example], context: AnnotationContext) -> list[Annotation]:
        raise AnnotatorError("people label through imfl serve, imfl annotate or imfl import-labels, not by a function call")
