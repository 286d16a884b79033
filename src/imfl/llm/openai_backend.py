"""Any OpenAI-compatible chat-completions endpoint (OpenAI, Azure OpenAI, vLLM, Ollama, llama.cpp's
server, ``transformers serve``) as a label scorer, over plain ``httpx``; or, with
``endpoint="completions"``, the plain-text ``/v1/completions`` endpoint that base (non-chat) models are
served on, the chat prompt then rendered as text (``render_completion_prompt``).

Per prompt: one greedy request asking for token log-probabilities. When the server returns them and
they agree with the answer, the label probabilities come from the first answer token's alternatives
(``method = "logprobs"``). Otherwise they come from votes over several sampled answers
(``self-consistency``): first one request with ``n`` samples; if the server returns fewer choices,
separate requests whose demonstrations are shuffled. An answer that names no label is ``unparsed``:
recorded, never mapped to a label.

Faults (timeouts, refused connections, HTTP 429 and 5xx, bodies that are not the expected JSON, empty
choice lists) are retried with bounded exponential backoff, or after the wait a 429/5xx answer's ``Retry-After``
names (seconds or an HTTP date, at most ``max_retry_after``); a prompt that still fails gets a
``Scored`` with ``error`` set, so its item goes back to the pool. Answers 401/403/404 stop the run
with a message, since every later call would fail the same way. The API key is sent in a header
only: it is never logged, stored, or part of a cache key.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from email.utils import parsedate_to_datetime

import httpx
import numpy as np

from imfl.errors import AnnotatorError
from imfl.llm.base import Scored, first_token_probs, parse_label, vote_probs

FATAL_STATUS = {401: "the API key was refused", 403: "access is forbidden", 404: "the URL or model does not exist"}


class _Failed(Exception):
    """A request that failed after its retries (the message says how)."""


class OpenAIBackend:
    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        samples: int = 5,
        temperature: float = 0.7,
        logprobs: bool = True,
        top_logprobs: int = 20,
        max_tokens: int = 16,
        timeout: float = 60.0,
        max_retries: int = 4,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        max_retry_after: float = 60.0,
        max_concurrency: int = 4,
        seed: int = 0,
        endpoint: str = "chat",
    ):
        self.base_url = base_url
        self.model = model
        self.api_key = api_key
        self.samples = samples
        self.temperature = temperature
        self.logprobs = logprobs
        self.top_logprobs = top_logprobs
        self.max_tokens = max_tokens
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_retry_after = max_retry_after
        self.max_concurrency = max_concurrency
        self.seed = seed
        self.endpoint = endpoint
        self.requests_sent = 0
        self._answered = False
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return f"openai:{self.model}"

    def cache_key(self) -> dict:
        key = {
            "backend": "openai",
            "model": self.model,
            "samples": self.samples,
            "temperature": self.temperature,
            "logprobs": self.logprobs,
            "top_logprobs": self.top_logprobs,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
        }
        if self.endpoint != "chat":  # chat keys stay as they were before completions existed
            key["endpoint"] = self.endpoint
        return key

    # -- HTTP --------------------------------------------------------------------------------
    def _client(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return httpx.Client(base_url=self.base_url.rstrip("/") + "/", headers=headers, timeout=self.timeout)

    def _post(self, client: httpx.Client, body: dict) -> dict:
        """POST (chat/)completions with retries; returns the parsed JSON with a non-empty choice list."""
        problem, wait = "", None
        for attempt in range(self.max_retries + 1):
            if attempt:
                backoff = min(self.max_backoff, self.backoff * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)
                time.sleep(backoff if wait is None else wait)
            wait = None
            with self._lock:
                self.requests_sent += 1
            try:
                r = client.post("chat/completions" if self.endpoint == "chat" else "completions", json=body)
            except httpx.TimeoutException:
                problem = f"timed out after {self.timeout:g} s"
                continue
            except httpx.TransportError as exc:
                problem = f"connection failed ({type(exc).__name__})"
                continue
            if r.status_code in FATAL_STATUS:
                raise AnnotatorError(
                    f"{self.base_url}: HTTP {r.status_code}, {FATAL_STATUS[r.status_code]} (model {self.model!r}); "
                    "check llm.base_url, llm.model and the API key"
                )
            if r.status_code == 429 or r.status_code >= 500:
                problem = f"HTTP {r.status_code}"
                wait = self._retry_after(r)
                continue
            if r.status_code >= 400:
                if not self._answered:
                    # The very first answers refuse us: a wrong model name or parameter, not one bad prompt.
                    raise AnnotatorError(
                        f"{self.base_url}: HTTP {r.status_code} before any successful answer ({_brief(r.text)}); "
                        "check llm.model and the other llm settings"
                    )
                raise _Failed(f"HTTP {r.status_code}: {_brief(r.text)}")
            try:
                data = r.json()
                choices = data["choices"]
            except (ValueError, KeyError, TypeError):
                problem = "malformed response body"
                continue
            if not choices:
                problem = "empty choice list"
                continue
            self._answered = True
            return data
        raise _Failed(f"{problem} ({self.max_retries + 1} attempts)")

    def _retry_after(self, r: httpx.Response) -> float | None:
        """The wait a rate-limited or overloaded server asks for (``Retry-After``: seconds or an HTTP date), capped at
        ``max_retry_after`` so that one header cannot stall a run; None when it names no usable wait."""
        value = r.headers.get("Retry-After", "").strip()
        try:
            seconds = float(value)
        except ValueError:
            try:
                seconds = parsedate_to_datetime(value).timestamp() - time.time()
            except (TypeError, ValueError):
                return None
        if not math.isfinite(seconds):
            return None
        return min(max(seconds, 0.0), self.max_retry_after)

    # -- one prompt ------------------------------------------------------------------------
    def _one(self, client: httpx.Client, messages: list[dict], labels: Sequence[str]) -> Scored:
        usage = [0, 0]

        def post(body: dict) -> dict:
            chat = body.pop("messages", messages)
            if self.endpoint == "chat":
                request = {"model": self.model, "messages": chat, "max_tokens": self.max_tokens, **body}
            else:  # the legacy endpoint asks for log-probabilities by a count (at most 5 on OpenAI)
                if body.pop("logprobs", False):
                    body["logprobs"] = min(5, body.pop("top_logprobs"))
                request = {
                    "model": self.model,
                    "prompt": render_completion_prompt(chat),
                    "max_tokens": self.max_tokens,
                    "stop": ["\n"],
                    **body,
                }
            data = self._post(client, request)
            u = data.get("usage") or {}
            usage[0] += int(u.get("prompt_tokens") or 0)
            usage[1] += int(u.get("completion_tokens") or 0)
            return data

        try:
            greedy: dict = {"temperature": 0.0}
            if self.logprobs:
                greedy |= {"logprobs": True, "top_logprobs": self.top_logprobs}
            data = post(greedy)
            choice = data["choices"][0]
            answer = _content(choice)
            label = parse_label(answer, labels) if answer is not None else None
            p = _logprob_probs(choice, labels) if label is not None else None
            method = "logprobs"
            if p is None or labels[int(np.argmax(p))] != label:
                method = "self-consistency"
                answers = [label] + self._samples(post, messages, labels)
                p = vote_probs(answers, labels)
        except _Failed as exc:
            return Scored(None, "failed", usage[0], usage[1], error=str(exc))
        if p is None:
            return Scored(None, method, usage[0], usage[1], answer=answer, error=f"unparsed: {str(answer)[:80]!r}")
        return Scored(np.log(np.clip(p, 1e-12, None)).tolist(), method, usage[0], usage[1], answer=answer)

    def _samples(self, post, messages: list[dict], labels: Sequence[str]) -> list[str | None]:
        need = self.samples
        if need <= 0:
            return []
        data = post({"temperature": self.temperature, "n": need})
        answers = [_content(c) for c in data["choices"][:need]]
        # A server that ignores `n` gave one choice: the rest come from prompts with shuffled demonstrations.
        rng = random.Random(int(hashlib.sha256(json.dumps(messages).encode()).hexdigest()[:8], 16) ^ self.seed)
        while len(answers) < need:
            shuffled = _shuffle_demos(messages, rng)
            data = post({"messages": shuffled, "temperature": self.temperature})
            answers.append(_content(data["choices"][0]))
        return [parse_label(a, labels) if a is not None else None for a in answers]

    # -- many prompts ---------------------------------------------------------------------------
    def score_items(
        self,
        prompts: Sequence[list[dict[str, str]]],
        labels: Sequence[str],
        progress: Callable[[int], None] | None = None,
        on_result: Callable[[int, Scored], None] | None = None,
    ) -> list[Scored]:
        """Score every prompt with at most ``max_concurrency`` requests in flight; ``on_result(i, s)`` is
        called (in this thread) as each prompt finishes, so results can be kept as soon as they are paid."""
        out: list[Scored | None] = [None] * len(prompts)
        labels = list(labels)
        with self._client() as client, ThreadPoolExecutor(max_workers=max(1, self.max_concurrency)) as pool:
            futures = {pool.submit(self._one, client, list(p), labels): i for i, p in enumerate(prompts)}
            try:
                for fut in as_completed(futures):
                    i = futures[fut]
                    out[i] = scored = fut.result()
                    if on_result:
                        on_result(i, scored)
                    if progress:
                        progress(1)
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
        return out  # type: ignore[return-value]  # every future has filled its slot


def _brief(text: str) -> str:
    return " ".join(text.split())[:200]


def _content(choice: dict) -> str | None:
    msg = choice.get("message") or {}
    content = msg.get("content") if isinstance(msg, dict) else None
    if content is None:
        content = choice.get("text")
    return content if isinstance(content, str) else None


def _logprob_probs(choice: dict, labels: Sequence[str]) -> np.ndarray | None:
    """Label probabilities from the first answer token's alternatives, in the chat format
    (``logprobs.content[0].top_logprobs``) or the completions format (``logprobs.top_logprobs[0]``)."""
    try:
        lp = choice["logprobs"]
        if "content" in lp:
            first = lp["content"][0]
            top = {alt["token"]: float(alt["logprob"]) for alt in first.get("top_logprobs") or []}
            top.setdefault(first["token"], float(first["logprob"]))
        else:
            top = {str(t): float(v) for t, v in (lp.get("top_logprobs") or [{}])[0].items()}
            top.setdefault(lp["tokens"][0], float(lp["token_logprobs"][0]))
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        return None
    return first_token_probs(top, labels)


def render_completion_prompt(messages: list[dict]) -> str:
    """A chat prompt as plain text for ``/v1/completions``: the system text, each demonstration as its user
    text followed by ``Answer: <label>``, and the item followed by ``Answer:`` for the model to complete."""
    parts = []
    for m in messages:
        if m["role"] == "system":
            parts.append(m["content"] + "\n\n")
        elif m["role"] == "user":
            parts.append(m["content"] + "\nAnswer:")
        else:
            parts.append(" " + m["content"] + "\n\n")
    return "".join(parts)


def _shuffle_demos(messages: list[dict], rng: random.Random) -> list[dict]:
    """The same prompt with its demonstrations (user/assistant turn pairs before the last user turn) in
    another order."""
    start = 1 if messages and messages[0]["role"] == "system" else 0
    body, last = messages[start:-1], messages[-1]
    pairs = [body[i : i + 2] for i in range(0, len(body) - 1, 2)]
    if len(pairs) < 2 or any(len(p) != 2 for p in pairs):
        return messages
    rng.shuffle(pairs)
    return messages[:start] + [m for p in pairs for m in p] + [last]
