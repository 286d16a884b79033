"""Can the student's base tell the labels apart at all? A linear probe on its frozen embeddings, with gold labels.

A strategy can only beat another through its student. If a logistic regression on the frozen sentence embeddings
(the same embeddings the query clusters) stays at chance even with every gold label of the pool, then the
strategies of a grid on that dataset can differ only in the label shares their students learn, not in how well
their students read. This fits such a probe on random gold subsets of the pool (H and 5H items of each config's
budget, 3 seeds each) and on the whole pool, and prints its accuracy on the test set, macro-F1 and Cohen's kappa beside
always answering the majority label. The regularisation C is chosen once per dataset by 5-fold cross-validated log loss
on the whole pool, never on the test set. A last row shows how much the embeddings say at best: the out-of-fold
predictions on the pool of the C with the highest kappa (again without the test set). A fine-tuned student can do better
than a frozen probe, so this is a floor on what the base can read and no bound on the student.

    python benchmarks/ceiling.py configs/pubmedqa.toml configs/fpb.toml configs/banking77.toml

With ``--out FILE`` it also writes the rows as one JSON file, with the command that made them (the committed one:
``benchmarks/results/ceilings/linear-probe.json``). Embeds each pool and test set once (through the embedding cache):
about a minute for PubMedQA's 1,000 abstracts.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score, log_loss
from sklearn.model_selection import cross_val_predict

from imfl.config import load_config
from imfl.data import load_dataset
from imfl.embeddings import Embedder, embedding_input
from imfl.errors import ImflError

SEEDS = (0, 1, 2)
CS = (0.01, 0.1, 1.0, 10.0, 100.0)


def scores(gold: np.ndarray, pred: np.ndarray) -> tuple[float, float, float]:
    return accuracy_score(gold, pred), f1_score(gold, pred, average="macro"), cohen_kappa_score(gold, pred)


def summary(runs: list[tuple[float, float, float]]) -> dict:
    """One or more runs' scores: their mean, and the sample std when there are several."""
    runs = np.array(runs)
    out: dict = {"runs": len(runs)}
    for i, name in enumerate(("accuracy", "macro_f1", "kappa")):
        out[name] = float(runs[:, i].mean())
        out[f"{name}_std"] = float(runs[:, i].std(ddof=1)) if len(runs) > 1 else None
    return out


def cells(row: dict) -> str:
    """The table cells of a summary: the mean, with ± the sample std when there are several runs."""
    out = []
    for name in ("accuracy", "macro_f1", "kappa"):
        cell = f"{row[name]:.3f}"
        out.append(cell if row[f"{name}_std"] is None else f"{cell} ± {row[f'{name}_std']:.3f}")
    return " | ".join(out)


def probe(config: str) -> list[dict]:
    cfg = load_config(config)
    ds = load_dataset(cfg.data)
    if not ds.test or any(e.label is None for e in ds.pool):
        raise ImflError(f"{config}: the probe needs a gold label on every pool item and a test set")
    embedder = Embedder(cfg.embeddings.model, cfg.embeddings.batch_size, cfg.cache_dir)
    X, X_test = (embedder.encode([embedding_input(e.text, e.text_pair) for e in items]) for items in (ds.pool, ds.test))
    y, y_test = np.array([e.label for e in ds.pool]), np.array([e.label for e in ds.test])
    # C by log loss out of fold on the pool; and, to show how much the embeddings say at best, the out-of-fold
    # pool predictions of the C that reads the most (highest kappa): neither looks at the test set.
    folds = {c: cross_val_predict(LogisticRegression(C=c, max_iter=3000), X, y, cv=5, method="predict_proba") for c in CS}
    classes = np.unique(y)
    C = min(CS, key=lambda c: log_loss(y, folds[c], labels=classes))
    oof = {c: scores(y, classes[folds[c].argmax(axis=1)]) for c in CS}
    best = max(CS, key=lambda c: oof[c][2])
    labels, counts = np.unique(y_test, return_counts=True)
    majority = labels[counts.argmax()]
    rows = [{"dataset": cfg.name, "answers": f"always {majority}"} | summary([scores(y_test, np.full_like(y_test, majority))])]
    for n in (cfg.budget.human, cfg.budget.total, len(y)):
        seeds = SEEDS if n < len(y) else SEEDS[:1]  # the whole pool is the same subset at every seed
        subsets = [np.random.default_rng(seed).permutation(len(y))[:n] for seed in seeds]
        runs = [
            scores(y_test, LogisticRegression(C=C, max_iter=3000).fit(X[rows_n], y[rows_n]).predict(X_test)) for rows_n in subsets
        ]
        answers = f"probe, {n} gold labels{' (whole pool)' if n == len(y) else ''}, C={C:g}"
        rows.append({"dataset": cfg.name, "answers": answers, "gold_labels": n, "C": C, "seeds": list(seeds)} | summary(runs))
    answers = f"probe, out of fold on the pool (5-fold), C={best:g} (most kappa)"
    rows.append({"dataset": cfg.name, "answers": answers, "gold_labels": len(y), "C": best} | summary([oof[best]]))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("configs", nargs="+", help="run configs (imfl run TOML) whose pool and test set to probe")
    ap.add_argument("--out", type=Path, default=None, help="also write the rows as one JSON file, with this command")
    args = ap.parse_args(argv)
    command = shlex.join(["python", "benchmarks/ceiling.py", *(sys.argv[1:] if argv is None else argv)])
    print("| dataset | answers | accuracy | macro-F1 | kappa |")
    print("|---|---|---|---|---|")
    done: list[dict] = []
    for config in args.configs:
        try:
            rows = probe(config)
        except ImflError as e:
            print(e, file=sys.stderr)
            return 2
        print("\n".join(f"| {row['dataset']} | {row['answers']} | {cells(row)} |" for row in rows), flush=True)
        done += [{"config": config} | {k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()} for row in rows]
    if args.out:
        what = (
            "A logistic regression on the frozen sentence embeddings with gold pool labels, scored on each config's test "
            "set: H, budget-sized (3 seeds: mean and sample std) and whole-pool subsets at the C of least 5-fold log "
            "loss on the pool; then the out-of-fold pool score of the C with the most kappa; and always the majority label."
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"what": what, "command": command, "Cs": list(CS), "rows": done}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
