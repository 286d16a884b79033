"""The documented Python API example runs as written, on a small slice of real FPB data."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

# slow: examples/api_parts.py: real runs.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def test_api_example_runs_a_hand_made_round_and_a_whole_run(small_fpb, imfl_cache):
    env = {**os.environ, "IMFL_CACHE": str(imfl_cache)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "api_parts.py"), str(small_fpb["pool"].parent), "4", "4"],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("60 pool items, 30 test items")
    assert sum(line.startswith("LLM: ") and "demos " in line for line in lines) == 3
    assert any(line.startswith("student after one hand-made round: test accuracy") for line in lines)
    rounds = [line for line in lines if line.startswith("round ")]
    assert [r.split(":")[0] for r in rounds] == ["round 1", "round 2"]
    assert all("+" in r and "test accuracy" in r for r in rounds)
