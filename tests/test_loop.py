"""The whole loop on small slices of real data with the real models: budget, order, provenance,
determinism, outputs."""

import json
import sqlite3
import subprocess
import sys

import pytest

from conftest import REPO, read_jsonl, small_config, write_jsonl
from imfl import run

# slow: every test runs the loop with real models.
pytestmark = pytest.mark.slow


def tiny(pool, test, out, cache, **over):
    settings = {
        "name": "tiny",
        "seed": 0,
        "strategy": "imfl",
        "output_dir": str(out),
        "cache_dir": str(cache),
        "data": {"pool": str(pool), "test": str(test)},
        "budget": {"total": 24, "human": 8, "rounds": 3},
        "student": {"epochs": 1, "min_steps": 0, "max_length": 32, "batch_size": 16},
        "llm": {"max_length": 512},
    }
    return small_config(settings, **over)


def selections(run_dir):
    with sqlite3.connect(run_dir / "store.sqlite") as c:
        return c.execute("SELECT round, item_id, target FROM selections ORDER BY round, rank").fetchall()


def annotations_by_round(run_dir, rounds=(1, 2, 3)):
    """Per round: every annotation row (id, item_id, round, source, demo_ids) in commit order, and the round's human
    and LLM rows (both present)."""
    with sqlite3.connect(run_dir / "store.sqlite") as c:
        rows = c.execute("SELECT id, item_id, round, source, demo_ids FROM annotations ORDER BY id").fetchall()
    for t in rounds:
        human = [r for r in rows if r[2] == t and r[3] == "human"]
        llm = [r for r in rows if r[2] == t and r[3] == "llm"]
        assert human and llm
        yield t, rows, human, llm


@pytest.fixture(scope="module")
def imfl_run(tmp_path_factory, small_fpb, imfl_cache):
    out = tmp_path_factory.mktemp("runs")
    cfg = tiny(small_fpb["pool"], small_fpb["test"], out, imfl_cache, llm__eval_sample=3)
    return cfg, run(cfg)


def test_budget_is_spent_exactly(imfl_run):
    cfg, result = imfl_run
    assert result.budget_used == {"human": 8, "llm": 16}
    assert [m["human_labels"] for m in result.metrics] == [5, 2, 1]  # decaying human batches
    assert [m["human_labels"] + m["llm_labels"] for m in result.metrics] == [8, 8, 8]
    labels = read_jsonl(result.run_dir / "labels.jsonl")
    assert len(labels) == 24 and len({r["id"] for r in labels}) == 24


def test_human_labels_come_first_and_are_the_llm_demos(imfl_run):
    cfg, result = imfl_run
    for t, rows, human, llm in annotations_by_round(result.run_dir):
        assert max(r[0] for r in human) < min(r[0] for r in llm)  # committed before any LLM label of the round
        human_so_far = {r[1] for r in rows if r[3] == "human" and r[2] <= t}
        this_round = {r[1] for r in human}
        demos = [set(json.loads(r[4])) for r in llm]
        assert all(len(d) == min(4, len(human_so_far)) for d in demos)
        assert all(d <= human_so_far for d in demos)  # demos are human-labeled items only
        assert any(d & this_round for d in demos)  # ... including this round's fresh ones


def test_llm_first_prompts_hold_only_earlier_rounds_human_labels(imfl_run, tmp_path, small_fpb, imfl_cache):
    """The `LLM first` ablation: a round's LLM labels are committed before its human labels, so the
    prompts see only the human labels of earlier rounds (none in round 1: zero-shot)."""
    cfg, human_first = imfl_run
    budget = {**cfg.budget.model_dump(), "order": "llm-first"}
    result = run(tiny(small_fpb["pool"], small_fpb["test"], tmp_path, imfl_cache, budget=budget))
    assert result.budget_used == human_first.budget_used
    assert selections(result.run_dir)[:8] == selections(human_first.run_dir)[:8]  # round 1 has no student: same query
    for t, rows, human, llm in annotations_by_round(result.run_dir):
        assert max(r[0] for r in llm) < min(r[0] for r in human)
        earlier = {r[1] for r in rows if r[3] == "human" and r[2] < t}
        demos = [set(json.loads(r[4] or "[]")) for r in llm]
        assert all(len(d) == min(4, len(earlier)) and d <= earlier for d in demos)


def test_the_copying_script_sets_the_llm_beside_its_most_similar_demonstration(imfl_run, small_fpb, imfl_cache):
    """benchmarks/copying.py on a finished run: the LLM's accuracy is the one its metrics give, the demonstration shown
    last is the one the embedder finds nearest the item, and copying its label scores what the gold labels say."""
    import numpy as np

    from imfl.embeddings import Embedder

    cfg, result = imfl_run
    r = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "copying.py"), str(result.run_dir)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    [row] = [[c.strip() for c in line.strip("|").split("|")] for line in r.stdout.splitlines() if result.run_dir.name in line]
    pool = {x["id"]: x for x in read_jsonl(small_fpb["pool"])}
    # The LLM's accuracy as an exact count of its right labels (which items SmolLM2 gets right differs by CPU; the
    # script prints three decimals, so compare within half of the last one).
    llm_right = sum(
        x["label"] == pool[x["id"]]["label"] for x in read_jsonl(result.run_dir / "labels.jsonl") if x["source"] == "llm"
    )
    assert row[1:3] == ["retrieved", "16"] and abs(float(row[5]) - llm_right / 16) <= 0.0005 + 1e-9
    human = {x["id"]: x["label"] for x in read_jsonl(result.run_dir / "labels.jsonl") if x["source"] == "human"}
    with sqlite3.connect(result.run_dir / "store.sqlite") as c:
        asked = [(i, json.loads(d)) for i, d in c.execute("SELECT item_id, demo_ids FROM annotations WHERE source='llm'")]
    ids = list(pool)
    vectors = Embedder(cache=imfl_cache).encode([pool[i]["text"] for i in ids])
    for item, demos in asked:
        similarity = vectors[[ids.index(d) for d in demos]] @ vectors[ids.index(item)]
        assert int(np.argmax(similarity)) == len(demos) - 1, item
    copied = sum(human[demos[-1]] == pool[item]["label"] for item, demos in asked) / 16
    among = sum(pool[item]["label"] in {human[d] for d in demos} for item, demos in asked) / 16
    assert [float(v) for v in row[6:8]] == pytest.approx([copied, among], abs=0.0005 + 1e-9)


def test_llm_gives_a_probability_for_every_label(imfl_run):
    cfg, result = imfl_run
    with sqlite3.connect(result.run_dir / "store.sqlite") as c:
        rows = c.execute("SELECT label, probs, confidence, prompt_hash FROM annotations WHERE source='llm'").fetchall()
    assert len(rows) == 16
    for label, probs, confidence, prompt_hash in rows:
        p = json.loads(probs)
        assert set(p) == {"negative", "neutral", "positive"}
        assert abs(sum(p.values()) - 1) < 1e-4
        assert label == max(p, key=p.get) and confidence == pytest.approx(p[label])
        assert len(prompt_hash) == 64


def test_outputs_and_metrics(imfl_run):
    cfg, result = imfl_run
    d = result.run_dir
    for name in ("config.toml", "metrics.json", "metrics.csv", "labels.jsonl", "store.sqlite"):
        assert (d / name).is_file(), name
    assert any((d / "adapter").iterdir())
    metrics = json.loads((d / "metrics.json").read_text())
    assert [m["round"] for m in metrics] == [1, 2, 3]
    # The LLM's self-check: each round up to 3 human-labeled items it has not labeled before (leave-one-out demos),
    # measured together with those of earlier rounds. Human batches are 5, 2, 1: 3, then 3 + 3, then 6 + 2.
    assert [m["llm_self_n"] for m in metrics] == [3, 6, 8]
    for m in metrics:
        assert 0 <= m["test_accuracy"] <= 1 and 0 <= m["test_macro_f1"] <= 1
        assert 0 <= m["llm_accuracy"] <= 1
        assert 0 <= m["llm_self_accuracy"] <= 1 and 0 <= m["llm_self_ece"] <= 1
    assert (d / "metrics.csv").read_text().splitlines()[0].startswith("round,")


def test_the_last_rounds_kappa_and_label_shares_are_the_saved_students(imfl_run):
    """test_kappa and test_answered say whether the student reads or guesses (0 = chance at its own label shares);
    they are the saved student's on the test file."""
    import numpy as np
    from sklearn.metrics import cohen_kappa_score

    from imfl.data import load_dataset
    from imfl.student import Student

    cfg, result = imfl_run
    last = json.loads((result.run_dir / "metrics.json").read_text())[-1]
    ds = load_dataset(cfg.data)
    labels = list(ds.task.labels)
    pred = Student.load(result.run_dir / "adapter").predict_proba([e.text for e in ds.test]).argmax(axis=1)
    gold = [labels.index(e.label) for e in ds.test]
    assert last["test_accuracy"] == pytest.approx(np.mean(pred == np.array(gold)), abs=0.011)
    assert last["test_kappa"] == pytest.approx(cohen_kappa_score(gold, pred), abs=0.03)
    assert set(last["test_answered"]) == set(labels) and sum(last["test_answered"].values()) == pytest.approx(1, abs=1e-3)
    assert "test_answered" not in (result.run_dir / "metrics.csv").read_text().splitlines()[0]


def test_prequential_accuracy_is_the_last_student_on_the_new_human_labels(imfl_run):
    import numpy as np

    from imfl.data import load_dataset

    cfg, result = imfl_run
    labels = load_dataset(cfg.data).task.labels
    saved = read_jsonl(result.run_dir / "labels.jsonl")
    assert "prequential_accuracy" not in result.metrics[0]  # round 1 has no earlier student
    for m in result.metrics[1:]:
        t = m["round"]
        new = {r["id"]: r["label"] for r in saved if r["source"] == "human" and r["round"] == t}
        before = np.load(result.run_dir / "state" / f"proba_round{t - 1}.npz")
        guess = dict(zip(before["ids"].tolist(), (labels[k] for k in before["proba"].argmax(axis=1))))
        assert m["prequential_n"] == len(new) == m["human_labels"]
        assert m["prequential_accuracy"] == pytest.approx(sum(guess[i] == y for i, y in new.items()) / len(new), abs=1e-4)


def test_a_finished_run_continues_without_new_work(imfl_run):
    cfg, result = imfl_run
    again = run(cfg)
    assert again.metrics == result.metrics
    assert again.budget_used == result.budget_used


@pytest.fixture(scope="module")
def recorded_pool(tmp_path_factory, shared_data):
    """120 FPB-recorded items with Llama-2-7b's real labels, a few blanked (null = no answer)."""
    d = tmp_path_factory.mktemp("rec")
    rows = read_jsonl(shared_data / "fpb_recorded" / "pool.jsonl")[:120]
    for r in rows[::7]:
        r["llm_llama2_7b"] = None
    test = read_jsonl(shared_data / "fpb_recorded" / "test.jsonl")[:40]
    return write_jsonl(d / "pool.jsonl", rows), write_jsonl(d / "test.jsonl", test)


def test_same_seed_same_selections(tmp_path, recorded_pool, imfl_cache):
    pool, test = recorded_pool
    runs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        cfg = tiny(
            pool,
            test,
            tmp_path,
            imfl_cache,
            name=name,
            seed=seed,
            llm__annotator="recorded",
            llm__column="llm_llama2_7b",
            budget={"total": 30, "human": 10, "rounds": 2},
        )
        runs[name] = (run(cfg), selections(tmp_path / name))
    assert runs["a"][1] == runs["b"][1]
    strip = lambda ms: [{k: v for k, v in m.items() if k != "seconds"} for m in ms]  # noqa: E731
    assert strip(runs["a"][0].metrics) == strip(runs["b"][0].metrics)
    assert runs["a"][1] != runs["c"][1]  # a different seed picks differently (so the check above can fail)


def test_recorded_nulls_are_failed_calls_carried_over(tmp_path, recorded_pool, imfl_cache):
    pool, test = recorded_pool
    cfg = tiny(
        pool,
        test,
        tmp_path,
        imfl_cache,
        llm__annotator="recorded",
        llm__column="llm_llama2_7b",
        budget={"total": 60, "human": 12, "rounds": 3},
    )
    result = run(cfg)
    with sqlite3.connect(result.run_dir / "store.sqlite") as c:
        failed = c.execute("SELECT item_id FROM annotations WHERE label IS NULL").fetchall()
    assert sum(m["llm_failed"] for m in result.metrics) == len(failed)
    assert failed, "the slice has nulls, some must have been selected"
    labeled = {r["id"]: r["source"] for r in read_jsonl(result.run_dir / "labels.jsonl")}
    # A failed call never counts as a label; the item went back to the pool, where a later round may
    # have given it to the human (the LLM has no answer for it to give).
    assert all(labeled.get(i, "human") == "human" for (i,) in failed)
    rows = {r["id"]: r for r in read_jsonl(pool)}
    assert all(rows[i]["llm_llama2_7b"] is None for (i,) in failed)
    # Failed calls spend nothing; what they did not spend is bought in the next round, so only the
    # last round's failures stay unspent.
    assert result.budget_used["human"] == 12
    assert result.budget_used["llm"] == 48 - result.metrics[-1]["llm_failed"]


def test_failed_llm_items_go_to_the_next_rounds_humans(tmp_path, shared_data, imfl_cache):
    rows = read_jsonl(shared_data / "fpb_recorded" / "pool.jsonl")[:120]
    for r in rows[::3]:
        r["llm_llama2_7b"] = None  # a third of the LLM's answers are missing
    pool = write_jsonl(tmp_path / "pool.jsonl", rows)
    test = write_jsonl(tmp_path / "test.jsonl", read_jsonl(shared_data / "fpb_recorded" / "test.jsonl")[:40])
    cfg = tiny(
        pool,
        test,
        tmp_path,
        imfl_cache,
        llm__annotator="recorded",
        llm__column="llm_llama2_7b",
        llm__on_failure="human",
        budget={"total": 60, "human": 24, "rounds": 3},
    )
    result = run(cfg)
    with sqlite3.connect(result.run_dir / "store.sqlite") as c:
        ann = c.execute("SELECT round, item_id, source, label FROM annotations").fetchall()
    failed = {t: {i for r, i, s, lab in ann if r == t and s == "llm" and lab is None} for t in (1, 2)}
    assert failed[1] and failed[2]
    for t in (2, 3):
        human_t = {i for r, i, s, lab in ann if r == t and s == "human"}
        # every failed item of the previous round is among this round's human items (as far as they fit)
        assert len(failed[t - 1] & human_t) == min(len(failed[t - 1]), len(human_t))
    assert result.budget_used["human"] == 24  # the human budget is never exceeded


@pytest.mark.parametrize("strategy", ["human-only", "llm-only"])
def test_single_fidelity_strategies(tmp_path, recorded_pool, imfl_cache, strategy):
    pool, test = recorded_pool
    cfg = tiny(
        pool,
        test,
        tmp_path,
        imfl_cache,
        strategy=strategy,
        llm__annotator="recorded",
        llm__column="llm_llama2_7b",
        budget={"total": 30, "human": 10, "rounds": 2},
    )
    result = run(cfg)
    if strategy == "human-only":
        assert result.budget_used == {"human": 30, "llm": 0}
    else:
        assert result.budget_used["human"] == 0
        assert result.budget_used["llm"] == 30 - result.metrics[-1]["llm_failed"]


def test_recorded_answers_from_a_file_keep_their_probabilities(tmp_path, recorded_pool, imfl_cache):
    from imfl.errors import DataError

    pool, test = recorded_pool
    rows = read_jsonl(pool)
    answers = [
        {
            "id": r["id"],
            "label": r["llm_gpt4"],
            "probs": {r["llm_gpt4"]: 0.8, "neutral" if r["llm_gpt4"] != "neutral" else "positive": 0.2},
        }
        for r in rows[:90]
        if r["llm_gpt4"]
    ]
    path = write_jsonl(tmp_path / "batch-results.jsonl", answers)
    cfg = tiny(
        pool,
        test,
        tmp_path,
        imfl_cache,
        llm__annotator="recorded",
        llm__file=str(path),
        budget={"total": 30, "human": 10, "rounds": 2},
    )
    result = run(cfg)
    with sqlite3.connect(result.run_dir / "store.sqlite") as c:
        got = c.execute("SELECT item_id, label, probs, confidence, method, error FROM annotations WHERE source='llm'").fetchall()
    by_id = {a["id"]: a for a in answers}
    for item_id, label, probs, confidence, method, error in got:
        assert method == "recorded"
        if item_id in by_id:
            assert label == by_id[item_id]["label"] and confidence == 0.8 and json.loads(probs)[label] == 0.8
        else:
            assert label is None and error == "no recorded answer"  # not in the file: a failed call, no budget
    assert any(i in by_id for i, *_ in got)

    (tmp_path / "bad.jsonl").write_text(json.dumps({"id": rows[0]["id"], "label": "positive", "probs": {"bullish": 1}}) + "\n")
    bad = tiny(pool, test, tmp_path, imfl_cache, name="bad", llm__annotator="recorded", llm__file=str(tmp_path / "bad.jsonl"))
    with pytest.raises(DataError, match=r"bad\.jsonl:1: field 'probs'"):
        run(bad)


def test_a_different_configuration_for_the_same_folder_is_refused(tmp_path, recorded_pool, imfl_cache):
    from imfl.errors import ConfigError

    pool, test = recorded_pool
    settings = dict(llm__annotator="recorded", llm__column="llm_llama2_7b", budget={"total": 20, "human": 10, "rounds": 1})
    first = run(tiny(pool, test, tmp_path, imfl_cache, **settings))
    with pytest.raises(ConfigError, match="different configuration"):
        run(tiny(pool, test, tmp_path, imfl_cache, **{**settings, "budget": {"total": 30, "human": 10, "rounds": 1}}))
    assert run(tiny(pool, test, tmp_path, imfl_cache, **settings)).metrics == first.metrics  # and the lock was let go
