"""Does the student read the text, or only guess the label shares? Finished runs' students on their test sets.

A student that answers label k on a share q_k of the test items whatever the text says is right on
sum_k q_k * p_k of them (p_k: the test set's share of label k): that is chance at its own shares. Cohen's kappa
(scikit-learn's ``cohen_kappa_score``) is the test accuracy above that chance, as a share of what is left above it:
0 for a student that guesses, 1 for a perfect one. Two students of equal accuracy can differ completely here: one
that reads, and one that says the majority label more often. This prints, per run, the final student's test
accuracy (checked against the run's own metrics), chance at its shares, kappa, always answering the majority label,
and per label (up to ten) the share of test items the student gives it and its recall.

    python benchmarks/guessing.py 'runs/bench/paper/pubmedqa__*'

Loads each run's saved student (``adapter/``) and predicts its test set, about half a minute per run of 500
PubMedQA items on one core. An unfinished run, or one without a test set, is skipped.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import cohen_kappa_score, recall_score

from _common import run_folders
from imfl.config import load_config
from imfl.data import load_dataset
from imfl.student import Student

MAX_LISTED = 10  # more labels than this (Banking77's 77) are summed up in one phrase instead of listed


def check(run_dir: Path) -> dict | None:
    cfg = load_config(run_dir / "config.toml")
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    if len(metrics) < cfg.budget.rounds or "test_accuracy" not in metrics[-1]:
        return None
    ds = load_dataset(cfg.data)
    labels = ds.task.labels
    pairs = [e.text_pair for e in ds.test] if ds.task.has_pair else None
    proba = Student.load(run_dir / "adapter").predict_proba([e.text for e in ds.test], text_pairs=pairs)
    pred, gold = proba.argmax(axis=1), np.array([labels.index(e.label) for e in ds.test])
    q = np.bincount(pred, minlength=len(labels)) / len(pred)
    p = np.bincount(gold, minlength=len(labels)) / len(gold)
    accuracy = float(np.mean(pred == gold))
    recall = recall_score(gold, pred, labels=range(len(labels)), average=None, zero_division=0)
    return {
        "run": run_dir.name,
        "accuracy": accuracy,
        "recorded": metrics[-1]["test_accuracy"],
        "chance": float(q @ p),
        "kappa": float(cohen_kappa_score(gold, pred)),
        "majority": (labels[int(p.argmax())], float(p.max())),
        "labels": [(label, float(q[k]), float(recall[k])) for k, label in enumerate(labels)],
    }


def main(argv: list[str] | None = None) -> int:
    folders = run_folders(__doc__.split("\n")[0], argv, "adapter")
    if folders is None:
        return 2
    print("| run | test accuracy | chance at its shares | kappa | majority label | per label: share answered, recall |")
    print("|---|---|---|---|---|---|")
    for run_dir in folders:
        row = check(run_dir)
        if row is None:
            continue
        # The saved student is the one the last round scored: a different accuracy means a different test set or model.
        if round(row["accuracy"], 4) != row["recorded"]:
            print(
                f"{run_dir}: the saved student scores {row['accuracy']:.4f} where the run recorded {row['recorded']}",
                file=sys.stderr,
            )
        label, share = row["majority"]
        per_label = (
            ", ".join(f"{name} {q:.2f} / {r:.2f}" for name, q, r in row["labels"])
            if len(row["labels"]) <= MAX_LISTED
            else f"{len(row['labels'])} labels, the most answered on {max(q for _, q, _ in row['labels']):.3f}"
        )
        print(
            f"| {row['run']} | {row['accuracy']:.3f} | {row['chance']:.3f} | {row['kappa']:.3f} "
            f"| {label} {share:.3f} | {per_label} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
