"""The command line as a user runs it: `imfl demo` end to end on a small slice, and its errors."""

import json

from conftest import imfl


def test_demo_runs_on_any_folder_in_the_shared_format(tmp_path, small_fpb, imfl_cache):
    env = {"IMFL_CACHE": str(imfl_cache)}
    r = imfl("demo", "--data", str(small_fpb["pool"].parent), "--output-dir", str(tmp_path), "--budget", "12",
             "--human", "6", "--rounds", "2", "--set", "student.epochs=1", "--set", "student.min_steps=0", "--set", "student.max_length=32", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "per-round results" in r.stdout and "outputs in" in r.stdout
    assert "time by phase" in r.stdout
    run_dir = tmp_path / f"demo-{small_fpb['pool'].parent.name}"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [m["round"] for m in metrics] == [1, 2]
    assert sum(m["human_labels"] for m in metrics) == 6 and sum(m["llm_labels"] for m in metrics) == 6
    assert "round 2:" in r.stderr  # the per-round line printed while running


def test_demo_without_data_says_where_to_point(tmp_path):
    r = imfl("demo", "--data", str(tmp_path / "nowhere"))
    assert r.returncode == 2
    assert "--data" in r.stderr and "pool.jsonl" in r.stderr and "Traceback" not in r.stderr


def test_help_lists_the_commands():
    r = imfl("--help")
    assert r.returncode == 0 and "run" in r.stdout and "demo" in r.stdout
