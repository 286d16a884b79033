"""What kind of annotator is each recorded LLM? Its errors, set beside those of the simulated LLM at the same accuracy.

The simulated LLM (``llm.annotator = "simulated"``) is wrong with the same probability on every item and spreads its
wrong labels evenly over the other labels. A real LLM need not: its errors may pile onto one label (a skewed answer
distribution), onto a few label pairs (label-name confusions), onto the items other annotators also get wrong
(errors that follow difficulty), or be no answer at all (``null``). For every ``llm_*`` column of a pool file, one
JSON line with:

- ``accuracy`` (no answer counts as wrong, as in the ladder) and ``no_answer`` (share of nulls);
- ``answer_skew``: total variation distance between the distribution of its answers and that of the gold labels,
  and ``answer_skew_simulated``, the same for the simulated LLM at its accuracy (expected value); ``top_answer``
  with its share of the answers and of the gold labels;
- ``top_confusions``: the most frequent (gold, answer) pairs among its errors, with their share of all errors,
  and ``top_confusion_share_simulated``, the largest share any pair can expect under the simulated LLM;
- ``recall``: accuracy per gold label (the lowest five when there are more than five labels), and
  ``labels_never_right``, the gold labels it gets right on no item (label-name confusions show here);
- ``difficulty_lift``: how much likelier it is to be wrong where the other annotators (the other ``llm_*`` columns,
  and ``annot_*`` experts where the file has them) are wrong: P(wrong | another is wrong) / P(wrong | it is right),
  per other annotator. 1.0 means independent errors, as the simulated LLM's are.

    python benchmarks/annotators.py ../shared/data/fpb_recorded/pool.jsonl ../shared/data/banking77/pool.jsonl \
        ../shared/data/pubmedqa/pool.jsonl --markdown

Reads the pool files only (no model runs); ``--markdown`` prints a table per file after the JSON lines.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from _common import emit
from imfl.annotators.simulated import confusion_matrix
from imfl.data import read_rows
from imfl.errors import ImflError


def _distribution(values: list[str], labels: list[str]) -> np.ndarray:
    counts = Counter(values)
    total = max(1, sum(counts[label] for label in labels))
    return np.array([counts[label] / total for label in labels])


def simulated_answers(gold: np.ndarray, accuracy: float) -> np.ndarray:
    """Expected distribution of the simulated LLM's answers, from the confusion matrix it draws them with."""
    return gold @ confusion_matrix(len(gold), accuracy)


def _tv(p: np.ndarray, q: np.ndarray) -> float:
    return float(0.5 * np.abs(p - q).sum())


def profile(rows: list[dict], column: str, others: list[str], labels: list[str]) -> dict:
    """The profile of one recorded annotator (see the module docstring) over ``rows`` with a gold ``label``."""
    gold = [r["label"] for r in rows]
    given = [r.get(column) for r in rows]
    right = np.array([g == a for g, a in zip(gold, given)])
    wrong = ~right
    answered = [a for a in given if a is not None]
    accuracy = float(right.mean())
    p_gold, p_given = _distribution(gold, labels), _distribution(answered, labels)
    top = Counter(answered).most_common(1)[0][0] if answered else None
    errors = Counter((g, a) for g, a in zip(gold, given) if a is not None and g != a)
    n_errors = max(1, int(wrong.sum()))
    # Under the simulated LLM the pair (g, a) gets P(g) (1 - acc) / (k - 1) of the items, i.e. P(g) / (k - 1) of its errors.
    sim_top = float(p_gold.max() / max(1, len(labels) - 1))
    gold_array = np.array(gold)
    by_label = {label: float(right[gold_array == label].mean()) for label in labels if (gold_array == label).any()}
    recall = dict(sorted(by_label.items(), key=lambda kv: kv[1])[:5]) if len(labels) > 5 else by_label
    lift = {}
    for other in others:
        other_wrong = np.array([r.get(other) != r["label"] for r in rows])
        if other_wrong.all() or not other_wrong.any():
            continue
        lift[other] = round(float(wrong[other_wrong].mean() / max(wrong[~other_wrong].mean(), 1e-9)), 2)
    return {
        "annotator": column,
        "items": len(rows),
        "accuracy": round(accuracy, 4),
        "no_answer": round(1 - len(answered) / len(rows), 4),
        "answer_skew": round(_tv(p_given, p_gold), 3),
        "answer_skew_simulated": round(_tv(simulated_answers(p_gold, accuracy), p_gold), 3),
        "top_answer": top,
        "top_answer_share": round(float(p_given[labels.index(top)]), 3) if top in labels else None,
        "top_answer_gold_share": round(float(p_gold[labels.index(top)]), 3) if top in labels else None,
        "top_confusions": [[g, a, n, round(n / n_errors, 3)] for (g, a), n in errors.most_common(3)],
        "top_confusion_share_simulated": round(sim_top, 5),
        "recall": {k: round(v, 3) for k, v in recall.items()},
        "labels_never_right": sorted(k for k, v in by_label.items() if v == 0),
        "difficulty_lift": lift,
    }


def profiles(path: Path) -> list[dict]:
    rows = [row for _, row in read_rows(path, "pool") if row.get("label") is not None]
    if not rows:
        raise ImflError(f"{path}: no row has a gold label; pass a pool file with a `label` field")
    columns = sorted({k for r in rows for k in r if k.startswith("llm_")})
    if not columns:
        raise ImflError(f"{path}: no llm_* column; pass a pool file with recorded LLM labels (see ../shared/data/README.md)")
    experts = sorted({k for r in rows for k in r if k.startswith("annot_")})
    labels = sorted({r["label"] for r in rows})
    out = []
    for column in columns:
        row = profile(rows, column, [c for c in columns if c != column] + experts, labels)
        row["file"] = str(path)
        out.append(row)
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.2g}%"


def markdown(rows: list[dict]) -> str:
    head = (
        "| annotator | accuracy | no answer | answer skew (simulated) | top answer: share (gold share) "
        "| top confusion: share of errors (simulated) | labels never right | error lift where another errs (simulated: 1) |"
    )
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        conf = r["top_confusions"][0] if r["top_confusions"] else None
        conf_text = f"{conf[0]} → {conf[1]}: {_pct(conf[3])}" if conf else "–"
        lift = (
            ", ".join(f"{k.removeprefix('llm_').removeprefix('annot_')} {v:.1f}" for k, v in r["difficulty_lift"].items()) or "–"
        )
        lines.append(
            f"| {r['annotator'].removeprefix('llm_')} | {r['accuracy']:.3f} | {_pct(r['no_answer'])} "
            f"| {r['answer_skew']:.2f} ({r['answer_skew_simulated']:.2f}) "
            f"| {r['top_answer']}: {_pct(r['top_answer_share'])} ({_pct(r['top_answer_gold_share'])}) "
            f"| {conf_text} ({_pct(r['top_confusion_share_simulated'])}) | {len(r['labels_never_right'])} | {lift} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pools", type=Path, nargs="+", help="pool files with a gold `label` and llm_* columns")
    ap.add_argument("--out", type=Path, help="also append the JSON lines to this file")
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table per file after the JSON lines")
    args = ap.parse_args(argv)
    try:
        tables = []
        for path in args.pools:
            rows = profiles(path)
            for row in rows:
                emit(row, args.out)
            tables.append(f"\n{path}\n\n{markdown(rows)}")
    except ImflError as exc:
        print(f"annotators.py: error: {exc}", file=sys.stderr)
        return 2
    if args.markdown:
        print("\n".join(tables))
    return 0


if __name__ == "__main__":
    sys.exit(main())
