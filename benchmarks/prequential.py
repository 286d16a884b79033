"""Is the LLM better than the student where it is asked? The student against the LLM on the same items, from runs.

The adaptive human share of fidelity-aware IMFL buys LLM labels while the LLM measures at least as good as the
student. Its student figure is a stand-in (a logistic regression on the embeddings, out-of-fold on the human
labels), because fine-tuning a student per fold costs too much. The real student can be checked afterwards: the
student of round t-1 saved its probabilities for the pool (``state/proba_round<t-1>.npz``) before round t's human
labels existed, so its accuracy on them is an honest held-out score (``prequential_accuracy``, which runs now
record in their metrics; this script computes it for run folders written before that). Those are the items the
query found most uncertain, and the LLM's self-check probes the same items: this prints, per run, the student and the
LLM on the human items of rounds 2 to the end that the LLM was probed on, and the stand-in's own figure.

    python benchmarks/prequential.py 'runs/bench/paper/banking77__*__fidelity__seed*'

Reads run folders only (no model runs); an unfinished run, or one without fidelity state (no self-check), is skipped.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from _common import run_folders
from imfl.config import load_config
from imfl.data import load_dataset
from imfl.loop import prequential_accuracy


def check(run_dir: Path, labels: tuple[str, ...], last_round: int) -> dict | None:
    state = run_dir / "state"
    rounds = sorted(int(p.stem.removeprefix("fidelity_round")) for p in state.glob("fidelity_round*.json"))
    if len(rounds) < 2 or len(json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))) < last_round:
        return None
    saved = [json.loads(line) for line in (run_dir / "labels.jsonl").open(encoding="utf-8")]
    student_right = llm_right = n = 0
    stand_in = []
    for t in rounds[1:]:
        fid = json.loads((state / f"fidelity_round{t}.json").read_text(encoding="utf-8"))
        stand_in.append((fid.get("student") or {}).get("accuracy"))
        asked = {p["id"]: p["label"] for p in fid["probe"] if p["label"] is not None}
        new = {r["id"]: r["label"] for r in saved if r["source"] == "human" and r["round"] == t and r["id"] in asked}
        before = np.load(state / f"proba_round{t - 1}.npz")
        scored, accuracy = prequential_accuracy(before["ids"].tolist(), before["proba"], new, labels)
        if scored:
            n += scored
            student_right += accuracy * scored
            llm_right += sum(asked[i] == y for i, y in new.items())
    if not n:
        return None
    known = [a for a in stand_in if a is not None]
    return {
        "run": run_dir.name,
        "items": n,
        "student": round(student_right / n, 4),
        "llm": round(llm_right / n, 4),
        "stand_in": (round(min(known), 4), round(max(known), 4)) if known else None,
    }


def main(argv: list[str] | None = None) -> int:
    folders = run_folders(__doc__.split("\n")[0], argv, "state")
    if folders is None:
        return 2
    labels_of: dict[str, tuple[str, ...]] = {}
    print("| run | items (rounds 2+) | student (previous round) | LLM | stand-in, rounds 2+ |")
    print("|---|---|---|---|---|")
    for run_dir in folders:
        cfg = load_config(run_dir / "config.toml")
        if cfg.data.pool not in labels_of:
            labels_of[cfg.data.pool] = load_dataset(cfg.data).task.labels
        row = check(run_dir, labels_of[cfg.data.pool], cfg.budget.rounds)
        if row:
            lo, hi = row["stand_in"] or (None, None)
            print(f"| {row['run']} | {row['items']} | {row['student']:.3f} | {row['llm']:.3f} | {lo}-{hi} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
