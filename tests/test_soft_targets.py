"""`student.soft_targets`: LLM labels that come with probabilities train towards them; the rest stay hard."""

from __future__ import annotations

import json

import pytest

from conftest import read_jsonl, small_config, write_jsonl
from imfl import run

# slow: a real run.
pytestmark = pytest.mark.slow


def test_llm_labels_with_probabilities_train_as_soft_targets(tmp_path, small_fpb, imfl_cache):
    rows = read_jsonl(small_fpb["pool"])
    labels = ["negative", "neutral", "positive"]
    # A recorded LLM (a batch job's answers): right, 70 % sure; every third answer without probabilities.
    answers = [
        {"id": r["id"], "label": r["label"]}
        | ({} if i % 3 == 0 else {"probs": {lab: 0.7 if lab == r["label"] else 0.15 for lab in labels}})
        for i, r in enumerate(rows)
    ]
    recorded = write_jsonl(tmp_path / "answers.jsonl", answers)
    cfg = small_config(
        {
            "name": "soft",
            "seed": 1,
            "strategy": "imfl",
            "output_dir": str(tmp_path),
            "cache_dir": str(imfl_cache),
            "data": {"pool": str(small_fpb["pool"]), "test": str(small_fpb["test"]), "labels": labels},
            "budget": {"total": 24, "human": 8, "rounds": 2},
            "llm": {"annotator": "recorded", "file": str(recorded)},
            "student": {"epochs": 1, "min_steps": 0, "max_length": 32, "batch_size": 16, "soft_targets": True},
        }
    )
    result = run(cfg)
    with_probs = {a["id"] for a in answers if "probs" in a}
    llm_ids = [
        json.loads(line)["id"]
        for line in (result.run_dir / "labels.jsonl").read_text().splitlines()
        if json.loads(line)["source"] == "llm"
    ]
    assert len(llm_ids) == 16
    # Round 2 trains on every LLM label so far: those with probabilities are soft, the others hard.
    assert result.metrics[-1]["llm_soft_targets"] == len(set(llm_ids) & with_probs) < len(llm_ids)
    assert 0 < result.metrics[0]["llm_soft_targets"] <= result.metrics[-1]["llm_soft_targets"]
