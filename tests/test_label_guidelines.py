"""Label descriptions (`data.label_descriptions`) and labeling guidelines (`human.guidelines`): the settings' checks,
the LLM prompt with and without descriptions (without, it is byte for byte the old one, so cached answers stay
valid), the guidelines rendered from Markdown with no way to run script, and both on the annotation page: the API
over real HTTP from `imfl serve`, and the page in Debian's chromium (Playwright)."""

import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from conftest import read_jsonl, write_jsonl
from imfl.annotators import AnnotationContext, make_llm
from imfl.config import config_to_toml, load_config, settings_difference
from imfl.data import Example, load_dataset
from imfl.errors import ConfigError, ModelError
from imfl.llm.prompts import Demo, build_messages, prompt_hash
from imfl.people import read_guidelines
from imfl.server import render_guidelines

LABELS = ["negative", "neutral", "positive"]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHARED = "guide-s3cret"
DESCRIBED = {"negative": "Bad news for the company or its shareholders.", "positive": "Good news for the company."}
# Markdown that tries, three ways, to run script on the page: raw HTML, an event handler, a javascript: link
GUIDELINES = """# How to label

Label the **sentiment** for an investor; see [the guide](https://example.org/guide "guide") or
[write to us](mailto:team@example.org).

<script>window.pwned = 1</script>
<img src=x onerror="window.pwned = 2">
[click me](javascript:window.pwned=3) and [again](JAVASCRIPT:window.pwned=4) and <javascript:window.pwned=5>
"""


def write_config(folder: Path, pool: Path, test: Path, extra: str = "", labels=tuple(LABELS[::-1]), top: str = "") -> Path:
    """A project file: ``top`` (top-level settings), then [data] with the files and ``labels``, then ``extra`` tables."""
    labels_line = f"labels = [{', '.join(f'{label!r}' for label in labels)}]".replace("'", '"') if labels else ""
    path = folder / "project.toml"
    path.write_text(f'{top}\n[data]\npool = "{pool}"\ntest = "{test}"\n{labels_line}\n{extra}\n', encoding="utf-8")
    return path


def one_line_error(path: Path, *expected: str) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert "\n" not in message and all(e in message for e in expected), message
    return message


# -- the settings -----------------------------------------------------------------------------------------------------
def test_label_descriptions_must_name_labels_and_say_something(tiny_data, tmp_path):
    def config(table: str, labels=tuple(LABELS[::-1])) -> Path:
        return write_config(tmp_path, tiny_data["pool"], tiny_data["test"], f"[data.label_descriptions]\n{table}", labels)

    cfg = load_config(config('positive = "Good news."\nnegative = "Bad news."'))
    assert cfg.data.label_descriptions == {"positive": "Good news.", "negative": "Bad news."}
    assert load_config(write_config(tmp_path, tiny_data["pool"], tiny_data["test"])).data.label_descriptions == {}

    # a label not in data.labels (a misspelling): named, with the label set and what to do
    one_line_error(config('postive = "Good news."'), "project.toml", "'postive'", "not in data.labels", "positive", "remove it")
    # an empty or blank description, a description that is not text, one that is a manual
    one_line_error(config('positive = "  "'), "'positive'", "empty description", "leave the label out")
    one_line_error(config("positive = 3"), "data.label_descriptions.positive", "string")
    one_line_error(config(f'positive = "{"Good. " * 100}"'), "'positive'", "600 characters", "human.guidelines")
    # labels taken from the data: a description of a label the files do not have is refused when they are read
    cfg = load_config(config('postive = "Good news."', labels=()))
    with pytest.raises(ConfigError, match=r"'postive', which is not a label in .*pool\.jsonl.*\(negative, neutral, positive\)"):
        load_dataset(cfg.data)
    task = load_dataset(load_config(config('positive = "Good news."\nnegative = "Bad news."', labels=())).data).task
    assert list(task.descriptions) == ["negative", "positive"]  # in the order of the labels (found: sorted)


def test_guidelines_path_is_relative_to_the_config_file_and_must_exist(tiny_data, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "guide.md").write_text("# Guide\n", encoding="utf-8")
    cfg = load_config(write_config(project, tiny_data["pool"], tiny_data["test"], '[human]\nguidelines = "guide.md"'))
    assert cfg.human.guidelines == project / "guide.md"
    assert read_guidelines(cfg.human.guidelines) == "# Guide\n" and read_guidelines(None) == ""

    missing = write_config(project, tiny_data["pool"], tiny_data["test"], '[human]\nguidelines = "nowhere.md"')
    one_line_error(missing, str(project / "nowhere.md"), "human.guidelines", "not a file", "Markdown file")
    # guidelines only change what the page shows: a project may get them, or move them, while it runs
    without = cfg.model_copy(update={"human": cfg.human.model_copy(update={"guidelines": None})})
    stored, now = (tomllib.loads(config_to_toml(c)) for c in (without, cfg))  # as the run's store keeps them
    assert "guidelines" not in stored["human"] and settings_difference(stored, now) is None

    (project / "latin1.md").write_bytes("# Caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="latin1.md") as err:
        read_guidelines(project / "latin1.md")
    assert "\n" not in str(err.value)


# -- the prompt -------------------------------------------------------------------------------------------------------
INSTRUCTION = "Classify the sentiment of the financial news sentence."
FPB = ["neutral", "positive", "negative"]
DEMOS = [Demo("d1", "Sales fell.", "negative"), Demo("d2", "The board met.", "neutral")]
TASK_LINE = f"{INSTRUCTION} Answer with exactly one of: neutral, positive, negative."
# What build_messages gave before label descriptions existed (and the hash the answer cache keys on with it)
OLD_PROMPT = [
    {"role": "system", "content": TASK_LINE},
    {"role": "user", "content": f"{TASK_LINE}\n\nText: Sales fell."},
    {"role": "assistant", "content": "negative"},
    {"role": "user", "content": f"{TASK_LINE}\n\nText: The board met."},
    {"role": "assistant", "content": "neutral"},
    {"role": "user", "content": f"{TASK_LINE}\n\nText: Profit rose 5%."},
]
OLD_HASH = "3a5d641a1f397f426bbbc4c60b4cfac16ab29d213af29cd7a41af95441f04d1b"


def test_without_descriptions_the_prompt_is_the_old_one():
    for descriptions in (None, {}):
        messages = build_messages(INSTRUCTION, FPB, "Profit rose 5%.", demos=DEMOS, descriptions=descriptions)
        assert messages == OLD_PROMPT and prompt_hash(messages) == OLD_HASH
    pair = build_messages("Q.", ["yes", "no", "maybe"], "Is it?", "Some context.", pair_names=("Question", "Context"))
    assert prompt_hash(pair) == "c8962d26f78d4b2f03ed84f4735d9ccd6adf88ac0ad9f94bb81a33d30a371ee2"


def test_descriptions_add_a_line_per_described_label_to_the_system_message():
    described = {"negative": "Bad news  for the\ncompany.", "positive": "Good news for the company."}
    messages = build_messages(INSTRUCTION, FPB, "Profit rose 5%.", demos=DEMOS, descriptions=described)
    # in label order, each on one line; neutral has none and is listed only in the answer line, as before
    assert messages[0]["content"] == f"{TASK_LINE}\n\npositive: Good news for the company.\nnegative: Bad news for the company."
    assert messages[1:] == OLD_PROMPT[1:]  # the user turns keep the short task
    with pytest.raises(ModelError, match="'bullish'"):
        build_messages(INSTRUCTION, FPB, "x", descriptions={"bullish": "Up."})


def test_the_llm_annotator_takes_the_descriptions_from_the_config(tiny_data, tmp_path):
    extra = '[llm]\nannotator = "local"\ndemos = "random"\nk = 1\n[data.label_descriptions]\npositive = "Good news."'
    cfg = load_config(write_config(tmp_path, tiny_data["pool"], tiny_data["test"], extra))
    task = load_dataset(cfg.data).task
    annotator = make_llm(cfg, task)  # the bundled LLM loads only when asked to score: nothing is scored here
    human = [(Example("h1", "Sales fell."), "negative")]
    [(messages, demos)] = annotator.prompts([Example("a", "Profit rose 5%.")], AnnotationContext(1, human, seed=0))
    assert messages[0]["content"].endswith("\n\npositive: Good news.") and [d.id for d in demos] == ["h1"]
    assert "Good news" not in messages[1]["content"] + messages[-1]["content"]


# -- the guidelines as HTML -------------------------------------------------------------------------------------------
class Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text = ""

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text += data


def assert_harmless(html: str) -> Tags:
    """No element or attribute that runs script or loads anything; links only to http, https and mailto."""
    parsed = Tags()
    parsed.feed(html)
    assert not [t for t, _ in parsed.tags if t in ("script", "img", "iframe", "object", "embed", "style", "svg")], html
    assert not [a for _, attrs in parsed.tags for a in attrs if a.startswith("on") or a in ("style", "src")], html
    hrefs = [attrs["href"] for t, attrs in parsed.tags if t == "a"]
    assert all(h.startswith(("https://", "http://", "mailto:")) for h in hrefs), hrefs
    return parsed


def test_guidelines_are_rendered_without_raw_html_or_script_links():
    html = render_guidelines(GUIDELINES)
    parsed = assert_harmless(html)
    assert ("h1", {}) in parsed.tags and "<strong>sentiment</strong>" in html
    assert [attrs["href"] for t, attrs in parsed.tags if t == "a"] == ["https://example.org/guide", "mailto:team@example.org"]
    assert all(attrs["rel"] == "noopener noreferrer" for t, attrs in parsed.tags if t == "a")
    assert "<script>window.pwned = 1</script>" in parsed.text  # shown as text, as written
    assert "javascript" not in "".join(str(attrs) for _, attrs in parsed.tags).lower()
    assert render_guidelines("") == ""
    # an image would make every reader's browser call its host: it stays a link
    assert_harmless(render_guidelines("![logo](https://example.org/logo.png) ![x](javascript:alert(1))"))


# -- on the page (slow: a run waiting for people, `imfl serve`, a browser) ---------------------------------------------
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory, shared_data, imfl_cache):
    """`imfl serve --no-loop` for a project of 40 FPB sentences whose round 1 waits for 3 human labels, with label
    descriptions and a guidelines file (next to the config, named relatively)."""
    from imfl import run

    folder = tmp_path_factory.mktemp("guided")
    rows = read_jsonl(shared_data / "fpb_recorded" / "pool.jsonl")[:40]
    (folder / "guide.md").write_text(GUIDELINES, encoding="utf-8")
    extra = f"""
[data.label_descriptions]
negative = "{DESCRIBED["negative"]}"
positive = "{DESCRIBED["positive"]}"
[budget]
total = 12
human = 4
rounds = 2
[human]
annotator = "people"
guidelines = "guide.md"
[llm]
annotator = "recorded"
column = "llm_gpt4"
[student]
epochs = 1
min_steps = 0
max_length = 32
"""
    path = write_config(
        folder,
        write_jsonl(folder / "pool.jsonl", rows),
        write_jsonl(folder / "test.jsonl", read_jsonl(shared_data / "fpb_recorded" / "test.jsonl")[:20]),
        extra,
        top=f'name = "guided"\nstrategy = "imfl"\noutput_dir = "runs"\ncache_dir = "{imfl_cache}"\ncompare_human_only = false',
    )
    result = run(load_config(path))
    assert result.waiting_round == 1 and result.pending == 3

    port = free_port()
    log_path = folder / "serve.log"
    log = log_path.open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "imfl", "serve", str(result.run_dir), "--port", str(port), "--no-loop"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "IMFL_TOKEN": SHARED},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, log_path.read_text()
        try:
            if httpx.get(f"{url}/api/me", headers={"Authorization": f"Bearer {SHARED}"}).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, log_path.read_text()
        time.sleep(0.2)
    yield url
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()
    assert SHARED not in log_path.read_text()


@pytest.mark.slow
def test_the_api_gives_the_descriptions_and_safe_guidelines_to_token_holders_only(served):
    assert httpx.get(f"{served}/api/guidelines").status_code == 401
    assert httpx.get(f"{served}/api/guidelines", headers={"Authorization": "Bearer wrong"}).status_code == 401
    r = httpx.get(f"{served}/api/guidelines", headers={"Authorization": f"Bearer {SHARED}"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json", r.text
    assert r.json()["descriptions"] == DESCRIBED  # neutral has none
    parsed = assert_harmless(r.json()["html"])
    assert ("h1", {}) in parsed.tags and "window.pwned = 1" in parsed.text


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (apt-get install chromium)")
def test_the_page_shows_the_descriptions_and_guidelines_and_runs_no_script_from_them(served):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(served)
        page.fill("#token", SHARED)
        page.click("#login button[type=submit]")
        page.fill("#name", "dr-a")
        page.click("#login button[type=submit]")
        expect(page.locator("#progress")).to_have_text("Round 1: 0 of 3 labeled")
        # each described label's meaning beside its button; neutral has none
        expect(page.locator('#labels .desc[data-label="positive"]')).to_have_text(DESCRIBED["positive"])
        expect(page.locator('#labels .desc[data-label="positive"]')).to_be_visible()
        expect(page.locator('#labels .desc[data-label="neutral"]')).to_have_text("")
        expect(page.locator("#labels button")).to_have_count(3)
        # the guidelines, rendered: the heading and a safe link; the script shows as text and never ran
        expect(page.locator("#guidelines-body h1")).to_have_text("How to label")
        expect(page.locator("#guidelines-body h1")).to_be_visible()
        expect(page.locator('#guidelines-body a[href="https://example.org/guide"]')).to_have_count(1)
        expect(page.locator("#guidelines-body")).to_contain_text("<script>window.pwned = 1</script>")
        assert page.locator("#guidelines-body script, #guidelines-body img").count() == 0
        page.keyboard.press("2")  # the keys still choose labels: neutral
        expect(page.locator("#progress")).to_have_text("Round 1: 1 of 3 labeled")
        assert page.evaluate("window.pwned") is None
        browser.close()
