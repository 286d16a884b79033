"""Review of the LLM's labels (issue 42, point 4): people confirm or correct LLM labels on the page's Review tab, the
labels the fidelity policy doubts first. The store records each verdict with its provenance (and migrates older
stores); a correction becomes the reviewer's human label at ``human.review_cost``, which the next round trains on and
which the budget, the costs and the dashboard show; reviews are evidence in the LLM's next self-check. Real stores,
a real run (people, a simulated LLM, a real student), real HTTP to a real uvicorn, and Debian's chromium (Playwright),
which writes the screenshot in docs/guides/people.md (docs/images/review.png)."""

import json
import shutil
import sqlite3
import tomllib
from contextlib import closing, contextmanager
from pathlib import Path

import httpx
import pytest

from conftest import read_jsonl, serve_app, small_config
from imfl import run
from imfl.config import config_to_toml
from imfl.dashboard import dashboard
from imfl.data import Annotation, Example
from imfl.errors import Conflict, InvalidLabel, NotFound
from imfl.people import Labeling, People, review_order
from imfl.store import MIGRATIONS, SCHEMA_VERSION, Store, _statements

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["negative", "neutral", "positive"]
SHARED = "shared-s3cret"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# the LLM's labels of round 1 (item, label, confidence); p0 and p1 are people's, p8 and p9 round 2's human batch
LLM = [("p2", "neutral", 0.9), ("p3", "positive", 0.3), ("p4", "negative", None), ("p5", "neutral", 0.6), ("p6", "positive", 0.5)]


def make_store(run_dir: Path) -> Path:
    """A run folder whose round 1 is evaluated (2 human labels, 5 LLM labels) and round 2 waits for people."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with Store.open(run_dir / "store.sqlite") as store:
        store.add_items(Example(f"p{i}", f"pool sentence <b>{i}</b>", None, LABELS[i % 3], {}, i + 1) for i in range(10))
        with store.transaction():
            store.set_meta("labels", json.dumps(LABELS))
            store.set_meta("config", "[budget]\nrounds = 3\n")
        store.record_selection(1, (2, 5), [("p0", None), ("p1", None)], [(i, None) for i, _, _ in LLM])
        store.add_annotations(
            [Annotation(i, 1, "human", "dr-a", LABELS[int(i[1]) % 3], cost=1.0) for i in ("p0", "p1")]
            + [Annotation(i, 1, "llm", "sim", label, confidence=c, cost=0.01, method="simulated") for i, label, c in LLM]
        )
        store.set_round_state(1, "evaluated")
        store.record_selection(2, (2, 0), [("p8", 0.5), ("p9", 0.4)], [])
        store.set_round_state(2, "human_pending")
    return run_dir


def llm_id(run_dir: Path, item: str) -> int:
    return query(run_dir, "SELECT id FROM annotations WHERE source='llm' AND item_id=?", (item,))[0][0]


def query(run_dir: Path, sql: str, args=()) -> list[tuple]:
    with closing(sqlite3.connect(run_dir / "store.sqlite")) as c:
        return c.execute(sql, args).fetchall()


def tables(run_dir: Path) -> dict[str, list[tuple]]:
    """Everything a review may write."""
    return {t: query(run_dir, f"SELECT * FROM {t} ORDER BY 1") for t in ("annotations", "reviews", "review_leases", "leases")}


# -- the store ----------------------------------------------------------------------------------------------------
def test_the_store_records_reviews_with_provenance_and_refuses_bad_ones_writing_nothing(tmp_path):
    run_dir = make_store(tmp_path / "run")
    with Store.open(run_dir / "store.sqlite") as store:
        budget, money = store.budget_used(), store.money_spent()
        assert [c["item_id"] for c in store.review_candidates()] == ["p2", "p3", "p4", "p5", "p6"]
        done = store.add_review("dr-b", llm_id(run_dir, "p2"), "confirm", None, LABELS, cost=0.25, now=1000.0)
        assert done == {"round": 2, "annotation_id": llm_id(run_dir, "p2"), "item_id": "p2", "verdict": "confirm",
                        "llm_label": "neutral", "label": "neutral"}  # fmt: skip
        store.add_review("dr-b", llm_id(run_dir, "p3"), "correct", "negative", LABELS, cost=0.25, now=1001.0)
        # a confirmation is no label; a correction is the reviewer's human label of the item, at the review's cost
        assert store.budget_used() == {"human": budget["human"] + 1, "llm": budget["llm"]}
        assert store.money_spent() == pytest.approx(money + 0.5)
        assert [c["item_id"] for c in store.review_candidates()] == ["p4", "p5", "p6"]
        reviews = store.reviews()
    assert [(r["reviewer"], r["item_id"], r["round"], r["verdict"], r["llm_label"], r["label"], r["cost"], r["created_at"])
            for r in reviews] == [("dr-b", "p2", 2, "confirm", "neutral", "neutral", 0.25, 1000.0),
                                  ("dr-b", "p3", 2, "correct", "positive", "negative", 0.25, 1001.0)]  # fmt: skip
    assert reviews[0]["correction_id"] is None and reviews[1]["llm_confidence"] == 0.3
    assert query(run_dir, "SELECT item_id, round, source, annotator, label, cost, method FROM annotations WHERE id=?",
                 (reviews[1]["correction_id"],)) == [("p3", 2, "human", "dr-b", "negative", 0.25, "review")]  # fmt: skip

    # refused: nothing written
    before = tables(run_dir)
    with Store.open(run_dir / "store.sqlite") as store:
        store.lease_review("dr-c", [llm_id(run_dir, "p6")], 600)
        held = tables(run_dir)
        p4, p6 = llm_id(run_dir, "p4"), llm_id(run_dir, "p6")
        human = query(run_dir, "SELECT id FROM annotations WHERE item_id='p0'")[0][0]
        for args, error, says in [
            ((p4, "correct", "happy"), InvalidLabel, "label 'happy' is not one of negative, neutral, positive"),
            ((p4, "correct", None), InvalidLabel, "a correction needs the right label"),
            ((p4, "correct", "negative"), InvalidLabel, "is what the LLM said: confirm it instead"),
            ((p4, "confirm", "neutral"), InvalidLabel, "send verdict correct to change it"),
            ((p4, "maybe", None), InvalidLabel, "verdict 'maybe' is not one of confirm, correct"),
            ((llm_id(run_dir, "p2"), "confirm", None), Conflict, "was reviewed already (by dr-b)"),
            ((llm_id(run_dir, "p3"), "confirm", None), Conflict, "was reviewed already"),
            ((human, "confirm", None), NotFound, "is not an LLM label"),
            ((99999, "confirm", None), NotFound, "is not an LLM label"),
            ((p6, "confirm", None), Conflict, "is being reviewed by someone else"),
        ]:
            with pytest.raises(error) as got:
                store.add_review("dr-b", *args, LABELS, cost=0.25)
            assert says in str(got.value) and "\n" not in str(got.value)
        assert tables(run_dir) == held
        store.undo("dr-b", 600)  # a correction is not taken back by the labeling view's undo
        assert tables(run_dir) == held
        store.set_round_state(2, "human_done")
        with pytest.raises(Conflict, match="no round is waiting"):
            store.add_review("dr-c", p6, "confirm", None, LABELS)
    assert tables(run_dir)["reviews"] == before["reviews"]


def test_an_older_store_migrates_and_keeps_its_labels(tmp_path):
    path = tmp_path / "store.sqlite"
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:  # a store as schema 4 left it
        for v in range(1, 5):
            for statement in _statements(MIGRATIONS[v]):
                conn.execute(statement)
        conn.execute("INSERT INTO meta VALUES('schema_version', '4')")
        conn.execute("INSERT INTO items(idx, id, text) VALUES(0, 'a', 'x')")
        conn.execute("INSERT INTO rounds VALUES(1, 'evaluated', 1, 1, NULL, 0)")
        conn.execute(
            "INSERT INTO annotations(item_id, round, source, annotator, label, cost, created_at)"
            " VALUES('a', 1, 'llm', 'm', 'x', 0.5, 0)"
        )
    assert SCHEMA_VERSION >= 5  # schema 6 (agreement) migrates it on as well
    with Store.open(path) as store:
        assert store.get_meta("schema_version") == str(SCHEMA_VERSION)
        assert store.reviews() == [] and store.money_spent() == 0.5 and store.budget_used() == {"human": 0, "llm": 1}
        assert [c["item_id"] for c in store.review_candidates()] == ["a"]


def test_the_queue_puts_the_doubted_labels_first_and_hands_each_to_one_reviewer(tmp_path):
    run_dir = make_store(tmp_path / "run")
    labeling = Labeling(run_dir, lease_seconds=600, review_cost=0.25)
    with Store.open(run_dir / "store.sqlite") as store:
        candidates = store.review_candidates()
    # without fidelity state: the LLM's own confidence, lowest first, unknown last
    assert [c["item_id"] for c in review_order(candidates, run_dir)] == ["p3", "p6", "p5", "p2", "p4"]
    # with it: the latest round's P(right) of each label, lowest first, a left-out label before an equal one kept;
    # labels the state does not know (newer) after, by confidence
    (run_dir / "state").mkdir()
    training = [("p2", 0.4, False), ("p4", 0.7, False), ("p5", 0.4, True), ("p6", 0.9, False)]
    old = {"training": [{"id": "p6", "p_correct": 0.01, "routed": True}]}
    (run_dir / "state" / "fidelity_round0.json").write_text(json.dumps(old))
    entries = [{"id": i, "p_correct": p, "routed": False, "filtered": f, "small_loss": False} for i, p, f in training]
    (run_dir / "state" / "fidelity_round1.json").write_text(json.dumps({"training": entries}))
    (run_dir / "state" / "fidelity_round2.json").write_text(json.dumps({"llm": {}}))  # measured, not yet trained
    order = review_order(candidates, run_dir)
    assert [(c["item_id"], c["p_correct"], c["flagged"]) for c in order] == [
        ("p5", 0.4, True), ("p2", 0.4, False), ("p4", 0.7, False), ("p6", 0.9, False), ("p3", None, False)
    ]  # fmt: skip

    first = labeling.review_next("dr-a")
    assert first["state"] == "labeling" and first["remaining"] == 5 and first["item"]["id"] == "p5"
    assert first["review"] == {"annotation_id": llm_id(run_dir, "p5"), "llm_label": "neutral", "llm_confidence": 0.6,
                               "llm_round": 1, "p_correct": 0.4, "flagged": True}  # fmt: skip
    assert labeling.review_next("dr-b")["item"]["id"] == "p2"  # held for dr-a: the next one for dr-b
    assert labeling.review_next("dr-a")["item"]["id"] == "p5"  # dr-a keeps theirs
    out = labeling.review("dr-a", "correct", "positive", item_id="p5")
    assert out["reviewed"]["label"] == "positive" and out["state"] == "labeling"
    assert labeling.review_next("dr-a")["item"]["id"] == "p4"
    for who in ("dr-a", "dr-b", "dr-c", "dr-d"):
        labeling.review_next(who)
    assert labeling.review_next("dr-e") == {**labeling.status(), "state": "others", "remaining": 4}
    with pytest.raises(InvalidLabel, match="annotation_id or item_id"):
        labeling.review("dr-a", "confirm", annotation_id=1, item_id="p2")


# -- the API ------------------------------------------------------------------------------------------------------
@contextmanager
def serving(run_dir: Path):
    from imfl.server import create_app

    with serve_app(create_app(Labeling(run_dir, lease_seconds=600, review_cost=0.25), SHARED)) as url:
        yield url


def client(url: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60)


def test_the_review_api_records_the_tokens_person_and_refuses_bad_requests(tmp_path):
    run_dir = make_store(tmp_path / "run")
    with serving(run_dir) as url:
        with client(url, SHARED) as shared:  # nobody registered: the shared token names the reviewer
            assert shared.get("/api/review/next").status_code == 422
            r = shared.get("/api/review/next", params={"annotator": "solo"})
            assert r.status_code == 200 and r.json()["item"]["id"] == "p3", r.text
            r = shared.post("/api/review", json={"annotator": "solo", "item_id": "p3", "verdict": "confirm"})
            assert r.status_code == 200 and r.json()["reviewed"]["verdict"] == "confirm", r.text
        tokens = {"dr-a": People(run_dir).add("dr-a")[0], "boss": People(run_dir).add("boss", "admin")[0]}
        with client(url, tokens["dr-a"]) as a, client(url, tokens["boss"]) as boss:
            assert httpx.get(f"{url}/api/review/next").status_code == 401
            for wrong in ("wrong", SHARED):
                with client(url, wrong) as c:
                    r = c.post("/api/review", json={"item_id": "p6", "verdict": "confirm"})
                    assert r.status_code == 401, r.text
            got = a.get("/api/review/next").json()
            assert got["item"]["id"] == "p6" and got["review"]["llm_label"] == "positive"
            assert boss.get("/api/review/next").json()["item"]["id"] == "p5"  # admins review too; not dr-a's item
            before = tables(run_dir)
            p6 = got["review"]["annotation_id"]
            for body, status, says in [
                ({"annotator": "boss", "annotation_id": p6, "verdict": "confirm"}, 403, "cannot act as 'boss'"),
                ({"annotation_id": p6, "verdict": "correct", "label": "happy"}, 422, "label 'happy' is not one of"),
                ({"annotation_id": p6, "verdict": "correct"}, 422, "a correction needs the right label"),
                ({"annotation_id": p6, "verdict": "maybe"}, 422, "verdict:"),
                ({"verdict": "confirm"}, 422, "annotation_id or item_id"),
                ({"annotation_id": p6, "item_id": "p6", "verdict": "confirm"}, 422, "annotation_id or item_id"),
                ({"annotation_id": 0, "verdict": "confirm"}, 422, "annotation_id:"),
                ({"item_id": "p3", "verdict": "confirm"}, 409, "reviewed already (by solo)"),
                ({"item_id": "p5", "verdict": "confirm"}, 409, "being reviewed by someone else"),
                ({"item_id": "p0", "verdict": "confirm"}, 404, "has no LLM label to review"),
                ({"annotation_id": 12345, "verdict": "confirm"}, 404, "is not an LLM label"),
            ]:
                r = a.post("/api/review", json=body)
                assert r.status_code == status and says in r.json()["detail"], (body, r.text)
                assert "\n" not in r.json()["detail"]
            assert tables(run_dir) == before  # nothing written on any of them
            r = a.post("/api/review", json={"annotation_id": p6, "verdict": "correct", "label": "negative"})
            assert r.status_code == 200, r.text
            assert not [t for t in [*tokens.values(), SHARED] if t in r.text]
    assert query(run_dir, "SELECT reviewer, item_id, verdict, label FROM reviews ORDER BY id") == [
        ("solo", "p3", "confirm", "positive"), ("dr-a", "p6", "correct", "negative")
    ]  # fmt: skip
    assert query(run_dir, "SELECT annotator, label, cost, method FROM annotations WHERE item_id='p6' AND source='human'") == [
        ("dr-a", "negative", 0.25, "review")
    ]


# -- a real run ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def project(tmp_path_factory, small_fpb, imfl_cache):
    """A run of 2 rounds whose round 2 waits for people: round 1 labeled (right) by dr-a, 6 LLM labels from an LLM
    simulated at 50%, trained with fidelity weighting (so its state says P(right) of each LLM label)."""
    tmp = tmp_path_factory.mktemp("review")
    cfg = small_config(
        {
            "name": "review",
            "seed": 0,
            "strategy": "imfl",
            "output_dir": str(tmp / "runs"),
            "cache_dir": str(imfl_cache),
            "data": {"pool": str(small_fpb["pool"]), "test": str(small_fpb["test"]), "labels": LABELS},
            "budget": {"total": 14, "human": 6, "rounds": 2},
            "human": {"annotator": "people", "review_cost": 0.3},
            "llm": {"annotator": "simulated", "accuracy": 0.5, "eval_sample": 2},
            "fidelity": {"weighting": True},
            "student": {"epochs": 1, "min_steps": 0, "max_length": 32, "batch_size": 16},
        }
    )
    gold = {r["id"]: r["label"] for r in read_jsonl(small_fpb["pool"])}
    first = run(cfg)
    assert first.waiting_round == 1
    run_dir = first.run_dir
    with Store.open(run_dir / "store.sqlite") as store:
        for item in store.pending_human(1):
            store.add_human_label("dr-a", item, gold[item], LABELS, cost=1.0)
    second = run(cfg)
    assert second.waiting_round == 2
    tokens = {"boss": People(run_dir).add("boss", "admin")[0], "dr-b": People(run_dir).add("dr-b")[0]}
    return {"cfg": cfg, "run_dir": run_dir, "tokens": tokens, "gold": gold}


def labeling_of(cfg, run_dir: Path) -> Labeling:
    return Labeling(run_dir, cfg.human.lease_seconds, cfg.human.cost, review_cost=cfg.human.review_cost)


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (apt-get install chromium)")
def test_a_reviewer_corrects_an_llm_label_on_the_review_tab(project, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from imfl.server import create_app

    run_dir = tmp_path / "run"  # a copy: the run itself goes on in the next test
    shutil.copytree(project["run_dir"], run_dir)
    tokens, cfg = project["tokens"], project["cfg"]
    expected = labeling_of(cfg, run_dir).review_next("probe")  # what the queue hands out first (then let go below)
    with Store.open(run_dir / "store.sqlite") as store, store.transaction():
        store.conn.execute("DELETE FROM review_leases")
    item, said = expected["item"], expected["review"]["llm_label"]
    right = next(label for label in LABELS if label != said)
    with serve_app(create_app(labeling_of(cfg, run_dir), SHARED)) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1000, "height": 760})
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.goto(url)
        page.fill("#token", tokens["dr-b"])
        page.click("#login button[type=submit]")
        expect(page.locator("#who-text")).to_have_text("Signed in as dr-b (annotator)")
        expect(page.locator("#tab-review")).to_be_visible()  # a round waits: annotators may review
        assert page.locator("#tab-dashboard").is_hidden()
        page.click("#tab-review")
        expect(page.locator("#rv-text")).to_have_text(item["text"])
        expect(page.locator("#rv-llm-label")).to_have_text(said)
        expect(page.locator("#rv-why")).to_contain_text("estimated probability it is right")
        expect(page.locator(f'#rv-labels button[data-label="{said}"]')).to_have_class("said")
        assert page.locator("#work").is_hidden()
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(ROOT / "docs" / "images" / "review.png"))
        page.keyboard.press(str(LABELS.index(right) + 1))  # the key of the right label
        expect(page.locator("#rv-done")).to_have_text(f"Corrected: {said} \u2192 {right}.")
        expect(page.locator("#rv-text")).not_to_have_text(item["text"])  # the next one
        page.keyboard.press("Enter")  # ... confirmed
        expect(page.locator("#rv-done")).to_contain_text("Confirmed:")

        # the admin's dashboard shows both reviews and the correction among dr-b's labels
        admin = browser.new_page(viewport={"width": 1000, "height": 760})
        admin.goto(url)
        admin.fill("#token", tokens["boss"])
        admin.click("#login button[type=submit]")
        admin.click("#tab-dashboard")
        expect(admin.locator("#review-note")).to_contain_text("2 LLM labels reviewed: 1 confirmed, 1 corrected (cost 0.6)")
        expect(admin.locator("#review-class-bars rect")).to_have_count(3)
        expect(admin.locator('#dash-people tr[data-name="dr-b"] td').nth(2)).to_have_text("1")
        browser.close()
    assert not problems, problems
    assert query(run_dir, "SELECT reviewer, item_id, verdict, llm_label, label FROM reviews ORDER BY id")[0] == (
        "dr-b", item["id"], "correct", said, right
    )  # fmt: skip
    d = dashboard(run_dir)
    assert (d["llm_review"]["n"], d["llm_review"]["corrected"], d["llm_review"]["cost"]) == (2, 1, 0.6)


@pytest.mark.slow
def test_a_correction_is_a_human_label_the_next_round_trains_on(project):
    cfg, run_dir, gold = project["cfg"], project["run_dir"], project["gold"]
    labeling = labeling_of(cfg, run_dir)
    with Store.open(run_dir / "store.sqlite") as store:
        budget, money = store.budget_used(), store.money_spent()
        candidates = store.review_candidates()
    assert len(candidates) >= 2
    wrong = [c for c in candidates if c["label"] != gold[c["item_id"]]]
    fixed = (wrong or candidates)[0]
    right = gold[fixed["item_id"]] if wrong else next(label for label in LABELS if label != fixed["label"])
    kept = next(c for c in candidates if c["id"] != fixed["id"])
    labeling.review("dr-b", "correct", right, annotation_id=fixed["id"])
    labeling.review("boss", "confirm", annotation_id=kept["id"])
    with Store.open(run_dir / "store.sqlite") as store:
        assert store.budget_used() == {"human": budget["human"] + 1, "llm": budget["llm"]}
        assert store.money_spent() == pytest.approx(money + 0.6)
        for item in store.pending_human(2):
            store.add_human_label("dr-a", item, gold[item], LABELS, cost=1.0)
    done = run(cfg)
    assert done.waiting_round is None
    m = json.loads((run_dir / "metrics.json").read_text())[-1]
    assert (m["reviews_confirmed"], m["reviews_corrected"], m["review_cost"]) == (1, 1, 0.6)
    labeled_2 = query(run_dir, "SELECT COUNT(*) FROM annotations WHERE round=2 AND source='human' AND method IS NULL")[0][0]
    assert m["human_labels"] == labeled_2 + 1 and m["human_cost"] == pytest.approx(labeled_2 * 1.0 + 0.3)
    assert m["human_total"] == done.budget_used["human"]
    # the correction is the reviewer's label with its provenance, and the student of round 2 trained on it as a human
    # label: it is no longer among the LLM's training labels the fidelity state scores
    rows = [r for r in labeling.export_rows() if r["id"] == fixed["item_id"]]
    assert ("human", "dr-b", right, "review", 0.3, 2) in {
        (r["source"], r["annotator"], r["label"], r["method"], r["cost"], r["round"]) for r in rows
    }
    assert ("human", "dr-b", right) in {(r["source"], r["annotator"], r["label"]) for r in read_jsonl(run_dir / "labels.jsonl")}
    state = json.loads((run_dir / "state" / "fidelity_round2.json").read_text())
    trained_llm = {e["id"] for e in state["training"]}
    assert fixed["item_id"] not in trained_llm and kept["item_id"] in trained_llm
    # both reviews are evidence in round 2's self-check, beside its probe answers
    assert state["reviews"] == 2 and m["llm_self_reviews"] == 2
    probes = [r for t in (1, 2) for r in json.loads((run_dir / "state" / f"fidelity_round{t}.json").read_text())["probe"]]
    assert state["llm"]["n"] == sum(r["label"] is not None for r in probes) + 2
    assert not {r["id"] for r in probes} & {fixed["item_id"], kept["item_id"]}
    d = dashboard(run_dir)
    assert d["totals"]["human"]["labels"] == m["human_total"]
    assert d["totals"]["cost"] == pytest.approx(
        m["human_cost_total"] + m["llm_cost_total"] + d["totals"]["llm"]["self_check_cost"] + 0.3
    )  # the confirmation's cost, which no annotation carries
    assert tomllib.loads(config_to_toml(cfg))["human"]["review_cost"] == 0.3
