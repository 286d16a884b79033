"""Annotators: one protocol, ``annotate(items, context) -> list[Annotation]``, and registries that
build them from the configuration. Adding one is a new module plus one line in a registry."""

from __future__ import annotations

from collections.abc import Callable

from imfl.annotators.base import Annotation, AnnotationContext, Annotator
from imfl.annotators.llm import LLMAnnotator
from imfl.annotators.oracle import OracleAnnotator
from imfl.annotators.recorded import RecordedAnnotator
from imfl.config import RunConfig
from imfl.data import Task
from imfl.errors import ConfigError


def _local(cfg: RunConfig, task: Task) -> LLMAnnotator:
    from imfl.llm.local import LocalBackend

    backend = LocalBackend(cfg.llm.model, cache_dir=str(cfg.cache_dir) if cfg.cache_dir else None, max_length=cfg.llm.max_length)
    return LLMAnnotator(backend, task, k=cfg.llm.k, demos=cfg.llm.demos, cost=cfg.llm.cost)


HUMAN_ANNOTATORS: dict[str, Callable[[RunConfig, Task], Annotator]] = {
    "oracle": lambda cfg, task: OracleAnnotator(cost=cfg.human.cost),
}

LLM_ANNOTATORS: dict[str, Callable[[RunConfig, Task], Annotator]] = {
    "local": _local,
    "recorded": lambda cfg, task: RecordedAnnotator(task, cfg.llm.column, cost=cfg.llm.cost),
}


def _make(registry: dict, setting: str, name: str, cfg: RunConfig, task: Task) -> Annotator:
    try:
        factory = registry[name]
    except KeyError:
        raise ConfigError(f"{setting} {name!r} is unknown: use one of {', '.join(registry)}") from None
    return factory(cfg, task)


def make_human(cfg: RunConfig, task: Task) -> Annotator:
    return _make(HUMAN_ANNOTATORS, "human.annotator", cfg.human.annotator, cfg, task)


def make_llm(cfg: RunConfig, task: Task) -> Annotator:
    return _make(LLM_ANNOTATORS, "llm.annotator", cfg.llm.annotator, cfg, task)


__all__ = [
    "Annotation", "AnnotationContext", "Annotator", "HUMAN_ANNOTATORS", "LLM_ANNOTATORS", "LLMAnnotator",
    "OracleAnnotator", "RecordedAnnotator", "make_human", "make_llm",
]
