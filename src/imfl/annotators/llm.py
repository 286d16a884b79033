"""The LLM annotator: for each item, a prompt with the instruction, the k most similar human-labeled
items as demonstrations (prompt retrieval), and the item; the backend gives a probability for every
label, so each annotation carries them. Demonstrations are shown least similar first, so the most
similar stands right before the item.

Around any backend: a persistent answer cache (a prompt is never paid twice), optional label-balanced
or random demonstrations, optional contextual calibration, cost from token prices, and a
leave-one-out labeling of human-labeled items (``context.exclude``), with which the loop measures the LLM.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from imfl.annotators.base import Annotation, AnnotationContext
from imfl.data import Example, Task
from imfl.llm.base import Scored
from imfl.llm.cache import AnswerCache, cache_key
from imfl.llm.prompts import Demo, build_messages, prompt_hash
from imfl.llm.retrieval import balanced_nearest, nearest, random_choice

CONTENT_FREE = "N/A"


class LLMAnnotator:
    source = "llm"

    def __init__(
        self,
        backend,
        task: Task,
        k: int = 4,
        demos: str = "retrieved",
        *,
        balanced: bool = False,
        calibrate: bool = False,
        cost_per_label: float = 0.0,
        prompt_price: float = 0.0,
        completion_price: float = 0.0,
        cache: AnswerCache | None = None,
    ):
        self.backend = backend
        self.task = task
        self.k = k
        self.demos = demos
        self.balanced = balanced
        self.calibrate = calibrate
        self.cost_per_label = cost_per_label
        self.prompt_price = prompt_price
        self.completion_price = completion_price
        self.cache = cache
        self.stats = {"calls": 0, "cached": 0, "failed": 0, "unparsed": 0}

    @property
    def name(self) -> str:
        return self.backend.name

    # -- prompts -----------------------------------------------------------------------------------
    def _demo_indices(
        self,
        n_items: int,
        pool: Sequence[tuple[Example, str]],
        pool_emb: np.ndarray | None,
        item_emb: np.ndarray | None,
        seed: int,
        exclude: Sequence[int] | None = None,
    ) -> list[list[int]]:
        m = len(pool)
        if self.demos == "none" or self.k == 0 or m == 0:
            return [[] for _ in range(n_items)]
        if self.demos == "random":
            rows = random_choice(n_items, m, self.k + (1 if exclude is not None else 0), seed)
        elif self.balanced:
            assert item_emb is not None and pool_emb is not None  # nearest demonstrations: the loop passes embeddings
            rows = balanced_nearest(item_emb, pool_emb, [label for _, label in pool], self.k + (1 if exclude is not None else 0))
        else:
            assert item_emb is not None and pool_emb is not None  # nearest demonstrations: the loop passes embeddings
            rows = nearest(item_emb, pool_emb, self.k + (1 if exclude is not None else 0))
        out = []
        for i, row in enumerate(rows):
            row = [int(j) for j in row if exclude is None or j != exclude[i]]
            out.append(row[: self.k])
        return out

    def _messages(self, text: str, text_pair: str | None, demos: Sequence[Demo]) -> list[dict]:
        return build_messages(
            self.task.instruction, self.task.labels, text, text_pair, demos, descriptions=self.task.descriptions
        )

    def prompts(self, items: Sequence[Example], context: AnnotationContext) -> list[tuple[list[dict], list[Demo]]]:
        """The chat messages for each item and the demonstrations they carry."""
        chosen = self._demo_indices(
            len(items), context.human_labeled, context.human_embeddings, context.item_embeddings, context.seed, context.exclude
        )
        out = []
        for e, idx in zip(items, chosen):
            demos = [Demo(d.id, d.text, label, d.text_pair) for d, label in (context.human_labeled[i] for i in idx[::-1])]
            out.append((self._messages(e.text, e.text_pair, demos), demos))
        return out

    # -- scoring -------------------------------------------------------------------------------------
    def score(self, messages: Sequence[list[dict]], progress: Callable[[int], None] | None = None) -> list[Scored]:
        """Scores for each prompt, from the cache where this exact prompt was answered before; a prompt that
        occurs several times (e.g. the content-free prompt of zero-shot calibration) is scored once."""
        labels = self.task.labels
        keys = [cache_key(self.backend.cache_key(), labels, m) for m in messages]
        out: list[Scored | None] = [self.cache.get(k) if self.cache else None for k in keys]
        hits = sum(s is not None for s in out)
        if progress and hits:
            progress(hits)
        todo: dict[str, list[int]] = {}
        for i, s in enumerate(out):
            if s is None:
                todo.setdefault(keys[i], []).append(i)
        unique = list(todo.values())

        def keep(j: int, s: Scored) -> None:
            for i in unique[j]:
                out[i] = s
            if self.cache:
                self.cache.put(keys[unique[j][0]], s)
            if progress and len(unique[j]) > 1:
                progress(len(unique[j]) - 1)

        if unique:
            self.backend.score_items([messages[rows[0]] for rows in unique], labels, progress=progress, on_result=keep)
        self.stats["calls"] += len(unique)
        self.stats["cached"] += hits
        return out  # type: ignore[return-value]  # every None was scored above

    def _calibrated(self, items: Sequence[Example], prompts, scored: list[Scored]) -> tuple[list[np.ndarray | None], list[float]]:
        """Contextual calibration: divide each item's label probabilities by those the model gives the same
        prompt with a content-free input ("N/A"), then renormalise. Also what each item's share of those
        content-free prompts cost (a prompt several items share is paid once, split between them)."""
        probs = [np.exp(s.logprobs) if s.logprobs is not None else None for s in scored]
        if not self.calibrate:
            return probs, [0.0] * len(probs)
        has_pair = items[0].text_pair is not None if items else False
        free = [self._messages(CONTENT_FREE, CONTENT_FREE if has_pair else None, demos) for _, demos in prompts]
        base = self.score(free)
        sharing = Counter(prompt_hash(m) for m in free)
        costs = [self._cost(b) / sharing[prompt_hash(m)] for m, b in zip(free, base)]
        out = []
        for p, b in zip(probs, base):
            if p is None or b.logprobs is None:
                out.append(p)
                continue
            q = p / np.clip(np.exp(b.logprobs), 1e-6, None)
            out.append(q / q.sum())
        return out, costs

    def _cost(self, s: Scored) -> float:
        return self.cost_per_label + (s.prompt_tokens * self.prompt_price + s.completion_tokens * self.completion_price) / 1e6

    def annotate(self, items: Sequence[Example], context: AnnotationContext) -> list[Annotation]:
        prompts = self.prompts(items, context)
        scored = self.score([m for m, _ in prompts], progress=context.progress)
        probs, calibration_costs = self._calibrated(items, prompts, scored)
        out = []
        for e, (messages, demos), s, p, extra in zip(items, prompts, scored, probs, calibration_costs):
            demo_ids = tuple(d.id for d in demos)
            tokens: dict[str, Any] = {"prompt_tokens": s.prompt_tokens or None, "completion_tokens": s.completion_tokens or None}
            self.stats["failed"] += int(not s.ok and not s.unparsed)
            self.stats["unparsed"] += int(s.unparsed)
            if p is None:
                out.append(
                    Annotation(
                        e.id,
                        context.round,
                        "llm",
                        self.name,
                        None,
                        cost=self._cost(s) + extra,
                        prompt_hash=prompt_hash(messages),
                        demo_ids=demo_ids,
                        error=s.error,
                        **tokens,
                    )
                )
                continue
            best = int(np.argmax(p))
            out.append(
                Annotation(
                    e.id,
                    context.round,
                    "llm",
                    self.name,
                    self.task.labels[best],
                    probs={lab: float(x) for lab, x in zip(self.task.labels, p)},
                    confidence=float(p[best]),
                    cost=self._cost(s) + extra,
                    prompt_hash=prompt_hash(messages),
                    demo_ids=demo_ids,
                    method=s.method,
                    **tokens,
                )
            )
        return out
