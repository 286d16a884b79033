"""Self-training (`[self_training]`): which unlabeled items become pseudo-labels, and a run that trains on them with
their provenance kept."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import small_config
from imfl import run
from imfl.pseudo import pseudo_label_pick


def test_the_most_confident_rows_of_each_predicted_class_are_picked():
    proba = np.array(
        [
            [0.90, 0.05, 0.05],  # 0: class 0, very sure
            [0.60, 0.30, 0.10],  # 1: class 0
            [0.50, 0.40, 0.10],  # 2: class 0, least sure
            [0.70, 0.20, 0.10],  # 3: class 0
            [0.10, 0.80, 0.10],  # 4: class 1
            [0.20, 0.45, 0.35],  # 5: class 1, unsure
            [0.10, 0.10, 0.80],  # 6: class 2
            [0.05, 0.05, 0.90],  # 7: class 2, very sure
        ]
    )
    # proportional, 4 of 8: class shares 4/8, 2/8, 2/8 of 4 -> 2, 1, 1.
    assert sorted(pseudo_label_pick(proba, 4, "proportional").tolist()) == [0, 3, 4, 7]
    # balanced, 6: 2 of each class.
    assert sorted(pseudo_label_pick(proba, 6, "balanced").tolist()) == [0, 3, 4, 5, 6, 7]
    # balanced, 7: class 1 and 2 have only two rows each; the rest goes to class 0.
    assert sorted(pseudo_label_pick(proba, 7, "balanced").tolist()) == [0, 1, 3, 4, 5, 6, 7]
    # Highest confidence first; never more than there are rows; nothing asked, nothing given.
    assert pseudo_label_pick(proba, 3, "balanced").tolist() == [0, 7, 4]
    assert len(pseudo_label_pick(proba, 100)) == 8 and len(pseudo_label_pick(proba, 0)) == 0
    with pytest.raises(ValueError, match="mode 'odd'"):
        pseudo_label_pick(proba, 2, "odd")


@pytest.mark.slow
def test_a_self_training_run_learns_from_unlabeled_items_and_says_which(tmp_path, small_fpb, imfl_cache):
    cfg = small_config(
        {
            "name": "self",
            "seed": 2,
            "strategy": "imfl",
            "output_dir": str(tmp_path),
            "cache_dir": str(imfl_cache),
            "data": {"pool": str(small_fpb["pool"]), "test": str(small_fpb["test"])},
            "budget": {"total": 16, "human": 8, "rounds": 2},
            "llm": {"annotator": "simulated", "accuracy": 0.9},
            "self_training": {"items": 10, "weight": 0.5},
            "student": {"epochs": 1, "min_steps": 0, "max_length": 32, "batch_size": 16},
        }
    )
    result = run(cfg)
    first, second = result.metrics
    assert "pseudo_labels" not in first  # round 1 has no earlier predictions
    assert second["pseudo_labels"] == 10 and 0 <= second["pseudo_accuracy"] <= 1
    picked = json.loads((result.run_dir / "state" / "pseudo_round2.json").read_text())
    labeled = {a["id"] for a in (json.loads(line) for line in (result.run_dir / "labels.jsonl").read_text().splitlines())}
    assert len(picked) == 10 and not {p["id"] for p in picked} & labeled
    assert all(p["label"] in ("negative", "neutral", "positive") and 0 < p["confidence"] <= 1 for p in picked)
    # The pseudo-labels are not annotations: they cost nothing and spend no budget.
    assert result.budget_used == {"human": 8, "llm": 8}
