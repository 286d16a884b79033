"""FreeAL-style relabeling (`llm.relabel`) on pool splits: the whole loop with a live LLM, with and without
relabeling, at the same budget. Scored on held-out pool items, never a test file.

    python benchmarks/relabel.py --config configs/fpb.toml --relabel 0,50 --seeds 0 --workdir /tmp/relabel \
        --out benchmarks/results/relabel/fpb-smollm2.jsonl

Per seed the pool is split: --held-out items become the run's test file (less any whose text the rest repeats),
the rest its pool. One run per --relabel
value (strategy, budget and LLM from the config), one JSON line each: held-out accuracy (and the human-only
student's), the LLM labels trained on and how many are right, the relabels and how many of them changed, fixed or
broke a label, and the seconds taken; with --out, each run's metrics.json is copied beside it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from _common import emit
from imfl import load_config, run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, required=True, help="a run configuration with a live LLM (local or openai)")
    ap.add_argument("--relabel", default="0,50", help="comma-separated llm.relabel values (0 = without)")
    ap.add_argument("--held-out", type=int, default=1000, help="pool items that become the test file")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--workdir", type=Path, required=True, help="where the split files and run folders go")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="any run setting")
    ap.add_argument("--out", type=Path, default=None, help="append the JSON lines here as well")
    args = ap.parse_args(argv)

    for seed in (int(s) for s in args.seeds.split(",")):
        cfg = load_config(args.config, [*args.overrides, f"seed={seed}"])
        lines = [line for line in Path(cfg.data.pool).read_text(encoding="utf-8").splitlines() if line.strip()]
        order = np.random.default_rng(seed).permutation(len(lines))
        split = args.workdir / f"split-seed{seed}"
        split.mkdir(parents=True, exist_ok=True)
        rows = [json.loads(line) for line in lines]
        rest = sorted(order[args.held_out :])
        seen = {rows[i][cfg.data.text_field] for i in rest}  # a text the pool repeats stays on the pool's side
        held = [i for i in order[: args.held_out] if rows[i][cfg.data.text_field] not in seen]
        (split / "test.jsonl").write_text("".join(lines[i] + "\n" for i in held), encoding="utf-8")
        (split / "pool.jsonl").write_text("".join(lines[i] + "\n" for i in rest), encoding="utf-8")
        gold = {row["id"]: row[cfg.data.label_field] for row in rows}
        for relabel in (int(n) for n in args.relabel.split(",")):
            name = f"relabel{relabel}-seed{seed}"
            variant = load_config(
                args.config,
                [
                    *args.overrides,
                    f"seed={seed}",
                    f"name={name}",
                    f"output_dir={args.workdir}",
                    f"data.pool={split / 'pool.jsonl'}",
                    f"data.test={split / 'test.jsonl'}",
                    f"llm.relabel={relabel}",
                ],
            )
            start = time.perf_counter()
            result = run(variant)
            rows = [json.loads(line) for line in (result.run_dir / "labels.jsonl").read_text().splitlines()]
            human = {r["id"] for r in rows if r["source"] == "human"}
            trained = {r["id"]: r["label"] for r in rows if r["source"] == "llm" and r["id"] not in human}
            final = result.metrics[-1]
            total = {
                key: sum(m.get(key, 0) for m in result.metrics)
                for key in ("llm_relabeled", "llm_relabel_changed", "llm_relabel_right_before", "llm_relabel_right_after")
            }
            emit(
                {
                    "seed": seed,
                    "relabel": relabel,
                    "strategy": variant.strategy,
                    "held_out": len(held),
                    "held_out_accuracy": final["test_accuracy"],
                    "held_out_macro_f1": final["test_macro_f1"],
                    "human_only_accuracy": final.get("human_only", {}).get("test_accuracy"),
                    "human_labels": final["human_total"],
                    "llm_answers": final["llm_total"],
                    "llm_labels_trained": len(trained),
                    "llm_labels_right": sum(label == gold[i] for i, label in trained.items()),
                    **total,
                    "seconds": round(time.perf_counter() - start, 1),
                },
                args.out,
            )
            if args.out:  # every round's metrics beside the JSON lines
                (args.out.parent / f"{args.out.stem}-{name}.metrics.json").write_text(
                    (result.run_dir / "metrics.json").read_text(encoding="utf-8"), encoding="utf-8"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
