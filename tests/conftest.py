"""Shared fixtures: the real datasets in ../shared/data (or $IMFL_SHARED_DATA), small slices of them
written to temporary files, and a per-session cache so models are converted/embedded once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("IMFL_SHARED_DATA", REPO.parent / "shared" / "data")).resolve()


def pytest_configure(config):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # Two test processes share the two cores: torch at one thread each (and in the runs they start), since a
        # two-thread torch process beside another busy one spends most of its time waiting at OpenMP barriers.
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    if not SHARED_DATA.is_dir():
        raise pytest.UsageError(f"the shared datasets are not at {SHARED_DATA}; set IMFL_SHARED_DATA to the shared data folder")


@contextmanager
def serve_app(app) -> Iterator[str]:
    """An ASGI app on a real uvicorn server in a thread, on a socket of 127.0.0.1 bound before it starts (no port
    race); yields its URL and stops it afterwards."""
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
    sock = config.bind_socket()
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive(), "the uvicorn server stopped before it started (see its log above)"
        assert time.monotonic() < deadline, "the uvicorn server did not start within 60 s"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
    assert not thread.is_alive(), "the uvicorn server did not stop within 30 s"


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def small_config(settings: dict, **over):
    """A validated run config from ``settings`` with overrides: ``section__key=value`` sets one key of a
    section, ``key=value`` a top-level key or a whole section."""
    from imfl.config import config_from_dict

    # The human-only student at a run's end is one more training per run: tests/test_export.py and test_engine.py
    # check it (they turn it on); elsewhere it would only add minutes to the suite.
    settings.setdefault("compare_human_only", False)
    for key, value in over.items():
        section, _, leaf = key.partition("__")
        if leaf:
            settings.setdefault(section, {})[leaf] = value
        else:
            settings[section] = value
    return config_from_dict(settings)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return SHARED_DATA


@pytest.fixture
def tiny_data(tmp_path) -> dict[str, Path]:
    """A made-up pool (12 items, 4 per label) and test file (6 items) in the shared format, for the quick tests that
    need data files but no real sentences: nothing is read from the shared datasets."""
    d = tmp_path / "tiny-data"
    d.mkdir()
    labels = ("neutral", "positive", "negative")
    pool = [{"id": f"p{i}", "text": f"pool sentence number {i}", "label": labels[i % 3]} for i in range(12)]
    test = [{"id": f"t{i}", "text": f"held-out sentence number {i}", "label": labels[i % 3]} for i in range(6)]
    return {"pool": write_jsonl(d / "pool.jsonl", pool), "test": write_jsonl(d / "test.jsonl", test)}


@pytest.fixture(scope="session")
def fpb_rows() -> dict[str, list[dict]]:
    return {"pool": read_jsonl(SHARED_DATA / "fpb" / "pool.jsonl"), "test": read_jsonl(SHARED_DATA / "fpb" / "test.jsonl")}


@pytest.fixture(scope="session")
def small_fpb(tmp_path_factory, fpb_rows) -> dict[str, Path]:
    """60 pool items (20 per label) and 30 test items from the real FPB files."""
    d = tmp_path_factory.mktemp("fpb-small")

    def take(rows, per_label):
        out, seen = [], {}
        for r in rows:
            if seen.get(r["label"], 0) < per_label:
                seen[r["label"]] = seen.get(r["label"], 0) + 1
                out.append(r)
        return out

    return {
        "pool": write_jsonl(d / "pool.jsonl", take(fpb_rows["pool"], 20)),
        "test": write_jsonl(d / "test.jsonl", take(fpb_rows["test"], 10)),
    }


@pytest.fixture(scope="session")
def imfl_cache(tmp_path_factory) -> Path:
    """One cache for the whole session, shared by the test processes (the LLM is converted and the pool embedded
    once), unless the developer points IMFL_CACHE elsewhere (e.g. to reuse a converted LLM between test runs)."""
    if os.environ.get("IMFL_CACHE"):
        return Path(os.environ["IMFL_CACHE"])
    base = tmp_path_factory.getbasetemp()
    cache = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "imfl-cache"
    cache.mkdir(exist_ok=True)
    return cache


def imfl(*args, env=None, timeout=900):
    """`python -m imfl ARGS` as a user runs it, in a 200-column terminal; ``env`` adds to this process's environment."""
    env = dict(os.environ, COLUMNS="200", **(env or {}))
    return subprocess.run([sys.executable, "-m", "imfl", *args], capture_output=True, text=True, timeout=timeout, env=env)


def cells(results: Path) -> dict[str, dict]:
    """The cell JSONs of an `imfl bench` results folder, by cell id."""
    return {
        json.loads(p.read_text())["cell"]["id"]: json.loads(p.read_text()) for p in sorted((results / "cells").glob("*.json"))
    }
