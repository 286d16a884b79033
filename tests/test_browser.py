"""End to end in a real browser (Debian's chromium, driven by Playwright): `imfl serve` on loopback, log in
with the shared token and a name (nobody registered: tests/test_people_access.py has personal tokens), label a
round with the keyboard, undo one, finish the batch, and watch the run continue to its next round. The screenshot
in the README is made here."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import read_jsonl, write_jsonl

# slow: a served run and a real browser.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
LABELS = ["negative", "neutral", "positive"]
INJECTED = ' <img src=x onerror="window.pwned=1"><script>window.pwned=2</script> & more'

if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        raise RuntimeError("chromium is missing: .ci/run installs it with apt-get (package chromium)")
    pytest.skip("Debian's chromium is not installed (apt-get install chromium)", allow_module_level=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served(tmp_path, shared_data, imfl_cache):
    rows = read_jsonl(shared_data / "fpb_recorded" / "pool.jsonl")[:60]
    for r in rows:
        r["text"] += INJECTED  # every item carries HTML and script that must show as text
    write_jsonl(tmp_path / "pool.jsonl", rows)
    write_jsonl(tmp_path / "test.jsonl", read_jsonl(shared_data / "fpb_recorded" / "test.jsonl")[:20])
    (tmp_path / "project.toml").write_text(
        f"""
name = "browser"
output_dir = "runs"
cache_dir = "{imfl_cache}"
[data]
pool = "pool.jsonl"
test = "test.jsonl"
labels = {LABELS}
[budget]
total = 16
human = 6
rounds = 2
[human]
annotator = "people"
[llm]
annotator = "recorded"
column = "llm_gpt4"
[student]
epochs = 1
min_steps = 0
max_length = 32
""".replace("'", '"'),
        encoding="utf-8",
    )
    port = free_port()
    env = {**os.environ, "IMFL_TOKEN": "browser-token"}
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "imfl", "serve", str(tmp_path / "project.toml"), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while True:
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()
        try:
            status = httpx.get(f"{url}/api/status", headers={"Authorization": "Bearer browser-token"}).json()
            if status["state"] == "labeling":
                break
        except httpx.HTTPError:
            pass
        assert time.time() < deadline, (tmp_path / "serve.log").read_text()
        time.sleep(0.5)
    gold = {r["id"]: r["label"] for r in rows}
    text_to_id = {r["text"]: r["id"] for r in rows}
    yield url, gold, text_to_id, tmp_path
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()
    assert "browser-token" not in (tmp_path / "serve.log").read_text()  # the token never reaches the log


def test_label_a_round_in_the_browser_with_the_keyboard(served):
    from playwright.sync_api import expect, sync_playwright

    url, gold, text_to_id, tmp_path = served
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 900, "height": 640})
        # Chromium reports what the page's Content-Security-Policy blocks on the console, and as an event
        blocked = []
        page.on("console", lambda m: "Content Security Policy" in m.text and blocked.append(m.text))
        page.add_init_script(
            "document.addEventListener('securitypolicyviolation', e => console.error("
            "'Content Security Policy violation: ' + e.violatedDirective + ' ' + e.blockedURI))"
        )
        response = page.goto(url)
        assert "script-src 'nonce-" in response.headers["content-security-policy"]
        page.fill("#token", "wrong")
        page.click("#login button[type=submit]")
        expect(page.locator("#login")).to_be_visible()
        expect(page.locator("#login-error")).to_contain_text("not accepted")
        assert page.locator("#name-row").is_hidden()
        # nobody is registered (imfl people): the shared token, and the page asks for a name to record
        page.fill("#token", "browser-token")
        page.click("#login button[type=submit]")
        expect(page.locator("#name-row")).to_be_visible()
        page.fill("#name", "dr-a")
        page.click("#login button[type=submit]")
        expect(page.locator("#progress")).to_have_text("Round 1: 0 of 4 labeled")
        expect(page.locator("#who-text")).to_have_text("Labeling as dr-a (shared token)")

        def current_id():
            text = page.locator("#text").text_content()
            assert INJECTED in text  # shown as text, not run as HTML
            return text_to_id[text]

        def press_gold():
            item = current_id()
            page.keyboard.press(str(LABELS.index(gold[item]) + 1))
            return item

        first = press_gold()
        expect(page.locator("#progress")).to_have_text("Round 1: 1 of 4 labeled")
        page.screenshot(path=str(ROOT / "docs" / "annotation-page.png"))
        second = press_gold()
        expect(page.locator("#progress")).to_have_text("Round 1: 2 of 4 labeled")
        page.keyboard.press("ArrowLeft")  # undo the second label: the item comes back
        expect(page.locator("#progress")).to_have_text("Round 1: 1 of 4 labeled")
        assert current_id() == second
        assert page.evaluate("window.pwned") is None
        labeled = {first}
        for done in (2, 3, 4):
            labeled.add(press_gold())
            if done < 4:
                expect(page.locator("#progress")).to_have_text(f"Round 1: {done} of 4 labeled")
        assert len(labeled) == 4
        # the batch is complete: the run goes on by itself (LLM, training) and opens round 2 on the same page
        expect(page.locator("#progress")).to_contain_text("Round 2: 0 of", timeout=180_000)
        while page.locator("#text").is_visible():
            press_gold()
            page.wait_for_timeout(100)
        expect(page.locator("#message")).to_contain_text("finished", timeout=180_000)
        assert blocked == []  # the whole session ran under the policy without tripping it
        # and the policy is enforced: a script put into the page is refused, and that is reported
        with page.expect_console_message(lambda m: "Content Security Policy" in m.text, timeout=10_000):
            page.evaluate(
                "document.body.append(Object.assign(document.createElement('script'), {textContent: 'window.pwned = 3'}))"
            )
        assert page.evaluate("window.pwned") is None
        browser.close()

    with httpx.Client(headers={"Authorization": "Bearer browser-token"}) as client:
        assert client.get(f"{url}/api/status").json()["state"] == "finished"
    labels = read_jsonl(tmp_path / "runs" / "browser" / "labels.jsonl")
    human = [r for r in labels if r["source"] == "human"]
    assert len(human) == 6 and all(r["label"] == gold[r["id"]] and r["annotator"] == "dr-a" for r in human)
    assert {r["id"] for r in human if r["round"] == 1} == labeled
