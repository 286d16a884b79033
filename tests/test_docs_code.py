"""Every ```python block of README.md (and of docs/*.md) runs, so an example can never break again.

The blocks of one file run in order in one fresh Python process, sharing their names as the cells of a notebook do,
with the repository root as working directory (the paths in them are relative to it). Nothing is substituted: the
examples are cheap as written, and write their runs into temporary folders; the test checks that every run they
made (each RunResult left in their names) lies outside the repository and outside its configs' output folder."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("**/*.md"))]
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)

# Runs the blocks given as JSON [[name, first_line, code], ...] on stdin in one namespace, each compiled under its
# file and line so a traceback points into the document; then prints the run folders of the RunResults it left.
HARNESS = r"""
import json, sys
blocks = json.load(sys.stdin)
names = {"__name__": "__main__"}
for name, line, code in blocks:
    exec(compile("\n" * (line - 1) + code, name, "exec"), names)
from imfl import RunResult
runs = [str(v.run_dir) for v in names.values() if isinstance(v, RunResult)]
print("RUN_DIRS " + json.dumps(runs))
"""


def python_blocks(path: Path) -> list[tuple[str, int, str]]:
    """(file name, line of the block's first code line, code) of each ```python block, in order."""
    text = path.read_text(encoding="utf-8")
    return [(str(path.relative_to(REPO)), text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in FENCE.finditer(text)]


def test_the_readme_has_python_blocks_to_run():
    blocks = python_blocks(REPO / "README.md")
    assert len(blocks) >= 2
    code = "\n".join(c for _, _, c in blocks)
    assert "result.student.predict(" in code and "llm=" in code  # the API the README promises is the API it runs


@pytest.mark.slow
@pytest.mark.parametrize("doc", [d for d in DOCS if python_blocks(d)], ids=lambda d: str(d.relative_to(REPO)))
def test_python_blocks_run_in_order(doc, imfl_cache, tmp_path):
    blocks = python_blocks(doc)
    # As in a notebook: none of the offline switches the test process sets (the examples must not need them).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_", "TOKENIZERS_"))}
    env["IMFL_CACHE"] = str(imfl_cache)
    env["TMPDIR"] = str(tmp_path)  # where the examples' tempfile folders go, removed with the test's
    proc = subprocess.run(
        [sys.executable, "-c", HARNESS], input=json.dumps(blocks), capture_output=True, text=True, cwd=REPO, env=env, timeout=1500
    )
    assert proc.returncode == 0, f"{doc.name}: a Python block failed\n{proc.stderr[-3000:]}"
    [line] = [ln for ln in proc.stdout.splitlines() if ln.startswith("RUN_DIRS ")]
    for run_dir in map(Path, json.loads(line.removeprefix("RUN_DIRS "))):
        assert (run_dir / "metrics.json").is_file()
        assert run_dir.resolve().is_relative_to(tmp_path.resolve())
        for inside in (REPO, REPO.parent / "runs"):  # configs/*.toml write to ../runs: the examples must not
            assert not run_dir.resolve().is_relative_to(inside.resolve()), f"{doc.name} wrote a run into {run_dir}"
