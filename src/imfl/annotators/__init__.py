"""Annotators: one protocol, ``annotate(items, context) -> list[Annotation]``, and registries that
build them from the configuration. Adding one is a new module plus one line in a registry."""

from __future__ import annotations

import os
from collections.abc import Callable

from imfl.annotators.base import Annotation, AnnotationContext, Annotator
from imfl.annotators.interactive import PeopleAnnotator
from imfl.annotators.llm import LLMAnnotator
from imfl.annotators.oracle import OracleAnnotator
from imfl.annotators.recorded import RecordedAnnotator
from imfl.annotators.simulated import SimulatedAnnotator
from imfl.config import RunConfig
from imfl.data import Task
from imfl.errors import ConfigError
from imfl.llm.cache import AnswerCache
from imfl.paths import cache_dir


def _with_backend(cfg: RunConfig, task: Task, backend) -> LLMAnnotator:
    c = cfg.llm
    cache = AnswerCache(cache_dir(cfg.cache_dir) / "llm-answers.sqlite") if c.cache else None
    return LLMAnnotator(
        backend,
        task,
        k=c.k,
        demos=c.demos,
        balanced=c.balanced,
        calibrate=c.calibrate,
        cost_per_label=c.cost,
        prompt_price=c.prompt_price,
        completion_price=c.completion_price,
        cache=cache,
    )


def _local(cfg: RunConfig, task: Task) -> LLMAnnotator:
    from imfl.llm.local import LocalBackend

    backend = LocalBackend(
        cfg.llm.model, cache_dir=str(cache_dir(cfg.cache_dir)), max_length=cfg.llm.max_length, dtype=cfg.llm.dtype
    )
    return _with_backend(cfg, task, backend)


def _openai(cfg: RunConfig, task: Task) -> LLMAnnotator:
    from imfl.llm.openai_backend import OpenAIBackend

    c = cfg.llm
    key = c.api_key.get_secret_value() if c.api_key else os.environ.get(c.api_key_env)
    assert c.base_url is not None and c.model is not None  # RunConfig requires both for llm.annotator = "openai"
    backend = OpenAIBackend(
        c.base_url,
        c.model,
        key,
        samples=c.samples,
        temperature=c.temperature,
        logprobs=c.logprobs,
        max_tokens=c.max_tokens,
        timeout=c.timeout,
        max_retries=c.max_retries,
        max_concurrency=c.max_concurrency,
        seed=cfg.seed,
        endpoint=c.endpoint,
    )
    return _with_backend(cfg, task, backend)


def _simulated(cfg: RunConfig, task: Task) -> SimulatedAnnotator:
    assert cfg.llm.accuracy is not None  # RunConfig requires it for llm.annotator = "simulated"
    return SimulatedAnnotator(task, cfg.llm.accuracy, seed=cfg.seed, cost=cfg.llm.cost)


HUMAN_ANNOTATORS: dict[str, Callable[[RunConfig, Task], Annotator]] = {
    "oracle": lambda cfg, task: OracleAnnotator(cost=cfg.human.cost),
    "people": lambda cfg, task: PeopleAnnotator(cost=cfg.human.cost),
}

LLM_ANNOTATORS: dict[str, Callable[[RunConfig, Task], Annotator]] = {
    "local": _local,
    "openai": _openai,
    "recorded": lambda cfg, task: RecordedAnnotator(task, cfg.llm.column, cost=cfg.llm.cost, file=cfg.llm.file),
    "simulated": _simulated,
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
    "Annotation",
    "AnnotationContext",
    "Annotator",
    "HUMAN_ANNOTATORS",
    "LLM_ANNOTATORS",
    "LLMAnnotator",
    "OracleAnnotator",
    "PeopleAnnotator",
    "RecordedAnnotator",
    "SimulatedAnnotator",
    "make_human",
    "make_llm",
]
