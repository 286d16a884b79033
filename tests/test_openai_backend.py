"""The OpenAI-compatible backend against real HTTP servers on loopback that misbehave on purpose."""

import math
import socket

import numpy as np
import pytest

from fault_server import FaultServer, completion, text_completion
from imfl.errors import AnnotatorError
from imfl.llm.base import parse_label, vote_probs
from imfl.llm.openai_backend import OpenAIBackend, render_completion_prompt

LABELS = ["neutral", "positive", "negative"]
PROMPT = [
    {"role": "system", "content": "Classify."},
    {"role": "user", "content": "Text: up 5%"},
    {"role": "assistant", "content": "positive"},
    {"role": "user", "content": "Text: flat"},
    {"role": "assistant", "content": "neutral"},
    {"role": "user", "content": "Text: profits fell"},
]


def backend(url, **kw):
    kw = {"max_retries": 3, "backoff": 0.01, "max_backoff": 0.05, "samples": 4, "timeout": 5.0, **kw}
    return OpenAIBackend(url, "test-model", **kw)


@pytest.mark.parametrize(
    "answer,label",
    [
        ("negative", "negative"),
        ("Negative", "negative"),
        (" NEGATIVE.\n", "negative"),
        ("Answer: positive", "positive"),
        ('"neutral"', "neutral"),
        ("The sentiment is negative", "negative"),
        ("negative - profits fell", "negative"),
        ("bullish", None),
        ("positive or negative", None),
        ("", None),
    ],
)
def test_parse_label(answer, label):
    assert parse_label(answer, LABELS) == label


def test_parse_label_multiword_and_nested_names():
    labels = ["card_arrival", "card", "lost_or_stolen_card"]
    assert parse_label("card arrival", labels) == "card_arrival"
    assert parse_label("Card_Arrival", labels) == "card_arrival"
    assert parse_label("It is lost or stolen card", labels) == "lost_or_stolen_card"


def test_votes_are_smoothed_probabilities():
    p = vote_probs(["neutral", "neutral", None, "negative"], LABELS, alpha=0.5)
    assert np.isclose(p.sum(), 1) and p[0] > p[2] > p[1] > 0
    assert vote_probs([None, None], LABELS) is None


def test_logprobs_give_probabilities_for_every_label():
    top = {"negative": math.log(0.7), "neutral": math.log(0.2), "pos": math.log(0.05), "The": math.log(0.05)}
    with FaultServer(lambda n, body: (200, completion("negative", top), 0)) as srv:
        [s] = backend(srv.url).score_items([PROMPT], LABELS)
    assert s.method == "logprobs" and s.ok
    p = np.exp(s.logprobs)
    assert np.isclose(p.sum(), 1) and p.argmax() == 2
    np.testing.assert_allclose(p, np.array([0.2, 0.05, 0.7]) / 0.95, rtol=1e-6)
    assert len(srv.bodies) == 1 and srv.bodies[0]["logprobs"] is True and srv.bodies[0]["temperature"] == 0


def test_the_completions_endpoint_gets_a_text_prompt_and_gives_probabilities():
    top = {" negative": math.log(0.6), " neutral": math.log(0.3), " positive": math.log(0.1)}
    with FaultServer(lambda n, body: (200, text_completion(" negative", top), 0)) as srv:
        [s] = backend(srv.url, endpoint="completions").score_items([PROMPT], LABELS)
    assert s.ok and s.method == "logprobs" and (s.prompt_tokens, s.completion_tokens) == (40, 1)
    np.testing.assert_allclose(np.exp(s.logprobs), [0.3, 0.1, 0.6], rtol=1e-6)
    assert srv.paths == ["/v1/completions"]
    body = srv.bodies[0]
    assert "messages" not in body and body["logprobs"] == 5 and "top_logprobs" not in body and body["stop"] == ["\n"]
    assert body["prompt"] == render_completion_prompt(PROMPT)
    assert body["prompt"] == (
        "Classify.\n\nText: up 5%\nAnswer: positive\n\nText: flat\nAnswer: neutral\n\nText: profits fell\nAnswer:"
    )
    assert backend(srv.url, endpoint="completions").cache_key() != backend(srv.url).cache_key()


def test_without_logprobs_it_falls_back_to_self_consistency_with_n():
    def handler(n, body):
        if body.get("n"):
            return 200, completion(["negative", "negative", "neutral", "negative"]), 0
        return 200, completion("negative"), 0

    with FaultServer(handler) as srv:
        [s] = backend(srv.url).score_items([PROMPT], LABELS)
    assert s.method == "self-consistency" and s.ok
    assert len(srv.bodies) == 2 and srv.bodies[1]["n"] == 4 and srv.bodies[1]["temperature"] > 0
    p = np.exp(s.logprobs)
    assert p.argmax() == 2 and np.isclose(p.sum(), 1)
    assert s.prompt_tokens == 100 and s.completion_tokens == 2 + 8


def test_a_server_that_ignores_n_gets_shuffled_demo_prompts():
    with FaultServer(lambda n, body: (200, completion("neutral"), 0)) as srv:
        [s] = backend(srv.url, samples=3).score_items([PROMPT], LABELS)
    assert s.method == "self-consistency" and np.exp(s.logprobs).argmax() == 0
    assert len(srv.bodies) == 1 + 1 + 2  # greedy, one n=3 request answered once, two more
    demo_orders = {tuple(m["content"] for m in b["messages"]) for b in srv.bodies}
    assert len(demo_orders) >= 2  # the extra samples saw the demonstrations in another order
    assert all(b["messages"][-1] == PROMPT[-1] for b in srv.bodies)  # the item stays last


def test_unparsed_answers_are_recorded_not_mapped():
    with FaultServer(lambda n, body: (200, completion("bullish, I think"), 0)) as srv:
        [s] = backend(srv.url).score_items([PROMPT], LABELS)
    assert not s.ok and s.unparsed and "bullish" in s.error and s.answer == "bullish, I think"


@pytest.mark.parametrize(
    "fault,expect",
    [
        ((500, {"error": "boom"}, 0), "HTTP 500"),
        ((429, {"error": "slow down"}, 0), "HTTP 429"),
        ((200, b"<html>not json</html>", 0), "malformed response body"),
        ((200, {"choices": []}, 0), "empty choice list"),
        ((200, completion("neutral"), 1.0), "timed out"),
    ],
)
def test_faults_are_retried_then_the_item_fails_without_crashing(fault, expect):
    with FaultServer(lambda n, body: fault) as srv:
        [s] = backend(srv.url, timeout=0.3).score_items([PROMPT], LABELS)
    assert not s.ok and not s.unparsed and expect in s.error and "4 attempts" in s.error
    assert len(srv.bodies) == 4  # the first try and three retries, no more


def test_transient_faults_recover():
    script = [(429, {"error": "x"}, 0), (503, {"error": "x"}, 0), (200, b"{", 0)]

    def handler(n, body):
        return script[n] if n < len(script) else (200, completion("positive", {"positive": -0.1, "negative": -2.4}), 0)

    with FaultServer(handler) as srv:
        [s] = backend(srv.url).score_items([PROMPT], LABELS)
    assert s.ok and s.method == "logprobs" and np.exp(s.logprobs).argmax() == 1
    assert len(srv.bodies) == 4


def test_connection_refused_fails_the_item():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    [s] = backend(f"http://127.0.0.1:{port}/v1", max_retries=1).score_items([PROMPT], LABELS)
    assert not s.ok and "connection failed" in s.error


def test_a_refused_key_stops_with_a_message_and_the_key_is_never_shown():
    with FaultServer(lambda n, body: (401, {"error": "bad key"}, 0)) as srv:
        with pytest.raises(AnnotatorError) as e:
            backend(srv.url, api_key="sk-secret-123").score_items([PROMPT], LABELS)
    assert "401" in str(e.value) and "API key" in str(e.value) and "sk-secret-123" not in str(e.value)
    assert srv.auth[0] == "Bearer sk-secret-123"


def test_concurrency_is_bounded_and_results_keep_their_order():
    answers = ["neutral", "positive", "negative"]

    def handler(n, body):
        answer = answers[int(body["messages"][-1]["content"].split()[-1]) % 3]
        return 200, completion(answer, {answer: -0.05}), 0.1

    prompts = [PROMPT[:-1] + [{"role": "user", "content": f"item {i}"}] for i in range(12)]
    seen = []
    with FaultServer(handler) as srv:
        out = backend(srv.url, max_concurrency=3).score_items(prompts, LABELS, on_result=lambda i, s: seen.append(i))
    assert srv.max_in_flight <= 3 and srv.max_in_flight >= 2
    assert [LABELS[int(np.argmax(s.logprobs))] for s in out] == [answers[i % 3] for i in range(12)]
    assert sorted(seen) == list(range(12))


def test_a_refusal_before_any_answer_stops_the_run_but_later_ones_fail_one_item():
    with FaultServer(lambda n, body: (400, {"error": "Server is pinned to '/models/x'"}, 0)) as srv:
        with pytest.raises(AnnotatorError, match="HTTP 400 before any successful answer.*pinned"):
            backend(srv.url).score_items([PROMPT], LABELS)

    def handler(n, body):
        if body["messages"][-1]["content"] == "too long":
            return 400, {"error": "context length exceeded"}, 0
        return 200, completion("neutral", {"neutral": -0.01}), 0

    with FaultServer(handler) as srv:
        b = backend(srv.url, max_concurrency=1)
        good, bad = b.score_items([PROMPT, PROMPT[:-1] + [{"role": "user", "content": "too long"}]], LABELS)
    assert good.ok and not bad.ok and "HTTP 400" in bad.error and "context length" in bad.error


def test_every_llm_label_records_its_tokens_and_their_price():
    from imfl.annotators import AnnotationContext, LLMAnnotator
    from imfl.data import Example, Task

    top = {"negative": math.log(0.9), "neutral": math.log(0.1)}
    with FaultServer(lambda n, body: (200, completion("negative", top, prompt_tokens=120, completion_tokens=3), 0)) as srv:
        annotator = LLMAnnotator(
            backend(srv.url), Task(tuple(LABELS), "Classify."), k=0, cost_per_label=0.001, prompt_price=2.0, completion_price=10.0
        )
        [a] = annotator.annotate([Example("x1", "profits fell")], AnnotationContext(1))
    assert (a.label, a.prompt_tokens, a.completion_tokens, a.method) == ("negative", 120, 3, "logprobs")
    assert a.cost == pytest.approx(0.001 + (120 * 2.0 + 3 * 10.0) / 1e6)  # prices are per million tokens
