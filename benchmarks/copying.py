"""Does the LLM add anything to its demonstrations? Its labels against copying its most similar demonstration's.

With retrieved demonstrations the LLM's prompt holds the k human-labeled items most similar to the item (by the
embedder's cosine similarity), the most similar last. A weak LLM may do little more than echo them. Over the LLM
labels of each finished run that came with demonstrations, this prints: how often the LLM's label is one of its
demonstrations' labels, and how often the most similar one's; the LLM's accuracy; the accuracy of copying the most
similar demonstration's label instead (a 1-nearest-neighbour rule on the human labels); and how often the right
label was among the demonstrations at all. With random demonstrations, "most similar" is just the last one shown.

    python benchmarks/copying.py 'runs/bench/paper/banking77__smollm2__*'

Reads run folders only (the store's annotations, their demonstration ids and the items' gold labels; no model runs).
An unfinished run, or one whose LLM labels had no demonstrations, is skipped.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from _common import run_folders
from imfl.config import load_config
from imfl.store import Store


def check(run_dir: Path) -> dict | None:
    cfg = load_config(run_dir / "config.toml")
    if len(json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))) < cfg.budget.rounds:
        return None
    with Store.open(run_dir / "store.sqlite") as store:
        human = {a.item_id: a.label for a in store.annotations(source="human")}
        llm = [a for a in store.annotations(source="llm") if a.demo_ids]
        gold = {e.id: e.label for e in store.examples([a.item_id for a in llm])}
    if not llm:
        return None
    n = len(llm)

    def share(test) -> float:
        return round(sum(bool(test(a, [human[i] for i in a.demo_ids])) for a in llm) / n, 4)

    return {
        "run": run_dir.name,
        "demos": cfg.llm.demos,
        "labels": n,
        "among_demos": share(lambda a, d: a.label in d),
        "as_nearest": share(lambda a, d: a.label == d[-1]),
        "llm": share(lambda a, d: a.label == gold[a.item_id]),
        "copy_nearest": share(lambda a, d: d[-1] == gold[a.item_id]),
        "right_among_demos": share(lambda a, d: gold[a.item_id] in d),
    }


def main(argv: list[str] | None = None) -> int:
    folders = run_folders(__doc__.split("\n")[0], argv, "state")
    if folders is None:
        return 2
    print(
        "| run | demos | LLM labels | label among its demos' | = most similar demo's | LLM right | copying the most "
        "similar demo right | right label among the demos |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for run_dir in folders:
        row = check(run_dir)
        if row:
            print(
                f"| {row['run']} | {row['demos']} | {row['labels']} | {row['among_demos']:.3f} | {row['as_nearest']:.3f} | "
                f"{row['llm']:.3f} | {row['copy_nearest']:.3f} | {row['right_among_demos']:.3f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
