"""The command line as a user runs it: `imfl demo` end to end on a small slice, and its errors."""

import json

import pytest

from conftest import REPO, imfl


@pytest.mark.slow
def test_demo_runs_on_any_folder_in_the_shared_format(tmp_path, small_fpb, imfl_cache):
    env = {"IMFL_CACHE": str(imfl_cache)}
    r = imfl(
        "demo",
        "--data",
        str(small_fpb["pool"].parent),
        "--output-dir",
        str(tmp_path),
        "--budget",
        "12",
        "--human",
        "6",
        "--rounds",
        "2",
        "--set",
        "student.epochs=1",
        "--set",
        "student.min_steps=0",
        "--set",
        "student.max_length=32",
        env=env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "per-round results" in r.stdout and "outputs in" in r.stdout
    assert "time by phase" in r.stdout
    run_dir = tmp_path / f"demo-{small_fpb['pool'].parent.name}"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [m["round"] for m in metrics] == [1, 2]
    assert sum(m["human_labels"] for m in metrics) == 6 and sum(m["llm_labels"] for m in metrics) <= 6
    assert "round 2:" in r.stderr  # the per-round line printed while running
    # The default method measures its LLM each round and shows what it decided; the run ends with what the LLM
    # labels bought over the human labels alone.
    assert any(m.get("llm_self_accuracy") is not None for m in metrics)
    assert "LLM measured:" in r.stdout and "buy" in r.stdout
    assert metrics[-1]["human_only"]["summary"] in " ".join(r.stdout.split())


def test_the_demo_is_the_grid_cell_its_numbers_come_from(shared_data):
    """README.md and the docs (docs/quickstarts.md, docs/benchmarks/speed.md) quote the demo beside the grid cell
    fpb/smollm2/fidelity/seed0: the same settings."""
    from imfl.cli import demo_config
    from imfl.config import resolve_strategy, settings_difference

    record = json.loads((REPO / "benchmarks/results/paper/cells/fpb__smollm2__fidelity__seed0.json").read_text())
    cell, cell_threads = record["config"], record["machine"]["threads"]
    demo = resolve_strategy(demo_config(shared_data / "fpb", True)).model_dump(mode="json")  # the cell holds it resolved
    for where in (cell, demo):  # where the files are and what the run is called are not settings of the method
        where.pop("name"), where.pop("output_dir", None)
        where["data"]["pool"] = where["data"]["test"] = None
    assert settings_difference(cell, demo) is None
    assert demo["strategy"] == "fidelity" and demo["data"]["labels"] == ["neutral", "positive", "negative"]
    # and it computes what decides on the cell's one thread (benchmarks/results/demo/ has the run: the same rounds)
    assert demo["student"]["num_threads"] == demo["embeddings"]["num_threads"] == 1 == cell_threads


def test_demo_without_data_says_where_to_point(tmp_path):
    r = imfl("demo", "--data", str(tmp_path / "nowhere"))
    assert r.returncode == 2
    assert "--data" in r.stderr and "pool.jsonl" in r.stderr and "Traceback" not in r.stderr


def test_help_lists_the_commands():
    r = imfl("--help")
    assert r.returncode == 0 and "run" in r.stdout and "demo" in r.stdout
