"""A better student from few labels? Student variants trained on n labeled pool items and scored on held-out pool items
(never a test file).

    python benchmarks/few_labels.py --data ../shared/data/fpb --train 200 --seeds 0,1,2 \
        --variant '{}' --variant '{"contrastive_pairs": 1600}' --variant '{"_smooth": 0.1}' --variant '{"_ensemble": 2}' \
        --out benchmarks/results/few-labels/fpb-200.jsonl

With ``--config`` the pool and the student's settings come from a config file instead (e.g. PubMedQA's text pair and
``student.max_length``)::

    python benchmarks/few_labels.py --config configs/pubmedqa.toml --held-out 250 --train 50 --seeds 0,1,2 \
        --out benchmarks/results/few-labels/pubmedqa.jsonl

Besides accuracy and macro-F1, each line has Cohen's kappa (accuracy above the chance of answering at random with
the student's own label shares, as a share of the room above it: 0 for a student that guesses) and how often the
student answers the held-out items' most common label, beside that label's share.

A variant is a JSON object of Student settings (e.g. ``contrastive_pairs``, ``min_steps``), plus two of this script's
own: ``_smooth`` (label smoothing: train towards (1 - s) on the label and s spread over all classes, through
``target_probs``) and ``_ensemble`` (average the probabilities of this many students trained with different seeds).
One thread per training, so runs on a shared machine compare. One JSON line per seed and variant, with the seconds
spent training and predicting.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score

from _common import emit
from imfl.config import config_from_dict, load_config
from imfl.data import load_dataset
from imfl.loop import make_student


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--data", type=Path, help="folder with pool.jsonl (default settings)")
    where.add_argument("--config", type=Path, help="a config file: its pool and its [student] settings")
    ap.add_argument("--train", type=int, default=200, help="labeled pool items")
    ap.add_argument("--held-out", type=int, default=1000, help="pool items to score on (never trained on)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--variant", action="append", default=[], help="a JSON object of Student settings (repeatable)")
    ap.add_argument("--out", type=Path, default=None, help="append the JSON lines here as well")
    args = ap.parse_args(argv)

    variants = [json.loads(v) for v in args.variant or ["{}"]]
    for seed in (int(s) for s in args.seeds.split(",")):
        if args.config:
            cfg = load_config(args.config, [f"seed={seed}"])
        else:
            cfg = config_from_dict({"seed": seed, "data": {"pool": str(args.data / "pool.jsonl")}}, [], source="benchmark")
        ds = load_dataset(cfg.data)
        labels, pool = list(ds.task.labels), list(ds.pool)
        order = np.random.default_rng(seed).permutation(len(pool))
        held = [pool[i] for i in order[: args.held_out]]
        train = [pool[i] for i in order[args.held_out : args.held_out + args.train]]
        pairs = (lambda rows: [e.text_pair for e in rows]) if ds.task.has_pair else (lambda rows: None)
        gold = [labels.index(e.label) for e in held]
        y = [labels.index(e.label) for e in train]
        for variant in variants:
            start, proba = time.time(), 0.0
            for member in range(int(variant.get("_ensemble", 1))):
                student = make_student(cfg, seed + 100 * member)
                student.num_threads = 1
                for key, value in variant.items():
                    if not key.startswith("_"):
                        setattr(student, key, value)
                smooth = float(variant.get("_smooth", 0.0))
                targets = np.eye(len(labels))[y] * (1 - smooth) + smooth / len(labels) if smooth else None
                student.fit([e.text for e in train], y, len(labels), text_pairs=pairs(train), target_probs=targets)
                proba = proba + student.predict_proba([e.text for e in held], text_pairs=pairs(held))
            pred = np.asarray(proba).argmax(axis=1)
            majority = int(np.bincount(gold, minlength=len(labels)).argmax())
            emit(
                {
                    "data": cfg.data.pool.parent.name,
                    "seed": seed,
                    "train": len(train),
                    "held_out": len(held),
                    "variant": variant,
                    "accuracy": round(accuracy_score(gold, pred), 4),
                    "macro_f1": round(f1_score(gold, pred, average="macro"), 4),
                    "kappa": round(cohen_kappa_score(gold, pred), 4),
                    "majority_label": labels[majority],
                    "majority_share": round(float(np.mean(np.asarray(gold) == majority)), 4),
                    "majority_answered": round(float(np.mean(pred == majority)), 4),
                    "seconds": round(time.time() - start, 1),
                },
                args.out,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
