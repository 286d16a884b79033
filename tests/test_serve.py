"""The ``openai`` LLM backend against a real ``transformers serve`` on loopback serving the bundled
SmolLM2-135M-Instruct: whole IMFL runs over HTTP, the answer cache, and a server killed mid-run.
Nothing of imfl or of the HTTP layer is mocked.

What ``transformers serve`` (5.x; ``test_what_the_server_does_with_our_requests`` checks it) does with the
requests of ``OpenAIBackend``:

* ``model``: started as ``transformers serve DIR`` the server is pinned to ``DIR``; a request must name
  exactly that string (or no model at all), anything else gets ``400 Server is pinned to '...'``. So
  ``llm.model`` is the model directory, spelled as on the server's command line.
* ``logprobs`` / ``top_logprobs``: ignored (the server logs "Ignoring unsupported fields"); choices carry no
  ``logprobs``, so label probabilities always come from self-consistency votes.
* ``n``: ignored too: one choice comes back, so the backend sends one request per missing sample (with
  shuffled demonstrations). With ``samples = s`` an item costs 1 + s requests.
* ``temperature = 0`` is greedy decoding (``do_sample = False``): the first answer to a prompt, hence
  whether an item gets a label at all, is deterministic. A temperature > 0 does *not* turn sampling on: that
  comes from the model's ``generation_config.json``, which is why the bundled checkpoint imfl writes sets
  ``do_sample`` (checked below: answers at a positive temperature differ).
* ``/health`` answers offline (so does ``/v1/models``, listing the pinned dir; imfl does not use it).

Speed on two shared, busy cores: the server runs with ``OMP_NUM_THREADS=1`` and this module sets torch to one
thread (torch's default two threads, fighting other processes for the cores, made a request ~4x slower and
a student fit ~40x slower). The student is the bundled MiniLM with one short epoch (``min_steps = 0``).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from conftest import small_config, write_jsonl
from imfl.llm.local import bundled_llm_path
from imfl.loop import LLM_COMMIT_EVERY, Run
from imfl.progress import Silent
from imfl.query import round_plan

pytestmark = pytest.mark.slow

LABELS = {"negative", "neutral", "positive"}
CHAT_LINE = '"POST /v1/chat/completions HTTP/1.1"'  # uvicorn's access log: one line per request


# -- the server ---------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_command() -> list[str]:
    exe = Path(sys.executable).parent / "transformers"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "transformers.cli.transformers"]


def _die_with_parent():
    """In the child before exec: its own process group, and SIGKILL when the test process dies (so a test
    run killed from outside leaves no server behind)."""
    os.setsid()
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


try:
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None
except (OSError, AttributeError):
    _PRCTL = None


class Server:
    """``transformers serve`` on 127.0.0.1:``port``, pinned to ``model``, its output in ``log``."""

    def __init__(self, model: str, port: int, log: Path):
        self.model, self.port, self.log = model, port, log
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> Server:
        env = os.environ | {
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1",
        }
        cmd = serve_command() + ["serve", "--host", "127.0.0.1", "--port", str(self.port), "--device", "cpu", self.model]
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(
                cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, preexec_fn=_die_with_parent
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(
                    f"`{' '.join(cmd)}` exited with code {self.proc.returncode} before answering /health; "
                    f"log tail:\n{self.tail()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            time.sleep(0.5)
        self.kill()
        pytest.fail(f"`{' '.join(cmd)}` did not answer {self.url}/health within {timeout:g} s; log tail:\n{self.tail()}")

    def kill(self) -> None:
        """SIGKILL the server and anything it started (its process group)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def chat_requests(self, expect: int | None = None) -> int:
        """Chat requests in the access log; waits up to 5 s for ``expect`` of them (a line is written as
        its response goes out, possibly just after the client has it)."""
        deadline = time.monotonic() + 5
        while True:
            n = self.log.read_text(errors="replace").count(CHAT_LINE)
            if expect is None or n >= expect or time.monotonic() > deadline:
                return n
            time.sleep(0.1)

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError as exc:
            return f"(no log: {exc})"


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def served_model(imfl_cache) -> str:
    """The bundled LLM as a plain HF checkpoint; the server is pinned to this exact string."""
    return str(bundled_llm_path(imfl_cache))


@pytest.fixture(scope="module")
def server(served_model, tmp_path_factory):
    s = Server(served_model, free_port(), tmp_path_factory.mktemp("serve") / "serve.log")
    try:
        yield s.start()
    finally:
        s.kill()


def serve_cfg(pool, test, out, cache, server, **over):
    settings = {
        "name": "serve",
        "seed": 0,
        "strategy": "imfl",
        "output_dir": str(out),
        "cache_dir": str(cache),
        "data": {"pool": str(pool), "test": str(test)},
        "budget": {"total": 12, "human": 4, "rounds": 2},
        "student": {"epochs": 1, "min_steps": 0, "max_length": 32, "batch_size": 16},
        "llm": {
            "annotator": "openai",
            "base_url": f"{server.url}/v1",
            "model": server.model,
            "samples": 3,
            "max_concurrency": 2,
            "k": 2,
            "max_tokens": 8,
            "timeout": 60.0,
        },
    }
    return small_config(settings, **over)


def rows(db: Path, sql: str, args=()) -> list[tuple]:
    """Read the run's store read-only (it may be in use by the run)."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as c:
        return c.execute(sql, args).fetchall()


def llm_annotations(db: Path) -> dict[int, tuple]:
    """annotation id -> (item_id, round, label, probs, method, prompt_hash, error)"""
    return {
        r[0]: r[1:]
        for r in rows(
            db,
            "SELECT id, item_id, round, label, probs, method, prompt_hash, error FROM annotations WHERE source='llm' ORDER BY id",
        )
    }


# -- what the server does with our requests ---------------------------------------------------------------
def test_what_the_server_does_with_our_requests(server):
    msgs = [
        {"role": "system", "content": "Answer with exactly one of: negative, neutral, positive."},
        {"role": "user", "content": "Text: Operating profit fell sharply."},
    ]

    def post(body):
        return httpx.post(f"{server.url}/v1/chat/completions", json={"messages": msgs, "max_tokens": 2, **body}, timeout=60)

    wrong = post({"model": "SmolLM2-135M-Instruct"})
    assert wrong.status_code == 400 and "pinned" in wrong.text  # llm.model must be the served dir, verbatim
    r = post({"model": server.model, "n": 3, "temperature": 0.7, "logprobs": True, "top_logprobs": 5})
    assert r.status_code == 200, r.text
    choices = r.json()["choices"]
    assert len(choices) == 1, "transformers serve now honours `n`: update this module's docstring"
    assert not choices[0].get("logprobs"), "transformers serve now returns logprobs: update this module's docstring"


def test_answers_at_a_positive_temperature_are_samples(server):
    msgs = [
        {"role": "system", "content": "Answer with exactly one of: negative, neutral, positive."},
        {"role": "user", "content": "Text: The company said its quarterly results were in line with expectations."},
    ]
    answers = {
        httpx.post(
            f"{server.url}/v1/chat/completions",
            timeout=60,
            json={"model": server.model, "messages": msgs, "max_tokens": 6, "temperature": 1.0},
        ).json()["choices"][0]["message"]["content"]
        for _ in range(5)
    }
    assert len(answers) > 1, answers


# -- a whole run over HTTP, then the same run again from the answer cache ---------------------------------
@pytest.fixture(scope="module")
def first_run(server, small_fpb, tmp_path_factory):
    out, cache = tmp_path_factory.mktemp("serve-runs"), tmp_path_factory.mktemp("serve-cache")  # an empty answer cache
    cfg = serve_cfg(small_fpb["pool"], small_fpb["test"], out, cache, server)
    before = server.chat_requests()
    run = Run(cfg)
    result = run.execute()
    sent = run.llm.backend.requests_sent
    return {
        "cfg": cfg,
        "result": result,
        "sent": sent,
        "stats": dict(run.llm.stats),
        "logged": server.chat_requests(expect=before + sent) - before,
    }


def test_a_run_over_http_labels_every_llm_item(first_run, server):
    result = first_run["result"]
    db = result.run_dir / "store.sqlite"
    assert first_run["sent"] > 0 and first_run["logged"] == first_run["sent"]  # every request reached the server
    assert result.budget_used == {"human": 4, "llm": 8}
    assert [m["round"] for m in result.metrics] == [1, 2]
    assert sum(m["llm_labels"] for m in result.metrics) == 8
    assert all(m["llm_failed"] == 0 and m["llm_unparsed"] == 0 for m in result.metrics)
    selected = rows(db, "SELECT item_id FROM selections WHERE target='llm'")
    found = rows(
        db, "SELECT item_id, label, probs, confidence, method, prompt_hash, annotator, error FROM annotations WHERE source='llm'"
    )
    assert sorted(r[0] for r in found) == sorted(r[0] for r in selected)  # every LLM-assigned item, once
    for item, label, probs, confidence, method, phash, annotator, error in found:
        p = json.loads(probs)
        assert set(p) == LABELS and abs(sum(p.values()) - 1) < 1e-6, (item, p)
        assert label == max(p, key=p.get) and confidence == pytest.approx(p[label])
        assert method in {"self-consistency", "logprobs"} and error is None
        assert len(phash) == 64 and annotator == f"openai:{server.model}"
    # No logprobs from this server and `n` ignored: each item is a greedy answer plus 3 separate samples.
    assert {r[4] for r in found} == {"self-consistency"}
    assert first_run["sent"] == 8 * (1 + 3)


def test_a_second_run_is_answered_by_the_cache(first_run, server):
    cfg = first_run["cfg"].model_copy(update={"name": "again"})  # a fresh run dir, the same answer cache
    before = server.chat_requests()
    run = Run(cfg)
    result = run.execute()
    assert first_run["sent"] > 0
    assert run.llm.backend.requests_sent == 0 and server.chat_requests() == before
    assert run.llm.stats["calls"] == 0 and run.llm.stats["cached"] == first_run["stats"]["calls"] == 8
    first_db, db = first_run["result"].run_dir / "store.sqlite", result.run_dir / "store.sqlite"
    q = "SELECT round, item_id, target FROM selections ORDER BY round, rank"
    assert rows(db, q) == rows(first_db, q)  # same seed, same selections ...
    q = "SELECT round, item_id, source, label, probs, prompt_hash FROM annotations ORDER BY id"
    assert rows(db, q) == rows(first_db, q)  # ... so the same prompts, answered the same
    assert result.budget_used == first_run["result"].budget_used


# -- the server dies mid-run ----------------------------------------------------------------------------
class Interrupted(Exception):
    pass


class StopAtRound(Silent):
    """Stops the run, as Ctrl-C would, when it enters the first phase of round ``t``."""

    def __init__(self, t: int):
        self.prefix = f"round {t}:"

    @contextlib.contextmanager
    def phase(self, description, total):
        if description.startswith(self.prefix):
            raise Interrupted(description)
        yield lambda n: None


def test_a_server_killed_mid_run_loses_nothing(served_model, fpb_rows, small_fpb, tmp_path):
    # LLM labels are committed in chunks of LLM_COMMIT_EVERY: round 1 gives the LLM one chunk and a few
    # more items, and the server is SIGKILLed as soon as the first chunk is in the store, so the rest of
    # round 1 fails. The first attempt is stopped on entering round 2; the server comes back on the same
    # port (base_url is part of the run's config) and the same config continues the run.
    total, human, rounds = 86, 4, 2
    plan = round_plan(total, human, rounds)
    assert LLM_COMMIT_EVERY + 6 <= plan[0][1] <= LLM_COMMIT_EVERY + 10, plan
    pool = write_jsonl(tmp_path / "pool.jsonl", fpb_rows["pool"][:100])
    server = Server(served_model, free_port(), tmp_path / "serve.log").start()
    try:
        cfg = serve_cfg(
            pool,
            small_fpb["test"],
            tmp_path / "runs",
            tmp_path / "cache",
            server,
            budget={"total": total, "human": human, "rounds": rounds},
            llm__samples=0,
            llm__k=1,
            llm__max_tokens=4,
            llm__max_retries=1,
            llm__timeout=30.0,
        )
        db = tmp_path / "runs" / cfg.name / "store.sqlite"

        outcome: dict = {}

        def attempt():
            try:
                outcome["result"] = Run(cfg, StopAtRound(2)).execute()
            except BaseException as exc:  # noqa: BLE001 - reported by the assertions below
                outcome["error"] = exc

        thread = threading.Thread(target=attempt, daemon=True)
        thread.start()
        deadline = time.monotonic() + 150
        committed: dict[int, tuple] = {}
        while not committed:
            assert thread.is_alive(), f"the run ended before any LLM label was committed: {outcome!r}"
            assert time.monotonic() < deadline, "no LLM label was committed within 150 s"
            time.sleep(0.05)
            with contextlib.suppress(sqlite3.Error):
                committed = {i: r for i, r in llm_annotations(db).items() if r[2] is not None}
        server.kill()  # requests in flight are cut, later ones refused
        thread.join(timeout=180)
        assert not thread.is_alive(), "the run hung after the server died"
        assert isinstance(outcome.get("error"), Interrupted), f"the run did not live through the outage: {outcome!r}"

        # Round 1 finished without the server: the calls it could not make are recorded as failed.
        assert dict(rows(db, "SELECT round, state FROM rounds"))[1] == "evaluated"
        after_kill = llm_annotations(db)
        failed = {i: r for i, r in after_kill.items() if r[2] is None and not r[6].startswith("unparsed")}
        assert failed, "every LLM call of round 1 finished before the kill: nothing was tested"
        for _item, rnd, _label, probs, _method, _phash, error in failed.values():
            assert rnd == 1 and probs is None and "connection failed" in error, error
        assert all(after_kill[i] == r for i, r in committed.items())  # nothing committed before the kill is lost
        metrics1 = json.loads(rows(db, "SELECT metrics FROM rounds WHERE round=1")[0][0])
        assert metrics1["llm_failed"] == len(failed)

        server = Server(served_model, server.port, tmp_path / "serve-again.log").start()
        result = Run(cfg).execute()
    finally:
        server.kill()

    assert [m["round"] for m in result.metrics] == [1, 2]
    assert {r[0] for r in rows(db, "SELECT state FROM rounds")} == {"evaluated"}
    final = llm_annotations(db)
    assert all(final[i] == r for i, r in after_kill.items())  # every row of the first attempt, unchanged
    assert server.chat_requests() > 0 and any(r[1] == 2 and r[2] is not None for r in final.values())
    # Each item labeled at most once; the totals are the store's counts: nothing counted twice.
    labeled = rows(db, "SELECT source, item_id FROM annotations WHERE label IS NOT NULL")
    assert len({i for _, i in labeled}) == len(labeled)
    last = result.metrics[-1]
    assert last["human_total"] == sum(s == "human" for s, _ in labeled) == human
    assert last["llm_total"] == sum(s == "llm" for s, _ in labeled) == result.budget_used["llm"]
    # What round 1 could not buy was bought in round 2: the LLM budget is spent, less round 2's own misses.
    assert last["llm_failed"] == 0
    assert last["llm_total"] == total - human - last["llm_unparsed"]
