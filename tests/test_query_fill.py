"""A round gets the batch it planned even when the pool repeats itself: k-means on duplicate-heavy embeddings
finds fewer distinct clusters than the batch asks for, and the query fills the rest instead of leaving budget
unspent (or printing sklearn's ConvergenceWarning)."""

import json
import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

from conftest import imfl, read_jsonl, write_jsonl
from imfl.query import ACQUISITIONS, eeq, round_plan


def duplicate_heavy(n_distinct=26, n_same=29, dim=8, seed=0):
    """``n_distinct`` far-apart points followed by ``n_same`` copies of one more point: k-means can find at most
    ``n_distinct + 1`` clusters."""
    rng = np.random.default_rng(seed)
    distinct = rng.normal(size=(n_distinct + 1, dim)) * 10
    return np.concatenate([distinct[:-1], np.repeat(distinct[-1:], n_same, axis=0)]).astype(np.float32)


def no_convergence_warning(fn, *args):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn(*args)
    assert not [w for w in caught if issubclass(w.category, ConvergenceWarning)], [str(w.message) for w in caught]
    return out


def test_eeq_fills_its_batch_with_the_most_uncertain_items_left():
    x = duplicate_heavy()
    unc = np.random.default_rng(1).random(len(x))
    picked = no_convergence_warning(eeq, x, unc, 45, 0)
    assert len(picked) == 45 and len(set(picked.tolist())) == 45 and picked.max() < len(x)
    # exploration kept: every distinct point is its own cluster and is picked
    assert set(range(26)) <= set(picked.tolist())
    # the rest of the batch is the most uncertain of the duplicates (their cluster gives one, the fill the others)
    dups = np.arange(26, len(x))
    assert set(picked.tolist()) - set(range(26)) == set(dups[np.argsort(-unc[dups])[:19]].tolist())
    # the one-per-cluster picks come first, the fill after them
    assert set(picked[:27].tolist()) >= set(range(26))


@pytest.mark.parametrize("name", ["eeq", "diversity"])
def test_without_a_student_the_batch_is_filled_too(name):
    x = duplicate_heavy()
    picked = no_convergence_warning(ACQUISITIONS[name], x, None, 45, 3)
    assert len(set(picked.tolist())) == 45 and set(range(26)) <= set(picked.tolist())
    np.testing.assert_array_equal(picked, ACQUISITIONS[name](x, None, 45, 3))  # still seeded


def test_a_batch_as_large_as_the_pool_takes_every_item():
    x = duplicate_heavy()
    unc = np.random.default_rng(2).random(len(x))
    assert sorted(no_convergence_warning(eeq, x, unc, len(x), 0).tolist()) == list(range(len(x)))


@pytest.mark.slow
def test_a_run_on_a_pool_with_many_repeated_sentences_spends_its_whole_budget(tmp_path, shared_data, imfl_cache):
    """The reported case (100 items, 30 the same sentence, budget 90 in 2 rounds: round 2 got 27 of its 45 items and
    the run used 72 of its 90 labels) at a smaller scale: 40 items, 12 the same sentence, budget 36 (6 human) in 2
    rounds. Round 2's 18 items come from the 22 left, 11 of them the same sentence: 12 distinct texts."""
    rows = [r for r in read_jsonl(shared_data / "fpb_recorded" / "pool.jsonl") if r["llm_gpt4"]][:40]
    for r in rows[:12]:
        r["text"] = rows[0]["text"]
    write_jsonl(tmp_path / "pool.jsonl", rows)
    write_jsonl(tmp_path / "test.jsonl", read_jsonl(shared_data / "fpb_recorded" / "test.jsonl")[:10])
    (tmp_path / "run.toml").write_text(
        f"""
name = "dups"
strategy = "imfl"
compare_human_only = false
output_dir = "runs"
cache_dir = {json.dumps(str(imfl_cache))}
[data]
pool = "pool.jsonl"
test = "test.jsonl"
labels = ["neutral", "positive", "negative"]
[budget]
total = 36
human = 6
rounds = 2
[llm]
annotator = "recorded"
column = "llm_gpt4"
[student]
epochs = 1
min_steps = 0
max_length = 32
batch_size = 16
""",
        encoding="utf-8",
    )
    r = imfl("run", str(tmp_path / "run.toml"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ConvergenceWarning" not in r.stderr
    metrics = json.loads((tmp_path / "runs" / "dups" / "metrics.json").read_text())
    assert [m["human_labels"] + m["llm_labels"] for m in metrics] == [18, 18]
    assert sum(m["human_labels"] for m in metrics) == 6
    labels = read_jsonl(tmp_path / "runs" / "dups" / "labels.jsonl")
    assert len(labels) == 36 and len({x["id"] for x in labels}) == 36


@pytest.mark.parametrize("schedule", ["geometric", "linear", "fixed"])
@pytest.mark.parametrize(
    "total,human,rounds", [(100, 0, 5), (100, 0, 1), (100, 30, 1), (100, 100, 1), (7, 0, 3), (1, 0, 1), (1, 1, 1), (5, 5, 5)]
)
def test_round_plan_without_humans_or_with_one_round_sums_to_the_budget(schedule, total, human, rounds):
    plan = round_plan(total, human, rounds, schedule)
    assert len(plan) == rounds and all(h >= 0 and l >= 0 for h, l in plan)
    assert sum(h + l for h, l in plan) == total and sum(h for h, _ in plan) == human
    if human == 0:
        assert all(h == 0 for h, _ in plan)
    if rounds == 1:
        assert plan == [(human, total - human)]


def test_every_round_plan_spends_exactly_its_budget():
    """Every budget up to 40 labels, every human share, 1-5 rounds, every schedule: the plan spends exactly the
    budget and the human budget, and rounds differ in size by at most one label."""
    for total in range(1, 41):
        for rounds in range(1, min(total, 5) + 1):
            for human in range(total + 1):
                for schedule in ("geometric", "linear", "fixed"):
                    plan = round_plan(total, human, rounds, schedule)
                    sizes = [h + l for h, l in plan]
                    case = (total, human, rounds, schedule, plan)
                    assert sum(sizes) == total and sum(h for h, _ in plan) == human, case
                    assert min(l for _, l in plan) >= 0 and max(sizes) - min(sizes) <= 1, case
