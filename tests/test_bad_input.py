"""Every bad input gets one clear line naming the file, line and field, exit status 2, no traceback,
and the user's files stay exactly as they were."""

import hashlib
import subprocess
import sys

import pytest

from conftest import write_jsonl

GOOD_POOL = [
    {"id": f"p{i}", "text": f"sentence number {i}", "label": ["neutral", "positive", "negative"][i % 3]} for i in range(12)
]
GOOD_TEST = [{"id": f"t{i}", "text": f"held out {i}", "label": ["neutral", "positive", "negative"][i % 3]} for i in range(6)]


def imfl(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "imfl", *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def digest(paths):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths if p.is_file()}


def write_config(tmp_path, pool_rows=None, test_rows=None, pool_text=None, extra=""):
    pool = tmp_path / "pool.jsonl"
    if pool_text is not None:
        pool.write_text(pool_text, encoding="utf-8")
    elif pool_rows is not None:
        write_jsonl(pool, pool_rows)
    write_jsonl(tmp_path / "test.jsonl", test_rows if test_rows is not None else GOOD_TEST)
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        f'name = "bad"\noutput_dir = "out"\n{extra}\n[data]\npool = "pool.jsonl"\ntest = "test.jsonl"\n'
        "[budget]\ntotal = 6\nhuman = 3\nrounds = 2\n",
        encoding="utf-8",
    )
    return cfg


def check_fails(tmp_path, cfg, *needles, args=(), started=False):
    before = digest(list(tmp_path.iterdir()))
    r = imfl("run", str(cfg), *args)
    assert r.returncode == 2, r.stderr + r.stdout
    err = " ".join(r.stderr.split())  # rich may wrap long lines
    assert "Traceback" not in r.stderr + r.stdout
    for needle in needles:
        assert needle in err, err
    assert digest([p for p in before]) == before  # nothing the user gave was modified
    assert started or not (tmp_path / "out" / "bad" / "store.sqlite").exists() or "already" in err
    return err


def test_missing_pool_file(tmp_path):
    cfg = write_config(tmp_path, GOOD_POOL)
    (tmp_path / "pool.jsonl").unlink()
    check_fails(tmp_path, cfg, "pool.jsonl", "pool file not found", "data.pool")


def test_missing_config_file(tmp_path):
    r = imfl("run", str(tmp_path / "nope.toml"))
    assert r.returncode == 2 and "nope.toml" in r.stderr and "config file not found" in r.stderr
    assert "Traceback" not in r.stderr


def test_malformed_json_line(tmp_path):
    lines = "".join(__import__("json").dumps(r) + "\n" for r in GOOD_POOL[:3]) + '{"id": "x", "text": \n'
    cfg = write_config(tmp_path, pool_text=lines)
    check_fails(tmp_path, cfg, "pool.jsonl:4:", "not valid JSON")


@pytest.mark.parametrize("text", [None, "", "   "])
def test_missing_or_empty_text(tmp_path, text):
    rows = [dict(r) for r in GOOD_POOL]
    if text is None:
        del rows[4]["text"]
    else:
        rows[4]["text"] = text
    cfg = write_config(tmp_path, rows)
    check_fails(tmp_path, cfg, "pool.jsonl:5:", "field 'text'", "missing or empty")


def test_duplicate_ids(tmp_path):
    rows = [dict(r) for r in GOOD_POOL]
    rows[7]["id"] = rows[2]["id"]
    cfg = write_config(tmp_path, rows)
    check_fails(tmp_path, cfg, "pool.jsonl:8:", "id 'p2' already used on line 3")


def test_label_outside_the_configured_set(tmp_path):
    rows = [dict(r) for r in GOOD_POOL]
    rows[5]["label"] = "bullish"
    cfg = write_config(tmp_path, rows)
    check_fails(
        tmp_path,
        cfg,
        "pool.jsonl:6:",
        "label 'bullish'",
        "not in the label set",
        args=["--set", 'data.labels=["neutral", "positive", "negative"]'],
    )


def test_test_label_outside_the_configured_set(tmp_path):
    test = [dict(r) for r in GOOD_TEST]
    test[1]["label"] = "meh"
    cfg = write_config(tmp_path, GOOD_POOL, test)
    check_fails(tmp_path, cfg, "test.jsonl:2:", "label 'meh'", args=["--set", 'data.labels=["neutral", "positive", "negative"]'])


def test_budget_larger_than_the_pool(tmp_path):
    cfg = write_config(tmp_path, GOOD_POOL)
    check_fails(
        tmp_path,
        cfg,
        "budget.total (50) is larger than the pool (12 items",
        args=["--set", "budget.total=50", "--set", "budget.human=10"],
    )


def test_zero_rounds(tmp_path):
    cfg = write_config(tmp_path, GOOD_POOL)
    check_fails(tmp_path, cfg, "budget.rounds is 0", args=["--set", "budget.rounds=0"])


def test_test_file_overlapping_the_pool(tmp_path):
    test = GOOD_TEST + [dict(GOOD_POOL[3], id="t-copy")]
    cfg = write_config(tmp_path, GOOD_POOL, test)
    check_fails(tmp_path, cfg, "test.jsonl:7:", "the same text is also in the pool", "pool.jsonl:4")
    test = GOOD_TEST + [dict(GOOD_POOL[3], text="different")]
    cfg = write_config(tmp_path, GOOD_POOL, test)
    check_fails(tmp_path, cfg, "test.jsonl:7:", "id 'p3' is also in the pool")


def test_unknown_setting_and_strategy(tmp_path):
    cfg = write_config(tmp_path, GOOD_POOL)
    check_fails(tmp_path, cfg, "budget.totl", "not a known setting", args=["--set", "budget.totl=5"])
    check_fails(tmp_path, cfg, "strategy 'smart' is unknown", args=["--set", "strategy=smart"])
    check_fails(tmp_path, cfg, "budget.human is 9", args=["--set", "budget.human=9"])


def test_wrong_type(tmp_path):
    cfg = write_config(tmp_path, GOOD_POOL)
    check_fails(tmp_path, cfg, "budget.total", "integer", args=["--set", "budget.total=lots"])


def test_csv_pool_with_missing_text_names_its_line(tmp_path):
    (tmp_path / "pool.csv").write_text("id,text,label\na,good,positive\nb,,negative\n", encoding="utf-8")
    cfg = write_config(tmp_path, GOOD_POOL)
    check_fails(tmp_path, cfg, "pool.csv:3:", "field 'text'", args=["--set", 'data.pool="pool.csv"'])


@pytest.mark.slow
def test_pool_changed_since_the_run_started(tmp_path):
    cfg = write_config(tmp_path, GOOD_POOL)
    r = imfl("init", str(cfg))
    assert r.returncode == 0, r.stderr
    store = tmp_path / "out" / "bad" / "store.sqlite"
    before = digest([store])
    write_jsonl(tmp_path / "pool.jsonl", GOOD_POOL[:5] + [{"id": "new", "text": "a new row", "label": "neutral"}] + GOOD_POOL[5:])
    check_fails(
        tmp_path,
        cfg,
        "pool.jsonl:6:",
        "the pool file changed since the run",
        "item 6: id 'new' now, id 'p5' then",
        "put the file back",
        started=True,
    )
    assert digest([store]) == before  # the run was not touched
