"""The small-loss switch (`fidelity.small_loss`): a one-epoch student scores every LLM label and the worst-fitting share
is not trained on; what was dropped is kept in the round's state and counted in its metrics."""

from __future__ import annotations

import json

import pytest

from conftest import small_config
from imfl import run
from imfl.errors import ConfigError


def _config(tmp_path, small_fpb, imfl_cache, **fidelity):
    return small_config(
        {
            "name": "small-loss",
            "seed": 4,
            "strategy": "label-all",
            "output_dir": str(tmp_path),
            "cache_dir": str(imfl_cache),
            "data": {"pool": str(small_fpb["pool"]), "test": str(small_fpb["test"])},
            "budget": {"total": 48, "human": 8},
            "llm": {"annotator": "simulated", "accuracy": 0.6, "eval_sample": 8},
            "fidelity": fidelity,
            "student": {"epochs": 1, "min_steps": 0, "max_length": 32, "batch_size": 16},
        }
    )


@pytest.mark.slow
def test_the_worst_fitting_share_of_llm_labels_is_left_out(tmp_path, small_fpb, imfl_cache):
    result = run(_config(tmp_path, small_fpb, imfl_cache, small_loss=True, small_loss_share=0.25))
    (metrics,) = result.metrics
    assert result.budget_used == {"human": 8, "llm": 40}
    assert metrics["llm_small_loss"] == 10 and 0 <= metrics["llm_small_loss_wrong"] <= 10
    training = json.loads((result.run_dir / "state" / "fidelity_round1.json").read_text())["training"]
    dropped = [row for row in training if row["small_loss"]]
    assert len(training) == 40 and len(dropped) == 10 and all(row["weight"] == 0.0 for row in dropped)
    assert all(row["weight"] > 0 for row in training if not row["small_loss"])


@pytest.mark.slow
def test_without_a_share_the_llm_s_measured_error_rate_is_dropped(tmp_path, small_fpb, imfl_cache):
    result = run(_config(tmp_path, small_fpb, imfl_cache, small_loss=True))
    (metrics,) = result.metrics
    error = 1 - metrics["llm_self_accuracy"]
    assert metrics["llm_self_n"] == 8
    assert metrics["llm_small_loss"] == pytest.approx(error * 40, abs=1)


def test_small_loss_needs_the_llm_measured(tmp_path, tiny_data, imfl_cache):
    with pytest.raises(ConfigError, match="llm.eval_sample"):
        small_config({"data": {"pool": str(tiny_data["pool"])}, "fidelity": {"small_loss": True}})
