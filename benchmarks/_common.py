"""What the benchmark scripts share: one JSON line per result, on stdout and appended to a file; run folders named
by glob patterns."""

import argparse
import glob
import json
import sys
from pathlib import Path

import numpy as np


def emit(row: dict, out: Path | None) -> None:
    line = json.dumps(row)
    print(line, flush=True)
    if out:
        with out.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")


def run_folders(description: str, argv: list[str] | None, holding: str) -> list[Path] | None:
    """The run folders (of `imfl bench` work folders) that the command line's patterns name and that hold
    ``holding``, sorted; None, after one line on stderr, when there are none."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("runs", nargs="+", help="run folders or glob patterns (of `imfl bench` work folders)")
    patterns = ap.parse_args(argv).runs
    folders = sorted({Path(p) for pattern in patterns for p in glob.glob(pattern) if Path(p, holding).is_dir()})
    if not folders:
        print(f"no run folder holding {holding}/ matches {' '.join(patterns)}", file=sys.stderr)
        return None
    return folders


def recorded_split(data: Path, column: str, seed: int, held_out: int, human: int):
    """A pool split for the recorded-LLM studies: the pool (examples and label names), gold and LLM label indices
    (-1 where the LLM gave none), and per seed the held-out, human and LLM-labeled item indices."""
    from imfl.config import config_from_dict
    from imfl.data import load_dataset

    ds = load_dataset(config_from_dict({"data": {"pool": str(data / "pool.jsonl")}}, [], source="benchmark").data)
    pool, labels = list(ds.pool), list(ds.task.labels)
    y = np.array([labels.index(e.label) for e in pool])
    llm = np.array([labels.index(e.extra.get(column)) if e.extra.get(column) in labels else -1 for e in pool])
    order = np.random.default_rng(seed).permutation(len(pool))
    rest = order[held_out + human :]
    return ds, y, llm, order[:held_out], order[held_out : held_out + human], rest[llm[rest] >= 0]
