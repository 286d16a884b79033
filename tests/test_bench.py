"""`imfl bench` and `imfl report` as a user runs them: the repository's own grid in its --quick form (two
datasets, the embedded LLM and a recorded GPT-4, two worker processes), re-run without redoing anything,
turned into tables and figures; and the grid's refusals (bad files, a grid changed under its results).
tests/test_bench_grids.py has the other grids, apart so that the two test processes can share the work."""

import json

import pytest

from conftest import REPO, SHARED_DATA, cells, imfl, read_jsonl

GRID = REPO / "benchmarks" / "paper.toml"


@pytest.fixture(scope="module")
def quick(tmp_path_factory, imfl_cache):
    d = tmp_path_factory.mktemp("bench")
    env = {"IMFL_CACHE": str(imfl_cache)}
    args = ("bench", "run", str(GRID), "--quick", "--workers", "2", "--results", str(d / "results"), "--work", str(d / "work"))
    first = imfl(*args, env=env)
    return {"dir": d, "first": first, "args": args, "env": env}


@pytest.mark.slow
def test_quick_grid_runs_every_cell_with_its_budget(quick):
    r = quick["first"]
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    got = cells(quick["dir"] / "results")
    assert set(got) == {
        f"{d}/{a}/{s}/seed0"
        for d, a, s in [
            ("fpb", "none", "human-1x"),
            ("fpb", "smollm2", "llm-only"),
            ("fpb", "smollm2", "imfl"),
            ("fpb", "smollm2", "random-query"),
            ("fpb", "smollm2", "fidelity"),
            ("pubmedqa", "none", "human-1x"),
            ("pubmedqa", "gpt4", "llm-only"),
            ("pubmedqa", "gpt4", "imfl"),
            ("pubmedqa", "gpt4", "random-query"),
            ("pubmedqa", "gpt4", "fidelity"),
        ]
    }
    for cell_id, rec in got.items():
        strategy = rec["cell"]["strategy"]
        human = {"human-1x": 8, "llm-only": 0}.get(strategy, 8)
        assert rec["config"]["budget"]["human"] == human and rec["config"]["budget"]["rounds"] == 2, cell_id
        assert rec["labels_used"]["human"] == human, cell_id
        last = rec["rounds"][-1]  # failed LLM calls of earlier rounds are spent again later; the last round's are not
        spent = rec["labels_used"]["human"] + rec["labels_used"]["llm"]
        assert spent == rec["config"]["budget"]["total"] - last["llm_failed"] - last["llm_unparsed"], cell_id
        assert [m["round"] for m in rec["rounds"]] == [1, 2], cell_id
        assert 0 <= rec["final"]["test_accuracy"] <= 1 and rec["wall_seconds"] > 0
        assert rec["config"]["data"]["pool_sample"] == 300 and not rec["config"]["data"]["pool"].startswith("/")
        assert sum(len(s["human"]) for s in rec["selected"]) == human
    assert got["fpb/smollm2/random-query/seed0"]["config"]["query"]["acquisition"] == "random"
    assert got["fpb/smollm2/imfl/seed0"]["config"]["query"]["acquisition"] == "eeq"
    assert got["fpb/none/human-1x/seed0"]["llm_accuracy"] is None
    for dataset in ("fpb/smollm2", "pubmedqa/gpt4"):  # fidelity-aware IMFL measured the LLM and the student every round
        rec = got[f"{dataset}/fidelity/seed0"]
        assert rec["config"]["fidelity"] == {
            "weighting": True,
            "routing": True,
            "route_threshold": None,
            "route_to_human": False,
            "filter": True,
            "adaptive": True,
            "human_max": None,
            "small_loss": False,
            "small_loss_share": None,
        }
        # (8 human labels are too few for an adaptive decision: tests/test_fidelity.py checks those)
        assert all(m["llm_self_n"] > 0 and "student_est_n" in m and "llm_weight_mean" in m for m in rec["rounds"]), dataset
        # Compact on disk: lists of numbers (per class, calibration, confusion triples) stay on one line.
        lines = (
            (quick["dir"] / "results" / "cells" / f"{dataset.replace('/', '__')}__fidelity__seed0.json").read_text().splitlines()
        )
        assert any(line.strip().startswith('"per_class": [') and line.rstrip(",").endswith("]") for line in lines), dataset
        assert not [line for line in lines if line.strip().rstrip(",").replace(".", "").isdigit()], dataset
    assert "[10/10] done " in r.stderr and "0 failed" in r.stdout


@pytest.mark.slow
def test_llm_accuracy_of_a_cell_is_what_the_recorded_answers_say(quick):
    """The cell's LLM accuracy is recomputed here from its selections and the recorded GPT-4 column."""
    rows = {r["id"]: r for r in read_jsonl(SHARED_DATA / "pubmedqa" / "pool.jsonl")}
    for strategy in ("imfl", "llm-only", "random-query"):
        rec = cells(quick["dir"] / "results")[f"pubmedqa/gpt4/{strategy}/seed0"]
        ids = [i for s in rec["selected"] for i in s["llm"] if rows[i]["llm_gpt4_medrag"] is not None]
        assert ids and rec["labels_used"]["llm"] == len(ids)
        right = sum(rows[i]["llm_gpt4_medrag"] == rows[i]["label"] for i in ids)
        assert rec["llm_accuracy"] == pytest.approx(right / len(ids), abs=1e-3)


@pytest.mark.slow
def test_aggregates_hold_every_round_of_every_cell(quick):
    import csv

    results = quick["dir"] / "results"
    with (results / "rounds.csv").open() as fh:
        rounds = list(csv.DictReader(fh))
    assert len(rounds) == 20 and {r["round"] for r in rounds} == {"1", "2"}
    with (results / "cells.csv").open() as fh:
        per_cell = list(csv.DictReader(fh))
    got = cells(results)
    assert len(per_cell) == 10
    for row in per_cell:
        rec = got[f"{row['dataset']}/{row['annotator']}/{row['strategy']}/seed{row['seed']}"]
        assert float(row["test_accuracy"]) == rec["final"]["test_accuracy"]
        # A cell's rounds take at least as long as its timed training; its last attempt was its only one.
        assert float(row["loop_seconds"]) >= sum(m["seconds"]["train"] for m in rec["rounds"]) > 0
        assert row["resumed"] == "False"


@pytest.mark.slow
def test_rerun_skips_finished_cells(quick):
    results = quick["dir"] / "results"
    before = {p.name: p.stat().st_mtime_ns for p in (results / "cells").glob("*.json")}
    r = imfl(*quick["args"], env=quick["env"], timeout=120)
    assert r.returncode == 0, r.stderr
    assert "10 already done, 0 to run" in r.stdout
    assert {p.name: p.stat().st_mtime_ns for p in (results / "cells").glob("*.json")} == before
    where = quick["args"][quick["args"].index("--results") :]
    listed = imfl("bench", "list", str(GRID), "--quick", *where, env=quick["env"], timeout=120)
    assert listed.returncode == 0 and listed.stdout.count("done") >= 10 and "to run" not in listed.stdout.split("\n", 2)[2]


@pytest.mark.slow
def test_report_tables_and_figures(quick, tmp_path):
    from matplotlib.image import imread

    results = quick["dir"] / "results"
    r = imfl("report", str(results), "--out", str(tmp_path / "report"), "--llm-price", "0.05", timeout=300)
    assert r.returncode == 0, r.stderr
    md = (tmp_path / "report" / "report.md").read_text()
    got = cells(results)
    assert "## fpb (H = 8)" in md and "## pubmedqa (H = 8)" in md
    imfl_acc = got["pubmedqa/gpt4/imfl/seed0"]["final"]["test_accuracy"]
    assert f"| IMFL (H human + 4H LLM) | GPT-4 (recorded, MedRAG) | 8 | 32 | {imfl_acc:.3f} |" in md
    minutes = got["pubmedqa/gpt4/imfl/seed0"]["loop_seconds"] / 60
    imfl_line = next(line for line in md.splitlines() if line.startswith("| IMFL (H human + 4H LLM) | GPT-4"))
    assert imfl_line.endswith(f"| {minutes:.0f} | 1 |") and "| minutes per cell | seeds |" in md
    # The ablation table shows the difference to IMFL with the same annotator.
    delta = got["pubmedqa/gpt4/random-query/seed0"]["final"]["test_accuracy"] - imfl_acc
    assert "| random query | GPT-4 (recorded, MedRAG) | 8 | 32 | " in md
    assert f"{delta:+.3f}" in md
    for name in (
        "fpb-learning-curves",
        "fpb-cost",
        "fpb-llm-accuracy",
        "pubmedqa-learning-curves",
        "pubmedqa-cost",
        "pubmedqa-llm-accuracy",
    ):
        image = imread(tmp_path / "report" / f"{name}.png")
        assert image.shape[0] > 300 and image.shape[1] > 400 and image.std() > 0.01, name
        assert f"{name}.png" in md
    page = (tmp_path / "report" / "report.html").read_text()
    assert page.count("<img src=") == 6 and page.count("<table>") == 6  # main, ablations, fidelity per dataset
    fid = got["pubmedqa/gpt4/fidelity/seed0"]
    row = next(
        line
        for line in md.splitlines()
        if line.startswith("| fidelity-aware IMFL | GPT-4 (recorded, MedRAG) | weighting, routing, filter, adaptive |")
    )
    assert f"| {fid['labels_used']['llm']} |" in row
    assert f"| {fid['rounds'][-1]['llm_self_accuracy']:.3f} |" in row
    # ... and the real student on round 2's new human labels, which it had not trained on (rounds 2 on, pooled).
    assert f"| {fid['rounds'][1]['prequential_accuracy']:.3f} |" in row and fid["rounds"][1]["prequential_n"] > 0
    assert "main table" in r.stdout


@pytest.mark.slow
def test_a_grid_changed_under_its_results_is_refused(quick, tmp_path):
    import shutil

    results = tmp_path / "results"
    shutil.copytree(quick["dir"] / "results", results)
    path = results / "cells" / "fpb__none__human-1x__seed0.json"
    rec = json.loads(path.read_text())
    epochs = rec["config"]["student"]["epochs"]
    rec["config"]["student"]["epochs"] = 99
    path.write_text(json.dumps(rec))
    r = imfl("bench", "run", str(GRID), "--quick", "--results", str(results), "--work", str(quick["dir"] / "work"), timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "fpb__none__human-1x__seed0.json" in r.stderr and f"student.epochs: 99 then, {epochs} now" in r.stderr
    # A setting added to imfl after a result was made is no change while it keeps its default.
    rec["config"]["student"]["epochs"] = epochs
    del rec["config"]["fidelity"], rec["config"]["llm"]["accuracy"]
    path.write_text(json.dumps(rec))
    r = imfl("bench", "list", str(GRID), "--quick", "--results", str(results), "--work", str(quick["dir"] / "work"), timeout=120)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize(
    "text, message",
    [
        (None, "grid file not found"),
        ("results = [", "not valid TOML"),
        (
            'results = "r"\nwork = "w"\nseeds = [0]\nbogus = 1\n[strategies]\na = { total = 1, human = 1 }\n'
            '[datasets.x]\nconfig = "c.toml"\nH = 1\nannotators.l = {}\n',
            "bogus: Extra inputs are not permitted",
        ),
        (
            'results = "r"\nwork = "w"\nseeds = [0]\n[strategies]\na = { total = 1, human = 2 }\n'
            '[datasets.x]\nconfig = "c.toml"\nH = 1\nannotators.l = {}\n',
            "strategies.a: human (2.0) is larger than total (1.0)",
        ),
        (
            'results = "r"\nwork = "w"\nseeds = [0]\n[strategies]\na = { total = 1, human = 1 }\n'
            '[datasets.x]\nconfig = "c.toml"\nH = 1\nannotators.l = { strategies = ["b"] }\n',
            "datasets.x.annotators.l.strategies names 'b', which the grid does not define",
        ),
        (
            'results = "r"\nwork = "w"\nseeds = [0]\n[strategies]\na = { total = 1, human = 1 }\n'
            '[datasets.x]\nconfig = "c.toml"\nH = 1\nannotators.l = {}\n',
            "datasets.x.config = ",
        ),
    ],
)
def test_bad_grid_files_get_one_line(tmp_path, text, message):
    grid = tmp_path / "grid.toml"
    if text is not None:
        grid.write_text(text)
    r = imfl("bench", "list", str(grid), timeout=120)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_report_of_a_folder_without_results(tmp_path):
    r = imfl("report", str(tmp_path), timeout=120)
    assert r.returncode == 2 and "no cells/ folder" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "gap, expected",
    [
        ([-0.10, -0.05, 0.05, 0.10], 0.70),  # behind at 0.6 by 0.05, ahead at 0.8 by 0.05: halfway
        ([-0.10, 0.01, -0.02, 0.06], 0.825),  # a noisy win at 0.6 does not count: behind again at 0.8
        ([0.00, 0.02, 0.03, 0.04], float("-inf")),  # a tie is not behind: ahead everywhere
        ([-0.10, -0.05, 0.02, -0.01], float("inf")),  # behind at the top of the range
    ],
)
def test_crossover_is_where_imfl_stays_ahead(gap, expected):
    import numpy as np

    from imfl.report import crossover

    assert crossover(np.array([0.5, 0.6, 0.8, 0.9]), np.array(gap)) == pytest.approx(expected)


def test_a_strategy_keeps_one_colour_in_every_panel_and_none_shares_it():
    """Rows of one strategy can come from grids that order it differently (the PubMedQA ladder puts fidelity-aware
    IMFL 6th, the paper grid 13th): it still gets one colour, and no main strategy shares a colour with another."""
    from imfl.report import Row, _styles

    def row(strategy, order, annotator, group="main"):
        return Row("d", strategy, strategy, group, order, annotator, annotator, ())

    rows = [
        row("human-1x", 0, "none"),
        row("human-5x", 2, "none"),
        row("imfl", 4, "gpt4"),
        row("fidelity", 12, "gpt4"),
        row("fidelity", 5, "sim70"),
        *(row(f"ablation-{i}", 5 + i, "gpt4", "ablation") for i in range(7)),
    ]
    styles = _styles(rows)
    main = [styles[s]["color"] for s in ("human-1x", "human-5x", "imfl", "fidelity")]
    assert len(set(main)) == 4 and set(styles) == {r.strategy for r in rows}
    # Past ten strategies, colours come round again on dashed lines: the pair still differs.
    assert len({(st["color"], st["linestyle"]) for st in styles.values()}) == len(styles) == 11


def test_an_annotator_named_differently_by_two_grids_gets_one_name():
    """The Banking77 ladder names GPT-4o by its accuracy and the paper grid by how it was asked; cells of both share
    a results folder, and the report calls it what most of its cells do, in the main table and the ablations alike."""
    from imfl.report import group_rows

    def cell(strategy, group, name, seed):
        return {
            "cell": {
                "dataset": "b",
                "strategy": strategy,
                "annotator": "gpt4o",
                "annotator_label": name,
                "label": strategy,
                "group": group,
                "order": 0,
                "seed": seed,
            }
        }

    records = [cell("random-query", "ablation", "GPT-4o (zero-shot)", s) for s in (0, 1)]
    records += [cell(strategy, "main", "GPT-4o (77.6%)", s) for strategy in ("imfl", "llm-only") for s in (0, 1)]
    assert {row.annotator_label for row in group_rows(records)["b"]} == {"GPT-4o (77.6%)"}


def test_the_llm_accuracy_figure_keeps_the_ablations_that_change_the_prompt():
    """Random or no demonstrations change what the LLM is asked; a fixed human batch does not, even when its result
    was written by a newer imfl whose LLM section has a setting the reference's lacks (at its default)."""
    from imfl.report import Row, _changes_the_prompt

    def row(strategy, group, **llm):
        return Row("d", strategy, strategy, group, 0, "smollm2", "smollm2", ({"config": {"llm": llm}},))

    rows = [
        row("imfl", "main", demos="retrieved"),
        row("random-demos", "ablation", demos="random", accuracy=None),
        row("fixed-batches", "ablation", demos="retrieved", accuracy=None),
        row("odd", "ablation", demos="retrieved", accuracy=0.7),
    ]
    assert [_changes_the_prompt(r, rows) for r in rows[1:]] == [True, False, True]
