"""The one method every annotator has, and what it may see besides the items. What it returns,
``Annotation``, lives in ``imfl.data`` so that the store can read and write it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from imfl.data import Annotation, Example


@dataclass
class AnnotationContext:
    """What an annotator may use besides the items: the round, the human-labeled items so far (the
    LLM's demonstrations), and the embeddings of both. When the items are themselves human-labeled (a probe
    of the LLM), ``exclude[i]`` is item i's own row in ``human_labeled``, never shown as its demonstration."""

    round: int
    human_labeled: Sequence[tuple[Example, str]] = ()
    human_embeddings: np.ndarray | None = None
    item_embeddings: np.ndarray | None = None
    progress: Callable[[int], None] | None = None
    seed: int = 0
    exclude: Sequence[int] | None = None  # per item, a row of human_labeled it may not see (leave-one-out probes)


class Annotator(Protocol):
    source: str

    @property
    def name(self) -> str: ...

    def annotate(self, items: Sequence[Example], context: AnnotationContext) -> list[Annotation]: ...
