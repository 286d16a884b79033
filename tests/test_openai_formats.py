"""The OpenAI-compatible backend against response bodies in the shapes real servers send (OpenAI's chat and legacy
completions, vLLM's), served from a real HTTP server on loopback, and the ``Retry-After`` a rate-limited server sends.

The bodies are written here after the documented shapes (the sources are named beside each); the numbers are made up."""

import email.utils
import math
import time

import numpy as np
import pytest

from fault_server import FaultServer
from imfl.llm.openai_backend import OpenAIBackend

LABELS = ["neutral", "positive", "negative"]
PROMPT = [
    {"role": "system", "content": "Classify the sentiment."},
    {"role": "user", "content": "Text: sales rose 5%"},
    {"role": "assistant", "content": "positive"},
    {"role": "user", "content": "Text: the meeting is on Monday"},
    {"role": "assistant", "content": "neutral"},
    {"role": "user", "content": "Text: operating profit fell to EUR 2m"},
]


def backend(url, **kw):
    kw = {"max_retries": 3, "backoff": 0.01, "max_backoff": 0.05, "samples": 3, "timeout": 10.0, **kw}
    return OpenAIBackend(url, "test-model", **kw)


def _bytes(token: str) -> list[int]:
    return list(token.encode())


def openai_chat(answer: str, top: dict[str, float]) -> dict:
    """OpenAI's chat completion object with ``logprobs: true, top_logprobs: k`` (API reference, "The chat completion
    object": https://developers.openai.com/api/reference/python/resources/chat/subresources/completions/ — a choice's
    ``logprobs`` is ``{content: [ChatCompletionTokenLogprob], refusal}``, each token ``{token, logprob, bytes,
    top_logprobs: [{token, logprob, bytes}]}``; the message carries ``refusal`` and ``annotations``)."""
    first = {
        "token": answer,
        "logprob": top[answer],
        "bytes": _bytes(answer),
        "top_logprobs": [{"token": t, "logprob": lp, "bytes": _bytes(t)} for t, lp in top.items()],
    }
    return {
        "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        "object": "chat.completion",
        "created": 1741570283,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer, "refusal": None, "annotations": []},
                "logprobs": {"content": [first], "refusal": None},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 61,
            "completion_tokens": 1,
            "total_tokens": 62,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        "service_tier": "default",
        "system_fingerprint": "fp_06737a9306",
    }


def openai_completion(text: str, top: dict[str, float], prompt_chars: int) -> dict:
    """OpenAI's legacy completion object with ``logprobs: k`` (API reference, "Completions":
    https://developers.openai.com/api/docs/api-reference/completions — a choice's ``logprobs`` is ``{text_offset,
    token_logprobs, tokens, top_logprobs}``, one entry per generated token, ``top_logprobs`` a token → logprob map of up
    to k + 1 entries, the sampled token included)."""
    return {
        "id": "cmpl-uqkvlQyYK7bGYrRHQ0eXlWi7",
        "object": "text_completion",
        "created": 1589478378,
        "model": "gpt-3.5-turbo-instruct",
        "choices": [
            {
                "text": text,
                "index": 0,
                "finish_reason": "stop",
                "logprobs": {
                    "tokens": [text],
                    "token_logprobs": [top[text]],
                    "top_logprobs": [top],
                    "text_offset": [prompt_chars],
                },
            }
        ],
        "usage": {"prompt_tokens": 58, "completion_tokens": 1, "total_tokens": 59},
    }


def vllm_chat(answer: str, top: dict[str, float], tokens_as_ids: dict[str, int] | None = None) -> dict:
    """vLLM's chat completion response (vllm-project/vllm, vllm/entrypoints/openai/protocol.py:
    ``ChatCompletionResponse``, ``ChatCompletionLogProbs`` / ``ChatCompletionLogProbsContent``; and
    vllm/entrypoints/openai/serving_chat.py, later chat_completion/serving.py, ``_create_chat_logprobs``): OpenAI's
    shape plus vLLM's own fields (``stop_reason``, ``token_ids``, ``reasoning_content``, ``prompt_logprobs``,
    ``kv_transfer_params``), impossible tokens' logprob clamped to -9999.0, and with ``--return-tokens-as-token-ids``
    every token written ``token_id:<id>``."""
    name = (lambda t: f"token_id:{tokens_as_ids[t]}") if tokens_as_ids else (lambda t: t)
    content = [
        {
            "token": name(answer),
            "logprob": top[answer],
            "bytes": _bytes(name(answer)),
            "top_logprobs": [{"token": name(t), "logprob": lp, "bytes": _bytes(name(t))} for t, lp in top.items()],
        }
    ]
    return {
        "id": "chatcmpl-5d0f2a7e0b2c4c1f9d3e",
        "object": "chat.completion",
        "created": 1735000000,
        "model": "Qwen/Qwen2.5-1.5B-Instruct",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": answer,
                    "refusal": None,
                    "annotations": None,
                    "audio": None,
                    "function_call": None,
                    "tool_calls": [],
                    "reasoning_content": None,
                },
                "logprobs": {"content": content},
                "finish_reason": "stop",
                "stop_reason": None,
                "token_ids": None,
            }
        ],
        "service_tier": None,
        "system_fingerprint": None,
        "usage": {"prompt_tokens": 70, "total_tokens": 72, "completion_tokens": 2, "prompt_tokens_details": None},
        "prompt_logprobs": None,
        "prompt_token_ids": None,
        "kv_transfer_params": None,
    }


def vllm_completion(text: str, top: dict[str, float], prompt_chars: int) -> dict:
    """vLLM's legacy completion response (vllm-project/vllm, vllm/entrypoints/openai/protocol.py:
    ``CompletionResponse``, ``CompletionLogProbs`` with ``top_logprobs: list[dict | None]``; and
    vllm/entrypoints/openai/serving_completion.py, later completion/serving.py, ``_create_completion_logprobs``:
    decoded tokens, ``logprobs`` + 1 alternatives, -9999.0 for -inf), with ``stop_reason`` naming the stop string."""
    return {
        "id": "cmpl-8b1c7a0d64e44f6c9a1b",
        "object": "text_completion",
        "created": 1735000000,
        "model": "meta-llama/Llama-3.2-1B",
        "choices": [
            {
                "index": 0,
                "text": text,
                "logprobs": {
                    "text_offset": [prompt_chars],
                    "token_logprobs": [top[text]],
                    "tokens": [text],
                    "top_logprobs": [top],
                },
                "finish_reason": "stop",
                "stop_reason": "\n",
                "prompt_logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 66, "total_tokens": 67, "completion_tokens": 1, "prompt_tokens_details": None},
        "kv_transfer_params": None,
    }


def expected(top: dict[str, float], by_label: dict[str, list[str]]) -> np.ndarray:
    """What the label probabilities must be: each label's alternatives' probability mass, normalised over the labels."""
    mass = np.array([sum(math.exp(top[t]) for t in by_label[label]) for label in LABELS])
    return mass / mass.sum()


def test_openai_chat_logprobs_give_every_label_a_probability():
    top = {"negative": -0.11, "Negative": -2.6, "neutral": -3.2, "positive": -5.9, "neg": -7.1, "The": -8.0}
    with FaultServer(lambda n, body: (200, openai_chat("negative", top), 0)) as srv:
        [s] = backend(srv.url).score_items([PROMPT], LABELS)
    assert s.ok and s.method == "logprobs" and s.answer == "negative"
    assert (s.prompt_tokens, s.completion_tokens) == (61, 1)
    p = np.exp(s.logprobs)
    np.testing.assert_allclose(
        p,
        expected(top, {"neutral": ["neutral"], "positive": ["positive"], "negative": ["negative", "Negative", "neg"]}),
        rtol=1e-6,
    )
    assert srv.paths == ["/v1/chat/completions"]  # one greedy request was enough


def test_openai_legacy_completion_logprobs_give_every_label_a_probability():
    top = {" negative": -0.2, " neutral": -1.9, " positive": -3.5, " Negative": -4.4, "\n": -5.0, " The": -6.1}
    prompt_chars = 160
    with FaultServer(lambda n, body: (200, openai_completion(" negative", top, prompt_chars), 0)) as srv:
        [s] = backend(srv.url, endpoint="completions").score_items([PROMPT], LABELS)
    assert s.ok and s.method == "logprobs" and (s.prompt_tokens, s.completion_tokens) == (58, 1)
    np.testing.assert_allclose(
        np.exp(s.logprobs),
        expected(top, {"neutral": [" neutral"], "positive": [" positive"], "negative": [" negative", " Negative"]}),
        rtol=1e-6,
    )
    assert srv.paths == ["/v1/completions"] and srv.bodies[0]["logprobs"] == 5  # the legacy API's maximum


def test_vllm_chat_logprobs_with_clamped_impossible_tokens():
    top = {"positive": -0.05, "neutral": -3.1, "negative": -4.7, "Positive": -6.2, "<|im_end|>": -9999.0}
    with FaultServer(lambda n, body: (200, vllm_chat("positive", top), 0)) as srv:
        [s] = backend(srv.url).score_items([PROMPT], LABELS)
    assert s.ok and s.method == "logprobs" and (s.prompt_tokens, s.completion_tokens) == (70, 2)
    np.testing.assert_allclose(
        np.exp(s.logprobs),
        expected(top, {"neutral": ["neutral"], "negative": ["negative"], "positive": ["positive", "Positive"]}),
        rtol=1e-6,
    )


def test_vllm_legacy_completion_logprobs():
    top = {" positive": -0.3, " neutral": -1.6, " negative": -3.3, " Pos": -5.5, " The": -7.0, " -": -9999.0}
    with FaultServer(lambda n, body: (200, vllm_completion(" positive", top, 150), 0)) as srv:
        [s] = backend(srv.url, endpoint="completions").score_items([PROMPT], LABELS)
    assert s.ok and s.method == "logprobs"
    np.testing.assert_allclose(
        np.exp(s.logprobs),
        expected(top, {"neutral": [" neutral"], "negative": [" negative"], "positive": [" positive", " Pos"]}),
        rtol=1e-6,
    )


def test_vllm_tokens_as_ids_cannot_be_read_so_the_answer_is_voted():
    """``--return-tokens-as-token-ids`` gives ``token_id:<id>`` tokens that name no label: the backend must not guess
    from them but vote over sampled answers (the server honours ``n``)."""
    top = {"negative": -0.4, "neutral": -1.2, "positive": -2.5}
    ids = {"negative": 43324, "neutral": 59794, "positive": 30487}

    def handler(n, body):
        reply = vllm_chat("negative", top, ids)
        if body.get("n"):  # three sampled answers
            one = reply["choices"][0]
            reply["choices"] = [
                dict(one, index=i, message=dict(one["message"], content=a))
                for i, a in enumerate(["negative", "neutral", "negative"])
            ]
        return 200, reply, 0

    with FaultServer(handler) as srv:
        [s] = backend(srv.url).score_items([PROMPT], LABELS)
    assert s.ok and s.method == "self-consistency" and LABELS[int(np.argmax(s.logprobs))] == "negative"
    assert len(srv.bodies) == 2 and srv.bodies[1]["n"] == 3


# -- Retry-After ----------------------------------------------------------------------------------------------------
# A rate-limited server says when to come back (RFC 9110 section 10.2.3: delay-seconds or an HTTP date). The checks use
# the server's own arrival times; the backend's backoff here is at most 0.05 s, so a retry a second later can only
# come from the header.


def rate_limited_once(headers: dict[str, str] | None):
    def handler(n, body):
        if n == 0:
            return 429, {"error": {"message": "Rate limit reached", "type": "requests"}}, 0, headers or {}
        return 200, openai_chat("negative", {"negative": -0.1, "neutral": -2.4}), 0

    return handler


def test_retry_after_in_seconds_is_honoured():
    with FaultServer(rate_limited_once({"Retry-After": "1"})) as srv:
        [s] = backend(srv.url).score_items([PROMPT], LABELS)
    assert s.ok and len(srv.times) == 2
    assert srv.times[1] - srv.times[0] >= 0.95


def test_retry_after_as_an_http_date_is_honoured():
    target = {}

    def handler(n, body):
        if n == 0:  # two whole seconds ahead: an HTTP date has no fractions
            target["t"] = math.floor(time.time()) + 2
            return 429, {"error": "slow down"}, 0, {"Retry-After": email.utils.formatdate(target["t"], usegmt=True)}
        return 200, openai_chat("negative", {"negative": -0.1}), 0

    with FaultServer(handler) as srv:
        [s] = backend(srv.url).score_items([PROMPT], LABELS)
    assert s.ok and len(srv.times) == 2
    assert srv.times[1] >= target["t"] - 0.05  # not before the date the server named


def test_a_long_retry_after_is_capped():
    with FaultServer(rate_limited_once({"Retry-After": "3600"})) as srv:
        start = time.time()
        [s] = backend(srv.url, max_retry_after=0.5).score_items([PROMPT], LABELS)
    assert s.ok and srv.times[1] - srv.times[0] >= 0.45
    assert time.time() - start < 60  # an hour was asked for; the cap decides


@pytest.mark.parametrize("value", ["soon", "-5", "nan", ""])
def test_an_unusable_retry_after_falls_back_to_backoff(value):
    with FaultServer(rate_limited_once({"Retry-After": value})) as srv:
        [s] = backend(srv.url).score_items([PROMPT], LABELS)
    assert s.ok and len(srv.times) == 2
