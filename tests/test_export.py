"""What a finished run hands over: the human-only comparison at its end (what the LLM labels bought), and
`imfl export --format hf`, a standard transformers classifier that loads without imfl and predicts what
`imfl predict` predicts."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import imfl, read_jsonl, small_config, write_jsonl

# slow: every test needs a finished run (real student and embedder).
pytestmark = pytest.mark.slow


def settings(pool, test, out, cache, **over):
    base = {
        "name": "rec",
        "seed": 0,
        "strategy": "imfl",
        "output_dir": str(out),
        "cache_dir": str(cache),
        "data": {"pool": str(pool), "test": str(test), "labels": ["neutral", "positive", "negative"]},
        "budget": {"total": 60, "human": 20, "rounds": 2},
        "llm": {"annotator": "recorded", "column": "llm_gpt4"},
        "student": {"epochs": 1, "min_steps": 10, "max_length": 64, "batch_size": 16},
        "compare_human_only": True,
    }
    return small_config(base, **over)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, shared_data):
    """150 FPB items with GPT-4's recorded labels and 60 test items."""
    d = tmp_path_factory.mktemp("export-data")
    pool = read_jsonl(shared_data / "fpb_recorded" / "pool.jsonl")[:150]
    test = read_jsonl(shared_data / "fpb_recorded" / "test.jsonl")[:60]
    return write_jsonl(d / "pool.jsonl", pool), write_jsonl(d / "test.jsonl", test)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, recorded, imfl_cache):
    """A run finished through `imfl run`, as a user runs it: (run folder, the command's output)."""
    from imfl.config import config_to_toml

    out = tmp_path_factory.mktemp("export-runs")
    cfg = settings(*recorded, out, imfl_cache)
    path = out / "rec.toml"
    path.write_text(config_to_toml(cfg), encoding="utf-8")
    r = imfl("run", str(path))
    assert r.returncode == 0, r.stderr
    return cfg.run_dir, r.stdout


def test_a_run_ends_with_what_its_llm_labels_bought(finished):
    run_dir, stdout = finished
    metrics = json.loads((run_dir / "metrics.json").read_text())
    last = metrics[-1]
    comparison = last["human_only"]
    assert all("human_only" not in m for m in metrics[:-1])
    labels = read_jsonl(run_dir / "labels.jsonl")
    assert comparison["human_labels"] == sum(r["source"] == "human" for r in labels) == 20
    assert comparison["llm_labels"] == sum(r["source"] == "llm" for r in labels) > 0
    assert 0 < comparison["test_accuracy"] <= 1 and 0 < comparison["test_macro_f1"] <= 1
    assert comparison["gain_accuracy"] == pytest.approx(last["test_accuracy"] - comparison["test_accuracy"], abs=1e-3)
    # The verdict follows the numbers, and the command prints it.
    helped = comparison["gain_accuracy"] > 0.005
    assert comparison["summary"].startswith(
        f"The {comparison['llm_labels']} LLM labels " + ("bought" if helped else "did not help")
    )
    if not helped:
        assert "another LLM" in comparison["summary"] and "llm.eval_sample" in comparison["summary"]
    assert comparison["summary"] in " ".join(stdout.split())
    csv_header = (run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"human_only_test_accuracy", "human_only_gain_accuracy"} <= set(csv_header)


def test_the_comparison_is_measured_once_and_again_after_a_crash(tmp_path, recorded, imfl_cache):
    from imfl.loop import run
    from imfl.store import Store

    cfg = settings(*recorded, tmp_path, imfl_cache, budget={"total": 30, "human": 10, "rounds": 1})
    first = run(cfg)
    measured = first.metrics[-1]["human_only"]
    assert "human-only comparison" in first.timings
    again = run(cfg)  # finished: nothing is trained again
    assert again.metrics[-1]["human_only"] == measured and "human-only comparison" not in again.timings
    # As if the process died while training the human-only student: the last round is evaluated, the comparison
    # missing. Continuing measures it again, the same way.
    with Store.open(cfg.run_dir / "store.sqlite") as store:
        last = store.rounds()[-1]["metrics"]
        del last["human_only"]
        store.set_round_state(1, "evaluated", last)
    continued = run(cfg)
    assert continued.metrics[-1]["human_only"]["test_accuracy"] == pytest.approx(measured["test_accuracy"], abs=0.02)
    off = run(small_config(cfg.model_dump(mode="json"), compare_human_only=False, name="off"))
    assert "human_only" not in off.metrics[-1] and "human-only comparison" not in off.timings


def test_a_run_without_llm_labels_says_its_student_is_the_human_only_one(tmp_path, recorded, imfl_cache):
    from imfl.loop import run

    result = run(settings(*recorded, tmp_path, imfl_cache, strategy="human-only", budget={"total": 20, "human": 20, "rounds": 1}))
    comparison = result.metrics[-1]["human_only"]
    assert comparison["llm_labels"] == 0 and comparison["gain_accuracy"] == 0
    assert comparison["summary"].startswith("No LLM label went into the final student")
    assert "human-only comparison" not in result.timings  # no second training


LOAD_WITHOUT_IMFL = r"""
import json, sys
sys.modules["imfl"] = None  # imfl cannot be imported here: the export must stand on transformers alone
try:
    import imfl
except ImportError:
    pass
else:
    raise SystemExit("imfl is importable")
from transformers import pipeline

model_dir, texts_file, out_file = sys.argv[1:]
texts = [json.loads(line)["text"] for line in open(texts_file, encoding="utf-8")]
classify = pipeline("text-classification", model=model_dir, device="cpu")
results = classify(texts, top_k=None, truncation=True, batch_size=16)
with open(out_file, "w", encoding="utf-8") as fh:
    for r in results:
        fh.write(json.dumps({d["label"]: d["score"] for d in r}) + "\n")
"""


def test_the_export_loads_without_imfl_and_predicts_what_imfl_predict_predicts(finished, tmp_path, shared_data):
    run_dir, _ = finished
    exported = tmp_path / "fpb-classifier"
    r = imfl("export", str(run_dir), "--format", "hf", "--out", str(exported))
    assert r.returncode == 0, r.stderr
    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json"} <= {p.name for p in exported.iterdir()}
    config = json.loads((exported / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert config["id2label"] == {"0": "neutral", "1": "positive", "2": "negative"}
    assert config["label2id"] == {"neutral": 0, "positive": 1, "negative": 2}

    # 200 FPB test sentences (all 970: BENCHMARKS.md), through the standard loader in a process where imfl cannot
    # be imported.
    test = write_jsonl(tmp_path / "fpb-test.jsonl", read_jsonl(shared_data / "fpb" / "test.jsonl")[:200])
    loaded = tmp_path / "pipeline.jsonl"
    p = subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_IMFL, str(exported), str(test), str(loaded)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr
    by_pipeline = read_jsonl(loaded)

    predicted = tmp_path / "predict.jsonl"
    r = imfl("predict", str(run_dir), str(test), "--out", str(predicted))
    assert r.returncode == 0, r.stderr
    by_imfl = read_jsonl(predicted)
    assert len(by_imfl) == len(by_pipeline) == 200
    same = sum(max(a, key=a.get) == b["label"] for a, b in zip(by_pipeline, by_imfl))
    assert same >= len(by_imfl) - 1  # 99.9% of them: a tie within float rounding may fall either way
    worst = max(abs(a[label] - b["probs"][label]) for a, b in zip(by_pipeline, by_imfl) for label in b["probs"])
    assert worst < 1e-4, worst

    # The model card tells what the model is, what it learned from and how it did.
    card = (exported / "README.md").read_text()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    labels = read_jsonl(run_dir / "labels.jsonl")
    assert card.startswith("---\n") and "pipeline_tag: text-classification" in card
    assert "neutral, positive, negative" in card and 'pipeline("text-classification"' in card
    assert f"| human | oracle | {sum(r['source'] == 'human' for r in labels)} |" in card
    assert f"| llm | recorded:llm_gpt4 | {sum(r['source'] == 'llm' for r in labels)} |" in card
    for m in metrics:
        assert f"| {m['round']} | {m['human_labels']} | {m['llm_labels']} |" in card
    assert metrics[-1]["human_only"]["summary"] in card
    assert "## Intended use and limits" in card


def test_export_refuses_a_folder_that_is_not_empty_and_a_run_without_a_student(finished, tmp_path):
    run_dir, _ = finished
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    r = imfl("export", str(run_dir), "--format", "hf", "--out", str(taken))
    assert r.returncode == 2 and "not empty" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert [p.name for p in taken.iterdir()] == ["notes.txt"] and (taken / "notes.txt").read_text() == "mine"

    empty_run = tmp_path / "empty"
    empty_run.mkdir()
    (empty_run / "config.toml").write_text((run_dir / "config.toml").read_text())
    r = imfl("export", str(empty_run), "--format", "hf", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "no trained student" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x").exists()
