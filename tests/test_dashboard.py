"""The admins' dashboard (issue 42, point 5): ``imfl.dashboard`` on a real run of people, a simulated LLM and a real
student, its numbers against the run's own metrics.json; ``GET /api/dashboard`` over real HTTP to a real uvicorn
(admins 200, annotators 403, no token 401); and the page's SVG charts in Debian's chromium (Playwright), which also
writes the screenshot in docs/guides/people.md (docs/images/dashboard.png)."""

import json
import shutil
import sqlite3
import time
from contextlib import closing, contextmanager
from pathlib import Path

import httpx
import pytest

from conftest import read_jsonl, serve_app, small_config
from imfl import run
from imfl.dashboard import BREAK_SECONDS, dashboard, labels_per_hour
from imfl.errors import DataError
from imfl.people import Labeling, People
from imfl.store import Store

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["negative", "neutral", "positive"]
SHARED = "shared-s3cret"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Who labels the waiting round's items, in order, and when (seconds after the round's start): dr-a's gaps of 30 and
# 60 s are labeling time; the hours between the two rounds are a pause, for dr-a and for boss.
ROUND_1 = [("dr-a", 0), ("dr-a", 30), ("boss", 60), ("dr-a", 90)]
ROUND_2 = [("dr-a", 0), ("boss", 30)]


# -- without a run ----------------------------------------------------------------------------------------------
def test_labels_per_hour_leaves_pauses_out():
    # gaps 30, 60, 1910 (a pause: left out) and 10: three labels over 100 s of labeling
    assert labels_per_hour([2000.0, 0.0, 30.0, 90.0, 2010.0]) == (108.0, 100.0)
    assert BREAK_SECONDS == 600
    assert labels_per_hour([]) == (None, 0) and labels_per_hour([5.0]) == (None, 0)
    assert labels_per_hour([7.0, 7.0]) == (None, 0)  # no time passed: no rate, rather than an infinite one
    assert labels_per_hour([0.0, 5000.0]) == (None, 0)


def test_a_folder_without_a_usable_store_gets_one_line(tmp_path):
    with pytest.raises(DataError) as got:
        dashboard(tmp_path)
    assert str(got.value) == f"{tmp_path} has no store.sqlite: not a run folder (imfl init or imfl run creates one)"
    (tmp_path / "store.sqlite").write_bytes(b"not a database, just bytes" * 100)
    with pytest.raises(DataError) as got:
        dashboard(tmp_path)
    assert "not a usable imfl store" in str(got.value) and "\n" not in str(got.value)


# -- a real run of people ---------------------------------------------------------------------------------------
def label_round(run_dir: Path, who: list[tuple[str, int]], start: float, gold: dict[str, str]) -> None:
    """The waiting round's items labeled (right) by ``who``, through the store's own check, at the times given."""
    with Store.open(run_dir / "store.sqlite") as store:
        t, state = store.latest_round()
        pending = store.pending_human(t)
        assert state == "human_pending" and len(pending) >= len(who)
        for (name, after), item in zip(who, pending):
            store.add_human_label(name, item, gold[item], LABELS, cost=1.0, now=start + after)


@pytest.fixture(scope="module")
def project(tmp_path_factory, small_fpb, imfl_cache):
    """A finished run of 2 rounds (4 + 2 human labels from dr-a and boss, 4 + 6 from an LLM simulated at 80%, a
    self-check of 2 answers a round, the human-only comparison at the end), and the dashboard taken while round 1
    waited with one of its four labels given."""
    tmp = tmp_path_factory.mktemp("dashboard")
    cfg = small_config(
        {
            "name": "dash",
            "seed": 0,
            "strategy": "imfl",
            "output_dir": str(tmp / "runs"),
            "cache_dir": str(imfl_cache),
            "data": {"pool": str(small_fpb["pool"]), "test": str(small_fpb["test"]), "labels": LABELS},
            "budget": {"total": 16, "human": 6, "rounds": 2},
            "human": {"annotator": "people"},
            "llm": {"annotator": "simulated", "accuracy": 0.8, "eval_sample": 2},
            "student": {"epochs": 1, "min_steps": 0, "max_length": 32, "batch_size": 16},
            "compare_human_only": True,
        }
    )
    gold = {r["id"]: r["label"] for r in read_jsonl(small_fpb["pool"])}
    first = run(cfg)
    assert (first.waiting_round, first.pending) == (1, 4)
    run_dir = first.run_dir
    tokens = {"boss": People(run_dir).add("boss", "admin")[0], "dr-a": People(run_dir).add("dr-a")[0]}
    start = time.time() - 3 * 3600
    label_round(run_dir, ROUND_1[:1], start, gold)
    waiting = dashboard(run_dir)
    with Store.open(run_dir / "store.sqlite") as store:
        pending = store.pending_human(1)
    label_round(run_dir, [(name, after) for name, after in ROUND_1[1:]], start, gold)
    assert len(pending) == 3
    second = run(cfg)
    assert (second.waiting_round, second.pending) == (2, 2)
    label_round(run_dir, ROUND_2, start + 7200, gold)
    done = run(cfg)
    assert done.waiting_round is None
    return {"run_dir": run_dir, "tokens": tokens, "waiting": waiting, "gold": gold}


def query(run_dir: Path, sql: str) -> list[tuple]:
    with closing(sqlite3.connect(run_dir / "store.sqlite")) as c:
        return c.execute(sql).fetchall()


def metrics_of(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))


def check_against_metrics(d: dict, run_dir: Path) -> None:
    """The dashboard's numbers are the run's: metrics.json, the rounds table, the fidelity state."""
    metrics = metrics_of(run_dir)
    last = metrics[-1]
    assert d["status"] == "finished" and d["waiting"] is None and d["planned_rounds"] == 2 and d["labels"] == LABELS
    assert [(r["round"], r["state"], r["planned_human"], r["planned_llm"]) for r in d["rounds"]] == query(
        run_dir, "SELECT round, state, planned_human, planned_llm FROM rounds ORDER BY round"
    )
    for row, m in zip(d["rounds"], metrics, strict=True):
        for key in (
            "human_labels",
            "llm_labels",
            "human_cost",
            "llm_cost",
            "test_accuracy",
            "test_macro_f1",
            "llm_self_accuracy",
            "llm_self_n",
            "llm_accuracy",
        ):
            assert row[key] == m[key], (row["round"], key)
    assert [r["human_labels"] for r in d["rounds"]] == [4, 2] and all(r["llm_labels"] for r in d["rounds"])
    assert all(r["llm_self_accuracy"] is not None and r["llm_accuracy"] is not None for r in d["rounds"])
    # the learning curve, and the human-only comparison of the last round
    assert d["curve"] == [
        {"round": m["round"], "test_accuracy": m["test_accuracy"], "test_macro_f1": m["test_macro_f1"]} for m in metrics
    ]
    h = last["human_only"]
    assert d["human_only"] == {
        "round": 2,
        **{k: h[k] for k in ("test_accuracy", "test_macro_f1", "human_labels", "llm_labels", "gain_accuracy", "gain_macro_f1")},
        "summary": h["summary"],
    }
    # labels and cost per source over the run
    totals = d["totals"]
    assert totals["human"] == {"labels": last["human_total"], "cost": last["human_cost_total"]} == {"labels": 6, "cost": 6.0}
    assert (totals["llm"]["labels"], totals["llm"]["cost"]) == (last["llm_total"], last["llm_cost_total"])
    assert totals["llm"]["self_check_cost"] == pytest.approx(sum(m["llm_probe_cost"] for m in metrics))
    assert totals["cost"] == pytest.approx(last["human_cost_total"] + last["llm_cost_total"] + totals["llm"]["self_check_cost"])
    # per class: from the last round's self-check confusion (rows gold, columns the LLM's answer)
    state = json.loads((run_dir / "state" / "fidelity_round2.json").read_text())["llm"]
    matrix = state["confusion"]
    per_class = d["llm_per_class"]
    assert (per_class["basis"], per_class["round"], per_class["n"]) == ("self-check", 2, state["n"])
    assert state["n"] == last["llm_self_n"]
    for c, row in enumerate(per_class["classes"]):
        said = sum(r[c] for r in matrix)
        assert (row["label"], row["gold"], row["said"], row["correct"]) == (LABELS[c], sum(matrix[c]), said, matrix[c][c])
        assert row["recall"] == state["per_class"][c]
        assert row["precision"] == (round(matrix[c][c] / said, 4) if said else None)
    # people: labels in all and per round, and labels per hour from the recorded times
    people = {p["name"]: p for p in d["people"]}
    assert set(people) == {"dr-a", "boss"}
    a, boss = people["dr-a"], people["boss"]
    assert (a["role"], a["active"], a["labels"], a["cost"]) == ("annotator", True, 4, 4.0)
    assert a["per_round"] == [{"round": 1, "labels": 3}, {"round": 2, "labels": 1}]
    assert (a["labels_per_hour"], a["seconds_labeling"]) == (80.0, 90.0)  # 2 labels after gaps of 30 and 60 s
    assert (boss["role"], boss["labels"], boss["labels_per_hour"]) == ("admin", 2, None)  # only a pause between its two
    assert boss["per_round"] == [{"round": 1, "labels": 1}, {"round": 2, "labels": 1}]
    assert sum(p["labels"] for p in d["people"]) == last["human_total"]


@pytest.mark.slow
def test_the_dashboard_shows_the_run_as_its_metrics_record_it(project):
    run_dir = project["run_dir"]
    before = (run_dir / "store.sqlite").read_bytes()
    d = dashboard(run_dir)
    check_against_metrics(d, run_dir)
    assert (run_dir / "store.sqlite").read_bytes() == before  # read-only
    assert json.loads(json.dumps(d, allow_nan=False)) == d  # JSON as it is sent

    # while round 1 waited, with one of its four labels given
    w = project["waiting"]
    assert w["status"] == "labeling" and w["waiting"] == {"round": 1, "pending": 3, "total": 4, "held": 0}
    assert [(r["round"], r["state"], r["human_labels"], r["llm_labels"], r["human_cost"]) for r in w["rounds"]] == [
        (1, "human_pending", 1, 0, 1.0)
    ]
    assert w["rounds"][0]["test_accuracy"] is None and w["rounds"][0]["llm_self_accuracy"] is None
    assert w["curve"] == [] and w["human_only"] is None
    assert w["llm_per_class"] == {"basis": None, "round": None, "n": 0, "classes": []}  # nothing measured yet
    assert [(p["name"], p["role"], p["labels"]) for p in w["people"]] == [("dr-a", "annotator", 1), ("boss", "admin", 0)]


@pytest.mark.slow
def test_without_a_self_check_the_llm_is_measured_against_gold(project, tmp_path):
    # the same run folder without its fidelity state: per class from the LLM's labels against the pool's gold labels
    copy = tmp_path / "copy"
    shutil.copytree(project["run_dir"], copy)
    for path in (copy / "state").glob("fidelity_round*.json"):
        path.unlink()
    per_class = dashboard(copy)["llm_per_class"]
    gold = project["gold"]
    llm = [(r["label"], gold[r["id"]]) for r in read_jsonl(copy / "labels.jsonl") if r["source"] == "llm"]
    assert (per_class["basis"], per_class["n"]) == ("gold", len(llm)) and len(llm) == metrics_of(copy)[-1]["llm_total"]
    for row in per_class["classes"]:
        said = [g for p, g in llm if p == row["label"]]
        assert row["said"] == len(said) and row["correct"] == said.count(row["label"])
        assert row["precision"] == (round(said.count(row["label"]) / len(said), 4) if said else None)


@contextmanager
def serving(run_dir: Path):
    from imfl.server import create_app

    with serve_app(create_app(Labeling(run_dir, lease_seconds=600), SHARED)) as url:
        yield url


def client(url: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60)


@pytest.mark.slow
def test_the_dashboard_api_answers_admins_only(project):
    run_dir, tokens = project["run_dir"], project["tokens"]
    with serving(run_dir) as url, client(url, tokens["boss"]) as boss, client(url, tokens["dr-a"]) as a:
        r = boss.get("/api/dashboard")
        assert r.status_code == 200, r.text
        assert r.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"
        assert r.json() == dashboard(run_dir)
        check_against_metrics(r.json(), run_dir)
        assert not [t for t in [*tokens.values(), SHARED] if t in r.text] and "sha256" not in r.text

        r = a.get("/api/dashboard")
        assert r.status_code == 403 and r.json()["detail"] == "only admins may do this; dr-a is annotator", r.text
        assert httpx.get(f"{url}/api/dashboard").status_code == 401
        for wrong in ("wrong", SHARED):  # the shared token is refused once people are registered
            with client(url, wrong) as c:
                r = c.get("/api/dashboard")
                assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", r.text


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (apt-get install chromium)")
def test_an_admin_sees_the_dashboard_and_an_annotator_does_not(project, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    run_dir = tmp_path / "run"  # a copy: this test registers someone
    shutil.copytree(project["run_dir"], run_dir)
    tokens = project["tokens"]
    metrics = metrics_of(run_dir)
    last = metrics[-1]
    with serving(run_dir) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1000, "height": 700})
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.goto(url)
        page.fill("#token", tokens["boss"])
        page.click("#login button[type=submit]")
        expect(page.locator("#who-text")).to_have_text("Signed in as boss (admin)")
        expect(page.locator("#message")).to_have_text("The run is finished. Thank you!")
        assert page.locator("#dashboard").is_hidden()  # the labeling view comes first
        page.click("#tab-dashboard")
        expect(page.locator("#dash-status")).to_have_text("The run is finished: 2 rounds.")
        assert page.locator("#work").is_hidden()

        # the learning curve: one point per evaluated round, where its numbers say, and the dashed human-only level
        points = page.locator("#curve circle.pt.s-acc")
        expect(points).to_have_count(len(metrics))
        assert [points.nth(i).get_attribute("data-round") for i in range(len(metrics))] == [str(m["round"]) for m in metrics]
        assert page.locator("#curve circle.pt.s-acc title").all_text_contents() == [
            f"round {m['round']}: test accuracy {m['test_accuracy']:.3f}" for m in metrics
        ]
        cy = [float(points.nth(i).get_attribute("cy")) for i in range(len(metrics))]  # higher accuracy, higher point
        acc = [m["test_accuracy"] for m in metrics]
        assert (cy[0] > cy[1], cy[0] == cy[1]) == (acc[0] < acc[1], acc[0] == acc[1])
        expect(page.locator("#curve rect.pt.s-human-only")).to_have_count(1)
        expect(page.locator("#curve line.ref.s-human-only:not(.key)")).to_have_count(1)
        expect(page.locator("#curve-note")).to_have_text(last["human_only"]["summary"])

        # labels and cost per source: the run's totals, in the table and the bars
        for source, labels, cost in (
            ("human", last["human_total"], last["human_cost_total"]),
            ("llm", last["llm_total"], last["llm_cost_total"]),
            ("all", last["human_total"] + last["llm_total"], None),
        ):
            cells = page.locator(f'#dash-totals tr[data-source="{source}"] td')
            expect(cells.nth(1)).to_have_text(str(labels))
            if cost is not None:
                expect(cells.nth(2)).to_have_text(f"{cost:g}")
        assert page.locator("#totals-bars rect title").all_text_contents() == [
            f"human labels: {last['human_total']}",
            f"LLM labels: {last['llm_total']}",
        ]
        expect(page.locator("#round-bars rect.bar-llm:not(.key)")).to_have_count(2)
        # the LLM's accuracy per round (self-check and against gold) and per class
        expect(page.locator("#llm-curve circle.pt.s-self")).to_have_count(2)
        expect(page.locator("#llm-curve circle.pt.s-gold")).to_have_count(2)
        expect(page.locator("#llm-class-note")).to_contain_text(f"self-check on {last['llm_self_n']} human-labeled items")
        expect(page.locator("#class-bars rect")).to_have_count(3)
        # rounds and people
        expect(page.locator("#dash-rounds tbody tr")).to_have_count(2)
        expect(page.locator('#dash-rounds tr[data-round="2"] td').nth(6)).to_have_text(f"{last['test_accuracy']:.3f}")
        row = page.locator('#dash-people tr[data-name="dr-a"] td')
        expect(row.nth(2)).to_have_text("4")
        expect(row.nth(3)).to_have_text("1: 3, 2: 1")
        expect(row.nth(4)).to_have_text("80")

        # refreshed while open: someone registered meanwhile (from the terminal) shows up without a reload
        People(run_dir).add("dr-c")
        expect(page.locator('#dash-people tr[data-name="dr-c"] td').nth(2)).to_have_text("0", timeout=20_000)
        expect(page.locator("#curve circle.pt.s-acc")).to_have_count(len(metrics))  # redrawn, not added to
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(ROOT / "docs" / "images" / "dashboard.png"))
        page.click("#tab-label")
        expect(page.locator("#work")).to_be_visible()
        assert page.locator("#dashboard").is_hidden()

        # an annotator: no tab, no dashboard, and the page never asks for it
        other = browser.new_page(viewport={"width": 1000, "height": 700})
        asked: list[str] = []
        other.on("request", lambda r: asked.append(r.url))
        other.goto(url)
        other.fill("#token", tokens["dr-a"])
        other.click("#login button[type=submit]")
        expect(other.locator("#who-text")).to_have_text("Signed in as dr-a (annotator)")
        expect(other.locator("#message")).to_have_text("The run is finished. Thank you!")
        assert other.locator("#tabs").is_hidden() and other.locator("#tab-dashboard").is_hidden()
        assert other.locator("#dashboard").is_hidden()
        assert any(u.endswith("/api/next") for u in asked) and not [u for u in asked if "/api/dashboard" in u]
        browser.close()
    assert not problems, problems  # no script error, no Content-Security-Policy violation
