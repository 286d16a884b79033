"""How well, and how fast, does an LLM annotator label a dataset given some human-labeled demonstrations?

A seed-fixed sample of ``--humans`` pool items plays the human-labeled set (the demonstration pool); the
annotator then labels ``--eval`` items (the test file, or other pool items) with each demonstration mode,
raw and (with ``--calibrate``) with contextual calibration. One JSON line per setting: accuracy, macro-F1,
expected calibration error, label counts, items/s of fresh (uncached) calls.

    python benchmarks/llm_annotator.py --data ../shared/data/fpb --eval test --humans 200 \
        --demos none,random,retrieved --calibrate --out fpb-llm.jsonl

Several sizes (``--humans 50,100,200``) are nested, as a run's human pool grows: each is the first N items of
the same order, and the same items (outside the largest set) are labeled with each. Does retrieval from a
larger human pool make the LLM better, on the same items?

    python benchmarks/llm_annotator.py --data ../shared/data/banking77 --humans 50,100,200 --n 150 --demos retrieved

The answers go to a fresh answer cache in a temporary folder, so every call is really made; the
calibrated rows reuse the raw rows' answers and pay only for the content-free prompts.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

from _common import emit
from imfl.annotators import AnnotationContext, make_llm
from imfl.config import config_from_dict
from imfl.data import load_dataset
from imfl.embeddings import Embedder, embedding_input
from imfl.fidelity import expected_calibration_error
from imfl.llm.cache import AnswerCache
from imfl.llm.retrieval import nearest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="folder with pool.jsonl and test.jsonl")
    ap.add_argument(
        "--eval", choices=["test", "pool"], default="pool", help="label the test file, or pool items outside the human set"
    )
    ap.add_argument(
        "--humans",
        default="200",
        help="pool items whose gold labels play the human-labeled demonstrations; "
        "several comma-separated sizes are nested, and the items are labeled outside the largest",
    )
    ap.add_argument("--n", type=int, default=None, help="label at most this many items (seed-fixed sample)")
    ap.add_argument(
        "--demos",
        default="none,random,retrieved",
        help="comma-separated: none, random, retrieved, balanced; "
        "nearest = no LLM, the label of the most similar human-labeled item",
    )
    ap.add_argument("--calibrate", action="store_true", help="also report contextual calibration")
    ap.add_argument("--instruction", default="", help="the LLM's instruction ({labels} is replaced); empty = the default")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="any run setting, e.g. llm.dtype=bfloat16")
    ap.add_argument("--out", type=Path, default=None, help="append the JSON lines here as well")
    args = ap.parse_args(argv)
    try:
        sizes = sorted({int(n) for n in args.humans.split(",")})
    except ValueError:
        sizes = [0]
    if sizes[0] < 1:
        print(
            f"--humans {args.humans!r}: give one or more sizes of at least 1, separated by commas, e.g. 50,100,200",
            file=sys.stderr,
        )
        return 2

    settings = {
        "seed": args.seed,
        "data": {"pool": str(args.data / "pool.jsonl"), "test": str(args.data / "test.jsonl"), "instruction": args.instruction},
    }
    cfg = config_from_dict(settings, args.overrides + ["llm.cache=false"], source="benchmark")
    ds = load_dataset(cfg.data)
    rng = np.random.default_rng(args.seed)
    pool = list(ds.pool)
    order = rng.permutation(len(pool))
    if args.eval == "pool" and sizes[-1] >= len(pool):
        print(f"--humans {args.humans!r}: {args.data / 'pool.jsonl'} has {len(pool)} items; leave some to label", file=sys.stderr)
        return 2
    humans = [pool[i] for i in order[: sizes[-1]]]
    items = ds.test if args.eval == "test" else [pool[i] for i in order[sizes[-1] :]]
    if args.n is not None and args.n < len(items):
        items = [items[i] for i in sorted(rng.choice(len(items), size=args.n, replace=False))]
    embedder = Embedder(cfg.embeddings.model, cfg.embeddings.batch_size, cfg.cache_dir)
    emb = embedder.encode([embedding_input(e.text, e.text_pair) for e in humans + items])
    gold = [e.label for e in items]

    with tempfile.TemporaryDirectory() as tmp:
        cache = AnswerCache(Path(tmp) / "answers.sqlite")
        for size, mode in [(n, m) for n in sizes for m in args.demos.split(",")]:
            common = {
                "data": args.data.name,
                "eval": args.eval,
                "n": len(items),
                "humans": size,
                "demos": mode,
                "overrides": args.overrides,
            }
            if mode == "nearest":  # no LLM: each item takes the label of its most similar human-labeled item
                pred = [humans[j].label for j in nearest(emb[len(humans) :], emb[:size], 1)[:, 0]]
                emit(
                    {
                        **common,
                        "annotator": "nearest human label",
                        "k": 1,
                        "calibrate": False,
                        "accuracy": round(accuracy_score(gold, pred), 4),
                        "macro_f1": round(f1_score(gold, pred, labels=list(ds.task.labels), average="macro", zero_division=0), 4),
                        "ece": None,
                        "labeled": len(items),
                        "failed": 0,
                        "predicted": dict(Counter(pred)),
                        "fresh_calls": 0,
                    },
                    args.out,
                )
                continue
            context = AnnotationContext(1, [(e, e.label) for e in humans[:size]], emb[:size], emb[len(humans) :], seed=args.seed)
            for calibrate in [False, True] if args.calibrate else [False]:
                demos, balanced = ("retrieved", True) if mode == "balanced" else (mode, False)
                run_cfg = config_from_dict(
                    settings,
                    args.overrides
                    + [
                        f"llm.demos='{demos}'",
                        f"llm.balanced={str(balanced).lower()}",
                        f"llm.calibrate={str(calibrate).lower()}",
                        "llm.cache=false",
                    ],
                    source="benchmark",
                )
                annotator = make_llm(run_cfg, ds.task)
                annotator.cache = cache
                if hasattr(annotator.backend, "load"):
                    annotator.backend.load()  # loading time is not labeling time
                start = time.perf_counter()
                out = annotator.annotate(items, context)
                seconds = time.perf_counter() - start
                fresh = annotator.stats["calls"]
                ok = [(a, g) for a, g in zip(out, gold) if a.ok]
                pred = [a.label for a, _ in ok]
                truth = [g for _, g in ok]
                conf = np.array([a.confidence for a, _ in ok])
                hit = np.array([p == t for p, t in zip(pred, truth)], dtype=float)
                row = {
                    **common,
                    "annotator": annotator.name,
                    "k": run_cfg.llm.k,
                    "calibrate": calibrate,
                    "accuracy": round(accuracy_score(gold, [a.label for a in out]), 4),
                    "macro_f1": round(f1_score(truth, pred, labels=list(ds.task.labels), average="macro", zero_division=0), 4),
                    "ece": round(expected_calibration_error(conf, hit), 4) if ok else None,
                    "labeled": len(ok),
                    "failed": len(items) - len(ok),
                    "predicted": dict(Counter(pred)),
                    "fresh_calls": fresh,
                    "seconds": round(seconds, 1),
                    "calls_per_s": round(fresh / seconds, 3) if fresh else None,
                }
                emit(row, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
