"""Soft targets (distillation) on pool splits: does a student learn more from a live LLM's label probabilities than
from its top label? Scored on held-out pool items, never a test file.

    python benchmarks/soft_targets.py --config configs/fpb.toml --llm-items 400 --seeds 0,1 \
        --out benchmarks/results/soft-targets/fpb-smollm2.jsonl

Per seed the pool is split into held-out items, H "human" items (their gold labels) and LLM items, which the
configured live LLM labels with the run's prompt (demonstrations retrieved from the human items). Three students
score on the held-out items: human labels only, human + the LLM's top labels, human + the LLM's probabilities
(`student.soft_targets`). One JSON line per seed and variant.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

from _common import emit
from imfl.annotators import make_llm
from imfl.annotators.base import AnnotationContext
from imfl.config import load_config
from imfl.data import load_dataset
from imfl.embeddings import Embedder, embedding_input
from imfl.loop import make_student


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, required=True, help="a run configuration with a live LLM (local or openai)")
    ap.add_argument("--human", type=int, default=200, help="human-labeled items (H)")
    ap.add_argument("--llm-items", type=int, default=400, help="items the LLM labels")
    ap.add_argument("--held-out", type=int, default=1000, help="pool items to score on")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="any run setting")
    ap.add_argument("--out", type=Path, default=None, help="append the JSON lines here as well")
    args = ap.parse_args(argv)

    for seed in (int(s) for s in args.seeds.split(",")):
        cfg = load_config(args.config, [*args.overrides, f"seed={seed}"])
        ds = load_dataset(cfg.data)
        task, pool = ds.task, list(ds.pool)
        order = np.random.default_rng(seed).permutation(len(pool))
        held = [pool[i] for i in order[: args.held_out]]
        human = [pool[i] for i in order[args.held_out : args.held_out + args.human]]
        asked = [pool[i] for i in order[args.held_out + args.human : args.held_out + args.human + args.llm_items]]
        embed = Embedder(cache=None)
        vectors = np.asarray(embed.encode([embedding_input(e.text, e.text_pair) for e in human + asked]))
        context = AnnotationContext(
            round=1,
            human_labeled=[(e, e.label) for e in human],
            human_embeddings=vectors[: len(human)],
            item_embeddings=vectors[len(human) :],
            seed=seed * 1000 + 1,
        )
        answers = [a for a in make_llm(cfg, task).annotate(asked, context) if a.ok]
        by_id = {e.id: e for e in asked}
        labeled = [by_id[a.item_id] for a in answers]
        right = float(np.mean([a.label == by_id[a.item_id].label for a in answers]))
        common = {
            "data": cfg.data.pool.parent.name,
            "seed": seed,
            "human": len(human),
            "llm_labels": len(answers),
            "llm_right": round(right, 4),
            "llm_mean_confidence": round(float(np.mean([a.confidence or 0 for a in answers])), 4),
        }
        gold_held = [task.index(e.label) for e in held]
        pairs = (lambda rows: [e.text_pair for e in rows]) if task.has_pair else (lambda rows: None)

        def score(name: str, rows, labels, target_probs=None) -> None:
            student = make_student(cfg, seed).fit(
                [e.text for e in rows], labels, len(task.labels), text_pairs=pairs(rows), target_probs=target_probs
            )
            pred = student.predict_proba([e.text for e in held], text_pairs=pairs(held)).argmax(axis=1)
            emit(
                common
                | {
                    "variant": name,
                    "accuracy": round(accuracy_score(gold_held, pred), 4),
                    "macro_f1": round(f1_score(gold_held, pred, average="macro"), 4),
                },
                args.out,
            )

        y_human = [task.index(e.label) for e in human]
        score("human labels only", human, y_human)
        score("human + LLM top labels", human + labeled, y_human + [task.index(a.label) for a in answers])
        soft = np.full((len(human) + len(answers), len(task.labels)), np.nan)
        soft[len(human) :] = [[a.probs.get(name, 0.0) for name in task.labels] for a in answers]
        score("human + LLM probabilities (soft targets)", human + labeled, y_human + [task.index(a.label) for a in answers], soft)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
