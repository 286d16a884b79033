"""Fidelity-aware IMFL: the estimates, the calibration map, routing, cleanlab filtering and the adaptive human
share, first as pure functions on small arrays, then inside real runs on real FPB sentences with the simulated
LLM (whose accuracy we choose) and the real student."""

import json
import sqlite3
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from conftest import REPO, read_jsonl, write_jsonl
from imfl import fidelity, run
from imfl.annotators import AnnotationContext, SimulatedAnnotator
from imfl.config import config_from_dict
from imfl.data import Example, Task
from imfl.errors import ConfigError
from test_loop import tiny

TASK = Task(("neutral", "positive", "negative"), "Classify.")


# -- estimates and the calibration map ------------------------------------------------------------------


def test_estimate_counts_the_confusion_matrix_and_smooths_class_precision():
    gold = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    pred = np.array([0, 0, 1, 1, 0, 2, 2, 0])
    est = fidelity.estimate(pred, gold, 3)
    assert est.n == 8 and est.accuracy == pytest.approx(5 / 8)
    assert est.confusion == [[2, 1, 0], [1, 1, 0], [1, 0, 2]]
    assert est.per_class == [pytest.approx(2 / 3, abs=1e-4), 0.5, pytest.approx(2 / 3, abs=1e-4)]
    # Said "neutral" 4 times, right twice: (2 + 2 * 5/8) / (4 + 2).
    assert est.calibration.kind == "class-precision"
    assert est.calibration.precision[0] == pytest.approx((2 + 2 * 5 / 8) / 6, abs=1e-4)
    assert est.ece is None
    np.testing.assert_allclose(est.calibration.p_correct(np.array([0, 2, 1])), np.array(est.calibration.precision)[[0, 2, 1]])


def test_isotonic_map_is_increasing_in_confidence_and_falls_back_to_class_precision_without_one():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.34, 1.0, 400)
    gold = rng.integers(0, 3, 400)
    right = rng.random(400) < conf  # a well calibrated annotator
    pred = np.where(right, gold, (gold + 1) % 3)
    est = fidelity.estimate(pred, gold, 3, conf)
    cal = est.calibration
    assert cal.kind == "isotonic" and est.ece < 0.1
    grid = np.linspace(0, 1, 50)
    p = cal.p_correct(np.zeros(50, dtype=int), grid)
    assert np.all(np.diff(p) >= 0) and p.min() >= 0 and p.max() <= 1
    assert p[-1] > 0.8 and cal.p_correct(np.array([0]), np.array([0.4]))[0] < 0.6
    unknown = cal.p_correct(np.array([1, 2]), np.array([np.nan, np.nan]))
    np.testing.assert_allclose(unknown, np.array(cal.precision)[[1, 2]])
    assert fidelity.Estimate.from_dict(json.loads(json.dumps(est.to_dict()))) == est


def test_out_of_fold_probabilities_need_two_items_of_two_classes():
    x = np.random.default_rng(1).normal(size=(12, 4))
    assert fidelity.out_of_fold_proba(x, [0] * 12, 3, seed=0) is None
    assert fidelity.out_of_fold_proba(x, [0] * 11 + [1], 3, seed=0) is None
    y = np.array([0, 1] * 6)
    x[y == 1] += 3.0
    p = fidelity.out_of_fold_proba(x, y, 3, seed=0)
    assert p.shape == (12, 3) and np.allclose(p.sum(axis=1), 1) and np.all(p[:, 2] == 0)
    assert (p.argmax(axis=1) == y).mean() >= 0.9


def test_out_of_fold_probabilities_count_a_class_seen_once_as_missed_instead_of_giving_up():
    # Many classes, few labels (Banking77's round 1): two classes with several items, six with one each.
    rng = np.random.default_rng(2)
    y = np.array([0] * 10 + [1] * 10 + [2, 3, 4, 5, 6, 7])
    x = rng.normal(size=(len(y), 4))
    x[y == 0, 0] += 4.0
    x[y == 1, 1] += 4.0
    x[y >= 2, 2] -= 4.0
    p = fidelity.out_of_fold_proba(x, y, 10, seed=0)
    assert p.shape == (len(y), 10) and np.allclose(p.sum(axis=1), 1)
    single = y >= 2
    assert np.all(p[single, y[single]] == 0)  # held out, its class was never seen: predicted wrong
    assert (p.argmax(axis=1) == y)[~single].mean() >= 0.9
    assert np.all(p[:, 8:] == 0)  # classes nobody labeled get no probability
    # cleanlab takes these probabilities, and keeps the only label of a class (it cannot tell it is wrong).
    flagged = fidelity.label_issues(y, p, np.ones(len(y), dtype=bool))
    assert not flagged[single].any()


# -- routing, filtering, the adaptive rule ---------------------------------------------------------------


def test_routing_drops_exactly_the_labels_below_the_threshold():
    p = np.array([0.2, 0.5, 0.49999, 0.9, 0.5000001])
    assert fidelity.route(p, 0.5).tolist() == [False, True, False, True, True]


def test_label_issues_only_ever_flags_candidates():
    rng = np.random.default_rng(2)
    y = np.repeat([0, 1, 2], 40)
    probs = np.full((120, 3), 0.05)
    probs[np.arange(120), y] = 0.9
    noisy = y.copy()
    wrong = rng.choice(120, 20, replace=False)
    noisy[wrong] = (y[wrong] + 1) % 3
    everything = fidelity.label_issues(noisy, probs, np.ones(120, dtype=bool))
    assert set(np.flatnonzero(everything)) == set(wrong)  # cleanlab finds the flipped labels here
    half = np.arange(120) % 2 == 0
    flagged = fidelity.label_issues(noisy, probs, half)
    assert set(np.flatnonzero(flagged)) == {i for i in wrong if i % 2 == 0}


def _estimate(accuracy: float, n: int = 50) -> fidelity.Estimate:
    return fidelity.Estimate(n, accuracy, [None] * 3, [[0] * 3] * 3, None, None)


def test_the_adaptive_rule_needs_both_estimates_on_enough_items():
    assert fidelity.decide(2, _estimate(0.5), None, False) is None
    assert fidelity.decide(2, _estimate(0.5, n=fidelity.MIN_DECISION_ITEMS - 1), _estimate(0.7), False) is None
    stop = fidelity.decide(2, _estimate(0.5), _estimate(0.7), llm_done_this_round=False)
    assert not stop.buy_llm and stop.effective == 2 and "0.500" in stop.reason and "0.700" in stop.reason
    go = fidelity.decide(2, _estimate(0.7), _estimate(0.7), llm_done_this_round=True)
    assert go.buy_llm and go.effective == 3


@pytest.mark.parametrize("seed", range(40))
def test_the_adaptive_rule_moves_budget_only_to_humans_and_never_past_the_cap(seed):
    from imfl.query import round_plan

    rng = np.random.default_rng(seed)
    rounds = int(rng.integers(1, 7))
    total = int(rng.integers(rounds, 400))
    human = int(rng.integers(0, total + 1))
    base = round_plan(total, human, rounds)
    cap = human + int(rng.integers(0, 100))
    plan = list(base)
    for t in range(1, rounds + 1):
        llm_done = bool(rng.integers(0, 2))
        decision = fidelity.Decision(t, t + 1 if llm_done else t, bool(rng.integers(0, 2)), "test")
        new, moved = fidelity.apply_decision(plan, base, decision, cap, human_open_from=t + 1)
        assert new[: decision.effective - 1] == plan[: decision.effective - 1]  # rounds already run keep their plan
        assert all(l <= b for (_, l), (_, b) in zip(new, base))  # the LLM never gets more than planned
        assert all(h >= b for (h, _), (b, _) in zip(new, base))  # humans never lose planned labels
        assert sum(h for h, _ in new) <= max(cap, human)
        assert new[t - 1][0] == plan[t - 1][0]  # this round's human batch is already labeled
        if decision.buy_llm:
            assert moved == 0 and all(n == b for n, b in zip(new[t:], base[t:]))
        else:
            assert all(l == 0 for _, l in new[decision.effective - 1 :])
            assert sum(h for h, _ in new) - sum(h for h, _ in plan) == moved
        plan = new


# -- the simulated LLM ------------------------------------------------------------------------------------


def test_simulated_llm_is_right_as_often_as_told_and_spreads_its_errors(fpb_rows):
    pool = [Example(r["id"], r["text"], label=r["label"]) for r in fpb_rows["pool"]]  # all 3,874
    annotations = SimulatedAnnotator(TASK, 0.7, seed=3).annotate(pool, AnnotationContext(1))
    right = np.mean([a.label == e.label for a, e in zip(annotations, pool)])
    assert abs(right - 0.7) < 0.03
    for gold in TASK.labels:
        errors = Counter(a.label for a, e in zip(annotations, pool) if e.label == gold and a.label != gold)
        assert len(errors) == 2 and min(errors.values()) / max(errors.values()) > 0.6  # both other labels, about evenly
    assert {a.annotator for a in annotations} == {"simulated:0.7"} and {a.method for a in annotations} == {"simulated"}
    again = SimulatedAnnotator(TASK, 0.7, seed=3).annotate(pool[:100][::-1], AnnotationContext(2))
    assert [a.label for a in again[::-1]] == [a.label for a in annotations[:100]]  # per item, not per call order
    other = SimulatedAnnotator(TASK, 0.7, seed=4).annotate(pool[:100], AnnotationContext(1))
    assert [a.label for a in other] != [a.label for a in annotations[:100]]


def test_fidelity_settings_are_checked(tiny_data):
    base = {"data": {"pool": str(tiny_data["pool"])}}
    with pytest.raises(ConfigError, match="llm.accuracy is empty"):
        config_from_dict(base | {"llm": {"annotator": "simulated"}})
    with pytest.raises(ConfigError, match="set llm.eval_sample"):
        config_from_dict(base | {"fidelity": {"routing": True}})
    with pytest.raises(ConfigError, match=r"fidelity.human_max \(10\) is below budget.human \(200\)"):
        config_from_dict(base | {"fidelity": {"human_max": 10}})
    with pytest.raises(ConfigError, match="llm.accuracy"):
        config_from_dict(base | {"llm": {"annotator": "simulated", "accuracy": 1.5}})


def test_the_fidelity_preset_turns_on_every_switch_the_config_does_not_set(tiny_data):
    from imfl.config import resolve_strategy

    base = {"data": {"pool": str(tiny_data["pool"])}, "strategy": "fidelity"}
    full = resolve_strategy(config_from_dict(base))
    assert (full.fidelity.weighting, full.fidelity.routing, full.fidelity.filter, full.fidelity.adaptive) == (True,) * 4
    assert full.llm.eval_sample == 50 and resolve_strategy(full) == full
    ablation = resolve_strategy(config_from_dict(base | {"fidelity": {"routing": False}, "llm": {"eval_sample": 20}}))
    assert (ablation.fidelity.weighting, ablation.fidelity.routing, ablation.fidelity.filter) == (True, False, True)
    assert ablation.llm.eval_sample == 20 and resolve_strategy(ablation) == ablation


# -- inside real runs ----------------------------------------------------------------------------------------


def fidelity_run(small_fpb, imfl_cache, out, accuracy, **fid):
    cfg = tiny(
        small_fpb["pool"],
        small_fpb["test"],
        out,
        imfl_cache,
        name=f"fid-{accuracy}",
        budget={"total": 45, "human": 24, "rounds": 3},
        llm={"annotator": "simulated", "accuracy": accuracy, "eval_sample": 30},
        fidelity=fid,
    )
    return run(cfg)


def state(result, t):
    return json.loads((result.run_dir / "state" / f"fidelity_round{t}.json").read_text())


@pytest.fixture(scope="module")
def bad_llm_run(small_fpb, imfl_cache, tmp_path_factory):
    return fidelity_run(small_fpb, imfl_cache, tmp_path_factory.mktemp("fid"), 0.1, adaptive=True, weighting=True, human_max=30)


@pytest.mark.slow
def test_a_bad_llm_is_measured_and_no_longer_paid(bad_llm_run):
    result = bad_llm_run
    m = result.metrics
    first = m[0]
    assert first["llm_self_n"] == first["human_total"] and first["llm_self_accuracy"] < 0.3
    assert first["student_est_n"] == first["human_total"] and first["student_est_accuracy"] > first["llm_self_accuracy"]
    assert first["buy_llm"] is False and "<" in first["decision"]
    # Round 1 decided after its human labels, before its LLM ones: no LLM label was ever bought.
    assert result.budget_used["llm"] == 0 and all(r["llm_labels"] == 0 for r in m)
    # What the LLM would have had moves to humans, up to human_max (30) and no further.
    assert result.budget_used["human"] == 30 and first["human_moved"] == 6
    # The round metrics keep the confusion matrix sparse: the non-zero cells of the full one in the state.
    full = state(result, 1)["llm"]["confusion"]
    assert first["fidelity"]["llm"]["confusion_nonzero"] == [
        [g, p, n] for g, row in enumerate(full) for p, n in enumerate(row) if n
    ]
    assert sum(n for _, _, n in first["fidelity"]["llm"]["confusion_nonzero"]) == first["llm_self_n"]
    assert first["fidelity"]["student"]["calibration"]
    labels = read_jsonl(result.run_dir / "labels.jsonl")
    assert {r["source"] for r in labels} == {"human"}


@pytest.mark.slow
def test_probes_never_repeat_an_item_and_metrics_keep_the_nested_estimates_out_of_the_csv(bad_llm_run):
    result = bad_llm_run
    probed = [r["id"] for t in (1, 2, 3) for r in state(result, t)["probe"]]
    assert len(probed) == len(set(probed)) == result.budget_used["human"]
    assert "fidelity" not in (result.run_dir / "metrics.csv").read_text().splitlines()[0]
    saved = json.loads((result.run_dir / "metrics.json").read_text())
    assert saved[0]["fidelity"]["llm"]["n"] == saved[0]["llm_self_n"]


@pytest.mark.slow
def test_weights_follow_the_calibration_map_and_routing_and_filtering_drop_what_they_say(small_fpb, imfl_cache, tmp_path):
    result = fidelity_run(small_fpb, imfl_cache, tmp_path, 0.6, weighting=True, routing=True, route_to_human=True, filter=True)
    store_labels = read_jsonl(result.run_dir / "labels.jsonl")
    with sqlite3.connect(result.run_dir / "store.sqlite") as c:
        order = json.loads(c.execute("SELECT value FROM meta WHERE key = 'labels'").fetchone()[0])
    for t, m in enumerate(result.metrics, 1):
        s = state(result, t)
        cal = fidelity.Estimate.from_dict(s["llm"]).calibration
        llm = [r for r in store_labels if r["source"] == "llm" and r["round"] <= t]
        human_ids = {r["id"] for r in store_labels if r["source"] == "human" and r["round"] <= t}
        trained = {row["id"]: row for row in s["training"]}
        assert set(trained) == {r["id"] for r in llm if r["id"] not in human_ids}
        for r in llm:
            if r["id"] not in trained:
                continue
            row = trained[r["id"]]
            expected = cal.p_correct(np.array([order.index(r["label"])]))[0]
            assert row["p_correct"] == pytest.approx(expected, abs=1e-5)
            assert row["routed"] == (expected < m["route_threshold"])
            assert row["weight"] == (0.0 if row["routed"] or row["filtered"] else pytest.approx(expected, abs=1e-5))
        assert m["route_threshold"] == pytest.approx(s["student"]["accuracy"], abs=1e-4)
        assert m["llm_routed"] == sum(r["routed"] for r in s["training"])
        assert m["llm_filtered"] == sum(r["filtered"] for r in s["training"])
        assert not any(r["routed"] and r["filtered"] for r in s["training"])
        assert m["llm_filtered_wrong"] <= m["llm_filtered"]
    # Round 1's routed items head round 2's human batch (as many as it has room for).
    routed = state(result, 1)["routed"]
    round2_human = [r["id"] for r in store_labels if r["source"] == "human" and r["round"] == 2]
    assert routed and round2_human[: min(len(routed), len(round2_human))] == routed[: len(round2_human)]


@pytest.mark.slow
def test_a_good_llm_keeps_being_bought(small_fpb, imfl_cache, tmp_path):
    result = fidelity_run(small_fpb, imfl_cache, tmp_path, 0.95, adaptive=True)
    assert all(m["buy_llm"] for m in result.metrics)
    assert result.budget_used == {"human": 24, "llm": 21}


def benchmark_script(name: str, *args) -> subprocess.CompletedProcess:
    """benchmarks/NAME run as a script, as a user runs it."""
    return subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / name), *map(str, args)], capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_the_prequential_script_sets_the_real_student_beside_the_llm_on_the_same_items(bad_llm_run):
    result = bad_llm_run
    r = benchmark_script("prequential.py", result.run_dir)
    assert r.returncode == 0, r.stderr
    [row] = [line for line in r.stdout.splitlines() if result.run_dir.name in line]
    # With eval_sample 30 the self-check probed every new human label, so the items are those the metrics scored.
    later = [m for m in result.metrics if m.get("prequential_n")]
    n = sum(m["prequential_n"] for m in later)
    student = sum(m["prequential_n"] * m["prequential_accuracy"] for m in later) / n
    probed = [p for m in later for p in state(result, m["round"])["probe"]]
    assert len(probed) == n
    llm = sum(p["label"] == p["gold"] for p in probed) / n
    # The metrics keep each round's accuracy rounded, and a count like 3/16 = 0.1875 sits on a rounding tie:
    # compare within the printed precision, not the printed digits.
    name, count, printed_student, printed_llm = [c.strip() for c in row.strip("|").split("|")][:4]
    assert (name, int(count)) == (result.run_dir.name, n)
    assert abs(float(printed_student) - student) <= 0.0006 and abs(float(printed_llm) - llm) <= 0.0006


def table(stdout: str) -> list[list[str]]:
    """The cells of a Markdown table's body rows."""
    return [[c.strip() for c in line.strip("|").split("|")] for line in stdout.splitlines()[2:]]


@pytest.mark.slow
def test_the_ceiling_script_probes_the_frozen_embeddings_with_gold_labels_and_never_the_test_set(
    bad_llm_run, small_fpb, tmp_path
):
    config = bad_llm_run.run_dir / "config.toml"
    r = benchmark_script("ceiling.py", config)
    assert r.returncode == 0, r.stderr
    rows = table(r.stdout)
    # Always answering the majority label: its test share.
    gold = Counter(row["label"] for row in read_jsonl(small_fpb["test"]))
    majority = rows[0][1].removeprefix("always ")
    assert gold[majority] == max(gold.values()) and float(rows[0][2]) == pytest.approx(
        gold[majority] / sum(gold.values()), abs=5e-4
    )
    # Probes with H (24) and budget-sized (45) gold subsets over three seeds, and with the whole pool (60) once.
    probes = [row[1] for row in rows[1:4]]
    assert [p.split(",")[1].split()[0] for p in probes] == ["24", "45", "60"]
    assert all("±" in c for row in rows[1:3] for c in row[2:]) and not any("±" in c for c in rows[3][2:])
    # FPB's sentiment is in the embeddings: the probe that reads the most, out of fold on the pool, is well above chance.
    assert "out of fold on the pool" in rows[4][1] and float(rows[4][4]) > 0.3
    # The test set only scores: with its labels rotated, C and the out-of-fold row stay as they were.
    rotated = tmp_path / "test.jsonl"
    labels = sorted(gold)
    write_jsonl(
        rotated,
        [{**row, "label": labels[(labels.index(row["label"]) + 1) % len(labels)]} for row in read_jsonl(small_fpb["test"])],
    )
    other = tmp_path / "rotated.toml"
    other.write_text(config.read_text().replace(str(small_fpb["test"]), str(rotated)))
    r = benchmark_script("ceiling.py", other)
    assert r.returncode == 0, r.stderr
    again = table(r.stdout)
    assert [row[1] for row in again[1:]] == [row[1] for row in rows[1:]] and again[4] == rows[4]
    assert again[3][2:] != rows[3][2:]  # while the test scores themselves change
    # A pool without gold labels cannot be probed: one line naming the config, exit status 2, the pool untouched.
    unlabeled = tmp_path / "pool.jsonl"
    write_jsonl(unlabeled, [{"id": row["id"], "text": row["text"]} for row in read_jsonl(small_fpb["pool"])])
    before = unlabeled.read_bytes()
    bad = tmp_path / "unlabeled.toml"
    bad.write_text(config.read_text().replace(str(small_fpb["pool"]), str(unlabeled)))
    r = benchmark_script("ceiling.py", bad)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and str(bad) in r.stderr and unlabeled.read_bytes() == before


@pytest.mark.slow
def test_the_guessing_script_scores_the_saved_student_against_chance_at_its_own_shares(bad_llm_run, small_fpb, tmp_path):
    result = bad_llm_run
    r = benchmark_script("guessing.py", result.run_dir)
    assert r.returncode == 0, r.stderr
    assert "recorded" not in r.stderr  # the saved student is the one the last round scored
    [row] = [line for line in r.stdout.splitlines() if result.run_dir.name in line]
    cells = [c.strip() for c in row.strip("|").split("|")]
    accuracy, chance, kappa = (float(c) for c in cells[1:4])
    assert accuracy == pytest.approx(result.metrics[-1]["test_accuracy"], abs=5e-4)
    # Chance is the shares it answers against the test set's own shares, and kappa is the accuracy above chance.
    gold = Counter(r["label"] for r in read_jsonl(small_fpb["test"]))
    n = sum(gold.values())
    shares = {name: float(q) for name, q, _ in (part.replace("/", "").split() for part in cells[5].split(", "))}
    assert set(shares) == set(gold) and sum(shares.values()) == pytest.approx(1, abs=0.02)
    assert chance == pytest.approx(sum(shares[k] * gold[k] / n for k in gold), abs=0.01)
    assert kappa == pytest.approx((accuracy - chance) / (1 - chance), abs=0.002)
    majority, share = cells[4].split()
    assert gold[majority] == max(gold.values()) and float(share) == pytest.approx(gold[majority] / n, abs=5e-4)
    # A pattern that matches no finished run is one line on stderr and exit status 2.
    r = benchmark_script("guessing.py", tmp_path / "nothing*")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "adapter/" in r.stderr
