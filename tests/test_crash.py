"""Runs survive SIGKILL: killed during LLM annotation and again during training, then continued with
`imfl run`, a run ends with the same labels and the same budget as an uninterrupted run of the same seed,
and no LLM call that was answered before the kill is made again."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

from conftest import read_jsonl

LLM_ITEMS = 8  # per round: enough prompts (about 5 s with the bundled model) to kill the run in the middle


def write_config(path, small_fpb, cache, name, llm_cache):
    path.write_text(f"""
name = "{name}"
seed = 5
strategy = "imfl"
output_dir = "runs"
cache_dir = "{cache}"
[data]
pool = "{small_fpb['pool']}"
test = "{small_fpb['test']}"
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
min_steps = 30  # a few seconds of training: the second kill lands 1 s into it
max_length = 32
batch_size = 8
""", encoding="utf-8")
    return path


def state(db, round_):
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
            row = c.execute("SELECT state FROM rounds WHERE round=?", (round_,)).fetchone()
            n_llm = c.execute("SELECT COUNT(*) FROM annotations WHERE source='llm'").fetchone()[0]
        return (row[0] if row else None), n_llm
    except sqlite3.OperationalError:
        return None, 0


def run_until(cmd, env, db, condition, after=1.5, timeout=300):
    """Start `imfl run`, wait until the store shows ``condition``, give it ``after`` seconds more, SIGKILL it."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + timeout
    while not condition(*state(db, 1)):
        assert proc.poll() is None, f"the run ended before the kill point: {proc.stderr.read()[-2000:]}"
        assert time.time() < deadline
        time.sleep(0.05)
    time.sleep(after)
    assert proc.poll() is None, "the run ended before the kill point"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return state(db, 1)


def answered_prompts(cache_db):
    try:
        with sqlite3.connect(f"file:{cache_db}?mode=ro", uri=True) as c:
            return c.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def test_killed_twice_then_continued_equals_an_uninterrupted_run(tmp_path, small_fpb, imfl_cache):
    env = {**os.environ, "IMFL_CACHE": str(imfl_cache)}
    imfl = [sys.executable, "-m", "imfl", "run"]
    # the reference keeps no answer cache, so the run below really calls the LLM
    ref = write_config(tmp_path / "ref.toml", small_fpb, imfl_cache, "ref", llm_cache=False)
    r = subprocess.run(imfl + [str(ref)], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]

    answers = tmp_path / "answers"  # a cache of its own, to count what the killed run paid for
    killed = write_config(tmp_path / "killed.toml", small_fpb, answers, "killed", llm_cache=True)
    answers.mkdir()
    for sub in ("models", "embeddings"):  # reuse the converted model and the embeddings, not the answers
        (imfl_cache / sub).mkdir(exist_ok=True)
        os.symlink(imfl_cache / sub, answers / sub)
    db = tmp_path / "runs" / "killed" / "store.sqlite"
    cache_db = answers / "llm-answers.sqlite"

    # 1. SIGKILL while the LLM labels round 1: the human labels are in, no LLM label is committed yet
    st, n_llm = run_until(imfl + [str(killed)], env, db, lambda s, n: s == "human_done" and answered_prompts(cache_db) > 0,
                          after=0.5)
    assert st == "human_done" and n_llm == 0
    paid_before = answered_prompts(cache_db)
    assert 0 < paid_before < LLM_ITEMS  # some calls were answered (and kept), not all

    # 2. continue, and SIGKILL again while the student trains on round 1
    st, n_llm = run_until(imfl + [str(killed)], env, db, lambda s, n: s == "llm_done", after=1.0)
    assert st == "llm_done" and n_llm == LLM_ITEMS
    assert answered_prompts(cache_db) == LLM_ITEMS  # the answered prompts were not asked again

    # 3. continue to the end
    r = subprocess.run(imfl + [str(killed)], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]

    def labels(name):
        return sorted((x["id"], x["label"], x["source"], x["round"]) for x in read_jsonl(tmp_path / "runs" / name / "labels.jsonl"))

    assert labels("killed") == labels("ref")
    assert len(labels("ref")) == 2 * (LLM_ITEMS + 6)
    with sqlite3.connect(db) as c:  # nothing counted twice
        per_source = dict(c.execute("SELECT source, COUNT(*) FROM annotations WHERE label IS NOT NULL GROUP BY source"))
        assert c.execute("SELECT COUNT(*) - COUNT(DISTINCT item_id) FROM annotations").fetchone()[0] == 0
    assert per_source == {"human": 12, "llm": 2 * LLM_ITEMS}
