"""cleanlab's filter inside a real run: with a poor recorded LLM (Llama-2-7b-chat on the FPB sentences all annotators
agreed on: 40% right, it says "positive" to most), ``fidelity.filter`` removes LLM labels in every round, the ones it
removes are mostly wrong, and wrong more often than the ones it keeps.

The setting (the whole 896-item pool, 60 human and 60 LLM labels in 2 rounds) was checked at seeds 0-7: at least 5
labels removed per round, at least 72% of them wrong, and the removed ones wrong at least 14 points more often than the
kept ones. The student's precision differs between processors (bfloat16 where the CPU has it), so round 2's items
differ between machines too: the bounds below leave room for that."""

from __future__ import annotations

import json

import pytest

from conftest import read_jsonl, small_config
from imfl import run

# slow: a real run.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def filtered_run(tmp_path_factory, shared_data, imfl_cache):
    out = tmp_path_factory.mktemp("filter")
    cfg = small_config(
        {
            "name": "filter",
            "seed": 0,
            "strategy": "imfl",
            "output_dir": str(out),
            "cache_dir": str(imfl_cache),
            "data": {"pool": str(shared_data / "fpb_recorded" / "pool.jsonl"), "labels": ["neutral", "positive", "negative"]},
            "budget": {"total": 120, "human": 60, "rounds": 2},
            "llm": {"annotator": "recorded", "column": "llm_llama2_7b", "eval_sample": 20},
            "fidelity": {"filter": True},
            "student": {"epochs": 1, "min_steps": 0, "max_length": 32, "batch_size": 16},
        }
    )
    return run(cfg)


def test_the_filter_removes_llm_labels_and_mostly_wrong_ones(filtered_run, shared_data):
    result = filtered_run
    gold = {r["id"]: r["label"] for r in read_jsonl(shared_data / "fpb_recorded" / "pool.jsonl")}
    given = {r["id"]: r["label"] for r in read_jsonl(result.run_dir / "labels.jsonl") if r["source"] == "llm"}
    assert len(result.metrics) == 2
    for m in result.metrics:
        trained = json.loads((result.run_dir / "state" / f"fidelity_round{m['round']}.json").read_text())["training"]
        removed = [row["id"] for row in trained if row["filtered"]]
        assert all(row["weight"] == 0.0 for row in trained if row["filtered"])  # a removed label trains nothing
        assert m["llm_filtered"] == len(removed) >= 3, m
        assert m["llm_filtered_wrong"] == sum(given[i] != gold[i] for i in removed)
        assert m["llm_filtered_wrong"] > 0.6 * m["llm_filtered"], m  # mostly wrong
    # The last round judges every LLM label of the run: those removed are wrong more often than those kept.
    kept = [row["id"] for row in trained if not row["filtered"]]

    def wrong(ids):
        return sum(given[i] != gold[i] for i in ids) / len(ids)

    assert wrong(removed) > wrong(kept) + 0.05, (wrong(removed), wrong(kept))
