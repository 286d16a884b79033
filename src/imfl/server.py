"""``imfl serve``: the annotation web page and its JSON API (FastAPI), and the worker that carries the run on
whenever people finish a round's batch.

Every ``/api`` request needs the access token, as ``Authorization: Bearer <token>``; without it: 401. The
page asks for the token and a name once and keeps them in the browser tab's session storage. Item text is
only ever put into the page as text (``textContent``), never as HTML.

API (JSON): ``GET /api/status``; ``GET /api/next?annotator=NAME`` (the item to label, held for that person
for a while, or why there is none); ``POST /api/label {annotator, item_id, label}``; ``POST /api/skip
{annotator, item_id}``; ``POST /api/undo {annotator}``. A label outside the label set: 422; an item that is
not pending in the waiting round, or held by someone else: 409; nothing is written in either case.

Hardening, since the port may be reachable by others: API request bodies over 64 KiB get 413 before they are read
(a label request is well under 1 KiB); a request the API cannot use gets one short line naming the field and why,
never the input back; every response forbids framing and MIME sniffing and sends no referrer, and the page runs
under a Content-Security-Policy that lets only its own script and style (by a nonce new on each response) run.
"""

# No `from __future__ import annotations` here: FastAPI reads the endpoints' annotations at run time.
import secrets
import threading
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field

from imfl.people import Labeling, Name, Rejected

PAGE = resources.files("imfl").joinpath("web/index.html")
MAX_BODY = 64 * 1024  # bytes of a request body
ECHO = 80  # characters of a rejected value quoted back
SECURITY_HEADERS = {"X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
API_CSP = "default-src 'none'; frame-ancestors 'none'"  # JSON answers load nothing


def page_csp(nonce: str) -> str:
    """The page may run its own script and style (marked with ``nonce``) and call its own API, nothing else."""
    return (f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; connect-src 'self'; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def _problem(error: dict) -> str:
    """One validation error as ``field: why (got value)``, the value cut short: it may be the whole request."""
    kind, loc = error["type"], error["loc"]
    if kind == "json_invalid":
        return f"body: not valid JSON at character {loc[1]} ({error['ctx']['error']})"
    where = ".".join(str(part) for part in loc[1:]) or loc[0]
    if kind == "missing":
        return f"{where}: {error['msg']}"
    given = repr(error["input"])
    return f"{where}: {error['msg']} (got {given if len(given) <= ECHO else given[:ECHO - 1] + '…'})"


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

    @app.exception_handler(RequestValidationError)
    def invalid(_, exc: RequestValidationError):
        return JSONResponse({"detail": "; ".join(_problem(e) for e in exc.errors())}, status_code=422)

    @app.middleware("http")
    async def security_headers(request, call_next):
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", API_CSP)
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.get("/")
    def page() -> HTMLResponse:
        nonce = secrets.token_urlsafe(18)
        return HTMLResponse(PAGE.read_text(encoding="utf-8").replace("CSP-NONCE", nonce),
                            headers={"Content-Security-Policy": page_csp(nonce)})

    # The body limit is set here, not on the app: for a body announced as too large Starlette sends its own 413,
    # which then still passes through security_headers.
    api = APIRouter(prefix="/api", dependencies=[Depends(authorized)], max_body_size=MAX_BODY)

    @api.get("/status")
    def status() -> dict:
        return {**labeling.status(), "labels": list(labeling.labels)}

    @api.get("/next")
    def next_item(annotator: Annotated[Name, Query()]) -> dict:
        return labeling.next(annotator)

    @api.post("/label")
    def label(body: LabelIn) -> dict:
        return labeling.label(body.annotator, body.item_id, body.label)

    @api.post("/skip")
    def skip(body: SkipIn) -> dict:
        return labeling.skip(body.annotator, body.item_id)

    @api.post("/undo")
    def undo(body: UndoIn) -> dict:
        return labeling.undo(body.annotator)

    app.include_router(api)
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
        self._stopping = threading.Event()  # not `_stop`: that is a method of Thread, which join() calls

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        try:
            while not self._stopping.is_set():
                result = self.run_loop()
                if result.waiting_round is None:
                    self.on_event(f"run finished: {result.budget_used['human']} human and {result.budget_used['llm']} LLM labels")
                    break
                self.on_event(f"round {result.waiting_round} waits for {result.pending} human labels")
                while not self._stopping.is_set():
                    status = self.labeling.status()
                    if status["state"] == "labeling" and status["done"] >= status["total"]:
                        break
                    self._stopping.wait(self.poll_seconds)  # a stop() ends the wait at once
        except Exception as exc:  # reported on the console; the labels already given are in the store
            self.error = f"{type(exc).__name__}: {exc}"
            self.on_event(f"the loop stopped: {self.error}")
        finally:
            self.finished.set()


def new_token() -> str:
    return secrets.token_urlsafe(18)
