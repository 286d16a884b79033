"""``imfl serve``: the annotation web page and its JSON API (FastAPI), and the worker that carries the run on
whenever people finish a round's batch.

Every ``/api`` request needs the access token, as ``Authorization: Bearer <token>``; without it: 401. The
page asks for the token and a name once and keeps them in the browser tab's session storage. Item text is
only ever put into the page as text (``textContent``), never as HTML.

API (JSON): ``GET /api/status``; ``GET /api/next?annotator=NAME`` (the item to label, held for that person
for a while, or why there is none); ``POST /api/label {annotator, item_id, label}``; ``POST /api/skip
{annotator, item_id}``; ``POST /api/undo {annotator}``. A label outside the label set: 422; an item that is
not pending in the waiting round, or held by someone else: 409; nothing is written in either case.
"""

# No `from __future__ import annotations` here: FastAPI reads the endpoints' annotations at run time.
import secrets
import threading
import time
from importlib import resources
from typing import Annotated

from fastapi import Depends, FastAPI, Header, HTTPException, Query
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field

from imfl.people import Labeling, Rejected

PAGE = resources.files("imfl").joinpath("web/index.html")
NAME_PATTERN = r"^[\w .@-]+$"  # a person's name as recorded with their labels
Name = Annotated[str, Field(min_length=1, max_length=80, pattern=NAME_PATTERN)]
ItemId = Annotated[str, Field(min_length=1, max_length=500)]


class LabelIn(BaseModel):
    annotator: Name
    item_id: ItemId
    label: Annotated[str, Field(max_length=500)]


class SkipIn(BaseModel):
    annotator: Name
    item_id: ItemId


class UndoIn(BaseModel):
    annotator: Name


def create_app(labeling: Labeling, token: str) -> FastAPI:
    app = FastAPI(title="imfl annotation", docs_url=None, redoc_url=None, openapi_url=None)

    def authorized(authorization: Annotated[str | None, Header()] = None) -> None:
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, "missing or wrong access token", headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(Rejected)
    def rejected(_, exc: Rejected):
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.read_text(encoding="utf-8")

    auth = [Depends(authorized)]

    @app.get("/api/status", dependencies=auth)
    def status() -> dict:
        return {**labeling.status(), "labels": list(labeling.labels)}

    @app.get("/api/next", dependencies=auth)
    def next_item(annotator: Annotated[str, Query(min_length=1, max_length=80, pattern=NAME_PATTERN)]) -> dict:
        return labeling.next(annotator)

    @app.post("/api/label", dependencies=auth)
    def label(body: LabelIn) -> dict:
        return labeling.label(body.annotator, body.item_id, body.label)

    @app.post("/api/skip", dependencies=auth)
    def skip(body: SkipIn) -> dict:
        return labeling.skip(body.annotator, body.item_id)

    @app.post("/api/undo", dependencies=auth)
    def undo(body: UndoIn) -> dict:
        return labeling.undo(body.annotator)

    return app


class LoopWorker(threading.Thread):
    """Runs the loop in the background: once at start, then again each time the waiting round's human batch
    is complete, until the run is finished (or the loop fails: ``error`` says why)."""

    def __init__(self, run, labeling: Labeling, poll_seconds: float = 1.0, on_event=None):
        super().__init__(daemon=True, name="imfl-loop")
        self.run_loop = run  # a callable returning a RunResult
        self.labeling = labeling
        self.poll_seconds = poll_seconds
        self.on_event = on_event or (lambda message: None)
        self.error: str | None = None
        self.finished = threading.Event()
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        try:
            while not self._stop.is_set():
                result = self.run_loop()
                if result.waiting_round is None:
                    self.on_event(f"run finished: {result.budget_used['human']} human and {result.budget_used['llm']} LLM labels")
                    break
                self.on_event(f"round {result.waiting_round} waits for {result.pending} human labels")
                while not self._stop.is_set():
                    status = self.labeling.status()
                    if status["state"] == "labeling" and status["done"] >= status["total"]:
                        break
                    time.sleep(self.poll_seconds)
        except Exception as exc:  # reported on the console; the labels already given are in the store
            self.error = f"{type(exc).__name__}: {exc}"
            self.on_event(f"the loop stopped: {self.error}")
        finally:
            self.finished.set()


def new_token() -> str:
    return secrets.token_urlsafe(18)
