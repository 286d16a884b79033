"""Label descriptions and the LLM's accuracy: does a line `label: description` per label in the prompt
(`data.label_descriptions`) change how often the LLM labels right? Measured on pool splits, never a test file.

    python benchmarks/label_descriptions.py --config configs/fpb.toml --items 300 --human 200 --seeds 0,1 \
        --out benchmarks/results/label-descriptions/fpb-smollm2.jsonl

Per seed the pool is split into N held-out items and H "human" items (their gold labels); the configured LLM (for the
bundled SmolLM2: llm.annotator = "local") labels the N items with demonstrations retrieved from the H items (llm.k,
llm.demos), once with the run's prompt and once with the descriptions added, the same demonstrations in both. One
JSON line per seed and variant: accuracy and macro-F1 against the gold labels, n, and the prompt's length in
tokens (a longest prompt over llm.max_length, less the longest label, had demonstrations dropped to fit: then raise
llm.max_length, e.g. --set llm.max_length=4096 for Banking77, whose descriptions add about 1,400 tokens).

The descriptions are the table of --descriptions (default benchmarks/label_descriptions.toml) named by --dataset
(default: the pool's folder name, e.g. fpb or banking77); every label of the pool must have one.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
from pydantic import ValidationError
from sklearn.metrics import accuracy_score, f1_score

from _common import emit
from imfl.annotators import make_llm
from imfl.annotators.base import AnnotationContext
from imfl.config import DataConfig, load_config, read_toml
from imfl.data import load_dataset
from imfl.embeddings import Embedder, embedding_input
from imfl.errors import ImflError

HERE = Path(__file__).resolve().parent


def descriptions_for(path: Path, dataset: str, labels: tuple[str, ...]) -> dict[str, str]:
    """The dataset's table of ``path``, checked as data.label_descriptions is, and complete for ``labels``."""
    tables = read_toml(path, "descriptions file", "pass a TOML file with one table of label descriptions per dataset")
    if dataset not in tables or not isinstance(tables[dataset], dict):
        raise ImflError(f"{path}: no table [{dataset}]; name one of {', '.join(tables)} with --dataset, or add it")
    table = tables[dataset]
    try:
        DataConfig(pool=Path("-"), labels=list(labels), label_descriptions=table)
    except ValidationError as exc:  # the first problem, on one line
        raise ImflError(f"{path} [{dataset}]: {exc.errors()[0]['msg'].removeprefix('Value error, ')}") from None
    if missing := [label for label in labels if label not in table]:
        raise ImflError(f"{path} [{dataset}]: no description for {missing[0]!r} ({len(missing)} missing): describe every label")
    return table


def prompt_tokens(annotator, items, context, answers) -> list[int]:
    """Each prompt's length in tokens, before any demonstration is dropped to fit llm.max_length: as an OpenAI-compatible
    server reported it, or for the local model by rendering the prompt with its chat template (its internal helper)."""
    if any(a.prompt_tokens for a in answers):
        return [a.prompt_tokens for a in answers if a.prompt_tokens]
    render = getattr(annotator.backend, "_render", None)
    if render is None or getattr(annotator.backend, "_tokenizer", None) is None:
        return []
    return [len(render(messages)) for messages, _ in annotator.prompts(items, context)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, required=True, help="a run configuration with a live LLM (local or openai)")
    ap.add_argument("--items", type=int, default=300, help="held-out pool items the LLM labels (N)")
    ap.add_argument("--human", type=int, default=200, help="pool items the demonstrations are retrieved from (H)")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--dataset", default=None, help="the table of --descriptions to use (default: the pool's folder name)")
    ap.add_argument("--descriptions", type=Path, default=HERE / "label_descriptions.toml")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="any run setting")
    ap.add_argument("--out", type=Path, default=None, help="append the JSON lines here as well")
    args = ap.parse_args(argv)

    try:
        for seed in (int(s) for s in args.seeds.split(",")):
            cfg = load_config(args.config, [*args.overrides, f"seed={seed}"])
            if cfg.llm.annotator not in ("local", "openai"):
                raise ImflError(
                    f"{args.config}: llm.annotator is {cfg.llm.annotator!r}; this measures a live LLM (local or openai)"
                )
            # the pool only (the test file is not even read); the descriptions are the two variants, not the config's
            cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"test": None, "label_descriptions": {}})})
            ds = load_dataset(cfg.data)
            task, pool = ds.task, list(ds.pool)
            dataset = args.dataset or cfg.data.pool.parent.name
            described = descriptions_for(args.descriptions, dataset, task.labels)
            if args.items + args.human > len(pool):
                raise ImflError(f"--items {args.items} + --human {args.human} is more than the pool's {len(pool)} items")
            order = np.random.default_rng(seed).permutation(len(pool))
            held = [pool[i] for i in order[: args.items]]
            human = [pool[i] for i in order[args.items : args.items + args.human]]
            vectors = np.asarray(Embedder(cache=None).encode([embedding_input(e.text, e.text_pair) for e in human + held]))
            context = AnnotationContext(
                round=1,
                human_labeled=[(e, e.label) for e in human],
                human_embeddings=vectors[: len(human)],
                item_embeddings=vectors[len(human) :],
                seed=seed * 1000 + 1,
            )
            annotator = make_llm(cfg, task)  # one model for both variants: only the task's descriptions change
            for variant, descriptions in (("without descriptions", {}), ("with descriptions", described)):
                annotator.task = dataclasses.replace(task, descriptions=descriptions)
                start = time.perf_counter()
                answers = annotator.annotate(held, context)
                seconds = time.perf_counter() - start
                gold = [e.label for e in held]
                given = [a.label or "" for a in answers]  # a failed call counts as wrong
                tokens = prompt_tokens(annotator, held, context, answers)
                emit(
                    {
                        "data": dataset,
                        "llm": annotator.name,
                        "seed": seed,
                        "variant": variant,
                        "n": len(held),
                        "human": len(human),
                        "k": cfg.llm.k,
                        "accuracy": round(accuracy_score(gold, given), 4),
                        "macro_f1": round(f1_score(gold, given, labels=list(task.labels), average="macro", zero_division=0), 4),
                        "failed": sum(not a.ok for a in answers),
                        "prompt_tokens_mean": round(float(np.mean(tokens)), 1) if tokens else None,
                        "prompt_tokens_max": max(tokens) if tokens else None,
                        "max_length": cfg.llm.max_length,
                        "seconds": round(seconds, 1),
                    },
                    args.out,
                )
    except ImflError as exc:
        print(f"label_descriptions.py: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
