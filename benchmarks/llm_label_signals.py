"""Which signals tell a recorded LLM's wrong labels apart, and what does dropping them buy? Pool splits only.

    python benchmarks/llm_label_signals.py --data ../shared/data/banking77 --column llm_gpt4o \
        --out results/llm-label-signals/banking77-gpt4o.jsonl

Per seed the pool is split into held-out items (scored on, never trained on), H "human" items (their gold labels) and
the rest, labeled by the LLM's recorded column. A logistic regression on the normalized sentence embeddings stands in
for the student (seconds instead of hours): trained on the human labels alone, on human + every LLM label, on human +
only the right LLM labels (an oracle filter: the ceiling of any filter), and on human + the LLM labels that agree
with the human-only model (its top-k classes) or with the nearest human-labeled item. For each filter: the share of
LLM labels kept, how many of them are right (precision), how many of the right ones are kept (recall).
One JSON line per seed and variant.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

from _common import emit, recorded_split
from imfl.embeddings import Embedder, embedding_input


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="folder with pool.jsonl")
    ap.add_argument("--column", required=True, help="the pool field with the recorded LLM labels")
    ap.add_argument("--human", type=int, default=200, help="human-labeled items (H)")
    ap.add_argument("--held-out", type=int, default=880, help="pool items to score on")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", type=Path, default=None, help="append the JSON lines here as well")
    args = ap.parse_args(argv)

    x = None
    for seed in (int(s) for s in args.seeds.split(",")):
        ds, y, llm, held, human, rest = recorded_split(args.data, args.column, seed, args.held_out, args.human)
        if x is None:  # the cached embeddings of the whole pool
            x = np.asarray(Embedder().encode([embedding_input(e.text, e.text_pair) for e in ds.pool]))
        right = llm[rest] == y[rest]
        common = {
            "data": args.data.name,
            "column": args.column,
            "seed": seed,
            "human": len(human),
            "llm_labeled": len(rest),
            "llm_right": round(float(right.mean()), 4),
        }

        def score(keep: np.ndarray | None, weight: np.ndarray | None = None) -> float:
            idx = human if keep is None else np.r_[human, rest[keep]]
            target = y[human] if keep is None else np.r_[y[human], llm[rest][keep]]
            w = None if weight is None else np.r_[np.ones(len(human)), weight[keep]]
            model = LogisticRegression(C=10.0, max_iter=2000).fit(x[idx], target, sample_weight=w)
            return round(float((model.predict(x[held]) == y[held]).mean()), 4)

        def filtered(name: str, keep: np.ndarray) -> None:
            emit(
                common
                | {
                    "variant": name,
                    "kept": round(float(keep.mean()), 4),
                    "precision": round(float(right[keep].mean()), 4),
                    "recall": round(float((right & keep).sum() / right.sum()), 4),
                    "accuracy": score(keep),
                },
                args.out,
            )

        emit(common | {"variant": "human labels only", "accuracy": score(None)}, args.out)
        emit(common | {"variant": "human + every LLM label", "accuracy": score(np.ones(len(rest), dtype=bool))}, args.out)
        filtered("oracle: only the right LLM labels", right)
        model = LogisticRegression(C=10.0, max_iter=2000).fit(x[human], y[human])
        ranked = model.classes_[np.argsort(-model.predict_proba(x[rest]), axis=1)]
        for k in (1, 3, 10):
            filtered(f"agrees with the human-only model's top {k}", (ranked[:, :k] == llm[rest][:, None]).any(axis=1))
        nearest = y[human][(x[rest] @ x[human].T).argmax(axis=1)]
        filtered("agrees with the nearest human-labeled item", nearest == llm[rest])
        # Per-class reliability: the precision of each LLM label, measured where the LLM also labeled the human items
        # (the fidelity self-check), shrunk towards the LLM's overall accuracy there with a prior worth `strength` items.
        checked = human[llm[human] >= 0]
        overall = float((llm[checked] == y[checked]).mean())
        n_classes = int(max(y.max(), llm.max())) + 1
        said = np.bincount(llm[checked], minlength=n_classes)
        said_right = np.bincount(llm[checked][llm[checked] == y[checked]], minlength=n_classes)
        for strength in (1.0, 4.0):
            precision = (said_right + strength * overall) / (said + strength)
            p_rest = precision[llm[rest]]
            everything = np.ones(len(rest), dtype=bool)
            emit(
                common
                | {
                    "variant": f"weighted by per-class precision (prior {strength:g})",
                    "self_check_accuracy": round(overall, 4),
                    "weight_right": round(float(p_rest[right].mean()), 4),
                    "weight_wrong": round(float(p_rest[~right].mean()), 4),
                    "accuracy": score(everything, p_rest),
                },
                args.out,
            )
            filtered(f"per-class precision >= 0.5 (prior {strength:g})", p_rest >= 0.5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
