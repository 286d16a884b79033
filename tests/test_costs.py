"""Cost accounting with prices that are not the defaults: a run's metrics (human_cost*, llm_cost*, llm_probe_cost)
against what its store recorded and what a real OpenAI-compatible server on loopback billed, and the report's cost
axis against the cell stores of a real grid.

The prices are chosen so that every cost is a whole number of thousandths (0.001 per prompt token, 0.005 per
completion token, 0.25 per LLM call, 2.5 per human label): the expected sums are exact, in integers."""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import zlib

import pytest

from conftest import cells, imfl, read_jsonl, small_config, write_jsonl
from fault_server import FaultServer, completion
from imfl import run

# slow: runs with the real student and embedder (one of them through `imfl bench`).
pytestmark = pytest.mark.slow

LABELS = ("neutral", "positive", "negative")
HUMAN_COST = 2.5
LLM_COST, PROMPT_PRICE, COMPLETION_PRICE = 0.25, 1000.0, 5000.0  # per call; per million tokens
MILLI_PER_CALL, MILLI_PER_PROMPT_TOKEN, MILLI_PER_COMPLETION_TOKEN = 250, 1, 5


class Billing:
    """A server's answers and its bill: each prompt gets a label with log-probabilities, or (one in five) an answer
    that names no label, which the client then samples five more times; token counts vary with the prompt."""

    def __init__(self):
        self.bill: list[tuple[bool, int, int]] = []  # (a prompt's first request?, prompt tokens, completion tokens)
        self.lock = threading.Lock()

    def __call__(self, n: int, body: dict) -> tuple[int, dict, float]:
        h = zlib.crc32(json.dumps(body["messages"]).encode())
        prompt_tokens = len(json.dumps(body["messages"])) // 4
        if "n" in body:  # self-consistency samples after an answer outside the label set
            answer = completion(["bullish"] * body["n"], prompt_tokens=prompt_tokens, completion_tokens=2)
        elif h % 5 == 0:
            answer = completion("bullish", {"bullish": 0.0}, prompt_tokens=prompt_tokens, completion_tokens=1 + h % 3)
        else:
            label = LABELS[h % 3]
            top = {lab: math.log(0.8 if lab == label else 0.1) for lab in LABELS}
            answer = completion(label, top, prompt_tokens=prompt_tokens, completion_tokens=1 + h % 3)
        with self.lock:
            self.bill.append(("n" not in body, answer["usage"]["prompt_tokens"], answer["usage"]["completion_tokens"]))
        return 200, answer, 0

    def milli(self) -> int:
        """What the server's answers cost, in thousandths."""
        return sum(
            MILLI_PER_CALL * first + MILLI_PER_PROMPT_TOKEN * p + MILLI_PER_COMPLETION_TOKEN * c for first, p, c in self.bill
        )


def store_rows(run_dir, source: str) -> list[sqlite3.Row]:
    with sqlite3.connect(run_dir / "store.sqlite") as c:
        c.row_factory = sqlite3.Row
        return c.execute("SELECT * FROM annotations WHERE source=? AND retracted_at IS NULL ORDER BY id", (source,)).fetchall()


@pytest.mark.parametrize("calibrate", [False, True])
def test_a_run_s_metrics_are_what_its_store_recorded_and_the_server_billed(tmp_path, small_fpb, imfl_cache, calibrate):
    billing = Billing()
    with FaultServer(billing) as server:
        cfg = small_config(
            {
                "name": "costs",
                "seed": 1,
                "strategy": "imfl",
                "output_dir": str(tmp_path),
                "cache_dir": str(imfl_cache),
                "data": {"pool": str(small_fpb["pool"])},
                "budget": {"total": 18, "human": 6, "rounds": 2},
                "human": {"cost": HUMAN_COST},
                # no answer cache: an answer kept by an earlier run of this test would be charged without being billed
                "llm": {
                    "annotator": "openai",
                    "base_url": server.url,
                    "model": "billing-test",
                    "api_key": "k",
                    "k": 2,
                    "cache": False,
                    "calibrate": calibrate,
                    "eval_sample": 3,
                    "cost": LLM_COST,
                    "prompt_price": PROMPT_PRICE,
                    "completion_price": COMPLETION_PRICE,
                },
                "student": {"epochs": 1, "min_steps": 0, "max_length": 32, "batch_size": 16},
            }
        )
        result = run(cfg)
    human, llm = store_rows(result.run_dir, "human"), store_rows(result.run_dir, "llm")
    assert any(r["label"] is None for r in llm) and any(r["label"] for r in llm)  # unparsed answers are paid too
    assert all(r["prompt_tokens"] for r in llm)

    def milli(rows) -> int:
        return sum(
            MILLI_PER_CALL + MILLI_PER_PROMPT_TOKEN * r["prompt_tokens"] + MILLI_PER_COMPLETION_TOKEN * r["completion_tokens"]
            for r in rows
        )

    for m in result.metrics:
        t = m["round"]
        here = [r for r in llm if r["round"] == t]
        upto = [r for r in llm if r["round"] <= t]
        assert m["human_cost"] == HUMAN_COST * m["human_labels"] == sum(r["cost"] for r in human if r["round"] == t)
        assert m["human_cost_total"] == HUMAN_COST * m["human_total"] == sum(r["cost"] for r in human if r["round"] <= t)
        # every LLM call of the round, answered with a label or not, at the price of the tokens the server reported;
        # with calibration each label also carries its share of the content-free prompts (their tokens are not its own)
        assert m["llm_cost"] == round(sum(r["cost"] for r in here), 6)
        if calibrate:
            assert m["llm_cost"] > round(milli(here) / 1000, 6)
        else:
            assert m["llm_cost"] == round(milli(here) / 1000, 6) and m["llm_cost_total"] == round(milli(upto) / 1000, 6)
        assert m["llm_prompt_tokens"] == sum(r["prompt_tokens"] for r in here)
        assert m["llm_completion_tokens"] == sum(r["completion_tokens"] for r in here)
        probe = json.loads((result.run_dir / "state" / f"fidelity_round{t}.json").read_text())["probe"]
        assert len(probe) == 3 and m["llm_probe_cost"] == round(sum(r["cost"] for r in probe), 6) > 0
    # Every request the server answered is paid once in the metrics: the labels' calls and the self-checks'.
    spent = result.metrics[-1]["llm_cost_total"] + sum(m["llm_probe_cost"] for m in result.metrics)
    assert round(spent, 6) == round(billing.milli() / 1000, 6)


def test_the_report_s_cost_axis_is_what_the_cells_stores_recorded(tmp_path, shared_data, imfl_cache, monkeypatch):
    """A grid of two cells at non-default prices (a human-only one and IMFL with a recorded LLM), reported with the
    same prices: the cost figure draws each cell at the cost its store recorded."""
    from matplotlib.figure import Figure

    from imfl.report import make_report

    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "pool.jsonl", read_jsonl(shared_data / "fpb_recorded" / "pool.jsonl")[:80])
    write_jsonl(data / "test.jsonl", read_jsonl(shared_data / "fpb_recorded" / "test.jsonl")[:20])
    (tmp_path / "dataset.toml").write_text(
        f"""
name = "fpb-recorded"
strategy = "imfl"
[data]
pool = "{data / "pool.jsonl"}"
test = "{data / "test.jsonl"}"
labels = {json.dumps(list(LABELS))}
[llm]
annotator = "recorded"
column = "llm_llama2_7b"
""",
        encoding="utf-8",
    )
    grid = tmp_path / "grid.toml"
    grid.write_text(
        f"""
results = "results"
work = "work"
seeds = [0]
set = {{ "budget.rounds" = 2, "student.epochs" = 1, "student.min_steps" = 0, "student.max_length" = 32, "human.cost" = {HUMAN_COST}, "llm.cost" = {LLM_COST} }}
[strategies]
human = {{ total = 1, human = 1 }}
imfl = {{ total = 4, human = 1 }}
[datasets.fpb-recorded]
config = "{tmp_path / "dataset.toml"}"
H = 4
annotators.llama2-7b = {{}}
""",  # noqa: E501 - a TOML inline table (the `set` line) must stay on one line
        encoding="utf-8",
    )
    r = imfl("bench", "run", str(grid), env={"IMFL_CACHE": str(imfl_cache)})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert set(cells(tmp_path / "results")) == {"fpb-recorded/none/human/seed0", "fpb-recorded/llama2-7b/imfl/seed0"}

    recorded = {}  # cell label -> the cost its store recorded
    for cell in cells(tmp_path / "results").values():
        with sqlite3.connect(tmp_path / "work" / cell["cell"]["id"].replace("/", "__") / "store.sqlite") as c:
            recorded[cell["cell"]["label"]] = c.execute(
                "SELECT SUM(cost) FROM annotations WHERE retracted_at IS NULL"
            ).fetchone()[0]
    assert recorded["human"] == HUMAN_COST * 4 and recorded["imfl"] > recorded["human"]

    drawn: dict[str, dict[str, list[float]]] = {}  # figure file -> line label -> its x values
    savefig = Figure.savefig

    def keep_lines(fig, path, *args, **kwargs):
        drawn[str(path)] = {line.get_label(): list(line.get_xdata()) for ax in fig.axes for line in ax.get_lines()}
        return savefig(fig, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep_lines)
    report = make_report(tmp_path / "results", tmp_path / "report", human_price=HUMAN_COST, llm_price=LLM_COST)
    # The cost figure: the human-only curve through the human-only cells, every other strategy a point, each at the
    # final cost its store recorded.
    [cost_figure] = [str(p) for p in report.figures if p.name == "fpb-recorded-cost.png"]
    assert drawn[cost_figure].keys() == {"human only: human", "imfl"}
    assert drawn[cost_figure]["human only: human"] == pytest.approx([recorded["human"]], abs=1e-9)
    assert drawn[cost_figure]["imfl"] == pytest.approx([recorded["imfl"]], abs=1e-9)
