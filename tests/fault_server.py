"""A small, real OpenAI-compatible HTTP server on loopback whose answers a test scripts: the faults a
real server cannot be told to produce (429, 500, slow or malformed replies, empty choices), log
probabilities, and whether it honours ``n``. Standard library only."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def text_completion(text: str, top_logprobs: dict[str, float]) -> dict:
    """A legacy ``/v1/completions`` answer with its first token's alternatives (OpenAI's old format)."""
    first = max(top_logprobs, key=top_logprobs.get)
    logprobs = {"tokens": [first], "token_logprobs": [top_logprobs[first]], "top_logprobs": [top_logprobs], "text_offset": [0]}
    return {
        "id": "x",
        "object": "text_completion",
        "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 40, "completion_tokens": 1},
    }


def completion(
    content: str | list[str], top_logprobs: dict[str, float] | None = None, prompt_tokens: int = 50, completion_tokens: int = 2
) -> dict:
    contents = [content] if isinstance(content, str) else content
    choices = []
    for i, c in enumerate(contents):
        choice = {"index": i, "message": {"role": "assistant", "content": c}, "finish_reason": "stop"}
        if top_logprobs is not None:
            first = max(top_logprobs, key=top_logprobs.get)
            choice["logprobs"] = {
                "content": [
                    {
                        "token": first,
                        "logprob": top_logprobs[first],
                        "top_logprobs": [{"token": t, "logprob": lp} for t, lp in top_logprobs.items()],
                    }
                ]
            }
        choices.append(choice)
    return {
        "id": "x",
        "object": "chat.completion",
        "choices": choices,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens * len(choices)},
    }


class FaultServer:
    """``handler(request_number, body) -> (status, payload, delay_seconds)``, or with a fourth element, a dict of
    extra response headers (e.g. ``Retry-After``); payload is a dict (sent as JSON) or bytes (sent as is). Records
    every request body, its arrival time (``time.time()``), the Authorization headers and the most requests it ever
    had in flight at once."""

    def __init__(self, handler: Callable[[int, dict], tuple]):
        self.handler = handler
        self.bodies: list[dict] = []
        self.paths: list[str] = []
        self.times: list[float] = []
        self.auth: list[str | None] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                arrived = time.time()
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with outer._lock:
                    n = len(outer.bodies)
                    outer.bodies.append(body)
                    outer.paths.append(self.path)
                    outer.times.append(arrived)
                    outer.auth.append(self.headers.get("Authorization"))
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                try:
                    status, payload, delay, *extra = outer.handler(n, body)
                    if delay:
                        time.sleep(delay)
                finally:
                    # Out of flight before the answer leaves: a client may send its next request the moment it
                    # has read this one, before this thread would get past the write.
                    with outer._lock:
                        outer.in_flight -= 1
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in (extra[0] if extra else {}).items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout): fine

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FaultServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
