"""Agreement and adjudication (issue 42, point 3): with ``human.overlap`` some items of each round's human batch go to
two different people (never twice to the same one); the round completes when both answered and an admin settled any
disagreement; Cohen's / Fleiss' kappa per round and per pair show in ``imfl status``, the round metrics and the
dashboard; the settled label is the one the student trains on, and both raw answers stay in the store. Real stores, a
real run (people, a simulated LLM, a real student), real HTTP to a real uvicorn, and Debian's chromium (Playwright),
which writes the screenshots in docs/guides/people.md (docs/images/labeling.png, docs/images/adjudication.png)."""

import json
import shutil
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from conftest import imfl, read_jsonl, serve_app, small_config
from imfl import run
from imfl.agreement import agreement, fleiss_kappa
from imfl.dashboard import dashboard
from imfl.data import Example
from imfl.errors import Conflict, InvalidLabel
from imfl.people import Labeling, People
from imfl.store import MIGRATIONS, Store, _statements

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["negative", "neutral", "positive"]
SHARED = "shared-s3cret"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def make_store(run_dir: Path, overlap=("p0", "p1")) -> Path:
    """A run folder whose round 1 waits for people: p0..p3 its human batch, ``overlap`` of them needing two answers."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with Store.open(run_dir / "store.sqlite") as store:
        store.add_items(Example(f"p{i}", f"pool sentence {i}", None, LABELS[i % 3], {}, i + 1) for i in range(8))
        with store.transaction():
            store.set_meta("labels", json.dumps(LABELS))
            store.set_meta("config", "[budget]\nrounds = 2\n")
        store.record_selection(1, (4, 0), [(f"p{i}", None) for i in range(4)], [])
        store.open_human_batch(1, list(overlap))
    return run_dir


def query(run_dir: Path, sql: str, args=()) -> list[tuple]:
    with closing(sqlite3.connect(run_dir / "store.sqlite")) as c:
        return c.execute(sql, args).fetchall()


# -- kappa against hand-computed values -------------------------------------------------------------------------
def test_kappa_values_match_a_hand_computed_example():
    # Cohen: 10 items, agreement on 8 (p_o = 0.8), each person says x half the time (p_e = 0.5): kappa = 0.3 / 0.5
    a = list("xxxxxyyyyy")
    b = list("xxxxyyyyyx")
    answers = [{"item_id": f"i{i}", "annotator": who, "label": lab} for i in range(10) for who, lab in (("A", a[i]), ("B", b[i]))]
    got = agreement(answers, {"i4": {"label": "x"}})
    assert got["cohen_kappa"] == pytest.approx(0.6) and got["fleiss_kappa"] is None
    assert (got["items_double"], got["disagreements"], got["settled"], got["people"]) == (10, 2, 1, ["A", "B"])
    assert got["pairs"] == [{"a": "A", "b": "B", "items": 10, "agreed": 8, "kappa": 0.6}]
    # Fleiss, three people, two answers per item: (x,x) (x,y) (y,y) (y,y): P = 0.75, p = (3/8, 5/8), P_e = 0.53125,
    # kappa = 0.21875 / 0.46875
    three = [("j0", "A", "x"), ("j0", "B", "x"), ("j1", "B", "x"), ("j1", "C", "y"), ("j2", "A", "y"), ("j2", "C", "y")]
    three += [("j3", "A", "y"), ("j3", "B", "y")]
    got = agreement([{"item_id": i, "annotator": w, "label": lab} for i, w, lab in three])
    assert got["fleiss_kappa"] == pytest.approx(round(0.21875 / 0.46875, 4)) and got["cohen_kappa"] is None
    assert {(p["a"], p["b"]): p["items"] for p in got["pairs"]} == {("A", "B"): 2, ("A", "C"): 1, ("B", "C"): 1}
    assert fleiss_kappa([["x", "x"], ["x", "x"]]) is None  # one label only: chance agreement 1, kappa undefined
    assert agreement([])["items_double"] == 0 and agreement([])["cohen_kappa"] is None


# -- the store and Labeling ---------------------------------------------------------------------------------------
def test_an_overlap_item_goes_to_two_people_and_the_round_waits_for_the_admin(tmp_path):
    run_dir = make_store(tmp_path / "run")
    lab = Labeling(run_dir, lease_seconds=600, cost=1.0)
    order = []
    for _ in range(4):  # dr-a answers the whole batch, overlap items included
        got = lab.next("dr-a")
        order.append(got["item"]["id"])
        lab.label("dr-a", got["item"]["id"], {"p0": "negative", "p1": "positive"}.get(got["item"]["id"], "neutral"))
    assert order == ["p0", "p1", "p2", "p3"]
    assert lab.next("dr-a")["state"] == "others"  # p0 and p1 wait for someone else: never dr-a again
    with pytest.raises(Conflict, match="you labeled item 'p0' already"):
        lab.label("dr-a", "p0", "neutral")
    assert lab.status() == {"state": "labeling", "round": 1, "done": 2, "total": 4, "disputes": 0}
    assert lab.next("dr-b")["item"]["id"] == "p0"
    lab.label("dr-b", "p0", "negative")  # agrees
    assert lab.next("dr-b")["item"]["id"] == "p1"
    lab.label("dr-b", "p1", "neutral")  # disagrees
    assert lab.next("dr-b")["state"] == "others"
    with Store.open(run_dir / "store.sqlite") as store:
        assert store.pending_human(1) == [] and not store.close_human_batch(1)  # the dispute keeps the round open
        assert [d["item_id"] for d in store.disputes(1)] == ["p1"]
    assert lab.status() == {"state": "labeling", "round": 1, "done": 3, "total": 4, "disputes": 1}
    nxt = lab.adjudication_next()
    assert nxt["item"]["id"] == "p1" and nxt["open"] == 1
    assert nxt["answers"] == [{"annotator": "dr-a", "label": "positive"}, {"annotator": "dr-b", "label": "neutral"}]
    before = query(run_dir, "SELECT * FROM adjudications")
    with pytest.raises(Conflict, match="item 'p0' is not in dispute"):
        lab.adjudicate("boss", "p0", "negative")
    with pytest.raises(InvalidLabel, match="label 'happy' is not one of"):
        lab.adjudicate("boss", "p1", "happy")
    assert query(run_dir, "SELECT * FROM adjudications") == before == []
    done = lab.adjudicate("boss", "p1", "positive")
    assert done["state"] == "labeling" and done["done"] == 4 and done["disputes"] == 0
    assert lab.adjudication_next()["state"] == "settled"
    with pytest.raises(Conflict, match="not in dispute"):
        lab.adjudicate("boss", "p1", "neutral")  # settled once
    with pytest.raises(Conflict, match="settled by an admin"):
        lab.undo("dr-b")  # dr-b's last label is p1's, which the admin settled
    # both raw answers stay with their annotators, and the settlement with the admin and time
    assert query(run_dir, "SELECT annotator, label, cost FROM annotations WHERE item_id='p1' ORDER BY id") == [
        ("dr-a", "positive", 1.0), ("dr-b", "neutral", 1.0)
    ]  # fmt: skip
    (row,) = query(run_dir, "SELECT item_id, round, admin, label, answers, created_at FROM adjudications")
    assert row[:4] == ("p1", 1, "boss", "positive") and json.loads(row[4]) == {"dr-a": "positive", "dr-b": "neutral"}
    assert row[5] > 0
    with Store.open(run_dir / "store.sqlite") as store:
        assert store.budget_used()["human"] == 6  # each answer counts as one human label
        assert store.close_human_batch(1)
    a = lab.agreement()["overall"]
    assert (a["items_double"], a["disagreements"], a["settled"]) == (2, 1, 1)


def test_without_overlap_one_answer_completes_an_item(tmp_path):
    run_dir = make_store(tmp_path / "run", overlap=())
    lab = Labeling(run_dir)
    for _ in range(4):
        got = lab.next("dr-a")
        lab.label("dr-a", got["item"]["id"], "neutral")
    assert lab.status() == {"state": "labeling", "round": 1, "done": 4, "total": 4}  # no "disputes": as before
    assert "item" not in lab.next("dr-b")  # nothing for a second person


def test_an_older_store_migrates_to_schema_6(tmp_path):
    path = tmp_path / "store.sqlite"
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:  # a store as schema 5 left it
        for v in range(1, 6):
            for statement in _statements(MIGRATIONS[v]):
                conn.execute(statement)
        conn.execute("INSERT INTO meta VALUES('schema_version', '5')")
        conn.execute("INSERT INTO items(idx, id, text) VALUES(0, 'a', 'x')")
        conn.execute("INSERT INTO rounds VALUES(1, 'human_pending', 1, 0, NULL, 0)")
        conn.execute("INSERT INTO selections VALUES(1, 'a', 0, NULL, 'human')")
    with Store.open(path) as store:
        assert store.get_meta("schema_version") == "6"
        assert store.pending_human(1) == ["a"] and store.overlap_items() == [] and store.adjudications() == {}


# -- the API ------------------------------------------------------------------------------------------------------
def test_the_adjudication_api_is_for_admins_and_refuses_bad_requests(tmp_path):
    from imfl.server import create_app

    run_dir = make_store(tmp_path / "run")
    with Store.open(run_dir / "store.sqlite") as store:
        for who, item, label in [("dr-a", "p0", "negative"), ("dr-b", "p0", "positive"), ("dr-a", "p1", "neutral")]:
            store.add_human_label(who, item, label, LABELS, cost=1.0)
    tokens = {"boss": People(run_dir).add("boss", "admin")[0], "dr-a": People(run_dir).add("dr-a")[0]}
    with serve_app(create_app(Labeling(run_dir), SHARED)) as url:
        boss = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {tokens['boss']}"}, timeout=60)
        dr_a = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {tokens['dr-a']}"}, timeout=60)
        with boss, dr_a:
            assert httpx.post(f"{url}/api/adjudicate", json={"item_id": "p0", "label": "negative"}).status_code == 401
            for wrong in ("wrong", SHARED):
                r = httpx.get(f"{url}/api/adjudication/next", headers={"Authorization": f"Bearer {wrong}"})
                assert r.status_code == 401, r.text
            assert dr_a.get("/api/adjudication/next").status_code == 403
            r = dr_a.post("/api/adjudicate", json={"item_id": "p0", "label": "negative"})
            assert r.status_code == 403, r.text
            got = boss.get("/api/adjudication/next").json()
            assert got["item"]["id"] == "p0" and {a["annotator"] for a in got["answers"]} == {"dr-a", "dr-b"}
            for body, status, says in [
                ({"item_id": "p0", "label": "happy"}, 422, "label 'happy' is not one of"),
                ({"item_id": "p0"}, 422, "label:"),
                ({"label": "neutral"}, 422, "item_id:"),
                ({"item_id": "p1", "label": "neutral"}, 409, "item 'p1' is not in dispute"),
                ({"item_id": "p3", "label": "neutral"}, 409, "not in dispute"),
            ]:
                r = boss.post("/api/adjudicate", json=body)
                assert r.status_code == status and says in r.json()["detail"], (body, r.text)
                assert "\n" not in r.json()["detail"]
            assert query(run_dir, "SELECT * FROM adjudications") == []
            r = boss.post("/api/adjudicate", json={"item_id": "p0", "label": "positive"})
            assert r.status_code == 200, r.text
            assert r.json()["adjudicated"] == {
                "round": 1, "item_id": "p0", "label": "positive", "admin": "boss",
                "answers": {"dr-a": "negative", "dr-b": "positive"},
            }  # fmt: skip
            assert not [t for t in [*tokens.values(), SHARED] if t in r.text]
            assert boss.get("/api/adjudication/next").json()["state"] == "settled"
            d = boss.get("/api/dashboard").json()
            assert d["waiting"]["disputes"] == 0 and d["agreement"]["overall"]["settled"] == 1
    assert query(run_dir, "SELECT admin, label FROM adjudications") == [("boss", "positive")]


# -- a real run in the browser --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def project(tmp_path_factory, small_fpb, imfl_cache):
    """A run of 2 rounds with people and human.overlap 0.5, waiting for round 1; boss is its admin."""
    tmp = tmp_path_factory.mktemp("agreement")
    cfg = small_config(
        {
            "name": "agreement",
            "seed": 0,
            "strategy": "imfl",
            "output_dir": str(tmp / "runs"),
            "cache_dir": str(imfl_cache),
            "data": {"pool": str(small_fpb["pool"]), "test": str(small_fpb["test"]), "labels": LABELS},
            "budget": {"total": 14, "human": 8, "rounds": 2},
            "human": {"annotator": "people", "overlap": 0.5},
            "llm": {"annotator": "simulated", "accuracy": 0.8},
            "student": {"epochs": 1, "min_steps": 0, "max_length": 32, "batch_size": 16},
        }
    )
    gold = {r["id"]: r["label"] for r in read_jsonl(small_fpb["pool"])}
    first = run(cfg)
    assert first.waiting_round == 1
    boss = People(first.run_dir).add("boss", "admin")[0]
    return {"cfg": cfg, "run_dir": first.run_dir, "boss": boss, "gold": gold}


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (apt-get install chromium)")
def test_two_people_label_with_overlap_and_the_admin_settles_a_disagreement(project):
    from playwright.sync_api import expect, sync_playwright

    from imfl.server import create_app

    cfg, run_dir, gold = project["cfg"], project["run_dir"], project["gold"]
    with Store.open(run_dir / "store.sqlite") as store:
        batch, overlap = store.selection(1, "human"), store.overlap_items(1)
    assert len(overlap) == round(0.5 * len(batch)) >= 2 and set(overlap) <= set(batch)
    labeling = Labeling(run_dir, cfg.human.lease_seconds, cfg.human.cost)
    wrong: dict[str, str] = {}
    with serve_app(create_app(labeling, SHARED)) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        problems: list[str] = []

        def open_page(token: str):
            page = browser.new_context(viewport={"width": 1000, "height": 760}).new_page()
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(url)
            page.fill("#token", token)
            page.click("#login button[type=submit]")
            return page

        admin = open_page(project["boss"])
        expect(admin.locator("#who-text")).to_have_text("Signed in as boss (admin)")
        tokens = {}
        for who in ("dr-a", "dr-b"):  # the admin adds two people on the page
            admin.fill("#new-name", who)
            admin.click("#add-person button[type=submit]")
            expect(admin.locator("#new-token-name")).to_have_text(who)
            tokens[who] = admin.locator("#new-token-value").text_content()

        def label_all(page, who: str, n: int, pick) -> list[str]:
            """``who`` labels ``n`` items on ``page`` with the keyboard, ``pick(item)`` the label of each; the item shown is
            the one the store says they hold (the pool repeats some sentences, so the text alone cannot tell)."""
            done: list[str] = []
            for k in range(n):
                wait_for(lambda: held_by(run_dir, who) is not None)
                item = held_by(run_dir, who)
                expect(page.locator("#text")).to_have_text(_text_of(run_dir, item))
                if done and _text_of(run_dir, done[-1]) == _text_of(run_dir, item):
                    page.wait_for_timeout(300)  # the same sentence again: let the page take the new item in
                page.keyboard.press(str(LABELS.index(pick(item)) + 1))
                done.append(item)
                wait_for(lambda want=k + 1: answered(run_dir, who) == want)
            expect(page.locator("#item")).to_be_hidden()
            return done

        with Store.open(run_dir / "store.sqlite") as store, store.transaction():  # the admin labels nothing here: let go
            store.conn.execute("DELETE FROM leases WHERE annotator='boss'")  # of the item their page was handed
        a = open_page(tokens["dr-a"])
        expect(a.locator("#progress")).to_have_text(f"Round 1: 0 of {len(batch)} labeled")
        assert sorted(label_all(a, "dr-a", len(batch), lambda i: gold[i])) == sorted(batch)  # dr-a answers every item once
        expect(a.locator("#message")).to_have_text("Every remaining item is being labeled by someone else right now.")

        b = open_page(tokens["dr-b"])
        expect(b.locator("#progress")).to_have_text(f"Round 1: {len(batch) - len(overlap)} of {len(batch)} labeled")
        wait_for(lambda: held_by(run_dir, "dr-b") is not None)
        expect(b.locator("#text")).to_have_text(_text_of(run_dir, held_by(run_dir, "dr-b")))
        b.evaluate("window.scrollTo(0, 0)")
        b.screenshot(path=str(ROOT / "docs" / "images" / "labeling.png"))

        def b_pick(item: str) -> str:  # dr-b disagrees on the first overlap item handed to them, agrees on the rest
            if not wrong:
                wrong[item] = next(label for label in LABELS if label != gold[item])
                return wrong[item]
            return gold[item]

        assert sorted(label_all(b, "dr-b", len(overlap), b_pick)) == sorted(overlap)  # only the second answers, never dr-a's
        (disputed,) = wrong
        expect(b.locator("#progress")).to_have_text(f"Round 1: {len(batch) - 1} of {len(batch)} labeled")

        # the admin sees the agreement on the dashboard, then settles the disagreement
        expected = agreement(
            [{"item_id": i, "annotator": "dr-a", "label": gold[i]} for i in overlap]
            + [{"item_id": i, "annotator": "dr-b", "label": wrong.get(i, gold[i])} for i in overlap]
        )
        admin.click("#tab-dashboard")
        row = admin.locator('#dash-agreement tr[data-round="1"] td')
        expect(row.nth(1)).to_have_text(str(len(overlap)))
        expect(row.nth(2)).to_have_text("1")
        expect(row.nth(4)).to_have_text("1")  # open
        kappa = "–" if expected["cohen_kappa"] is None else f"{expected['cohen_kappa']:.3f}"
        expect(row.nth(5)).to_have_text(kappa)
        expect(admin.locator('#dash-pairs tr[data-pair="dr-a|dr-b"] td').nth(3)).to_have_text(kappa)
        admin.click("#tab-adjudicate")
        expect(admin.locator("#ad-text")).to_have_text(_text_of(run_dir, disputed))
        expect(admin.locator("#ad-answer-list li")).to_have_count(2)
        expect(admin.locator('#ad-answer-list li[data-annotator="dr-b"]')).to_have_text(f"dr-b: {wrong[disputed]}")
        expect(admin.locator("#ad-progress")).to_have_text("1 disagreement of round 1 to settle.")
        admin.evaluate("window.scrollTo(0, 0)")
        admin.screenshot(path=str(ROOT / "docs" / "images" / "adjudication.png"))
        admin.keyboard.press(str(LABELS.index(gold[disputed]) + 1))
        expect(admin.locator("#ad-done")).to_have_text(f"Settled: {gold[disputed]}.")
        expect(admin.locator("#ad-message")).to_contain_text("No disagreement to settle right now")
        browser.close()
    assert not problems, problems
    assert labeling.status()["done"] == len(batch)

    # the run goes on: round 1 trains on the settled label, its metrics and imfl status show the agreement
    second = run(cfg)
    assert second.waiting_round == 2
    m = json.loads((run_dir / "metrics.json").read_text())[0]
    ag = m["agreement"]
    assert (ag["items_double"], ag["disagreements"], ag["settled"]) == (len(overlap), 1, 1)
    assert ag["cohen_kappa"] == expected["cohen_kappa"] and ag["overall"]["pairs"][0]["items"] == len(overlap)
    assert m["human_labels"] == len(batch) + len(overlap)  # each answer is a human label (and paid)
    assert m["human_cost"] == pytest.approx((len(batch) + len(overlap)) * cfg.human.cost)
    from imfl.loop import Run

    runner = Run(cfg)
    runner._prepare()  # the run's store, as the loop opens it
    try:
        trained = [a for a in runner._training_labels() if a.item_id == disputed]
    finally:
        runner.store.close()
        runner._unlock()
    assert [(a.source, a.label, a.annotator, a.method) for a in trained] == [("human", gold[disputed], "boss", "adjudicated")]
    raw = query(run_dir, "SELECT annotator, label FROM annotations WHERE item_id=? AND source='human' ORDER BY id", (disputed,))
    assert raw == [("dr-a", gold[disputed]), ("dr-b", wrong[disputed])]
    out = imfl("status", str(run_dir))
    assert out.returncode == 0, out.stderr
    assert "agreement of people" in out.stdout and "dr-a and dr-b" in out.stdout, out.stdout
    d = dashboard(run_dir)
    assert d["agreement"]["rounds"][0]["settled"] == 1 and d["agreement"]["rounds"][0]["open"] == 0


def _text_of(run_dir: Path, item_id: str) -> str:
    return query(run_dir, "SELECT text FROM items WHERE id=?", (item_id,))[0][0]


def held_by(run_dir: Path, who: str) -> str | None:
    rows = query(run_dir, "SELECT item_id FROM leases WHERE annotator=?", (who,))
    return rows[0][0] if rows else None


def answered(run_dir: Path, who: str) -> int:
    return query(run_dir, "SELECT COUNT(*) FROM annotations WHERE annotator=? AND retracted_at IS NULL", (who,))[0][0]


def wait_for(condition, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
