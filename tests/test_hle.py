"""Human-label equivalence (HLE) and annotation cost, as `imfl report` computes them: against hand-computed examples
and against the committed paper grid."""

import math
from pathlib import Path

import pytest

from imfl.bench import load_results
from imfl.report import HLE, cost, group_rows, human_curve, human_label_equivalence, llm_calls, value_table

PAPER = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "paper"
CURVE = [(1.0, 0.650), (3.0, 0.848), (5.0, 0.879)]


def test_hle_interpolates_in_log_labels_between_the_points_around_it():
    # By hand: 0.758 lies (0.758 - 0.650) / (0.848 - 0.650) = 0.5455 of the way from 1x to 3x, in log labels:
    # exp(0.5455 * ln 3) = 1.820.
    found = human_label_equivalence(CURVE, 0.758)
    assert found.bound == "" and found.value == pytest.approx(1.820, abs=1e-3) and str(found) == "1.8"
    # 0.86: (0.86 - 0.848) / (0.879 - 0.848) = 0.3871 from 3x to 5x: exp(ln 3 + 0.3871 * ln(5/3)) = 3.656.
    assert human_label_equivalence(CURVE, 0.86).value == pytest.approx(3.656, abs=1e-3)
    # On a point: that point.
    assert human_label_equivalence(CURVE, 0.848).value == pytest.approx(3.0)
    assert human_label_equivalence(CURVE, 0.650) == HLE(1.0)


def test_hle_outside_the_curve_is_a_bound():
    assert human_label_equivalence(CURVE, 0.90) == HLE(5.0, ">") and str(HLE(5.0, ">")) == "> 5"
    assert human_label_equivalence(CURVE, 0.60) == HLE(1.0, "<") and str(HLE(1.0, "<")) == "< 1"
    assert human_label_equivalence(CURVE[:1], 0.7) is None


def test_a_dip_in_the_human_curve_does_not_count_as_reaching_less():
    # FPB-recorded's curve falls from 3x (0.954) to 5x (0.948). 0.938 is met between 1x and 3x; 0.955 is above the
    # running maximum (0.954 from 3x on), so above the whole curve, not somewhere between 3x and 5x.
    curve = [(1.0, 0.908), (3.0, 0.954), (5.0, 0.948)]
    t = (0.938 - 0.908) / (0.954 - 0.908)
    assert human_label_equivalence(curve, 0.938).value == pytest.approx(math.exp(t * math.log(3)), abs=1e-9)
    assert human_label_equivalence(curve, 0.955) == HLE(5.0, ">")


def test_the_committed_grid_gives_the_issue_s_numbers():
    rows = group_rows(load_results(PAPER))
    banking = rows["banking77"]
    curve = human_curve(banking)
    assert [x for x, _ in curve] == [1.0, 3.0, 5.0]
    assert [round(a, 3) for _, a in curve] == [0.65, 0.848, 0.879]
    table = {line[0]: line for line in value_table(banking)}
    gpt4o = table["GPT-4o (recorded, 77.6%)"]
    assert gpt4o[2] == "IMFL (H human + 4H LLM)" and gpt4o[5] == "1.8"
    # 200 human labels + 800 LLM labels at 0.01: 208.
    assert gpt4o[4] == "208.0"


def test_cost_counts_every_llm_answer_once_including_the_self_check():
    rows = group_rows(load_results(PAPER))["banking77"]
    fidelity = next(r for r in rows if r.strategy == "fidelity" and r.annotator == "gpt4o")
    for record in fidelity.records:
        assert llm_calls(record) == record["labels_used"]["llm"] + record["rounds"][-1]["llm_self_n"]
    expected = sum(r["labels_used"]["human"] * 2.0 + llm_calls(r) * 0.05 for r in fidelity.records) / len(fidelity.records)
    assert cost(fidelity, human_price=2.0, llm_price=0.05) == pytest.approx(expected)
    human = next(r for r in rows if r.strategy == "human-3x")
    assert cost(human, llm_price=123.0) == pytest.approx(600.0)
