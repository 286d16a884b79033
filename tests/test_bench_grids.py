"""`imfl bench` beside the paper grid (tests/test_bench.py): a failing cell that does not stop the others, a cell
rebuilt from its store, the fidelity sweep and the ladder of real annotators in their --quick forms, and a ladder
cell reproduced from its JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import REPO, cells, imfl, read_jsonl

# slow: every test runs `imfl bench` grids: the student, the embedder and the LLM.
pytestmark = pytest.mark.slow


def tiny_grid(tmp_path: Path, seeds: str = "[3]", strategies: str = "too-big = { total = 20, human = 20 }") -> Path:
    """One dataset and human-only strategies: by default one seed, a strategy that fits the 60-item pool and one
    that does not."""
    grid = tmp_path / "grid.toml"
    grid.write_text(f"""
results = "out"
work = "work"
seeds = {seeds}
set = {{ "data.pool_sample" = 60, "data.test_sample" = 30, "budget.rounds" = 1, "student.min_steps" = 10, "student.max_length" = 32 }}
[strategies]
small = {{ total = 1, human = 1 }}
{strategies}
[datasets.fpb]
config = "{REPO / "configs" / "fpb.toml"}"
H = 4
annotators.smollm2 = {{}}
""")  # noqa: E501 - a TOML inline table (the `set` line) must stay on one line
    return grid


def test_a_failing_cell_does_not_stop_the_grid(tmp_path, imfl_cache):
    r = imfl("bench", "run", str(tiny_grid(tmp_path)), env={"IMFL_CACHE": str(imfl_cache)})
    assert r.returncode == 1, r.stderr
    assert "fpb/none/too-big/seed3" in r.stderr and "budget.total (80) is larger than the pool (60 items" in r.stderr
    assert "Traceback" not in r.stderr
    assert (tmp_path / "out" / "cells" / "fpb__none__small__seed3.json").is_file()
    assert not (tmp_path / "out" / "cells" / "fpb__none__too-big__seed3.json").exists()
    assert "1 cells done, 1 failed" in r.stdout


def test_a_cell_whose_result_was_lost_is_rebuilt_from_its_store(tmp_path, imfl_cache):
    """The store keeps every finished round: re-running a cell whose JSON is gone trains nothing again, and the
    cell's time still counts the rounds of its first attempt."""
    grid, env = tiny_grid(tmp_path), {"IMFL_CACHE": str(imfl_cache)}
    assert imfl("bench", "run", str(grid), "--only", "*/small/*", env=env).returncode == 0
    path = tmp_path / "out" / "cells" / "fpb__none__small__seed3.json"
    first = json.loads(path.read_text())
    path.unlink()
    r = imfl("bench", "run", str(grid), "--only", "*/small/*", env=env)
    assert r.returncode == 0, r.stderr
    assert "2 cells, 1 selected: 0 already done, 1 to run" in r.stdout
    again = json.loads(path.read_text())
    assert not first["resumed"] and again["resumed"]
    assert again["rounds"] == first["rounds"] and again["loop_seconds"] == first["loop_seconds"] > 0
    assert f"(resumed; {first['loop_seconds'] / 60:.1f} min of rounds in all)" in r.stderr


def test_until_starts_only_the_cells_that_should_end_in_time(tmp_path, imfl_cache):
    """--until: a cell is started only if the finished cells like it say it ends by then; a shorter cell later in
    the grid takes the free worker instead, and the others wait for the next run."""
    from datetime import datetime, timedelta

    grid = tiny_grid(tmp_path, seeds="[3, 4]", strategies="medium = { total = 2, human = 2 }")
    env = {"IMFL_CACHE": str(imfl_cache)}
    assert imfl("bench", "run", str(grid), "--only", "*/seed3", env=env).returncode == 0
    slow = tmp_path / "out" / "cells" / "fpb__none__small__seed3.json"
    rec = json.loads(slow.read_text())
    rec["wall_seconds"], rec["loop_seconds"] = 36000.0, 35000.0  # as if that cell had taken 10 hours
    slow.write_text(json.dumps(rec))
    listed = imfl("bench", "list", str(grid), env=env)
    assert listed.returncode == 0 and "2 to run (about 10.0 h of cells)" in listed.stdout, listed.stdout
    assert any("fpb/none/small/seed4" in line and line.rstrip(" │").endswith("600") for line in listed.stdout.splitlines())

    in_an_hour = (datetime.now() + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    r = imfl("bench", "run", str(grid), "--until", in_an_hour, env=env)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "cells" / "fpb__none__medium__seed4.json").is_file()
    assert not (tmp_path / "out" / "cells" / "fpb__none__small__seed4.json").exists()
    assert "1 cells done, 0 failed" in r.stdout and "1 cell(s) not started (first: fpb/none/small/seed4)" in r.stdout

    (tmp_path / "out" / "cells" / "fpb__none__medium__seed4.json").unlink()
    r = imfl("bench", "run", str(grid), "--until", "2020-01-01T00:00", env=env)  # past: not even a short cell starts
    assert r.returncode == 0 and "0 cells done" in r.stdout and "2 cell(s) not started" in r.stdout, r.stdout
    r = imfl("bench", "run", str(grid), "--until", "25:00", env=env)
    assert r.returncode == 2 and "--until '25:00': not a time" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out" / "cells" / "fpb__none__small__seed4.json").exists()

    # Cells that ran on this processor come first: the slow one ran on another, so the medium cell estimates it.
    rec["machine"]["cpu"] = "another processor"
    slow.write_text(json.dumps(rec))
    listed = imfl("bench", "list", str(grid), env=env)
    assert listed.returncode == 0 and "(about 0.0 h of cells)" in listed.stdout, listed.stdout


def test_fidelity_sweep_quick_grid_and_its_chart(tmp_path, imfl_cache):
    """The sweep grid in its --quick form: a simulated LLM at 50% and 95% with two human shares, against human-only
    runs with as many human labels and with the whole budget; the report's sweep table, crossovers and chart (with a
    real LLM marked)."""
    from matplotlib.image import imread

    grid = REPO / "benchmarks" / "sweep.toml"
    results = tmp_path / "results"
    r = imfl(
        "bench",
        "run",
        str(grid),
        "--quick",
        "--workers",
        "2",
        "--results",
        str(results),
        "--work",
        str(tmp_path / "work"),
        env={"IMFL_CACHE": str(imfl_cache)},
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    got = cells(results)
    assert len(got) == 7
    labels = read_jsonl(tmp_path / "work" / "fpb__sim50__imfl-20pct__seed0" / "labels.jsonl")
    assert {x["annotator"] for x in labels if x["source"] == "llm"} == {"simulated:0.5"}
    assert got["fpb/sim95/imfl-20pct/seed0"]["llm_accuracy"] > 0.85 > 0.65 > got["fpb/sim50/imfl-20pct/seed0"]["llm_accuracy"]
    out = tmp_path / "report"
    r = imfl("report", str(results), "--out", str(out), "--mark", "GPT-4 (PubMedQA)=0.705", timeout=300)
    assert r.returncode == 0, r.stderr
    md = (out / "report.md").read_text()
    assert "### fpb: simulated LLM accuracy × human share" in md
    head = next(line for line in md.splitlines() if line.startswith("| simulated LLM accuracy"))
    assert "IMFL, 20% human (20)" in head and "IMFL, 40% human (40)" in head
    imfl_hi = got["fpb/sim95/imfl-20pct/seed0"]["final"]["test_accuracy"]
    ref = got["fpb/none/human-100/seed0"]["final"]["test_accuracy"]
    row = next(line for line in md.splitlines() if line.startswith("| 0.95 |"))
    assert f"{imfl_hi:.3f} ± 0.000 ({imfl_hi - ref:+.3f})" in row
    whole = got["fpb/none/human-500/seed0"]["final"]["test_accuracy"]
    assert f"| human-only, the whole budget as human labels | {whole:.3f} | {whole:.3f} |" in md
    assert "| crossover: LLM labels pay off from |" in md
    image = imread(out / "fpb-sweep.png")
    assert image.shape[0] > 400 and image.std() > 0.01
    bad = imfl("report", str(results), "--out", str(out), "--mark", "GPT-4=high", timeout=120)
    assert bad.returncode == 2 and "--mark 'GPT-4=high'" in bad.stderr and "Traceback" not in bad.stderr


def test_a_ladder_cell_reproduces_exactly_from_its_json(tmp_path, imfl_cache):
    """The FPB ladder in its --quick form (recorded Llama-2-7b, 40% right, with nulls in no cell here), then one
    fidelity-aware cell run again from scratch: the same selections, labels and scores in every round. With a simulated
    rung (60%) beside it, the report draws the ladder."""
    from matplotlib.image import imread

    grid = REPO / "benchmarks" / "ladder-fpb.toml"
    where = ("--results", str(tmp_path / "results"), "--work", str(tmp_path / "work"))
    env = {"IMFL_CACHE": str(imfl_cache)}
    r = imfl("bench", "run", str(grid), "--quick", "--workers", "2", *where, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    got = cells(tmp_path / "results")
    assert set(got) == {
        "fpb-recorded/none/human-1x/seed0",
        "fpb-recorded/llama2-7b/imfl/seed0",
        "fpb-recorded/llama2-7b/fidelity/seed0",
        "fpb-recorded/sim60/imfl/seed0",
        "fpb-recorded/sim60/fidelity/seed0",
    }
    assert got["fpb-recorded/llama2-7b/imfl/seed0"]["llm_accuracy"] < 0.6  # Llama-2-7b says "positive" to most
    # Its real accuracy over the whole pool (896 items, as the data README states) goes into every cell it labels.
    assert got["fpb-recorded/llama2-7b/imfl/seed0"]["annotator_accuracy"] == 0.4007
    assert got["fpb-recorded/sim60/imfl/seed0"]["annotator_accuracy"] == 0.6
    assert got["fpb-recorded/none/human-1x/seed0"]["annotator_accuracy"] is None
    # The report's ladder: annotators by real accuracy, a column per strategy, and what the fidelity-aware runs bought.
    r = imfl("report", str(tmp_path / "results"), "--out", str(tmp_path / "report"), timeout=300)
    assert r.returncode == 0, r.stderr
    md = (tmp_path / "report" / "report.md").read_text().splitlines()
    head = md.index("### fpb-recorded: the ladder of LLM annotators") + 2
    assert md[head].startswith("| LLM annotator | its accuracy (pool) | IMFL (H human + 4H LLM) | fidelity-aware IMFL |")
    imfl_7b = got["fpb-recorded/llama2-7b/imfl/seed0"]["final"]["test_accuracy"]
    bought = got["fpb-recorded/sim60/fidelity/seed0"]["labels_used"]["llm"]
    rounds = [m["round"] for m in got["fpb-recorded/sim60/fidelity/seed0"]["rounds"] if m["llm_labels"]]
    when = {(): "none", (1,): "1", (2,): "2", (1, 2): "1-2"}[tuple(rounds)]  # the quick grid has 2 rounds
    assert md[head + 2].startswith("| simulated 60% | 0.600 | ") and f"| {bought} of 40, +0 (rounds: {when}) |" in md[head + 2]
    assert md[head + 3].startswith(f"| Llama-2-7b-chat (recorded, 40.1%) | 0.401 | {imfl_7b:.3f} | ")
    assert any(line.startswith("human 1x (") and "is matched or beaten by" in line for line in md)
    image = imread(tmp_path / "report" / "fpb-recorded-ladder.png")
    assert image.shape[0] > 400 and image.std() > 0.01
    # A cell written before annotator_accuracy existed: worked out from its pool, found from the results folder upwards.
    from imfl.report import _annotator_accuracy

    old = json.loads(json.dumps(got["fpb-recorded/llama2-7b/imfl/seed0"]))
    del old["annotator_accuracy"]
    grid_dir = tmp_path / "old-grid"
    (grid_dir / "results" / "ladder").mkdir(parents=True)  # a grid folder moved elsewhere, its results beneath it
    for key in ("pool", "test"):
        old["config"]["data"][key] = os.path.relpath(REPO / "benchmarks" / old["config"]["data"][key], grid_dir)
    assert _annotator_accuracy(old, grid_dir / "results" / "ladder") == 0.4007
    r = imfl("bench", "reproduce", str(grid), "--quick", *where, "*/llama2-7b/fidelity/*", env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "fpb-recorded/llama2-7b/fidelity/seed0: reproduced exactly" in r.stdout
    assert (tmp_path / "work" / "reproduce" / "results" / "cells" / "fpb-recorded__llama2-7b__fidelity__seed0.json").is_file()
    # A changed result is caught, named, and the command fails.
    path = tmp_path / "results" / "cells" / "fpb-recorded__llama2-7b__fidelity__seed0.json"
    rec = json.loads(path.read_text())
    rec["selected"][1]["llm"] = rec["selected"][1]["llm"][::-1]
    path.write_text(json.dumps(rec))
    r = imfl("bench", "reproduce", str(grid), "--quick", *where, "*/llama2-7b/fidelity/*", env=env)
    assert r.returncode == 1 and "DIFFERS: round 2: the items selected for the llm differ" in r.stdout
    r = imfl("bench", "reproduce", str(grid), "--quick", *where, "*/nothing/*", env=env)
    assert r.returncode == 2 and "no cell of ladder-fpb.toml matches */nothing/* (ids look like fpb-recorded/" in r.stderr
