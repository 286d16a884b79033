"""`llm.relabel` (FreeAL's collaboration): the live LLM answers again for labels the student doubts, with
student-verified demonstrations; the newest answer is the one trained on, and every answer counts once."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from conftest import read_jsonl, small_config
from imfl import run
from imfl.errors import ConfigError
from imfl.store import Store


def test_relabeling_needs_a_live_llm(small_fpb):
    with pytest.raises(ConfigError, match=r"llm\.relabel is 5 but llm\.annotator is 'recorded'.*local or openai"):
        small_config(
            {
                "data": {"pool": str(small_fpb["pool"])},
                "llm": {"annotator": "recorded", "column": "label", "relabel": 5},
            }
        )


@pytest.mark.slow
def test_the_llm_relabels_what_the_student_doubts_within_the_budget(tmp_path, small_fpb, imfl_cache):
    cfg = small_config(
        {
            "name": "relabel",
            "seed": 0,
            "strategy": "imfl",
            "output_dir": str(tmp_path),
            "cache_dir": str(imfl_cache),
            "data": {"pool": str(small_fpb["pool"]), "test": str(small_fpb["test"])},
            "budget": {"total": 36, "human": 9, "rounds": 3},
            "llm": {"annotator": "local", "k": 2, "relabel": 4},  # the bundled SmolLM2
            "student": {"epochs": 1, "min_steps": 8, "max_length": 32, "batch_size": 8},
        }
    )
    result = run(cfg)
    rows = read_jsonl(result.run_dir / "labels.jsonl")
    llm_rows = [r for r in rows if r["source"] == "llm"]
    asked = Counter(r["id"] for r in llm_rows)
    relabeled = {i for i, n in asked.items() if n > 1}
    rounds = {m["round"]: m for m in result.metrics}

    # Each answer is a label bought, once: the LLM's 27 labels include the relabels.
    assert len(llm_rows) == sum(m["llm_labels"] for m in result.metrics) == 27
    assert max(asked.values()) <= 2
    assert "llm_relabeled" not in rounds[1]
    assert 0 < sum(m.get("llm_relabeled", 0) for m in result.metrics) == len(relabeled) <= 8
    assert all(m.get("llm_relabeled", 0) <= 4 for m in result.metrics)

    with Store.open(result.run_dir / "store.sqlite") as store:
        human = {a.item_id for a in store.annotations(source="human")}
        for t in (2, 3):
            path = result.run_dir / "state" / f"relabel_round{t}.json"
            if not path.is_file():
                continue
            state = json.loads(path.read_text())
            again = {c["id"] for c in state["relabeled"]}
            answers = [a for a in store.annotations(round=t, source="llm") if a.item_id in again]
            earlier = {a.item_id: a.label for a in store.annotations(source="llm") if a.round < t and a.item_id in again}
            # Only labels of earlier rounds go back, and the record says what each was before and after.
            assert again and set(earlier) == again
            assert all(c["before"] == earlier[c["id"]] for c in state["relabeled"])
            assert rounds[t]["llm_relabel_changed"] == sum(c["before"] != c["after"] for c in state["relabeled"])
            # The demonstrations are human labels or LLM labels the student agreed with, never a doubted one.
            shown = {d for a in answers for d in a.demo_ids}
            assert shown and not shown & again
            assert not shown - human or state["demos_from_llm"] > 0
        # The newest answer is the one the student trains on: labels.jsonl keeps both, in order.
        newest = {r["id"]: r["label"] for r in llm_rows}
        last = {a.item_id: a.label for a in store.annotations(source="llm")}
        assert newest == last
