"""Speed and accuracy of the student: train on n pool items, predict and score on other pool items.

    python benchmarks/student.py --data ../shared/data/fpb --train 200,1000 --held-out 1000 \
        --set student.train_dtype=bfloat16 --set student.predict_dtype=bfloat16

One JSON line per training size: settings, training items/s (item-passes: epochs x items, per second),
prediction items/s, accuracy and macro-F1 on the held-out pool items (never the test file: this is for
choosing settings).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

from _common import emit
from imfl.config import config_from_dict
from imfl.data import load_dataset
from imfl.loop import make_student


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="folder with pool.jsonl")
    ap.add_argument("--train", default="200,1000", help="comma-separated training-set sizes")
    ap.add_argument("--held-out", type=int, default=1000, help="pool items to score on (disjoint from every training set)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--set", dest="overrides", action="append", default=[], help="any run setting, e.g. student.train_dtype=bfloat16"
    )
    ap.add_argument("--out", type=Path, default=None, help="append the JSON lines here as well")
    args = ap.parse_args(argv)

    cfg = config_from_dict(
        {"seed": args.seed, "data": {"pool": str(args.data / "pool.jsonl")}}, args.overrides, source="benchmark"
    )
    ds = load_dataset(cfg.data)
    labels = list(ds.task.labels)
    pool = list(ds.pool)
    order = np.random.default_rng(args.seed).permutation(len(pool))
    held = [pool[i] for i in order[: args.held_out]]
    pairs = (lambda rows: [e.text_pair for e in rows]) if ds.task.has_pair else (lambda rows: None)
    for n in (int(x) for x in args.train.split(",")):
        train = [pool[i] for i in order[args.held_out : args.held_out + n]]
        student = make_student(cfg, args.seed)
        start = time.perf_counter()
        student.fit([e.text for e in train], [labels.index(e.label) for e in train], len(labels), text_pairs=pairs(train))
        fit_s = time.perf_counter() - start
        start = time.perf_counter()
        pred = student.predict_proba([e.text for e in held], text_pairs=pairs(held)).argmax(axis=1)
        pred_s = time.perf_counter() - start
        gold = [labels.index(e.label) for e in held]
        row = {
            "data": args.data.name,
            "train": len(train),
            "held_out": len(held),
            "overrides": args.overrides,
            "epochs": student.epochs_run_,
            "fit_seconds": round(fit_s, 1),
            "train_items_per_s": round(student.epochs_run_ * len(train) / fit_s, 1),
            "predict_items_per_s": round(len(held) / pred_s, 1),
            "accuracy": round(accuracy_score(gold, pred), 4),
            "macro_f1": round(f1_score(gold, pred, average="macro"), 4),
        }
        emit(row, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
