"""Runs survive SIGKILL: killed during LLM annotation and again during training, then continued with
`imfl run`, a run ends with the same labels and the same budget as an uninterrupted run of the same seed,
and no LLM call that was answered before the kill is made again.

Each kill waits for an event the run itself records (a row in its store or its answer cache), polled with a
generous deadline, never for a fixed time: a slower machine only takes longer to get there."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from conftest import read_jsonl

# slow: kills and continues a real run.
pytestmark = pytest.mark.slow

LLM_ITEMS = 8  # per round: two batches of 4 prompts for the bundled model, cached batch by batch; a kill lands between


def write_config(path, small_fpb, cache, name, llm_cache):
    path.write_text(
        f"""
name = "{name}"
seed = 5
strategy = "imfl"
compare_human_only = false  # tests/test_export.py checks the comparison after a crash
output_dir = "runs"
cache_dir = "{cache}"
[data]
pool = "{small_fpb["pool"]}"
test = "{small_fpb["test"]}"
[budget]
total = {2 * (LLM_ITEMS + 6)}
human = 12
rounds = 2
schedule = "fixed"
[llm]
max_length = 512
dtype = "float32"
cache = {str(llm_cache).lower()}
[student]
epochs = 1
min_steps = 30  # a few seconds of training, which the second kill interrupts
max_length = 32
batch_size = 8
""",
        encoding="utf-8",
    )
    return path


def state(db, round_):
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
            row = c.execute("SELECT state FROM rounds WHERE round=?", (round_,)).fetchone()
            n_llm = c.execute("SELECT COUNT(*) FROM annotations WHERE source='llm'").fetchone()[0]
        return (row[0] if row else None), n_llm
    except sqlite3.OperationalError:
        return None, 0


def run_until(cmd, env, db, condition, timeout=600):
    """Start `imfl run`, SIGKILL it as soon as ``condition(state, llm labels)`` holds for round 1 of its store, and
    return what the store says then."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while not condition(*state(db, 1)):
        assert proc.poll() is None, f"the run ended before the kill point: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, f"no kill point after {timeout} s; the store says {state(db, 1)}"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return state(db, 1)


def answers(cache_db) -> dict[str, float]:
    """The answer cache: when each prompt (by key) was last answered by the LLM. A prompt asked again is written
    again (INSERT OR REPLACE), so it keeps its row but gets a new time."""
    try:
        with sqlite3.connect(f"file:{cache_db}?mode=ro", uri=True) as c:
            return dict(c.execute("SELECT key, created_at FROM answers"))
    except sqlite3.OperationalError:  # not created yet
        return {}


def test_killed_twice_then_continued_equals_an_uninterrupted_run(tmp_path, small_fpb, imfl_cache):
    env = {**os.environ, "IMFL_CACHE": str(imfl_cache)}
    imfl = [sys.executable, "-m", "imfl", "run"]
    # the reference keeps no answer cache, so the run below really calls the LLM
    ref = write_config(tmp_path / "ref.toml", small_fpb, imfl_cache, "ref", llm_cache=False)
    r = subprocess.run(imfl + [str(ref)], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]

    cache = tmp_path / "answers"  # a cache of its own, to see what the killed run paid for
    killed = write_config(tmp_path / "killed.toml", small_fpb, cache, "killed", llm_cache=True)
    cache.mkdir()
    for sub in ("models", "embeddings"):  # reuse the converted model and the embeddings, not the answers
        (imfl_cache / sub).mkdir(exist_ok=True)
        os.symlink(imfl_cache / sub, cache / sub)
    db = tmp_path / "runs" / "killed" / "store.sqlite"
    cache_db = cache / "llm-answers.sqlite"

    # 1. SIGKILL as soon as the LLM has answered a prompt of round 1: the human labels are in, no LLM label is
    # committed yet (LLM labels are committed 32 at a time, and the round has 8)
    st, n_llm = run_until(imfl + [str(killed)], env, db, lambda s, n: s == "human_done" and answers(cache_db))
    assert st == "human_done" and n_llm == 0
    paid_before = answers(cache_db)
    assert 0 < len(paid_before) < LLM_ITEMS  # some calls were answered (and kept), not all

    # 2. continue, and SIGKILL again as soon as the round's LLM labels are committed: the student trains next
    st, n_llm = run_until(imfl + [str(killed)], env, db, lambda s, n: s == "llm_done")
    assert st == "llm_done" and n_llm == LLM_ITEMS
    paid = answers(cache_db)
    assert len(paid) == LLM_ITEMS
    # the prompts answered before the first kill were not asked again: their answers were never rewritten
    assert {key: paid.get(key) for key in paid_before} == paid_before

    # 3. continue to the end
    r = subprocess.run(imfl + [str(killed)], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]

    def labels(name):
        return sorted(
            (x["id"], x["label"], x["source"], x["round"]) for x in read_jsonl(tmp_path / "runs" / name / "labels.jsonl")
        )

    assert labels("killed") == labels("ref")
    assert len(labels("ref")) == 2 * (LLM_ITEMS + 6)
    with sqlite3.connect(db) as c:  # nothing counted twice
        per_source = dict(c.execute("SELECT source, COUNT(*) FROM annotations WHERE label IS NOT NULL GROUP BY source"))
        assert c.execute("SELECT COUNT(*) - COUNT(DISTINCT item_id) FROM annotations").fetchone()[0] == 0
    assert per_source == {"human": 12, "llm": 2 * LLM_ITEMS}
