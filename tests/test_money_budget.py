"""Budgets in money (`budget.cost`): human labels as budget.human and the schedule say, LLM labels as far as the rest
of the money goes (up to the whole pool), never more than the budget, every answer paid once; the plain baseline
`label-all`; the settings that cannot be honoured are refused before any work."""

from __future__ import annotations

import math
import sqlite3
from collections import Counter

import pytest

from conftest import REPO, cells, imfl, read_jsonl, small_config
from fault_server import FaultServer, completion
from imfl import Annotation, run
from imfl.bench import load_grid
from imfl.config import resolve_strategy
from imfl.errors import ConfigError
from imfl.loop import money_spent, planned_total
from imfl.store import Store

STUDENT = {"epochs": 1, "min_steps": 0, "max_length": 32, "batch_size": 16}


class FlakyPaidLLM:
    """Answers with the gold label at `price` an answer; the first time it is asked about every third item it fails,
    and that failed answer is paid too. Counts how often it was asked about each item."""

    name = "flaky-paid"

    def __init__(self, gold: dict[str, str], price: float):
        self.gold, self.price, self.asked = gold, price, Counter()

    def annotate(self, items, context):
        out = []
        for e in items:
            self.asked[e.id] += 1
            fails = self.asked[e.id] == 1 and len(self.asked) % 3 == 0
            out.append(
                Annotation(
                    e.id,
                    context.round,
                    "llm",
                    self.name,
                    None if fails else self.gold[e.id],
                    cost=self.price,
                    error="flaky" if fails else None,
                )
            )
        return out


def _config(tmp_path, small_fpb, imfl_cache, **over):
    settings = {
        "name": "money",
        "seed": 3,
        "strategy": "imfl",
        "output_dir": str(tmp_path),
        "cache_dir": str(imfl_cache),
        "data": {"pool": str(small_fpb["pool"]), "test": str(small_fpb["test"])},
        "student": dict(STUDENT),
    }
    for section, values in over.items():
        if isinstance(values, dict):
            settings.setdefault(section, {}).update(values)
        else:
            settings[section] = values
    return small_config(settings)


def _rows(run_dir) -> list[sqlite3.Row]:
    with sqlite3.connect(run_dir / "store.sqlite") as c:
        c.row_factory = sqlite3.Row
        return c.execute("SELECT * FROM annotations WHERE retracted_at IS NULL ORDER BY id").fetchall()


@pytest.mark.slow
def test_a_money_budget_is_spent_to_the_end_and_never_beyond(tmp_path, small_fpb, imfl_cache):
    gold = {r["id"]: r["label"] for r in read_jsonl(small_fpb["pool"])}
    llm = FlakyPaidLLM(gold, price=0.5)
    # 6 human labels at 1.0, then 14.0 for LLM answers at 0.5: 28 answers, some of which fail (and are paid).
    cfg = _config(
        tmp_path, small_fpb, imfl_cache, budget={"cost": 20.0, "human": 6, "rounds": 2}, human={"cost": 1.0}, llm={"cost": 0.5}
    )
    assert planned_total(cfg, 60) == 6 + 28
    result = run(cfg, llm=llm)
    rows = _rows(result.run_dir)
    failed = [r for r in rows if r["source"] == "llm" and r["label"] is None]
    answers = sum(llm.asked.values())
    assert failed, "the flaky annotator should have failed at least once"
    # Every answer the annotator gave is in the store once, with its price; nothing else was paid.
    assert len([r for r in rows if r["source"] == "llm"]) == answers
    assert sum(r["cost"] for r in rows) == pytest.approx(6 * 1.0 + answers * 0.5)
    with Store.open(result.run_dir / "store.sqlite") as store:
        spent = money_spent(cfg, store, result.run_dir)
    assert spent <= 20.0 + 1e-9
    # The money ran out: the failed answers took the place of labels, so fewer than 28 LLM labels were bought.
    assert spent > 20.0 - 0.5 and answers == 28
    assert result.budget_used == {"human": 6, "llm": 28 - len(failed)}
    # No item got two standing labels from the same source.
    assert max(Counter((r["item_id"], r["source"]) for r in rows if r["label"] is not None).values()) == 1


@pytest.mark.slow
def test_the_self_check_s_questions_are_kept_back_from_the_money(tmp_path, small_fpb, imfl_cache):
    # fidelity: up to 3 self-check questions a round over 2 rounds, at most one per human label (6): 6 × 0.5 = 3.0 kept
    # back, so 20 - 6 - 3 = 11.0 buys 22 LLM labels, not 28.
    cfg = resolve_strategy(
        _config(
            tmp_path,
            small_fpb,
            imfl_cache,
            strategy="fidelity",
            budget={"cost": 20.0, "human": 6, "rounds": 2},
            llm={"annotator": "simulated", "accuracy": 0.9, "cost": 0.5, "eval_sample": 3},
            fidelity={"adaptive": False},
        )
    )
    assert planned_total(cfg, 60) == 6 + 22
    result = run(cfg)
    with Store.open(result.run_dir / "store.sqlite") as store:
        spent = money_spent(cfg, store, result.run_dir)
    probes = sum(m.get("llm_probe_cost") or 0 for m in result.metrics)
    assert probes == pytest.approx(6 * 0.5)  # 3 questions in each round
    assert spent == pytest.approx(6 * 1.0 + result.budget_used["llm"] * 0.5 + probes) and spent <= 20.0 + 1e-9
    assert result.budget_used == {"human": 6, "llm": 22}


@pytest.mark.slow
def test_label_all_labels_the_whole_pool_when_the_llm_is_free_and_human_only_buys_humans(tmp_path, small_fpb, imfl_cache):
    cfg = resolve_strategy(
        _config(
            tmp_path,
            small_fpb,
            imfl_cache,
            strategy="label-all",
            budget={"cost": 8.0, "human": 6},
            llm={"annotator": "simulated", "accuracy": 0.8},
        )
    )
    assert (cfg.budget.rounds, cfg.query.acquisition, planned_total(cfg, 60)) == (1, "random", 60)
    result = run(cfg)
    assert result.budget_used == {"human": 6, "llm": 54} and len(result.metrics) == 1
    human_only = resolve_strategy(
        _config(tmp_path, small_fpb, imfl_cache, strategy="human-only", budget={"cost": 8.5, "human": 6}, human={"cost": 0.5})
    )
    assert (human_only.budget.cost, human_only.budget.human, human_only.budget.total) == (None, 17, 17)


@pytest.mark.parametrize(
    "over, message",
    [
        (
            {"budget": {"cost": 100.0, "human": 200}},
            "budget.cost (100) does not pay for budget.human (200) × human.cost (1) = 200",
        ),
        ({"budget": {"cost": 300.0}, "llm": {"prompt_price": 2.5}}, "budget.cost needs a fixed price per LLM answer"),
        ({"budget": {"cost": 300.0}, "fidelity": {"human_max": 250}}, "fidelity.human_max (250) is above budget.human (200)"),
    ],
)
def test_a_money_budget_that_cannot_be_honoured_is_refused(tmp_path, tiny_data, imfl_cache, over, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _config(tmp_path, tiny_data, imfl_cache, **over)


def test_a_grid_strategy_can_be_given_a_money_budget(tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text(f"""results = "results"
work = "work"
seeds = [0]
[strategies]
plain = {{ cost = 1.2, human = 1, label = "label-all", set = {{ strategy = "label-all", "llm.cost" = 0.01 }} }}
human = {{ cost = 1, human = 1 }}
[datasets.fpb]
config = "{REPO / "configs" / "fpb.toml"}"
H = 200
annotators.sim = {{ set = {{ "llm.annotator" = "simulated", "llm.accuracy" = 0.8 }} }}
""")
    cells = {c.strategy: c.config for c in load_grid(grid).cells}
    assert cells["plain"].budget.cost == pytest.approx(240.0) and cells["plain"].budget.human == 200
    assert cells["human"].budget.cost == pytest.approx(200.0)
    bad = tmp_path / "bad.toml"
    bad.write_text(grid.read_text().replace("cost = 1.2, human = 1,", "total = 5, cost = 1.2, human = 1,"))
    with pytest.raises(ConfigError, match="either total"):
        load_grid(bad)


@pytest.mark.slow
def test_the_value_grid_s_quick_form_spends_its_money_on_the_whole_pool(tmp_path, imfl_cache):
    """benchmarks/value.toml --quick: H = 10 human labels at 1 and 0.2 H = 2.0 for LLM answers at 0.01, so 200 of the
    290 other items of the 300-item pool sample; with the fidelity switches, the 10 answers about the human-labeled
    items come first (0.1), leaving 190."""
    env = {"IMFL_CACHE": str(imfl_cache)}
    args = (
        "bench",
        "run",
        str(REPO / "benchmarks" / "value.toml"),
        "--quick",
        "--results",
        str(tmp_path / "results"),
        "--work",
        str(tmp_path / "work"),
    )
    r = imfl(*args, env=env)
    assert r.returncode == 0, r.stderr
    got = cells(tmp_path / "results")
    plain, checked = got["fpb-recorded/gpt4/label-all/seed0"], got["fpb-recorded/gpt4/label-all-fidelity/seed0"]
    assert plain["labels_used"]["human"] == 10 and plain["labels_used"]["llm"] + plain["llm_failed"] == 200
    assert plain["config"]["budget"]["cost"] == pytest.approx(12.0) and len(plain["rounds"]) == 1
    last = checked["rounds"][-1]
    assert last["llm_self_n"] == 10 and checked["labels_used"]["llm"] + checked["llm_failed"] == 190
    for cell in (plain, checked):
        last = cell["rounds"][-1]
        spent = last["human_cost_total"] + last["llm_cost_total"] + (last.get("llm_probe_cost") or 0)
        assert spent <= 12.0 + 1e-9


@pytest.mark.slow
def test_a_calibrated_llm_behind_an_endpoint_stays_within_the_money(tmp_path, small_fpb, imfl_cache):
    """With llm.calibrate every label also pays for a content-free prompt: an answer is planned at twice llm.cost, and
    what the loopback server answered (each request at llm.cost) never costs more than the budget."""
    labels = ("neutral", "positive", "negative")

    def answer(n: int, body: dict):
        top = {lab: math.log(0.6 if i == n % 3 else 0.2) for i, lab in enumerate(labels)}
        return 200, completion(labels[n % 3], top), 0

    with FaultServer(answer) as server:
        cfg = _config(
            tmp_path,
            small_fpb,
            imfl_cache,
            budget={"cost": 16.0, "human": 6, "rounds": 2},
            human={"cost": 1.0},
            llm={
                "annotator": "openai",
                "base_url": server.url,
                "model": "m",
                "api_key": "k",
                "k": 2,
                "cache": False,
                "calibrate": True,
                "cost": 0.25,
            },
        )
        # 10.0 for LLM answers at 2 × 0.25: 20 labels planned.
        assert planned_total(cfg, 60) == 6 + 20
        result = run(cfg)
        requests = len(server.bodies)
    with Store.open(result.run_dir / "store.sqlite") as store:
        spent = money_spent(cfg, store, result.run_dir)
    assert spent == pytest.approx(6 * 1.0 + requests * 0.25) and spent <= 16.0 + 1e-9
    assert result.budget_used["llm"] == 20
