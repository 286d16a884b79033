"""The prompt builder, the local LLM backend and `benchmarks/llm_annotator.py`, with the real bundled
SmolLM2-135M-Instruct (no mocks).

The model is converted once per session into the session cache (see ``imfl_cache`` in conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from imfl.errors import ModelError
from imfl.llm import local
from imfl.llm.local import LocalBackend, bundled_llm_path
from imfl.llm.prompts import Demo, build_messages, prompt_hash

# The tests that load or convert the model are marked slow; the prompt builder's and the refusals are quick.

LABELS = ["neutral", "positive", "negative"]
INSTRUCTION = "Classify the sentiment of the financial news sentence."
DEMOS = [
    Demo("d1", "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn .", "positive"),
    Demo("d2", "The company will hold its annual general meeting on 5 April .", "neutral"),
    Demo("d3", "Net sales fell by 12 % and the company cut 40 jobs .", "negative"),
]
ITEMS = [
    "Profit before taxes doubled to EUR 4.2 mn .",
    "The shares were delisted after the loss widened .",
    "The report is available on the company website .",
]


@pytest.fixture(scope="session")
def backend(imfl_cache: Path) -> LocalBackend:
    b = LocalBackend(cache_dir=str(imfl_cache))
    b.load()
    return b


# ------------------------------------------------------------------ prompts


def test_build_messages_puts_demos_in_order_and_the_item_last():
    messages = build_messages(INSTRUCTION, LABELS, "The item .", demos=DEMOS)
    assert [m["role"] for m in messages] == ["system"] + ["user", "assistant"] * 3 + ["user"]
    assert INSTRUCTION in messages[0]["content"] and all(label in messages[0]["content"] for label in LABELS)
    assert [m["content"] for m in messages[2:-1:2]] == [d.label for d in DEMOS]
    assert [d.text in m["content"] for d, m in zip(DEMOS, messages[1:-1:2])] == [True] * 3
    assert messages[-1]["role"] == "user" and messages[-1]["content"].endswith("\n\nText: The item .")
    assert messages[-1]["content"].startswith(INSTRUCTION)  # the task is restated in every user turn


def test_build_messages_names_the_labels_once_and_can_skip_the_restatement():
    named = "Classify the text into exactly one of these labels: neutral, positive, negative. Answer with the label only."
    messages = build_messages(named, LABELS, "The item .", demos=DEMOS[:1])
    assert messages[0]["content"] == named and messages[-1]["content"] == named + "\n\nText: The item ."
    knows = build_messages("Do you know? Answer yes or maybe.", ["yes", "no", "maybe"], "q")  # "no" only inside "know"
    assert knows[0]["content"].endswith("Answer with exactly one of: yes, no, maybe.")
    short = build_messages(INSTRUCTION, LABELS, "The item .", demos=DEMOS[:1], repeat_instruction=False)
    assert [m["content"] for m in short[1:]] == ["Text: " + DEMOS[0].text, DEMOS[0].label, "Text: The item ."]


def test_a_long_task_is_stated_once():
    """77 intent names are not repeated in every turn (about 600 tokens each time), only in the system message."""
    labels = [f"intent_number_{i}" for i in range(77)]
    demo = Demo("d", "Where is my card?", labels[3])
    messages = build_messages("Classify the message.", labels, "The item .", demos=[demo])
    assert all(label in messages[0]["content"] for label in labels)
    assert [m["content"] for m in messages[1:]] == ["Text: Where is my card?", labels[3], "Text: The item ."]


def test_build_messages_shortens_only_the_pair():
    long_context = " ".join(f"word{i}" for i in range(2000))
    question = "Does the long question stay whole? " * 20
    messages = build_messages(
        "Answer the question.",
        ["yes", "no", "maybe"],
        question,
        long_context,
        [Demo("p1", "A demo question?", "maybe", long_context)],
        pair_names=("Question", "Context"),
        max_pair_chars=300,
        repeat_instruction=False,
    )
    item = messages[-1]["content"]
    assert item.endswith("Question: " + question) and item.startswith("Context: word0 ")
    assert len(item) <= len("Context: \nQuestion: ") + len(question) + 300 and "word1999" in item
    assert len(messages[1]["content"]) < 400
    assert long_context in build_messages("Q.", ["yes"], "q", long_context, max_pair_chars=None)[-1]["content"]


def test_build_messages_rejects_a_demo_label_outside_the_label_set():
    with pytest.raises(ModelError, match="'d9'"):
        build_messages(INSTRUCTION, LABELS, "x", demos=[Demo("d9", "t", "bullish")])


def test_prompt_hash_is_stable_and_changes_with_a_demo():
    a = build_messages(INSTRUCTION, LABELS, ITEMS[0], demos=DEMOS)
    assert prompt_hash(a) == prompt_hash(build_messages(INSTRUCTION, LABELS, ITEMS[0], demos=list(DEMOS)))
    assert len(prompt_hash(a)) == 64 and int(prompt_hash(a), 16) >= 0
    changed = [DEMOS[0], Demo("d2", DEMOS[1].text, "positive"), DEMOS[2]]
    assert prompt_hash(a) != prompt_hash(build_messages(INSTRUCTION, LABELS, ITEMS[0], demos=changed))
    assert prompt_hash(a) != prompt_hash(build_messages(INSTRUCTION, LABELS, ITEMS[0], demos=DEMOS[::-1]))


# ------------------------------------------------------------------ conversion and loading


def test_missing_model_dir_is_a_model_error(tmp_path):
    missing = tmp_path / "no-such-model"
    b = LocalBackend(str(missing))
    assert b.name == "local:no-such-model"
    with pytest.raises(ModelError, match="no-such-model"):
        b.score([build_messages(INSTRUCTION, LABELS, "x")], LABELS)


@pytest.mark.slow
def test_conversion_is_cached(backend, imfl_cache, monkeypatch):
    path = bundled_llm_path(imfl_cache)
    stamp = (path / "imfl_conversion.json").read_text()

    def fail(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(local, "_convert_gguf", fail)
    start = time.perf_counter()
    assert bundled_llm_path(imfl_cache) == path
    assert time.perf_counter() - start < 1.0
    assert (path / "imfl_conversion.json").read_text() == stamp
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in config
    assert (path / "chat_template.jinja").is_file() or "chat_template" in (path / "tokenizer_config.json").read_text()
    assert backend.name == "local:SmolLM2-135M-Instruct"
    other = LocalBackend(str(path))  # the converted checkpoint is an ordinary model directory
    assert other.name == f"local:{path.name}"


def test_interrupted_conversion_leaves_no_checkpoint(tmp_path, monkeypatch):
    def crash(gguf, out):
        (out / "config.json").write_text("{}")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(local, "_convert_gguf", crash)
    with pytest.raises(ModelError, match="No space left"):
        bundled_llm_path(tmp_path)
    models = tmp_path / "models"
    assert list(models.iterdir()) == []


# ------------------------------------------------------------------ scoring


@pytest.mark.slow
def test_scores_every_label_and_rows_sum_to_one(backend):
    prompts = [build_messages(INSTRUCTION, LABELS, text, demos=DEMOS) for text in ITEMS]
    calls = []
    logp = backend.score(prompts, LABELS, progress=calls.append)
    assert logp.shape == (3, 3) and np.isfinite(logp).all() and (logp <= 0).all()
    np.testing.assert_allclose(np.exp(logp).sum(axis=1), 1.0, atol=1e-9)
    assert calls == [1, 1, 1]
    assert np.array_equal(logp, backend.score(prompts, LABELS))  # deterministic


MIXED_LABELS = ["neutral", "card arrival", "exchange_rate", "not applicable at all", "top up", "refund_not_showing_up"]


@pytest.fixture(scope="module")
def naive_reference(backend):
    """Prompts, and their scores computed the slow way, for labels of 1 to 9 tokens (two of them of 2)."""
    lengths = [len(ids) for ids in backend._label_tokens(MIXED_LABELS)]
    assert len(set(lengths)) > 3 and len(set(lengths)) < len(lengths)
    prompts = [
        build_messages(INSTRUCTION, MIXED_LABELS, ITEMS[0], demos=[Demo("a", "Cards arrive in 5 days .", "card arrival")]),
        build_messages(INSTRUCTION, MIXED_LABELS, ITEMS[1]),
        build_messages(INSTRUCTION, MIXED_LABELS, "x"),
    ]
    return prompts, backend.score_one_by_one(prompts, MIXED_LABELS)


@pytest.mark.slow
@pytest.mark.parametrize("batch_size", [1, 3])
def test_kv_cache_scoring_matches_naive_per_label_scoring(naive_reference, imfl_cache, batch_size):
    prompts, slow = naive_reference
    fast = LocalBackend(cache_dir=str(imfl_cache), batch_size=batch_size).score(prompts, MIXED_LABELS)
    np.testing.assert_allclose(fast, slow, atol=1e-4)


@pytest.mark.slow
def test_long_prompts_lose_their_oldest_demos_not_the_item(backend, imfl_cache):
    full = build_messages(INSTRUCTION, LABELS, ITEMS[0], demos=DEMOS)
    without_first = build_messages(INSTRUCTION, LABELS, ITEMS[0], demos=DEMOS[1:])
    n_tokens = len(backend._render(without_first)) + 1  # room for the one-token labels
    short = LocalBackend(cache_dir=str(imfl_cache), max_length=n_tokens)
    np.testing.assert_allclose(short.score([full], LABELS), backend.score([without_first], LABELS), atol=1e-6)
    tiny = LocalBackend(cache_dir=str(imfl_cache), max_length=20)
    with pytest.raises(ModelError, match="max_length=20"):
        tiny.score([full], LABELS)


@pytest.mark.slow
def test_the_annotator_benchmark_labels_the_same_items_from_a_growing_human_pool(small_fpb, imfl_cache, tmp_path):
    """benchmarks/llm_annotator.py with nested human pools (--humans 4,8): one row per size and demonstration mode,
    all on the same pool items outside the larger pool: the zero-shot prompts of the second size are all answered
    from the answer cache of the first, while retrieval from 8 human labels asks new questions."""

    def script(*args):
        return subprocess.run(
            [sys.executable, str(REPO / "benchmarks" / "llm_annotator.py"), "--data", str(small_fpb["pool"].parent), *args],
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "IMFL_CACHE": str(imfl_cache)},
        )

    before = small_fpb["pool"].read_bytes()
    r = script(
        "--humans",
        "8,4",
        "--n",
        "4",
        "--demos",
        "none,retrieved,nearest",
        "--set",
        "llm.max_length=512",
        "--out",
        tmp_path / "rows.jsonl",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert [(row["humans"], row["demos"]) for row in rows] == [
        (n, mode) for n in (4, 8) for mode in ("none", "retrieved", "nearest")
    ]
    assert {row["n"] for row in rows} == {4} and all(row["labeled"] + row["failed"] == 4 for row in rows)
    fresh = {(row["humans"], row["demos"]): row["fresh_calls"] for row in rows}
    assert fresh[4, "none"] == 4 and fresh[8, "none"] == 0 and fresh[8, "retrieved"] >= 1
    assert rows[0]["accuracy"] == rows[3]["accuracy"]
    # the 1-nearest-neighbour rows ask the LLM nothing and answer with labels of the human-labeled items
    assert fresh[4, "nearest"] == fresh[8, "nearest"] == 0
    assert all(
        sum(row["predicted"].values()) == 4 and set(row["predicted"]) <= set(LABELS) for row in rows if row["demos"] == "nearest"
    )
    for bad, words in (("4,x", "sizes of at least 1"), ("60", "has 60 items")):
        r = script("--humans", bad)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and words in r.stderr, (bad, r.stderr)
    assert small_fpb["pool"].read_bytes() == before
