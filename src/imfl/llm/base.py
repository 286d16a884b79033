"""What every LLM backend returns for one prompt, and the parsing of free-form answers into labels."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

import numpy as np


@dataclass
class Scored:
    """One prompt's outcome. ``logprobs`` is a log-probability for every label (same order as the
    label set), or None when the call failed or the answer named no label (then ``error`` says why:
    ``unparsed: ...`` for an answer outside the label set, anything else for a failed call).
    ``method`` records how the probabilities were obtained: ``loglik`` (a local model scored every
    label), ``logprobs`` (the server's token log-probabilities), ``self-consistency`` (votes over
    several sampled answers)."""

    logprobs: list[float] | None
    method: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    answer: str | None = None
    error: str | None = None
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.logprobs is not None

    @property
    def unparsed(self) -> bool:
        return self.error is not None and self.error.startswith("unparsed")

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "cached"}


class Backend(Protocol):
    name: str

    def score_items(
        self, prompts: Sequence[list[dict[str, str]]], labels: Sequence[str], progress: Callable[[int], None] | None = None
    ) -> list[Scored]: ...

    def cache_key(self) -> dict:
        """Everything besides the prompt that decides the answer (model, decoding parameters)."""


def _norm(s: str) -> str:
    return re.sub(r"[\s_\-]+", " ", s.strip().lower()).strip()


_LEAD = re.compile(r"^(?:the\s+)?(?:final\s+)?(?:answer|label|sentiment|intent|category|class)\s*(?:is)?\s*[:=\-]?\s*", re.I)


def parse_label(answer: str, labels: Sequence[str]) -> str | None:
    """Map a free-form answer to a label: exact, then case- and separator-insensitive, then tolerant
    (a leading "Answer:"/"Label:", quotes and trailing punctuation removed, then exactly one label named
    as a whole word). None when no label is named
    unambiguously: such an answer is recorded as unparsed, never guessed."""
    if answer in labels:
        return answer
    by_norm = {_norm(label): label for label in labels}
    cleaned = _norm(_LEAD.sub("", answer.strip()).strip(" \t\n\"'`*.,;:!()[]{}"))
    if cleaned in by_norm:
        return by_norm[cleaned]
    named = {by_norm[k] for k in by_norm if k and re.search(rf"\b{re.escape(k)}\b", cleaned)}
    # A label inside a longer named label (e.g. "card" in "card arrival") does not count twice.
    named = {n for n in named if not any(n != m and _norm(n) in _norm(m) for m in named)}
    return named.pop() if len(named) == 1 else None


def first_token_probs(top: dict[str, float], labels: Sequence[str]) -> np.ndarray | None:
    """Label probabilities from the answer's first-token alternatives (token → log-probability): each
    token's mass goes to the labels it begins, shared equally when it begins several. None when no
    alternative begins any label."""
    mass = np.zeros(len(labels))
    norms = [_norm(label) for label in labels]
    for token, lp in top.items():
        t = _norm(token)
        if not t:
            continue
        hits = [i for i, n in enumerate(norms) if n.startswith(t)]
        for i in hits:
            mass[i] += np.exp(lp) / len(hits)
    if mass.sum() <= 0:
        return None
    return mass / mass.sum()


def vote_probs(answers: Sequence[str | None], labels: Sequence[str], alpha: float = 0.5) -> np.ndarray | None:
    """Label probabilities from sampled answers (already parsed; None = unparsed), with add-alpha
    smoothing so that no label gets probability 0 from a handful of samples. None when no sample named
    a label."""
    counts = np.array([sum(a == label for a in answers) for label in labels], dtype=float)
    if counts.sum() == 0:
        return None
    return (counts + alpha) / (counts.sum() + alpha * len(labels))
