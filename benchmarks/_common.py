"""What the benchmark scripts share: one JSON line per result, on stdout and appended to a file."""

import json
from pathlib import Path


def emit(row: dict, out: Path | None) -> None:
    line = json.dumps(row)
    print(line, flush=True)
    if out:
        with out.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")
