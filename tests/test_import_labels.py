"""Labels made elsewhere, read back with `imfl import-labels`: one rule for annotators' names (web page, terminal,
files); every problem row reported as FILE:LINE with what is wrong and the value as the file has it, the good rows
imported; a file that cannot be used at all refused whole (exit 2, nothing imported). Real run folders and stores;
the command line as a user runs it."""

import json
import re
import sqlite3
import threading
import time
from contextlib import closing

import httpx
import pytest

from conftest import imfl, read_jsonl, small_config, write_jsonl
from imfl import run
from imfl.errors import ConfigError
from imfl.people import Labeling

# slow: every test needs a run's project (its pool embedded by the real embedder).
pytestmark = pytest.mark.slow

LABELS = ("negative", "neutral", "positive")


def project_config(tmp_path, shared_data, cache):
    # Ids made of digits, as some datasets have them (the pool loader reads a number id as its text).
    rows = read_jsonl(shared_data / "fpb_recorded" / "pool.jsonl")[:80]
    pool = write_jsonl(tmp_path / "pool.jsonl", [{**r, "id": str(5000 + n)} for n, r in enumerate(rows)])
    test = write_jsonl(tmp_path / "test.jsonl", read_jsonl(shared_data / "fpb_recorded" / "test.jsonl")[:20])
    return small_config(
        {
            "name": "files",
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
    )


@pytest.fixture
def project(tmp_path, shared_data, imfl_cache):
    """A run folder whose round 1 waits for 6 human labels; with the Labeling of it and the pending ids."""
    result = run(project_config(tmp_path, shared_data, imfl_cache))
    assert result.waiting_round == 1 and result.pending == 6
    people = Labeling(result.run_dir)
    return result.run_dir, people, [i["id"] for i in people.pending_items()]


def human_labels(run_dir):
    with closing(sqlite3.connect(run_dir / "store.sqlite")) as c:
        return c.execute("SELECT item_id, label, annotator FROM annotations WHERE source='human' ORDER BY id").fetchall()


def jsonl_file(path, *rows):
    """A JSONL file of ``rows`` (objects, or lines given as text), returned with its bytes to compare later."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path, path.read_bytes()


def rejected(stderr, file, lineno):
    """What the import said about line ``lineno`` of ``file``."""
    found = re.findall(rf"^rejected .*{re.escape(file.name)}:{lineno}: (.*)$", stderr, re.M)
    assert len(found) == 1, stderr
    return found[0]


# -- annotators' names: one rule -------------------------------------------------------------------------------------

BAD_NAMES = ["<b>x</b>/../y", "", "x" * 81, "dr-b\n", "a/b"]
GOOD_NAMES = ["Zoë Smith", "dr-b", "ann.lee@lab.org", "x" * 80]


def test_import_refuses_an_annotator_name_the_web_page_refuses(project, tmp_path):
    run_dir, people, pending = project
    file, before = jsonl_file(tmp_path / "labels.jsonl", {"id": pending[0], "label": "neutral"})
    for name in ("<b>x</b>/../y", ""):
        r = imfl("import-labels", str(run_dir), str(file), "--annotator", name)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stdout + r.stderr
        [line] = r.stderr.splitlines()
        assert line.startswith(f"imfl: error: --annotator {name!r}") and "letters, digits" in line, line
    assert human_labels(run_dir) == [] and file.read_bytes() == before and "imported" not in r.stdout
    r = imfl("import-labels", str(run_dir), str(file), "--annotator", "Zoë Smith")
    assert r.returncode == 0 and "imported 1 labels, rejected 0" in r.stdout, r.stdout + r.stderr
    assert human_labels(run_dir) == [(pending[0], "neutral", "Zoë Smith")]


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_web_page_and_terminal_refuse_the_same_names(project):
    """The terminal (`imfl annotate`) and the Python API go through Labeling; the web page through its API models."""
    import uvicorn

    from imfl.server import create_app

    run_dir, people, pending = project
    app = create_app(people, "s3cret")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    url, auth = f"http://127.0.0.1:{server.config.port}", {"Authorization": "Bearer s3cret"}
    try:
        for name in BAD_NAMES:
            assert httpx.get(f"{url}/api/next", params={"annotator": name}, headers=auth).status_code == 422, name
            body = {"annotator": name, "item_id": pending[0], "label": "neutral"}
            assert httpx.post(f"{url}/api/label", json=body, headers=auth).status_code == 422, name
            # B023: each lambda is called at once, in this iteration of the loop over names
            for call in (lambda: people.next(name), lambda: people.label(name, pending[0], "neutral")):  # noqa: B023
                with pytest.raises(ConfigError, match=r"letters, digits") as err:
                    call()
                assert repr(name) in str(err.value) and "\n" not in str(err.value)
        assert human_labels(run_dir) == []
        for name in GOOD_NAMES:
            assert httpx.get(f"{url}/api/next", params={"annotator": name}, headers=auth).status_code == 200, name
            assert "item" in people.next(name)
    finally:
        server.should_exit = True
        thread.join(30)
    r = imfl("annotate", str(run_dir), "--name", "<b>x</b>")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "'<b>x</b>'" in r.stderr, r.stdout + r.stderr


# -- what each rejected row says -------------------------------------------------------------------------------------


def test_an_integer_id_is_read_as_the_pool_id_it_spells(project, tmp_path):
    """The pool loader reads a number id as its text, and tools that round-trip the batch (spreadsheets, pandas)
    turn digit ids into numbers; so 5001 means item '5001'. Other non-text ids are refused for what they are."""
    run_dir, people, pending = project
    file, _ = jsonl_file(
        tmp_path / "ids.jsonl",
        {"id": int(pending[0]), "label": "neutral"},
        {"id": 99999, "label": "neutral"},
        {"id": float(pending[1]), "label": "neutral"},
        {"id": True, "label": "neutral"},
        {"label": "neutral"},
    )
    r = imfl("import-labels", str(run_dir), str(file))
    assert r.returncode == 0 and "imported 1 labels, rejected 4" in r.stdout, r.stdout + r.stderr
    assert human_labels(run_dir) == [(pending[0], "neutral", "import")]
    assert "'99999' is not waiting for a human label" in rejected(r.stderr, file, 2)
    assert rejected(r.stderr, file, 3) == f"the id must be text, as in the exported batch (found {float(pending[1])!r})"
    assert rejected(r.stderr, file, 4) == "the id must be text, as in the exported batch (found True)"
    assert rejected(r.stderr, file, 5).startswith("no id")


def test_a_second_row_for_an_item_is_a_duplicate_of_the_first(project, tmp_path):
    run_dir, people, pending = project
    file, _ = jsonl_file(
        tmp_path / "twice.jsonl",
        {"id": pending[0], "label": "neutral"},
        {"id": pending[1], "label": "bullish"},
        {"id": pending[0], "label": "positive"},
        {"id": pending[1], "label": "negative"},
        {"id": f" {pending[0]} ", "label": "neutral"},
    )
    r = imfl("import-labels", str(run_dir), str(file))
    assert r.returncode == 0 and "imported 2 labels, rejected 3" in r.stdout, r.stdout + r.stderr
    assert rejected(r.stderr, file, 3).startswith("duplicate of line 1")
    assert rejected(r.stderr, file, 5).startswith("duplicate of line 1")
    # a row rejected for its label does not count: the corrected row after it goes in (line 4)
    assert human_labels(run_dir) == [(pending[0], "neutral", "import"), (pending[1], "negative", "import")]


def test_values_are_reported_as_the_file_has_them(project, tmp_path):
    run_dir, people, pending = project
    file, before = jsonl_file(
        tmp_path / "labels.jsonl",
        {"id": pending[0], "label": " Neutral "},
        {"id": pending[1], "label": 1},
        {"id": pending[2], "label": " neutral "},
        {"id": " no-such-item ", "label": "neutral"},
    )
    r = imfl("import-labels", str(run_dir), str(file))
    assert r.returncode == 0 and "imported 1 labels, rejected 3" in r.stdout, r.stdout + r.stderr
    assert rejected(r.stderr, file, 1) == "label ' Neutral ' is not one of negative, neutral, positive"
    assert rejected(r.stderr, file, 2) == "label 1 is not one of negative, neutral, positive"
    assert "' no-such-item '" in rejected(r.stderr, file, 4)
    assert human_labels(run_dir) == [(pending[2], "neutral", "import")]  # spaces around a label of the set are forgiven
    assert file.read_bytes() == before


# -- files that cannot be used ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, content",
    [
        ("empty.jsonl", ""),
        ("blank.jsonl", "\n  \n"),
        ("empty.csv", ""),
        ("header.csv", "id,text,text_pair,label\n"),
        ("tasks.json", "[]"),
    ],
)
def test_a_file_without_rows_is_an_error(project, tmp_path, name, content):
    run_dir, _, _ = project
    (tmp_path / name).write_text(content, encoding="utf-8")
    r = imfl("import-labels", str(run_dir), str(tmp_path / name))
    assert r.returncode == 2 and "Traceback" not in r.stderr and "imported" not in r.stdout, r.stdout + r.stderr
    [line] = r.stderr.splitlines()
    assert line.startswith(f"imfl: error: {tmp_path / name}: ") and "nothing to import" in line, line


def test_a_file_that_is_not_utf8_imports_nothing(project, tmp_path):
    """Even when the bad bytes come after rows that could be read (past the first block a reader decodes)."""
    run_dir, people, pending = project
    file = tmp_path / "latin1.jsonl"
    rows = [{"id": pending[0], "label": "neutral"}, *[{}] * 10_000, {"id": pending[1], "label": "négatif"}]
    file.write_bytes("\n".join(json.dumps(r, ensure_ascii=False) if r else "" for r in rows).encode("latin-1"))
    r = imfl("import-labels", str(run_dir), str(file))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stdout + r.stderr
    assert human_labels(run_dir) == []
    assert f"{file}:10002: not UTF-8 text" in r.stderr and "imported" not in r.stdout, r.stderr


def test_a_stray_quote_in_a_csv_is_reported_at_its_line(project, tmp_path):
    """An unclosed quote makes the rest of the file one text; past the csv module's field limit that is an error."""
    run_dir, people, pending = project
    file = tmp_path / "batch.csv"
    rows = [f"{pending[0]},neutral", f'{pending[1]},"neutral', *[f"item-{n},{'a long text ' * 20}" for n in range(1000)]]
    file.write_text("id,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    r = imfl("import-labels", str(run_dir), str(file))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stdout + r.stderr
    [line] = r.stderr.splitlines()
    assert line.startswith(f"imfl: error: {file}:3: ") and "quote" in line, line
    assert human_labels(run_dir) == []


def test_import_needs_a_round_that_waits_for_people(tmp_path, shared_data, imfl_cache):
    from imfl.loop import Run

    run_dir = Run(project_config(tmp_path, shared_data, imfl_cache)).init()  # the project exists, no round selected yet
    file, _ = jsonl_file(tmp_path / "labels.jsonl", {"id": "5000", "label": "neutral"}, {"id": "5001", "label": "neutral"})
    r = imfl("import-labels", str(run_dir), str(file))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stdout + r.stderr
    [line] = r.stderr.splitlines()
    assert "no round is waiting for human labels" in line and str(file) in line and "rejected" not in line, line


# -- a spreadsheet's CSV ---------------------------------------------------------------------------------------------


def test_a_csv_from_a_spreadsheet_is_reported_by_its_lines(project, tmp_path):
    """Excel's "CSV UTF-8" starts with a byte-order mark; a text cell may hold line breaks; blank lines may stay."""
    run_dir, people, pending = project
    file = tmp_path / "batch.csv"
    r = imfl("export-batch", str(run_dir), "--out", str(file))
    assert r.returncode == 0 and "wrote 6 items" in r.stdout, r.stdout + r.stderr
    text = file.read_text(encoding="utf-8")
    assert text.splitlines()[0] == "id,text,text_pair,label"
    lines = [
        "id,text,text_pair,label",
        f'{pending[0]},"a text\nover two lines",,neutral',  # lines 2-3
        f"{pending[1]},short,,Bullish",  # line 4
        "",  # line 5
        f'{pending[2]},"again\non\nthree",,',  # lines 6-8
        ",no id,,neutral",  # line 9
        f"{pending[3]},x,,positive",  # line 10
        ",,,",  # line 11: a row left empty
    ]
    file.write_text("\r\n".join(lines) + "\r\n", encoding="utf-8-sig")
    before = file.read_bytes()
    r = imfl("import-labels", str(run_dir), str(file), "--annotator", "sheet")
    assert r.returncode == 0 and "imported 2 labels, rejected 3; round 1: 2 of 6 labeled" in r.stdout, r.stdout + r.stderr
    assert rejected(r.stderr, file, 4) == "label 'Bullish' is not one of negative, neutral, positive"
    assert rejected(r.stderr, file, 6) == f"item {pending[2]!r} has no label"
    assert rejected(r.stderr, file, 9).startswith("no id")
    assert human_labels(run_dir) == [(pending[0], "neutral", "sheet"), (pending[3], "positive", "sheet")]
    assert file.read_bytes() == before
