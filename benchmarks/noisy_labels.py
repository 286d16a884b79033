"""Learning from a recorded LLM's noisy labels, on pool splits (never a test file): the student on H human labels and
the LLM's labels of the other pool items, as they are or with the likely-wrong ones dropped.

    python benchmarks/noisy_labels.py --data ../shared/data/banking77 --column llm_gpt4o --variants all,small-loss \
        --seeds 0 --out results/noisy-labels/banking77-gpt4o.jsonl

Per seed the pool is split into held-out items (scored on), H human items (gold labels) and the rest (the LLM's
labels; items it gave none are left out). Variants:
- ``all``: every LLM label;
- ``oracle``: only the right LLM labels (the ceiling of any filter);
- ``small-loss``: a student trained one epoch on everything scores each LLM label; the share with the highest loss is
  dropped (``--drop``, or the LLM's error rate on the human items, as the self-check would measure it) and the
  student is trained again on the rest (networks fit clean labels before noisy ones: Han et al. 2018, Co-teaching).
One JSON line per seed and variant: accuracy and macro-F1 on the held-out items, what was dropped and how much of
it was really wrong.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

from _common import emit, recorded_split
from imfl.config import config_from_dict
from imfl.loop import make_student


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="folder with pool.jsonl")
    ap.add_argument("--column", required=True, help="the pool field with the recorded LLM labels")
    ap.add_argument("--human", type=int, default=200)
    ap.add_argument("--held-out", type=int, default=880)
    ap.add_argument("--variants", default="all,small-loss")
    ap.add_argument(
        "--drop",
        type=float,
        default=None,
        help="small-loss: the share of LLM labels dropped (default: the LLM's error rate on the human-labeled items)",
    )
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="any run setting, e.g. student.num_threads=1")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    cfg = config_from_dict({"data": {"pool": str(args.data / "pool.jsonl")}}, args.overrides, source="benchmark")
    for seed in (int(s) for s in args.seeds.split(",")):
        ds, y, llm, held, human, rest = recorded_split(args.data, args.column, seed, args.held_out, args.human)
        pool, labels = list(ds.pool), list(ds.task.labels)
        pairs = (lambda idx: [pool[i].text_pair for i in idx]) if ds.task.has_pair else (lambda idx: None)  # noqa: B023
        texts = lambda idx: [pool[i].text for i in idx]  # noqa: E731, B023
        right = llm[rest] == y[rest]
        answered = human[llm[human] >= 0]
        error_rate = float(np.mean(llm[answered] != y[answered]))
        common = {
            "data": args.data.name,
            "column": args.column,
            "seed": seed,
            "human": len(human),
            "llm_labeled": len(rest),
            "llm_right": round(float(right.mean()), 4),
            "llm_error_on_human_items": round(error_rate, 4),
            "overrides": args.overrides,
        }

        def train(keep: np.ndarray, epochs: int | None = None):
            idx = np.r_[human, rest[keep]]
            student = make_student(cfg, seed)
            if epochs is not None:
                student.epochs, student.min_steps = epochs, 0
            return student.fit(texts(idx), np.r_[y[human], llm[rest][keep]].tolist(), len(labels), text_pairs=pairs(idx))

        def score(student) -> dict:
            pred = student.predict_proba(texts(held), text_pairs=pairs(held)).argmax(axis=1)
            return {
                "accuracy": round(accuracy_score(y[held], pred), 4),
                "macro_f1": round(f1_score(y[held], pred, average="macro"), 4),
            }

        for variant in args.variants.split(","):
            keep = np.ones(len(rest), dtype=bool)
            extra: dict = {}
            if variant == "oracle":
                keep = right
            elif variant == "small-loss":
                warm = train(keep, epochs=1)
                proba = warm.predict_proba(texts(rest), text_pairs=pairs(rest))
                loss = -np.log(np.clip(proba[np.arange(len(rest)), llm[rest]], 1e-12, None))
                share = error_rate if args.drop is None else args.drop
                keep = loss <= np.quantile(loss, 1 - share)
                extra = {
                    "dropped": int((~keep).sum()),
                    "dropped_wrong": int((~keep & ~right).sum()),
                    "drop_share": round(share, 4),
                }
            elif variant != "all":
                raise SystemExit(f"unknown variant {variant!r}: use all, oracle or small-loss")
            emit(common | {"variant": variant, "kept": int(keep.sum())} | extra | score(train(keep)), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
