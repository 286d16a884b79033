"""The LLM annotator: for each item, a prompt with the instruction, the k most similar human-labeled
items as demonstrations, and the item; the backend scores every label, so each annotation carries a
probability for every label. Demonstrations are shown least similar first, so the most similar one
stands right before the item."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from imfl.annotators.base import Annotation, AnnotationContext
from imfl.data import Example, Task
from imfl.llm.prompts import Demo, build_messages, prompt_hash
from imfl.llm.retrieval import nearest, random_choice


class LLMAnnotator:
    source = "llm"

    def __init__(self, backend, task: Task, k: int = 4, demos: str = "retrieved", cost: float = 0.0):
        self.backend = backend
        self.task = task
        self.k = k
        self.demos = demos
        self.cost = cost

    @property
    def name(self) -> str:
        return self.backend.name

    def _demo_indices(self, context: AnnotationContext, n_items: int) -> np.ndarray:
        m = len(context.human_labeled)
        if self.demos == "none" or self.k == 0 or m == 0:
            return np.zeros((n_items, 0), dtype=int)
        if self.demos == "random":
            return random_choice(n_items, m, self.k, context.seed)
        return nearest(context.item_embeddings, context.human_embeddings, self.k)

    def prompts(self, items: Sequence[Example], context: AnnotationContext) -> list[tuple[list[dict], tuple[str, ...]]]:
        """The chat messages for each item and the ids of the demonstrations they carry."""
        chosen = self._demo_indices(context, len(items))
        out = []
        for e, idx in zip(items, chosen):
            demos = [context.human_labeled[i] for i in idx[::-1]]
            messages = build_messages(
                self.task.instruction,
                self.task.labels,
                e.text,
                e.text_pair,
                [Demo(d.id, d.text, label, d.text_pair) for d, label in demos],
            )
            out.append((messages, tuple(d.id for d, _ in demos)))
        return out

    def annotate(self, items: Sequence[Example], context: AnnotationContext) -> list[Annotation]:
        prompts = self.prompts(items, context)
        logp = self.backend.score([m for m, _ in prompts], self.task.labels, progress=context.progress)
        probs = np.exp(logp)
        out = []
        for e, (messages, demo_ids), p in zip(items, prompts, probs):
            best = int(np.argmax(p))
            out.append(
                Annotation(
                    e.id, context.round, "llm", self.name, self.task.labels[best],
                    probs={lab: float(x) for lab, x in zip(self.task.labels, p)},
                    confidence=float(p[best]), cost=self.cost,
                    prompt_hash=prompt_hash(messages), demo_ids=demo_ids,
                )
            )
        return out
