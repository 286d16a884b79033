"""What the benchmark scripts share: one JSON line per result, on stdout and appended to a file; run folders named
by glob patterns."""

import argparse
import glob
import json
import sys
from pathlib import Path


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
