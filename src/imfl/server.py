"""``imfl serve``: the annotation web page and its JSON API (FastAPI), and the worker that carries the run on
whenever people finish a round's batch.

Every ``/api`` request needs an access token, as ``Authorization: Bearer <token>``; without a valid one: 401. Two
modes (``imfl.people``):

* **Personal tokens** (as soon as anyone is registered with ``imfl people add``): each token belongs to one person
  with a role. The person recorded with a label, a skip, a hold or an undo is the token's; a request naming anyone
  else is refused (403), so nobody can act as someone else. A removed person's token gets 401 from the next request on. The shared
  token is refused (401): it names nobody, and whoever holds it would otherwise keep access nobody can take away.
* **Shared token** (nobody registered: one expert): the token ``imfl serve`` printed or read from ``$IMFL_TOKEN``;
  the request names the annotator, as the page asks. It has the annotator role only.

Roles (``requires``): annotators label; admins may also use the admin endpoints, and an annotator calling one gets
403. The page keeps the token (and, with the shared token, the name) in the browser tab's session storage, asks
``GET /api/me`` whose token it is, and puts every text into the page as text (``textContent``), never as HTML, with
one exception: the guidelines, which the server renders from Markdown with raw HTML turned off (``render_guidelines``:
any ``<script>`` or ``<img onerror=...>`` in the file shows as text, links may only be http, https or mailto, and no
image is loaded), and which the page's Content-Security-Policy would keep from running script even so.

API (JSON). Annotators: ``GET /api/me`` (name, role and kind of the token); ``GET /api/guidelines`` (what each label
means, ``data.label_descriptions``, and the ``human.guidelines`` file as HTML); ``GET /api/status``; ``GET /api/next``
(the item to label, held for that person for a while, or why there is none); ``POST /api/label {item_id, label}``;
``POST /api/skip {item_id}``; ``POST /api/undo {}``; ``GET /api/review/next`` (while a round waits: the LLM label to
review now, most doubted by the fidelity policy first, held for that person for a while, or why there is none);
``POST /api/review {annotation_id or item_id, verdict: confirm | correct, label}`` (a correction becomes the reviewer's
human label of the item, at ``human.review_cost``; ``imfl.people``) (with the shared token each also takes the
person's name: ``?annotator=NAME`` or ``"annotator": NAME``). Admins: ``GET /api/people``, ``POST /api/people {name, role}`` (201,
with the new person's token, shown this once), ``DELETE /api/people/NAME``, ``GET /api/export`` (every label with
its provenance), ``GET /api/dashboard`` (where the run stands, read from its store: rounds and their states, the items
still waiting, the learning curve, labels and cost per source, the LLM's measured accuracy, each person's throughput;
``imfl.dashboard``; the page draws it with its own SVG code, for admins only), ``GET /api/adjudication/next`` (with
``human.overlap``: the oldest disagreement of the waiting round, the item with both people's answers, or ``state:
settled``) and ``POST /api/adjudicate {item_id, label}`` (the admin's settled label, recorded with their name and
the time; the student trains on it, both answers stay; a label outside the set: 422, an item not in dispute: 409;
an annotator: 403). A label outside the label set: 422; an item that is not pending in the waiting round, or held
by someone else, or labeled by that person already (an overlap item's second answer comes from someone else): 409;
likewise for reviews (a verdict or label that does not fit: 422; an LLM label reviewed already, not open for review
or held by another reviewer, or no round waiting: 409; an annotation that is no LLM label: 404); nothing is written
on any refused request.

Hardening, since the port may be reachable by others: API request bodies over 64 KiB get 413 before they are read
(a label request is well under 1 KiB); a request the API cannot use gets one short line naming the field and why,
never the input back; every response forbids framing and MIME sniffing and sends no referrer, and the page runs
under a Content-Security-Policy that lets only its own script and style (by a nonce new on each response) run.
Tokens are never logged (uvicorn runs without its access log) and personal ones are stored only as hashes.
"""

# No `from __future__ import annotations` here: FastAPI reads the endpoints' annotations at run time.
import re
import secrets
import threading
from dataclasses import dataclass
from importlib import resources
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Path, Query
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field

from imfl.dashboard import dashboard
from imfl.errors import Conflict, ImflError, InvalidLabel, NotFound, Rejected
from imfl.people import Labeling, Name, People, has_role

PAGE = resources.files("imfl").joinpath("web/index.html")
MAX_BODY = 64 * 1024  # bytes of a request body
ECHO = 80  # characters of a rejected value quoted back
# What each kind of refusal (imfl.errors.Rejected) answers; HTTP lives here only.
REJECTED_STATUS: dict[type[Rejected], int] = {NotFound: 404, Conflict: 409, InvalidLabel: 422}
SECURITY_HEADERS = {"X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
API_CSP = "default-src 'none'; frame-ancestors 'none'"  # JSON answers load nothing


def page_csp(nonce: str) -> str:
    """The page may run its own script and style (marked with ``nonce``) and call its own API, nothing else."""
    return (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


SAFE_LINK = re.compile(r"(https?|mailto):", re.IGNORECASE)  # the only link targets the guidelines may have


def render_guidelines(markdown: str) -> str:
    """Guidelines in Markdown as HTML that is safe to put into the page: CommonMark (markdown-it-py) with raw HTML
    turned off, so tags in the file are shown as text; links only to http, https and mailto (others stay text),
    opening in a new tab without a referrer; images left as links (the page loads nothing from elsewhere)."""
    from markdown_it import MarkdownIt

    class Safe(MarkdownIt):
        def validateLink(self, url: str) -> bool:  # markdown-it-py's name
            return SAFE_LINK.match(url.strip()) is not None

    md = Safe("commonmark", {"html": False}).disable("image")

    def link_open(renderer, tokens, idx, options, env) -> str:
        tokens[idx].attrSet("target", "_blank")
        tokens[idx].attrSet("rel", "noopener noreferrer")
        return renderer.renderToken(tokens, idx, options, env)

    md.add_render_rule("link_open", link_open)
    return md.render(markdown)


def _problem(error: dict) -> str:
    """One validation error as ``field: why (got value)``, the value cut short: it may be the whole request."""
    kind, loc = error["type"], error["loc"]
    if kind == "json_invalid":
        return f"body: not valid JSON at character {loc[1]} ({error['ctx']['error']})"
    where = ".".join(str(part) for part in loc[1:]) or loc[0]
    if kind == "missing":
        return f"{where}: {error['msg']}"
    given = repr(error["input"])
    return f"{where}: {error['msg']} (got {given if len(given) <= ECHO else given[: ECHO - 1] + '…'})"


ItemId = Annotated[str, Field(min_length=1, max_length=500)]


class LabelIn(BaseModel):
    annotator: Name | None = None  # with the shared token: who labels; with a personal token it may only name the token's person
    item_id: ItemId
    label: Annotated[str, Field(max_length=500)]


class SkipIn(BaseModel):
    annotator: Name | None = None
    item_id: ItemId


class UndoIn(BaseModel):
    annotator: Name | None = None


class ReviewIn(BaseModel):
    annotator: Name | None = None  # as for labels: only with the shared token
    annotation_id: Annotated[int, Field(ge=1)] | None = None  # the LLM label reviewed (GET /api/review/next hands it out)
    item_id: ItemId | None = None  # or the item whose newest LLM label is reviewed
    verdict: Literal["confirm", "correct"]
    label: Annotated[str, Field(max_length=500)] | None = None  # the right label: needed to correct


class AdjudicateIn(BaseModel):
    item_id: ItemId
    label: Annotated[str, Field(max_length=500)]


class PersonIn(BaseModel):
    name: Name
    role: Literal["annotator", "admin"] = "annotator"


@dataclass(frozen=True)
class Caller:
    """Who sent a request: a registered person (``name`` set), or the holder of the shared token (``name`` None)."""

    name: str | None
    role: str

    @property
    def token(self) -> str:
        return "shared" if self.name is None else "personal"


def _unauthorized(why: str) -> HTTPException:
    return HTTPException(401, why, headers={"WWW-Authenticate": "Bearer"})


def create_app(labeling: Labeling, token: str) -> FastAPI:
    """The page and its API for the run of ``labeling``; ``token`` is the shared token (used only while nobody is
    registered: see the module's notes)."""
    app = FastAPI(title="imfl annotation", docs_url=None, redoc_url=None, openapi_url=None)
    people = People(labeling.run_dir)
    guidelines = {"descriptions": labeling.descriptions, "html": render_guidelines(labeling.guidelines)}  # rendered once

    def authenticate(authorization: Annotated[str | None, Header()] = None) -> Caller:
        """The caller of an /api request, from its token (looked up afresh on every request, so adding and removing
        people take effect at once, even from another process)."""
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise _unauthorized("missing access token: send Authorization: Bearer <token>")
        registered, person = people.identify(given)
        if person is not None:
            return Caller(person.name, person.role)
        shared = secrets.compare_digest(given.encode(), token.encode())
        if shared and not registered:
            return Caller(None, "annotator")
        if shared:
            raise _unauthorized(
                "people are registered for this project, so the shared token is refused: "
                "sign in with your personal token (imfl people add)"
            )
        raise _unauthorized("wrong access token (or its person was removed)")

    def requires(role: str):
        """A dependency giving the caller if their role allows what ``role`` may do (admins may do everything
        annotators may), else 403. Endpoints state their role with it: ``Depends(requires("admin"))``."""

        def check(caller: Annotated[Caller, Depends(authenticate)]) -> Caller:
            if not has_role(caller.role, role):
                who = f"{caller.name} is" if caller.name else "the shared token is"
                raise HTTPException(403, f"only {role}s may do this; {who} {caller.role}")
            return caller

        return check

    Annotator = Annotated[Caller, Depends(requires("annotator"))]
    Admin = Annotated[Caller, Depends(requires("admin"))]

    def acting(caller: Caller, sent: str | None) -> str:
        """The name recorded for what ``caller`` does: a personal token's person (a request that names someone else
        is refused, 403: nobody acts for another); with the shared token, the name the request carries."""
        if caller.name is not None:
            if sent is not None and sent != caller.name:
                raise HTTPException(403, f"this token belongs to {caller.name!r}: it cannot act as {sent!r}")
            return caller.name
        if sent is None:
            raise HTTPException(422, "annotator: Field required (with the shared token, say who is labeling)")
        return sent

    @app.exception_handler(Rejected)
    def rejected(_, exc: Rejected):
        return JSONResponse({"detail": str(exc)}, status_code=REJECTED_STATUS.get(type(exc), 409))

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
        return HTMLResponse(
            PAGE.read_text(encoding="utf-8").replace("CSP-NONCE", nonce), headers={"Content-Security-Policy": page_csp(nonce)}
        )

    # The body limit is set here, not on the app: for a body announced as too large Starlette sends its own 413,
    # which then still passes through security_headers. Every /api request is authenticated here (401 before
    # anything else); each endpoint then states the role it needs.
    api = APIRouter(prefix="/api", dependencies=[Depends(authenticate)], max_body_size=MAX_BODY)

    @api.get("/me")
    def me(caller: Annotator) -> dict:
        return {"name": caller.name, "role": caller.role, "token": caller.token}

    @api.get("/guidelines")
    def guide(caller: Annotator) -> dict:
        return guidelines

    @api.get("/status")
    def status(caller: Annotator) -> dict:
        return {**labeling.status(), "labels": list(labeling.labels)}

    @api.get("/next")
    def next_item(caller: Annotator, annotator: Annotated[Name | None, Query()] = None) -> dict:
        return labeling.next(acting(caller, annotator))

    @api.post("/label")
    def label(caller: Annotator, body: LabelIn) -> dict:
        return labeling.label(acting(caller, body.annotator), body.item_id, body.label)

    @api.post("/skip")
    def skip(caller: Annotator, body: SkipIn) -> dict:
        return labeling.skip(acting(caller, body.annotator), body.item_id)

    @api.post("/undo")
    def undo(caller: Annotator, body: UndoIn) -> dict:
        return labeling.undo(acting(caller, body.annotator))

    @api.get("/review/next")
    def review_next(caller: Annotator, annotator: Annotated[Name | None, Query()] = None) -> dict:
        return labeling.review_next(acting(caller, annotator))

    @api.post("/review")
    def review(caller: Annotator, body: ReviewIn) -> dict:
        who = acting(caller, body.annotator)
        if (body.annotation_id is None) == (body.item_id is None):
            raise HTTPException(422, "annotation_id or item_id: give one of them, the LLM label to review")
        return labeling.review(who, body.verdict, body.label, annotation_id=body.annotation_id, item_id=body.item_id)

    @api.get("/people")
    def list_people(caller: Admin) -> dict:
        return {"people": people.list()}

    @api.post("/people", status_code=201)
    def add_person(caller: Admin, body: PersonIn) -> dict:
        new_token, again = people.add(body.name, body.role)
        return {"name": body.name, "role": body.role, "token": new_token, "added_again": again}

    @api.delete("/people/{name}")
    def remove_person(caller: Admin, name: Annotated[Name, Path()]) -> dict:
        if name == caller.name:  # an admin locking themselves out by a click; the terminal can still do it
            raise HTTPException(409, "you cannot remove yourself here; another admin can, or imfl people remove")
        return {"name": name, "labels_kept": people.remove(name)}

    @api.get("/export")
    def export(caller: Admin) -> dict:
        return {"labels": labeling.export_rows()}

    @api.get("/adjudication/next")
    def adjudication_next(caller: Admin) -> dict:
        return labeling.adjudication_next()

    @api.post("/adjudicate")
    def adjudicate(caller: Admin, body: AdjudicateIn) -> dict:
        if caller.name is None:  # admins have personal tokens; the shared one is an annotator's
            raise HTTPException(403, "adjudication needs an admin's personal token")
        return labeling.adjudicate(caller.name, body.item_id, body.label)

    @api.get("/dashboard")
    def dash(caller: Admin) -> dict:
        try:
            return dashboard(labeling.run_dir)
        except ImflError as exc:  # a store this imfl cannot read: one line, as elsewhere
            raise HTTPException(500, str(exc)) from None

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
