"""Self-training on pool splits: does adding the student's most confident predictions on unlabeled pool items (no
annotation cost) help a student trained on n labeled pool items? Scored on held-out pool items, never a test file.

    python benchmarks/self_training.py --data ../shared/data/fpb --train 200 --pseudo 200,400 --seeds 0,1,2

Per seed: train on n pool items, predict the unlabeled rest, add k pseudo-labeled items (the most confident per
predicted class, the classes in proportion to the predictions or balanced), train again from the base model, score
both students on the same held-out items. One JSON line per seed and variant.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

from _common import emit
from imfl.config import config_from_dict
from imfl.data import load_dataset
from imfl.loop import make_student
from imfl.pseudo import pseudo_label_pick


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="folder with pool.jsonl")
    ap.add_argument("--train", type=int, default=200, help="labeled pool items")
    ap.add_argument("--held-out", type=int, default=1000, help="pool items to score on (never trained on)")
    ap.add_argument("--pseudo", default="200,400", help="comma-separated numbers of pseudo-labeled items to add")
    ap.add_argument("--modes", default="proportional,balanced", help="how the pseudo-labels are spread over the classes")
    ap.add_argument("--weight", type=float, default=1.0, help="training weight of a pseudo-labeled item (labeled: 1)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="any run setting")
    ap.add_argument("--out", type=Path, default=None, help="append the JSON lines here as well")
    args = ap.parse_args(argv)

    for seed in (int(s) for s in args.seeds.split(",")):
        cfg = config_from_dict(
            {"seed": seed, "data": {"pool": str(args.data / "pool.jsonl")}}, args.overrides, source="benchmark"
        )
        ds = load_dataset(cfg.data)
        labels = list(ds.task.labels)
        pool = list(ds.pool)
        order = np.random.default_rng(seed).permutation(len(pool))
        held = [pool[i] for i in order[: args.held_out]]
        train = [pool[i] for i in order[args.held_out : args.held_out + args.train]]
        rest = [pool[i] for i in order[args.held_out + args.train :]]
        pairs = (lambda rows: [e.text_pair for e in rows]) if ds.task.has_pair else (lambda rows: None)
        gold_held = [labels.index(e.label) for e in held]
        y_train = [labels.index(e.label) for e in train]

        def score(student) -> dict:
            pred = student.predict_proba([e.text for e in held], text_pairs=pairs(held)).argmax(axis=1)
            return {
                "accuracy": round(accuracy_score(gold_held, pred), 4),
                "macro_f1": round(f1_score(gold_held, pred, average="macro"), 4),
            }

        base = make_student(cfg, seed).fit([e.text for e in train], y_train, len(labels), text_pairs=pairs(train))
        common = {"data": args.data.name, "seed": seed, "train": len(train), "held_out": len(held), "overrides": args.overrides}
        emit(common | {"variant": "labels only"} | score(base), args.out)
        proba = base.predict_proba([e.text for e in rest], text_pairs=pairs(rest))
        for mode in args.modes.split(","):
            for k in (int(x) for x in args.pseudo.split(",")):
                pick = pseudo_label_pick(proba, k, mode)
                extra = [rest[i] for i in pick]
                y_extra = proba[pick].argmax(axis=1)
                right = float(np.mean([labels.index(e.label) == y for e, y in zip(extra, y_extra)]))
                student = make_student(cfg, seed).fit(
                    [e.text for e in train + extra],
                    y_train + y_extra.tolist(),
                    len(labels),
                    text_pairs=None if pairs(train) is None else pairs(train) + pairs(extra),
                    sample_weight=[1.0] * len(train) + [args.weight] * len(extra),
                )
                emit(
                    common
                    | {"variant": f"+{k} pseudo ({mode}, weight {args.weight:g})", "pseudo_right": round(right, 4)}
                    | score(student),
                    args.out,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
