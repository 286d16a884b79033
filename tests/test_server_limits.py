"""The annotation server against careless or hostile requests, over real HTTP to a real uvicorn on 127.0.0.1: request
bodies are capped (by their Content-Length, and counted while a chunked body streams), validation errors are short,
every response carries the security headers; skip and undo keep their contract; the background worker can be
stopped and joined."""

import http.client
import re
import socket
import sqlite3
import threading
import time
from contextlib import contextmanager

import httpx
import pytest

from conftest import read_jsonl, small_config, write_jsonl
from imfl import run
from imfl.errors import Conflict
from imfl.people import Labeling

# slow: every test needs a run waiting for people, most a served one.
pytestmark = pytest.mark.slow

LABELS = ("negative", "neutral", "positive")
TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LIMIT = 64 * 1024  # the server's cap on request bodies
HEADERS = {"x-frame-options": "DENY", "x-content-type-options": "nosniff", "referrer-policy": "no-referrer"}


def project(tmp_path, shared_data, cache, rounds=2):
    """A project of 80 real FPB sentences whose first round waits for people (6 of 9 human labels with 2 rounds)."""
    rows = read_jsonl(shared_data / "fpb_recorded" / "pool.jsonl")[:80]
    settings = {
        "name": "limits",
        "seed": 0,
        "strategy": "imfl",
        "output_dir": str(tmp_path / "runs"),
        "cache_dir": str(cache),
        "data": {
            "pool": str(write_jsonl(tmp_path / "pool.jsonl", rows)),
            "labels": list(LABELS),
            "test": str(write_jsonl(tmp_path / "test.jsonl", read_jsonl(shared_data / "fpb_recorded" / "test.jsonl")[:20])),
        },
        "budget": {"total": 24, "human": 9, "rounds": rounds},
        "human": {"annotator": "people"},
        "llm": {"annotator": "recorded", "column": "llm_gpt4"},
        "student": {"epochs": 1, "min_steps": 0, "max_length": 32, "batch_size": 16},
    }
    cfg = small_config(settings)
    result = run(cfg)
    assert result.waiting_round == 1
    return cfg, result.run_dir, {r["id"]: r["label"] for r in rows}


def standing_labels(run_dir) -> int:
    with sqlite3.connect(run_dir / "store.sqlite") as c:
        return c.execute("SELECT COUNT(*) FROM annotations WHERE source='human' AND retracted_at IS NULL").fetchone()[0]


@contextmanager
def serving(labeling):
    """The app on a real uvicorn server on a free port of 127.0.0.1; yields its base URL once it accepts requests."""
    import uvicorn

    from imfl.server import create_app

    server = uvicorn.Server(uvicorn.Config(create_app(labeling, TOKEN), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("uvicorn did not start on 127.0.0.1 within 60 s (see the captured log)")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="module")
def served(tmp_path_factory, shared_data, imfl_cache):
    """One waiting project behind one server for the tests that must leave it as it was."""
    cfg, run_dir, gold = project(tmp_path_factory.mktemp("limits"), shared_data, imfl_cache)
    with serving(Labeling(run_dir, lease_seconds=600)) as url:
        yield url, run_dir


def raw_request(url: str, head: str, body_parts: list[bytes]) -> tuple[http.client.HTTPResponse, bytes]:
    """Send ``head`` and the body parts on a plain socket, then read the answer without sending the rest of the body
    that ``head`` announces: a server that waits for all of it never answers (the socket times out)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n")
    for part in body_parts:
        sock.sendall(part)
    response = http.client.HTTPResponse(sock)
    response.begin()
    body = response.read(4096)
    sock.close()
    return response, body


def test_a_body_announced_as_too_large_is_refused_before_it_arrives(served):
    url, run_dir = served
    before = standing_labels(run_dir)
    head = (
        f"POST /api/label HTTP/1.1\nHost: 127.0.0.1\nAuthorization: Bearer {TOKEN}\n"
        f"Content-Type: application/json\nContent-Length: 100000000\n"
    )
    r, body = raw_request(url, head, [b'{"annotator": "a", "item_id": "x", "label": "neutral", "pad": "'])
    assert r.status == 413 and body == b"Content Too Large", body
    assert {k.lower(): v for k, v in r.getheaders()}.items() >= HEADERS.items()
    assert standing_labels(run_dir) == before


def test_a_chunked_body_is_counted_while_it_streams(served):
    url, run_dir = served
    before = standing_labels(run_dir)
    head = (
        f"POST /api/label HTTP/1.1\nHost: 127.0.0.1\nAuthorization: Bearer {TOKEN}\n"
        "Content-Type: application/json\nTransfer-Encoding: chunked\n"
    )
    chunk = 8 * 1024
    parts = [f"{chunk:x}\r\n".encode() + b"x" * chunk + b"\r\n" for _ in range(LIMIT // chunk + 1)]  # never ends
    r, body = raw_request(url, head, parts)
    assert r.status == 413 and b"Content Too Large" in body, body
    assert standing_labels(run_dir) == before


def test_large_bodies_with_a_valid_label_store_nothing(served):
    url, run_dir = served
    with httpx.Client(base_url=url, headers=AUTH, timeout=60) as client:
        item = client.get("/api/next", params={"annotator": "big"}).json()["item"]["id"]
        before = standing_labels(run_dir)
        body = {"annotator": "big", "item_id": item, "label": "neutral"}
        r = client.post("/api/label", json={**body, "pad": "x" * 10_000_000})  # with a Content-Length
        assert r.status_code == 413 and r.text == "Content Too Large", r.text[:300]

        def chunks():  # no Content-Length: httpx sends it chunked
            yield b'{"annotator": "big", "item_id": "%s", "label": "neutral", "pad": "' % item.encode()
            for _ in range(100):
                yield b"x" * 10_000
            yield b'"}'

        r = client.post("/api/label", content=chunks(), headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and r.json()["detail"] == "Content Too Large", r.text[:300]
        assert standing_labels(run_dir) == before
        # a body under the cap is taken as before (and given back, so the project stays as it was)
        r = client.post("/api/label", json={**body, "pad": "x" * (LIMIT - 1000)})
        assert r.status_code == 200 and standing_labels(run_dir) == before + 1, r.text[:300]
        assert client.post("/api/undo", json={"annotator": "big"}).json()["undone"] == item
        assert standing_labels(run_dir) == before


def test_validation_errors_name_the_field_and_never_echo_large_input(served):
    url, run_dir = served
    before = standing_labels(run_dir)
    with httpx.Client(base_url=url, headers=AUTH, timeout=60) as client:
        item = client.get("/api/next", params={"annotator": "v"}).json()["item"]["id"]
        cases = [  # body, what the message must say
            ({"annotator": "v", "item_id": item, "label": "n" * 60_000}, r"label: .*at most 500 characters"),
            ({"annotator": "v", "label": "neutral"}, r"item_id: Field required"),
            ({"annotator": "v" * 5_000, "item_id": item, "label": "neutral"}, r"annotator: .*at most 80 characters"),
            (["neutral"] * 5_000, r"body: .*valid dictionary"),
        ]
        for body, why in cases:
            r = client.post("/api/label", json=body)
            detail = r.json()["detail"]
            assert r.status_code == 422 and isinstance(detail, str) and re.search(why, detail), (why, r.text[:300])
            assert len(r.content) < 400 and not re.search(r"(.)\1{80}", detail), r.text[:600]
        r = client.post(
            "/api/label", content=b'{"annotator": "v", ' + b"x" * 50_000, headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 422 and "JSON" in r.json()["detail"] and len(r.content) < 400, r.text[:300]
        r = client.get("/api/next", params={"annotator": "<script>" * 500})
        assert r.status_code == 422 and r.json()["detail"].startswith("annotator") and len(r.content) < 400, r.text[:300]
    assert standing_labels(run_dir) == before


def test_every_response_carries_the_security_headers(served):
    url, _ = served
    with httpx.Client(base_url=url, timeout=60) as client:
        pages = [client.get("/"), client.get("/")]
        answers = [
            client.get("/api/status"),
            client.get("/api/status", headers=AUTH),
            client.post("/api/label", json={}, headers=AUTH),
            client.get("/no-such-page"),
        ]
    for r in pages + answers:
        assert r.headers.items() >= HEADERS.items() and "frame-ancestors 'none'" in r.headers["content-security-policy"], (
            r.headers
        )
    assert [r.status_code for r in answers] == [401, 200, 422, 404]
    for r in answers:
        assert r.headers["content-security-policy"].startswith("default-src 'none'")
    # the page: its one script and one style sheet run by a nonce that is new on every response; nothing else inline
    nonces = []
    for r in pages:
        csp = r.headers["content-security-policy"]
        assert "'unsafe-inline'" not in csp and "default-src 'none'" in csp and "connect-src 'self'" in csp
        [nonce] = set(re.findall(r"'nonce-([^']+)'", csp))
        assert len(re.findall(rf'<(?:script|style) nonce="{re.escape(nonce)}">', r.text)) == 2
        assert len(re.findall(r"<(?:script|style)\b", r.text)) == 2
        assert not re.search(r"\son[a-z]+\s*=|javascript:", r.text, re.IGNORECASE)  # no inline event handlers
        nonces.append(nonce)
    assert nonces[0] != nonces[1] and len(nonces[0]) >= 16


@pytest.fixture
def fresh(tmp_path, shared_data, imfl_cache):
    """A waiting project (round 1 of 2 waits for 6 human labels) behind its own server."""
    cfg, run_dir, gold = project(tmp_path, shared_data, imfl_cache)
    with serving(Labeling(run_dir, lease_seconds=600)) as url:
        with httpx.Client(base_url=url, headers=AUTH, timeout=60) as client:
            yield client, run_dir, gold


def test_skip_hands_the_item_to_others_and_back_to_the_skipper_last(fresh):
    client, run_dir, gold = fresh

    def next_id(name):
        return client.get("/api/next", params={"annotator": name}).json()["item"]["id"]

    skipped = next_id("a")
    r = client.post("/api/skip", json={"annotator": "a", "item_id": skipped})
    assert r.status_code == 200 and r.json() == {"state": "labeling", "round": 1, "done": 0, "total": 6}
    assert next_id("a") != skipped
    assert next_id("b") == skipped  # free again, and the most wanted item
    assert client.post("/api/skip", json={"annotator": "b", "item_id": skipped}).status_code == 200
    order = []
    while "item" in (got := client.get("/api/next", params={"annotator": "a"}).json()):
        order.append(got["item"]["id"])
        assert (
            client.post("/api/label", json={"annotator": "a", "item_id": order[-1], "label": gold[order[-1]]}).status_code == 200
        )
    assert len(order) == len(set(order)) == 6 and order[-1] == skipped  # a got it back only when nothing else was left
    assert standing_labels(run_dir) == 6
    # the checks every request gets
    assert httpx.post(client.base_url.join("/api/skip"), json={"annotator": "a", "item_id": skipped}).status_code == 401
    r = client.post("/api/skip", json={"annotator": "a"})
    assert r.status_code == 422 and "item_id: Field required" in r.json()["detail"], r.text


# Through Labeling, which the API calls: before the check, an unknown id was a 500 over HTTP, and a 500 in uvicorn's
# thread while pytest reports a failure can stop pytest (Python 3.11's ast.parse is not safe in two threads at once).
def test_skipping_an_item_that_is_not_waiting_is_refused(tmp_path, shared_data, imfl_cache):
    _, run_dir, gold = project(tmp_path, shared_data, imfl_cache)
    people = Labeling(run_dir)
    done = people.next("a")["item"]["id"]
    people.label("a", done, gold[done])
    for item in ("no-such-item", done):
        with pytest.raises(Conflict, match="not waiting"):
            people.skip("a", item)


def test_undo_is_refused_once_the_round_has_moved_on_and_the_finished_worker_can_be_joined(tmp_path, shared_data, imfl_cache):
    from imfl.server import LoopWorker

    cfg, run_dir, gold = project(tmp_path, shared_data, imfl_cache)  # 2 rounds: 6 + 3 human labels
    people = Labeling(run_dir, lease_seconds=600)
    with serving(people) as url, httpx.Client(base_url=url, headers=AUTH, timeout=60) as client:

        def label_the_batch() -> list[str]:
            labeled = []
            while "item" in (got := client.get("/api/next", params={"annotator": "a"}).json()):
                labeled.append(got["item"]["id"])
                client.post(
                    "/api/label", json={"annotator": "a", "item_id": labeled[-1], "label": gold[labeled[-1]]}
                ).raise_for_status()
            return labeled

        def undo():
            return client.post("/api/undo", json={"annotator": "a"})

        first = label_the_batch()
        # the batch is complete, but until the loop takes it the round still waits for people: undo is allowed
        assert undo().json()["undone"] == first[-1] and label_the_batch() == first[-1:]
        worker = LoopWorker(lambda: run(cfg), people, poll_seconds=0.05)
        worker.start()
        deadline = time.monotonic() + 600
        while client.get("/api/status").json() != {
            "state": "labeling",
            "round": 2,
            "done": 0,
            "total": 3,
            "labels": list(LABELS),
        }:
            assert time.monotonic() < deadline and not worker.error, ("round 2 never came", worker.error)
            time.sleep(0.1)
        r = undo()  # round 1 has moved on: its labels stay, whoever asks
        assert r.status_code == 409 and "no label in this round" in r.json()["detail"], r.text
        assert standing_labels(run_dir) == 6

        label_the_batch()
        assert worker.finished.wait(600), "the run did not finish within 10 minutes"
        worker.join(30)  # raised "'Event' object is not callable" when the worker's own event hid Thread._stop
        assert not worker.is_alive() and worker.error is None
        assert client.get("/api/status").json()["state"] == "finished"
        for r in (undo(), client.post("/api/skip", json={"annotator": "a", "item_id": first[0]})):
            assert r.status_code == 409 and "no round is waiting" in r.json()["detail"], r.text
    assert standing_labels(run_dir) == 9


def test_a_waiting_worker_stops_at_once_and_can_be_joined(tmp_path, shared_data, imfl_cache):
    from imfl.server import LoopWorker

    cfg, run_dir, _ = project(tmp_path, shared_data, imfl_cache)
    waits = threading.Event()
    worker = LoopWorker(lambda: run(cfg), Labeling(run_dir), poll_seconds=3600, on_event=lambda message: waits.set())
    worker.start()
    assert waits.wait(120), "the worker never reported the waiting round"
    worker.stop()
    worker.join(60)  # its poll of an hour ends at stop(), not when the hour is over
    assert not worker.is_alive() and worker.finished.is_set() and worker.error is None
