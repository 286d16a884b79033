"""benchmarks/annotators.py as the ladder section uses it: on a pool whose llm_* columns are drawn by our simulated
LLM, the profile must look like its own simulated reference (answer skew as expected, errors independent of
the other annotator's); the real recorded ones must not: Llama-2-7b is one-sided ("positive" to most sentences),
GPT-4 errs where GPT-3.5 errs."""

import json
import subprocess
import sys

from conftest import REPO, SHARED_DATA, read_jsonl, write_jsonl
from imfl.annotators import AnnotationContext
from imfl.annotators.simulated import SimulatedAnnotator
from imfl.data import Example, Task

SCRIPT = REPO / "benchmarks" / "annotators.py"


def profile(*args: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    r = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120, cwd=SCRIPT.parent)
    return r, [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]


def test_simulated_columns_match_the_simulated_reference_and_llama2_7b_does_not(tmp_path):
    rows = read_jsonl(SHARED_DATA / "fpb" / "pool.jsonl")
    task = Task(labels=("neutral", "positive", "negative"), instruction="")
    items = [Example(r["id"], r["text"], label=r["label"]) for r in rows]
    for name, seed in (("llm_sim_a", 1), ("llm_sim_b", 2)):
        for row, a in zip(rows, SimulatedAnnotator(task, 0.7, seed=seed).annotate(items, AnnotationContext(1))):
            row[name] = a.label
    rows[0]["llm_sim_a"] = None  # one item without an answer: wrong, and counted
    r, (a, b) = profile(str(write_jsonl(tmp_path / "pool.jsonl", rows)), "--markdown")
    assert r.returncode == 0, r.stderr
    assert a["annotator"] == "llm_sim_a" and a["items"] == len(rows) == 3874
    assert a["no_answer"] == round(1 / 3874, 4)
    right = sum(row["llm_sim_a"] == row["label"] for row in rows)
    assert a["accuracy"] == round(right / len(rows), 4) and abs(a["accuracy"] - 0.7) < 0.03
    for p in (a, b):
        assert abs(p["answer_skew"] - p["answer_skew_simulated"]) < 0.03, p
        # independent draws: being wrong where the other is wrong is no likelier than elsewhere
        assert 0.8 < p["difficulty_lift"][("llm_sim_b" if p is a else "llm_sim_a")] < 1.25, p
    assert "| sim_a | " in r.stdout and "(simulated: 1)" in r.stdout

    r, profiles = profile(str(SHARED_DATA / "fpb_recorded" / "pool.jsonl"))
    llama = next(p for p in profiles if p["annotator"] == "llm_llama2_7b")
    assert llama["accuracy"] == 0.4007 and llama["top_answer"] == "positive" and llama["top_answer_share"] > 0.7
    assert llama["answer_skew"] > 2 * llama["answer_skew_simulated"]
    assert llama["top_confusions"][0][:2] == ["neutral", "positive"] and llama["top_confusions"][0][3] > 0.8
    # GPT-4's errors fall on the sentences GPT-3.5 also gets wrong: errors that follow difficulty
    gpt4 = next(p for p in profiles if p["annotator"] == "llm_gpt4")
    assert gpt4["difficulty_lift"]["llm_gpt35_turbo"] > 3 and not gpt4["labels_never_right"] and not a["labels_never_right"]
    # Banking77: no recorded LLM ever answers the intent whose name ends in "?"
    r, profiles = profile(str(SHARED_DATA / "banking77" / "pool.jsonl"))
    assert len(profiles) == 4 and all("reverted_card_payment?" in p["labels_never_right"] for p in profiles)


def test_a_file_without_recorded_columns_gets_one_line(tmp_path):
    path = write_jsonl(tmp_path / "plain.jsonl", [{"id": "a", "text": "x", "label": "yes"}])
    r, _ = profile(str(path))
    assert r.returncode == 2 and "plain.jsonl: no llm_* column" in r.stderr and "Traceback" not in r.stderr
