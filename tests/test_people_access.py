"""People and roles (`imfl people`): personal tokens, stored only as hashes; the person recorded with a label is the
token's, whatever name the client sends; a removed person's token is refused at once and their labels stay; an
annotator gets 403 on the admin endpoints; the shared token works as before while nobody is registered and is refused
once anyone is. The CLI against real run folders, the API over real HTTP to a real uvicorn on 127.0.0.1, and the page
in Debian's chromium (Playwright) against `imfl serve`."""

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing, contextmanager
from pathlib import Path

import httpx
import pytest

from conftest import read_jsonl, serve_app, small_config, write_jsonl
from imfl import run
from imfl.people import Labeling, People

# slow: every test needs a run waiting for people (real student and embedder).
pytestmark = pytest.mark.slow

LABELS = ["negative", "neutral", "positive"]
SHARED = "shared-s3cret"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def settings(tmp_path, shared_data, cache) -> dict:
    """A project of 40 real FPB sentences; its round 1 (of 2) waits for 3 human labels."""
    rows = read_jsonl(shared_data / "fpb_recorded" / "pool.jsonl")[:40]
    return {
        "name": "access",
        "seed": 0,
        "strategy": "imfl",
        "output_dir": str(tmp_path / "runs"),
        "cache_dir": str(cache),
        "data": {
            "pool": str(write_jsonl(tmp_path / "pool.jsonl", rows)),
            "labels": LABELS,
            "test": str(write_jsonl(tmp_path / "test.jsonl", read_jsonl(shared_data / "fpb_recorded" / "test.jsonl")[:20])),
        },
        "budget": {"total": 12, "human": 4, "rounds": 2},
        "human": {"annotator": "people"},
        "llm": {"annotator": "recorded", "column": "llm_gpt4"},
        "student": {"epochs": 1, "min_steps": 0, "max_length": 32, "batch_size": 16},
    }


@pytest.fixture
def waiting(tmp_path, shared_data, imfl_cache):
    """(config, run folder) of a project whose round 1 waits for people."""
    cfg = small_config(settings(tmp_path, shared_data, imfl_cache))
    result = run(cfg)
    assert result.waiting_round == 1 and result.pending == 3
    return cfg, result.run_dir


def imfl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "imfl", *args], capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"}
    )


def query(run_dir: Path, sql: str, args=()) -> list[tuple]:
    with closing(sqlite3.connect(run_dir / "store.sqlite")) as c:
        return c.execute(sql, args).fetchall()


def store_bytes(run_dir: Path) -> bytes:
    """The store's file and its write-ahead log (a token written anywhere in the store would be in one of them)."""
    return b"".join(p.read_bytes() for p in sorted(run_dir.glob("store.sqlite*")))


@contextmanager
def serving(run_dir: Path):
    """The page and API of the run on a real uvicorn server on a socket of 127.0.0.1 bound before it starts."""
    from imfl.server import create_app

    with serve_app(create_app(Labeling(run_dir, lease_seconds=600), SHARED)) as url:
        yield url


def client(url: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60)


def human_labels(run_dir: Path) -> list[tuple]:
    """(annotator, item, label, retracted) of every human label, in order."""
    return query(
        run_dir, "SELECT annotator, item_id, label, retracted_at IS NOT NULL FROM annotations WHERE source='human' ORDER BY id"
    )


# -- the command line ---------------------------------------------------------------------------------------------
def test_people_add_list_remove_from_the_command_line(waiting, tmp_path):
    cfg, run_dir = waiting
    project = tmp_path / "project.toml"
    from imfl.config import config_to_toml

    project.write_text(config_to_toml(cfg), encoding="utf-8")
    r = imfl("people", "list", str(run_dir))
    assert r.returncode == 0 and "nobody is registered" in r.stdout and "shared token" in r.stdout, r.stderr

    # PROJECT is the config file or the run folder, as for imfl serve
    added = imfl("people", "add", str(project), "dr-a")
    assert added.returncode == 0, added.stderr
    token_a = added.stdout.strip()
    assert len(token_a) >= 32 and "\n" not in token_a  # stdout is the token alone: TOKEN=$(imfl people add ...)
    assert "shown only now" in added.stderr and "added dr-a as annotator" in added.stderr
    assert "shared token is refused" in added.stderr  # the first person switches the project to personal tokens
    admin = imfl("people", "add", str(run_dir), "boss", "--role", "admin")
    assert admin.returncode == 0 and "shared token" not in admin.stderr, admin.stderr
    token_boss = admin.stdout.strip()
    assert token_boss != token_a

    # stored only as hashes: neither token is anywhere in the store's bytes, nor in the run folder's other files
    for token in (token_a, token_boss):
        assert token.encode() not in store_bytes(run_dir)
        assert not [p for p in run_dir.rglob("*") if p.is_file() and token.encode() in p.read_bytes()]
    assert People(run_dir).identify(token_a)[1].name == "dr-a"  # ... and the hash identifies the token

    listed = imfl("people", "list", str(project))
    assert listed.returncode == 0, listed.stderr
    lines = {line.split()[0]: line.split() for line in listed.stdout.splitlines() if line.split()[:1] in (["dr-a"], ["boss"])}
    assert lines["dr-a"][1:3] == ["annotator", "yes"] and lines["boss"][1:3] == ["admin", "yes"], listed.stdout
    assert token_a not in listed.stdout + listed.stderr and token_boss not in listed.stdout + listed.stderr

    # bad input: one line, exit status 2, no traceback, nothing written
    before = query(run_dir, "SELECT * FROM people ORDER BY name")
    cases = [
        (("add", str(run_dir), "dr-a"), "'dr-a' is registered already (as annotator)"),
        (("add", str(run_dir), "dr-b", "--role", "boss"), "--role 'boss' is unknown; use annotator or admin"),
        (("add", str(run_dir), "<b>dr</b>"), "NAME '<b>dr</b>' is not a usable name"),
        (("add", str(tmp_path / "nowhere.toml"), "dr-b"), "nowhere.toml: config file not found"),
        (("add", str(tmp_path), "dr-b"), "no config.toml in this folder"),
        (("list", str(tmp_path / "runs" / "nothing")), "nothing: config file not found"),
        (("remove", str(run_dir), "dr-z"), "'dr-z' is not registered; registered now: 'boss', 'dr-a'"),
        (("remove", str(tmp_path / "nowhere"), "dr-a"), "nowhere: config file not found"),
    ]
    for args, message in cases:
        r = imfl("people", *args)
        assert r.returncode == 2 and r.stdout == "", (args, r.stdout, r.stderr)
        assert r.stderr.startswith("imfl: error: ") and message in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    assert query(run_dir, "SELECT * FROM people ORDER BY name") == before
    # a config whose project was never created: refused, and no store is made for it
    other = tmp_path / "other.toml"
    other.write_text(config_to_toml(cfg.model_copy(update={"name": "other"})), encoding="utf-8")
    r = imfl("people", "add", str(other), "dr-b")
    assert r.returncode == 2 and "no project there yet" in r.stderr and not (tmp_path / "runs" / "other").exists(), r.stderr

    removed = imfl("people", "remove", str(project), "dr-a")
    assert removed.returncode == 0 and "their 0 label(s) stay" in removed.stdout, removed.stderr
    assert People(run_dir).identify(token_a) == (True, None)
    r = imfl("people", "remove", str(run_dir), "dr-a")
    assert r.returncode == 2 and "'dr-a' was removed already" in r.stderr
    listed = imfl("people", "list", str(run_dir)).stdout
    assert any(line.split()[:3] == ["dr-a", "annotator", "removed"] for line in listed.splitlines()), listed
    # added again: a new token, the old one stays dead
    again = imfl("people", "add", str(run_dir), "dr-a")
    assert again.returncode == 0 and "added dr-a again as annotator" in again.stderr, again.stderr
    assert People(run_dir).identify(again.stdout.strip())[1].name == "dr-a"
    assert People(run_dir).identify(token_a) == (True, None)


# -- the API ------------------------------------------------------------------------------------------------------
def test_the_token_says_who_labels_and_roles_are_checked(waiting):
    cfg, run_dir = waiting
    gold = {r["id"]: r["label"] for r in read_jsonl(cfg.data.pool)}
    people = People(run_dir)
    token_a, _ = people.add("dr-a")
    token_b, _ = people.add("dr-b")
    token_boss, _ = people.add("boss", "admin")
    with serving(run_dir) as url, client(url, token_a) as a, client(url, token_b) as b, client(url, token_boss) as boss:
        assert a.get("/api/me").json() == {"name": "dr-a", "role": "annotator", "token": "personal"}
        assert boss.get("/api/me").json() == {"name": "boss", "role": "admin", "token": "personal"}

        # nobody acts as another person: naming someone else is refused (403) and nothing is held or written
        r = a.get("/api/next", params={"annotator": "boss"})
        assert r.status_code == 403 and r.json()["detail"] == "this token belongs to 'dr-a': it cannot act as 'boss'", r.text
        assert query(run_dir, "SELECT annotator FROM leases") == []
        item = a.get("/api/next", params={"annotator": "dr-a"}).json()["item"]["id"]  # naming oneself is fine
        assert query(run_dir, "SELECT annotator FROM leases WHERE item_id=?", (item,)) == [("dr-a",)]
        r = a.post("/api/label", json={"annotator": "dr-b", "item_id": item, "label": gold[item]})
        assert r.status_code == 403 and human_labels(run_dir) == [], r.text
        r = a.post("/api/label", json={"item_id": item, "label": gold[item]})
        assert r.status_code == 200 and r.json()["done"] == 1, r.text
        assert human_labels(run_dir) == [("dr-a", item, gold[item], 0)]
        # nobody can take back someone else's label by naming them
        r = b.post("/api/undo", json={"annotator": "dr-a"})
        assert r.status_code == 403 and human_labels(run_dir) == [("dr-a", item, gold[item], 0)], r.text
        # and a label needs no name at all
        second = b.get("/api/next").json()["item"]["id"]
        assert b.post("/api/label", json={"item_id": second, "label": gold[second]}).status_code == 200
        assert human_labels(run_dir)[-1] == ("dr-b", second, gold[second], 0)

        # annotators: 403 on every admin endpoint, and nothing written
        people_before = query(run_dir, "SELECT * FROM people ORDER BY name")
        for request in (
            a.get("/api/people"),
            a.get("/api/export"),
            a.post("/api/people", json={"name": "mallory", "role": "admin"}),
            a.delete("/api/people/dr-b"),
            a.delete("/api/people/boss"),
        ):
            assert request.status_code == 403, (request.request.url, request.text)
            assert request.json()["detail"] == "only admins may do this; dr-a is annotator"
        assert query(run_dir, "SELECT * FROM people ORDER BY name") == people_before

        # admins: what annotators do, and the admin endpoints
        assert boss.get("/api/status").json()["state"] == "labeling"
        listed = boss.get("/api/people").json()["people"]
        assert [(p["name"], p["role"], p["labels"]) for p in listed] == [
            ("dr-a", "annotator", 1),
            ("dr-b", "annotator", 1),
            ("boss", "admin", 0),
        ]
        assert not {"token", "token_sha256"} & set(listed[0])
        exported = boss.get("/api/export").json()["labels"]
        assert [(r["annotator"], r["id"]) for r in exported if r["source"] == "human"] == [("dr-a", item), ("dr-b", second)]
        new = boss.post("/api/people", json={"name": "dr-c"})
        assert new.status_code == 201 and new.json()["role"] == "annotator", new.text
        with client(url, new.json()["token"]) as c:
            assert c.get("/api/me").json()["name"] == "dr-c"
        assert new.json()["token"].encode() not in store_bytes(run_dir)
        r = boss.post("/api/people", json={"name": "dr-c", "role": "admin"})
        assert r.status_code == 409 and "registered already" in r.json()["detail"]
        r = boss.post("/api/people", json={"name": "dr-d", "role": "owner"})
        assert r.status_code == 422 and r.json()["detail"].startswith("role:"), r.text
        r = boss.delete("/api/people/boss")
        assert r.status_code == 409 and "cannot remove yourself" in r.json()["detail"]
        assert boss.delete("/api/people/nobody").status_code == 404

        # removed, while the server runs (from the terminal): refused at the next request; the labels stay
        held = a.get("/api/next").json()["item"]["id"]
        r = imfl("people", "remove", str(run_dir), "dr-a")
        assert r.returncode == 0 and "their 1 label(s) stay" in r.stdout, r.stderr
        for request in (
            a.get("/api/me"),
            a.get("/api/next"),
            a.post("/api/label", json={"item_id": held, "label": gold[held]}),
            a.post("/api/undo", json={}),
        ):
            assert request.status_code == 401 and request.headers["www-authenticate"] == "Bearer", request.text
        assert human_labels(run_dir) == [("dr-a", item, gold[item], 0), ("dr-b", second, gold[second], 0)]
        assert query(run_dir, "SELECT annotator FROM leases WHERE item_id=?", (held,)) == []  # what dr-a held is free
        assert ("dr-a", item) in [(r["annotator"], r["id"]) for r in boss.get("/api/export").json()["labels"]]
        r = boss.delete("/api/people/dr-c")  # from the page: the same
        assert r.status_code == 200 and r.json() == {"name": "dr-c", "labels_kept": 0}
        with client(url, new.json()["token"]) as c:
            assert c.get("/api/status").status_code == 401


def test_the_shared_token_works_as_before_until_someone_is_registered(waiting):
    cfg, run_dir = waiting
    gold = {r["id"]: r["label"] for r in read_jsonl(cfg.data.pool)}
    with serving(run_dir) as url, client(url, SHARED) as shared:
        assert shared.get("/api/me").json() == {"name": None, "role": "annotator", "token": "shared"}
        item = shared.get("/api/next", params={"annotator": "dr-a"}).json()["item"]["id"]
        r = shared.post("/api/label", json={"item_id": item, "label": gold[item]})  # with the shared token: who?
        assert r.status_code == 422 and r.json()["detail"].startswith("annotator: Field required"), r.text
        assert shared.post("/api/label", json={"annotator": "dr-a", "item_id": item, "label": gold[item]}).status_code == 200
        assert human_labels(run_dir) == [("dr-a", item, gold[item], 0)]
        assert shared.post("/api/undo", json={"annotator": "dr-a"}).json()["undone"] == item
        with client(url, "wrong") as wrong:
            assert wrong.get("/api/status").status_code == 401
        assert httpx.get(f"{url}/api/status").status_code == 401
        r = shared.get("/api/export")  # the shared token is an annotator's: nothing an admin may do
        assert r.status_code == 403 and r.json()["detail"] == "only admins may do this; the shared token is annotator"
        assert shared.post("/api/people", json={"name": "mallory", "role": "admin"}).status_code == 403

        # the first person registered (here from the terminal, while the page is in use) ends the shared mode at once
        token, _ = People(run_dir).add("dr-a")
        before = human_labels(run_dir)
        for request in (
            shared.get("/api/status"),
            shared.get("/api/next", params={"annotator": "dr-a"}),
            shared.post("/api/label", json={"annotator": "dr-a", "item_id": item, "label": gold[item]}),
        ):
            assert request.status_code == 401 and "shared token is refused" in request.json()["detail"], request.text
        assert human_labels(run_dir) == before
        with client(url, token) as a:
            assert a.post("/api/label", json={"item_id": item, "label": gold[item]}).status_code == 200
        # ... and removing the last person does not bring it back
        People(run_dir).remove("dr-a")
        assert shared.get("/api/status").status_code == 401


def test_serve_with_people_registered_needs_no_shared_token(waiting):
    _, run_dir = waiting
    People(run_dir).add("dr-a")
    env = {k: v for k, v in os.environ.items() if k != "IMFL_TOKEN"} | {"COLUMNS": "200"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "imfl", "serve", str(run_dir), "--port", "0", "--no-loop"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:  # the output is not a terminal: without people this exits at once asking for $IMFL_TOKEN
        first = proc.stdout.readline()
        second = proc.stdout.readline()
        assert "annotation page" in first and "each person's own token" in second, first + second
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)


# -- the page -------------------------------------------------------------------------------------------------------
@pytest.fixture
def served(waiting, tmp_path):
    """`imfl serve` (no background loop: the round is already waiting) with an admin registered from the terminal."""
    cfg, run_dir = waiting
    added = imfl("people", "add", str(run_dir), "boss", "--role", "admin")
    assert added.returncode == 0, added.stderr
    port = free_port()
    env = {**os.environ, "IMFL_TOKEN": SHARED}
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "imfl", "serve", str(run_dir), "--port", str(port), "--no-loop"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()
        try:
            if httpx.get(f"{url}/api/me", headers={"Authorization": f"Bearer {added.stdout.strip()}"}).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
        time.sleep(0.2)
    tokens = [added.stdout.strip()]
    rows = read_jsonl(cfg.data.pool)
    yield url, run_dir, tokens, {r["id"]: r["label"] for r in rows}, {r["text"]: r["id"] for r in rows}
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()
    logged = (tmp_path / "serve.log").read_text()
    assert tokens and not [t for t in tokens + [SHARED] if t in logged]  # no token reaches the log


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (apt-get install chromium)")
def test_personal_tokens_in_the_browser(served):
    from playwright.sync_api import expect, sync_playwright

    url, run_dir, tokens, gold, text_to_id = served
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        admin = browser.new_context().new_page()
        admin.goto(url)
        admin.fill("#token", tokens[0])
        admin.click("#login button[type=submit]")
        # a personal token: no name asked, the page says who is signed in, and an admin sees the people panel
        expect(admin.locator("#who-text")).to_have_text("Signed in as boss (admin)")
        expect(admin.locator("#progress")).to_have_text("Round 1: 0 of 3 labeled")
        assert admin.locator("#name-row").is_hidden()
        expect(admin.locator("#people-rows tr")).to_have_count(1)

        # the admin adds a person on the page; the token is shown there once
        admin.fill("#new-name", "dr-<i>a</i>")  # refused by the page's own check (the name rule), so never sent
        assert admin.evaluate("document.getElementById('new-name').validity.patternMismatch")
        admin.fill("#new-name", "dr-a")
        admin.click("#add-person button[type=submit]")
        expect(admin.locator("#new-token-name")).to_have_text("dr-a")
        tokens.append(admin.locator("#new-token-value").text_content())
        expect(admin.locator("#people-rows tr")).to_have_count(2)

        # the new person signs in with it (another browser) and labels with the keyboard
        page = browser.new_context().new_page()
        page.goto(url)
        page.fill("#token", tokens[1])
        page.click("#login button[type=submit]")
        expect(page.locator("#who-text")).to_have_text("Signed in as dr-a (annotator)")
        assert page.locator("#people").is_hidden()
        expect(page.locator("#progress")).to_have_text("Round 1: 0 of 3 labeled")
        item = text_to_id[page.locator("#text").text_content()]
        page.keyboard.press(str(LABELS.index(gold[item]) + 1))
        expect(page.locator("#progress")).to_have_text("Round 1: 1 of 3 labeled")
        assert human_labels(run_dir) == [("dr-a", item, gold[item], 0)]

        # the admin removes them: their next request is refused and the page asks for a token again
        admin.reload()  # the people panel shows dr-a's label
        expect(admin.locator('#people-rows tr[data-name="dr-a"] td').nth(3)).to_have_text("1")
        admin.locator('#people-rows tr[data-name="dr-a"] button').click()
        expect(admin.locator('#people-rows tr[data-name="dr-a"] td').nth(2)).to_have_text("removed")
        page.keyboard.press("1")
        expect(page.locator("#login")).to_be_visible()
        expect(page.locator("#login-error")).to_contain_text("not accepted")
        assert human_labels(run_dir) == [("dr-a", item, gold[item], 0)]  # their label stays

        # the shared token is refused now that people are registered, with the reason on the page
        page.fill("#token", SHARED)
        page.click("#login button[type=submit]")
        expect(page.locator("#login-error")).to_contain_text("shared token is refused")
        assert page.locator("#main").is_hidden()
        browser.close()
