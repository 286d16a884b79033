"""Real people in the loop: a run that waits for them in its store, leases, validation, undo, the HTTP API
on a real uvicorn server, the background worker, and label files (export, import with bad rows)."""

import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest

from conftest import read_jsonl, serve_app, small_config, write_jsonl
from imfl import run
from imfl.errors import Conflict, ImflError, InvalidLabel, NotFound, Rejected
from imfl.people import Labeling
from imfl.server import REJECTED_STATUS
from imfl.store import Store

# slow: every test needs a run waiting for people (real student and embedder).
pytestmark = pytest.mark.slow

LABELS = ("negative", "neutral", "positive")


def people_config(tmp_path, shared_data, cache, name="people", **over):
    rows = read_jsonl(shared_data / "fpb_recorded" / "pool.jsonl")[:80]
    pool = write_jsonl(tmp_path / "pool.jsonl", rows)
    test = write_jsonl(tmp_path / "test.jsonl", read_jsonl(shared_data / "fpb_recorded" / "test.jsonl")[:20])
    settings = {
        "name": name,
        "seed": 0,
        "strategy": "imfl",
        "output_dir": str(tmp_path / "runs"),
        "cache_dir": str(cache),
        "data": {"pool": str(pool), "test": str(test), "labels": list(LABELS)},
        "budget": {"total": 24, "human": 9, "rounds": 2},
        "human": {"annotator": "people"},
        "llm": {"annotator": "recorded", "column": "llm_gpt4"},
        "student": {"epochs": 1, "min_steps": 0, "max_length": 32, "batch_size": 16},
    }
    return small_config(settings, **over)


@pytest.fixture
def waiting(tmp_path, shared_data, imfl_cache):
    """A project whose round 1 waits for 6 human labels."""
    cfg = people_config(tmp_path, shared_data, imfl_cache)
    result = run(cfg)
    assert result.waiting_round == 1 and result.pending == 6 and result.metrics == []
    return cfg, result.run_dir, Labeling(result.run_dir, lease_seconds=60)


def annotation_count(run_dir):
    with sqlite3.connect(run_dir / "store.sqlite") as c:
        return c.execute("SELECT COUNT(*) FROM annotations").fetchone()[0]


def gold(cfg):
    return {r["id"]: r["label"] for r in read_jsonl(cfg.data.pool)}


def test_the_run_waits_then_continues_when_people_are_done(waiting):
    cfg, run_dir, people = waiting
    assert run(cfg).waiting_round == 1  # asking again changes nothing while labels are missing
    assert annotation_count(run_dir) == 0
    truth = gold(cfg)
    while "item" in (got := people.next("ann")):
        people.label("ann", got["item"]["id"], truth[got["item"]["id"]])
    assert people.status() == {"state": "labeling", "round": 1, "done": 6, "total": 6}
    result = run(cfg)
    assert result.waiting_round == 2 and [m["human_labels"] for m in result.metrics] == [6]
    with sqlite3.connect(run_dir / "store.sqlite") as c:
        rows = c.execute("SELECT annotator, label, source FROM annotations WHERE round=1 AND source='human'").fetchall()
    assert len(rows) == 6 and {r[0] for r in rows} == {"ann"}


def test_two_people_never_get_the_same_item(waiting):
    _, run_dir, people = waiting
    first = {people.next(name)["item"]["id"] for name in ("a", "b", "c")}
    assert len(first) == 3
    assert people.next("a")["item"]["id"] in first  # a keeps the item it holds

    truth = gold(waiting[0])
    labeled: dict[str, list[str]] = {"x": [], "y": []}
    errors = []

    def work(name):
        other = Labeling(run_dir, lease_seconds=60)  # own connections, as two browsers
        try:
            while "item" in (got := other.next(name)):
                other.label(name, got["item"]["id"], truth[got["item"]["id"]])
                labeled[name].append(got["item"]["id"])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in ("x", "y")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    done = labeled["x"] + labeled["y"]
    # a, b and c still hold their items, so x and y share the other three, never the same one twice
    assert len(done) == len(set(done)) == 3 and not set(done) & first


def test_bad_labels_are_rejected_and_nothing_changes(waiting):
    cfg, run_dir, people = waiting
    item = people.next("a")["item"]["id"]
    with pytest.raises(InvalidLabel, match="'bullish' is not one of"):
        people.label("a", item, "bullish")
    with pytest.raises(Conflict, match="not waiting"):
        people.label("a", "no-such-item", "neutral")
    with pytest.raises(Conflict, match="someone else"):
        people.label("b", item, "neutral")  # a holds it
    assert annotation_count(run_dir) == 0
    people.label("a", item, "neutral")
    with pytest.raises(Conflict):
        people.label("a", item, "positive")
    assert annotation_count(run_dir) == 1
    # every refusal is one of imfl's own errors (the CLI prints it on one line); the server maps each kind to a status
    assert issubclass(Conflict, Rejected) and issubclass(Rejected, ImflError)
    assert REJECTED_STATUS == {NotFound: 404, Conflict: 409, InvalidLabel: 422}


def test_undo_takes_back_the_last_label_and_hands_the_item_back(waiting):
    _, run_dir, people = waiting
    first = people.next("a")["item"]["id"]
    people.label("a", first, "neutral")
    second = people.next("a")["item"]["id"]
    people.label("a", second, "positive")
    assert people.undo("a")["undone"] == second
    assert people.status()["done"] == 1
    assert people.next("a")["item"]["id"] == second  # back in a's hands
    assert people.next("b")["item"]["id"] not in (first, second)
    with sqlite3.connect(run_dir / "store.sqlite") as c:  # the retracted label is kept, marked
        rows = c.execute("SELECT item_id, label, retracted_at IS NOT NULL FROM annotations ORDER BY id").fetchall()
    assert rows == [(first, "neutral", 0), (second, "positive", 1)]
    with pytest.raises(Rejected):
        people.undo("b")  # b has nothing to take back


def test_expired_leases_go_to_someone_else(waiting):
    _, run_dir, people = waiting  # leases of 60 s
    held = people.next("a")["item"]["id"]
    assert people.next("b")["item"]["id"] != held
    # The store takes the clock as a parameter: half-way through a's lease the item is still a's, after it someone
    # else's (no waiting for a real lease to run out).
    with Store.open(run_dir / "store.sqlite") as store:
        now = time.time()
        assert store.lease("c", 60, now=now + 30)[1] != held
        assert store.lease("d", 60, now=now + 3600)[1] == held


@pytest.fixture
def api(waiting):
    """The people's HTTP API on a real uvicorn server, on a socket bound before it starts (no port race)."""
    from imfl.server import create_app

    cfg, run_dir, people = waiting
    with serve_app(create_app(people, "s3cret")) as url:
        yield cfg, run_dir, url


def test_http_api_checks_the_token_and_every_posted_label(api):
    cfg, run_dir, url = api
    auth = {"Authorization": "Bearer s3cret"}
    assert httpx.get(f"{url}/api/status").status_code == 401
    assert httpx.get(f"{url}/api/status", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.post(f"{url}/api/label", json={"annotator": "a", "item_id": "x", "label": "neutral"}).status_code == 401
    page = httpx.get(url)
    assert page.status_code == 200 and "textContent" in page.text
    # the one piece of HTML the page inserts: the guidelines, as the server rendered them (tests/test_label_guidelines.py)
    assert page.text.count("innerHTML") == 1 and '$("guidelines-body").innerHTML = data.html' in page.text
    assert not [way for way in ("outerHTML", "insertAdjacentHTML", "document.write", "DOMParser") if way in page.text]
    got = httpx.get(f"{url}/api/next", params={"annotator": "a"}, headers=auth).json()
    item = got["item"]["id"]
    assert got["labels"] == list(LABELS) and got["state"] == "labeling" and "guess" not in got
    bad = [
        ({"annotator": "a", "item_id": item, "label": "bullish"}, 422),
        ({"annotator": "a", "item_id": "no-such-item", "label": "neutral"}, 409),
        ({"annotator": "b", "item_id": item, "label": "neutral"}, 409),
        ({"annotator": "<script>", "item_id": item, "label": "neutral"}, 422),
        ({"item_id": item, "label": "neutral"}, 422),
    ]
    for body, status in bad:
        r = httpx.post(f"{url}/api/label", json=body, headers=auth)
        assert r.status_code == status, (body, r.text)
    assert annotation_count(run_dir) == 0
    r = httpx.post(f"{url}/api/label", json={"annotator": "a", "item_id": item, "label": "neutral"}, headers=auth)
    assert r.status_code == 200 and r.json()["done"] == 1
    assert httpx.post(f"{url}/api/undo", json={"annotator": "a"}, headers=auth).json()["undone"] == item
    assert httpx.post(f"{url}/api/undo", json={"annotator": "a"}, headers=auth).status_code == 409


def test_the_worker_carries_the_run_on_when_a_batch_is_complete(waiting):
    from imfl.server import LoopWorker

    cfg, run_dir, people = waiting
    events = []
    worker = LoopWorker(lambda: run(cfg), people, poll_seconds=0.1, on_event=events.append)
    worker.start()
    truth = gold(cfg)
    for round_ in (1, 2):
        deadline = time.time() + 120
        # the worker has said that this round waits (its message counts the labels pending at that moment)
        while len(events) < round_ or people.status() != {
            "state": "labeling",
            "round": round_,
            "done": 0,
            "total": people.status()["total"],
        }:
            assert time.time() < deadline and not worker.error
            time.sleep(0.1)
        while "item" in (got := people.next("ann")):
            people.label("ann", got["item"]["id"], truth[got["item"]["id"]])
    assert worker.finished.wait(180) and worker.error is None
    assert people.status()["state"] == "finished"
    assert events[0] == "round 1 waits for 6 human labels" and events[-1].startswith("run finished: 9 human")


def test_label_files_round_trip_and_bad_rows_are_reported(waiting, tmp_path):
    cfg, run_dir, people = waiting
    truth = gold(cfg)
    imfl = [sys.executable, "-m", "imfl"]
    for _fmt, name in (("csv", "batch.csv"), ("jsonl", "batch.jsonl"), ("labelstudio", "tasks.json")):
        r = subprocess.run(imfl + ["export-batch", str(run_dir), "--out", str(tmp_path / name)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    pending = [r["id"] for r in read_jsonl(tmp_path / "batch.jsonl")]
    assert len(pending) == 6 and all(r["label"] is None for r in read_jsonl(tmp_path / "batch.jsonl"))
    tasks = json.loads((tmp_path / "tasks.json").read_text())
    assert [t["data"]["id"] for t in tasks] == pending

    # A Label Studio export of the first two tasks, as Label Studio writes it
    for t in tasks[:2]:
        t["annotations"] = [
            {
                "id": 1,
                "was_cancelled": False,
                "result": [
                    {"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [truth[t["data"]["id"]]]}}
                ],
            }
        ]
    tasks[2]["annotations"] = [{"result": [{"value": {"choices": []}}]}]  # nothing chosen
    (tmp_path / "done.json").write_text(json.dumps(tasks[:3]))
    r = subprocess.run(
        imfl + ["import-labels", str(run_dir), str(tmp_path / "done.json"), "--annotator", "studio"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and "imported 2 labels, rejected 1" in r.stdout, r.stdout + r.stderr
    assert "task 3" in r.stderr

    lines = [
        json.dumps({"id": pending[3], "label": truth[pending[3]]}),
        "{not json",
        json.dumps({"id": pending[4], "label": "bullish"}),
        json.dumps({"id": "no-such-item", "label": "neutral"}),
        json.dumps({"id": pending[0], "label": "neutral"}),  # already labeled in Label Studio
        json.dumps({"id": pending[5]}),
        json.dumps({"id": pending[4], "label": truth[pending[4]]}),
    ]
    (tmp_path / "mine.jsonl").write_text("\n".join(lines) + "\n")
    before = (tmp_path / "mine.jsonl").read_bytes()
    r = subprocess.run(imfl + ["import-labels", str(run_dir), str(tmp_path / "mine.jsonl")], capture_output=True, text=True)
    assert r.returncode == 0 and "imported 2 labels, rejected 5" in r.stdout, r.stdout + r.stderr
    for lineno, why in (
        (2, "not valid JSON"),
        (3, "label 'bullish' is not one of"),
        (4, "not waiting for a human label"),
        (5, "not waiting for a human label"),
        (6, "has no label"),
    ):
        assert re.search(rf"mine\.jsonl:{lineno}: [^\n]*{why}", r.stderr), r.stderr
    assert "Traceback" not in r.stderr and (tmp_path / "mine.jsonl").read_bytes() == before
    assert people.status()["done"] == 4

    r = subprocess.run(imfl + ["import-labels", str(run_dir), str(tmp_path / "missing.csv")], capture_output=True, text=True)
    assert r.returncode == 2 and "missing.csv: file not found" in r.stderr and "Traceback" not in r.stderr


def test_terminal_annotation_with_undo_and_skip(waiting):
    cfg, run_dir, people = waiting
    imfl = [sys.executable, "-m", "imfl", "annotate", str(run_dir), "--name", "term"]
    # label, label, undo the second, skip the item handed back, give a wrong answer, quit
    r = subprocess.run(imfl, input="1\n3\nu\ns\n[bullish]\nq\n", capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "round 1: 0 of 6 labeled" in r.stdout and "took back the label of" in r.stdout
    # what the user typed and the keys in the prompt are shown as written (not taken for console markup)
    assert "'[bullish]' is not a choice" in r.stdout and "[u] undo  [s] skip  [q] quit >" in r.stderr, r.stderr
    with sqlite3.connect(run_dir / "store.sqlite") as c:
        rows = c.execute("SELECT annotator, label, retracted_at IS NOT NULL FROM annotations ORDER BY id").fetchall()
    assert rows == [("term", "negative", 0), ("term", "positive", 1)]
    assert people.status()["done"] == 1
    # a second session starts where the first left off
    r = subprocess.run(imfl, input="q\n", capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "round 1: 1 of 6 labeled" in r.stdout


def test_init_status_and_export_from_the_command_line(tmp_path, shared_data, imfl_cache):
    from imfl.config import config_to_toml

    cfg = people_config(tmp_path, shared_data, imfl_cache, name="cli")
    (tmp_path / "project.toml").write_text(config_to_toml(cfg), encoding="utf-8")
    imfl = [sys.executable, "-m", "imfl"]
    run_dir = tmp_path / "runs" / "cli"
    r = subprocess.run(imfl + ["init", str(tmp_path / "project.toml")], capture_output=True, text=True)
    assert r.returncode == 0 and f"project ready in {run_dir}" in r.stdout.replace("\n", ""), r.stderr
    r = subprocess.run(imfl + ["status", str(run_dir)], capture_output=True, text=True)
    assert r.returncode == 0 and "0 of 2 rounds" in r.stdout and "budget used: 0 of 9 human" in r.stdout
    r = subprocess.run(imfl + ["run", str(tmp_path / "project.toml")], capture_output=True, text=True)
    assert r.returncode == 0 and "round 1 waits for 6 human labels" in r.stdout, r.stdout + r.stderr
    people = Labeling(run_dir)
    got = people.next("dr-b")
    people.label("dr-b", got["item"]["id"], "neutral")
    r = subprocess.run(imfl + ["status", str(run_dir)], capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    assert "human_pending" in r.stdout and "1 (6)" in r.stdout and "budget used: 1 of 9 human" in r.stdout, r.stdout
    r = subprocess.run(imfl + ["export", str(run_dir), "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    [row] = read_jsonl(tmp_path / "out" / "labels.jsonl")
    assert row["id"] == got["item"]["id"] and row["label"] == "neutral" and row["annotator"] == "dr-b"
    assert row["source"] == "human" and row["round"] == 1 and row["text"] == got["item"]["text"] and row["created_at"] > 0
    r = subprocess.run(imfl + ["status", str(tmp_path / "[nowhere]")], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "config" in r.stderr and "[nowhere]" in r.stderr, r.stderr


def test_continue_partial_moves_the_missing_human_budget_to_the_next_round(waiting):
    cfg, run_dir, people = waiting
    truth = gold(cfg)
    for _ in range(2):
        got = people.next("ann")
        people.label("ann", got["item"]["id"], truth[got["item"]["id"]])
    left = {i["id"] for i in people.pending_items()}
    result = run(cfg, continue_partial=True)
    assert [m["human_labels"] for m in result.metrics] == [2]
    # round 2 plans 3 human labels, plus the 4 round 1 did not get; its 4 unlabeled items went back to the pool
    assert result.waiting_round == 2 and result.pending == 7
    with sqlite3.connect(run_dir / "store.sqlite") as c:
        state = c.execute("SELECT state FROM rounds WHERE round=1").fetchone()[0]
        again = {r[0] for r in c.execute("SELECT item_id FROM selections WHERE round=2")}
        annotated = {r[0] for r in c.execute("SELECT item_id FROM annotations")}
    assert state == "evaluated" and len(again) == 12 + 4
    # The 4 went back to the pool as they were: no label of any source, and round 2's query scored them with the
    # other unlabeled items (the student's uncertainty on the pool, saved for that query).
    candidates = set(np.load(run_dir / "state" / "proba_round1.npz")["ids"].tolist())
    assert len(left) == 4 and not left & annotated and left <= candidates


def test_guesses_are_hidden_unless_asked_for(tmp_path, shared_data, imfl_cache):
    cfg = people_config(
        tmp_path, shared_data, imfl_cache, budget={"total": 24, "human": 9, "rounds": 2}, human__show_guesses=True
    )
    run_dir = run(cfg).run_dir
    truth = gold(cfg)
    people = Labeling(run_dir)
    while "item" in (got := people.next("a")):
        assert "guess" not in got  # hidden by default
        people.label("a", got["item"]["id"], truth[got["item"]["id"]])
    run(cfg)
    recorded = {r["id"]: r["llm_gpt4"] for r in read_jsonl(cfg.data.pool)}
    shown = Labeling(run_dir, show_guesses=True, llm_guesses=recorded).next("a")
    student = shown["guess"]["student"]  # round 2: the student of round 1 has a guess
    assert set(student) == set(LABELS) and abs(sum(student.values()) - 1) < 0.01
    assert shown["guess"]["llm"] == recorded[shown["item"]["id"]]


def test_serve_never_prints_a_new_token_into_a_log(waiting):
    _, run_dir, _ = waiting
    env = {k: v for k, v in os.environ.items() if k != "IMFL_TOKEN"}
    r = subprocess.run(
        [sys.executable, "-m", "imfl", "serve", str(run_dir), "--port", "0"], capture_output=True, text=True, env=env, timeout=120
    )
    assert r.returncode == 2 and "set $IMFL_TOKEN" in r.stderr and "Traceback" not in r.stderr


def test_one_process_at_a_time_runs_a_project(waiting):
    import fcntl

    from imfl.errors import ConfigError

    cfg, run_dir, _ = waiting
    with open(run_dir / "run.lock", "a+") as held:  # as another imfl process would hold it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ConfigError, match="being run by another imfl process"):
            run(cfg)
    assert run(cfg).waiting_round == 1  # free again
