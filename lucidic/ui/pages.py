"""The pages: sessions, a session, an event or step, the dashboard, sign-in.

Every page is rendered on the server from lucidic.reading; htmx (vendored)
swaps in fragments for the live parts: the open list and an open session
poll a small fragment every two seconds, and the server answers 204 (nothing
to swap) unless the database says something changed. The change is read
from the database, so it shows whichever process or server replica wrote it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import parse_qs, quote, urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from ..limits import MAX_ID_LENGTH
from ..reading import MAX_LIMIT, SORTS, STATUSES, InvalidQueryError, Reader, SessionQuery
from ..reading.retention import RECENT_WRITES, delete_sessions
from ..store import Store
from . import auth
from .render import render

router = APIRouter(include_in_schema=False)

#: Rows of a session's tree sent at once; more load as the reader scrolls.
TREE_WINDOW = 300
PAGE_SIZE = 50
POLL_SECONDS = 2
RANGES = {"1h": 3600, "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400, "90d": 90 * 86400}
_COLUMNS = [("name", "Session", "name"), ("status", "Status", None), ("agent", "Agent", None),
            ("started", "Started", "started"), ("duration", "Duration", "duration"),
            ("steps", "Steps", None), ("events", "Events", "events"),
            ("errors", "Errors", "errors"), ("tokens", "Tokens", "tokens"),
            ("cost", "Cost", "cost")]


class SignInRequiredError(Exception):
    """The server's pages need a sign-in; see install()."""


def _store(request: Request) -> Iterator[Store]:
    with request.app.state.pool.store() as store:
        yield store


Db = Annotated[Store, Depends(_store)]


def viewer(request: Request, db: Db) -> auth.Viewer:
    if not request.app.state.ui_signin:
        return auth.Viewer(project=None, signed_in=False)
    project = auth.signed_in_project(db, request.cookies.get(auth.COOKIE))
    if project is None:
        raise SignInRequiredError
    return auth.Viewer(project=project, signed_in=True)


Who = Annotated[auth.Viewer, Depends(viewer)]


def url_id(value: str) -> str:
    return quote(value, safe="")


def _page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    context.setdefault("viewer", None)
    html = render(template, request=request, url_id=url_id, signin=request.app.state.ui_signin,
                  store_name=request.app.state.ui_store_name,
                  poll_seconds=POLL_SECONDS, **context)
    return HTMLResponse(html, status_code=status, headers={"cache-control": "no-store"})


def _fragment(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


# -- the sessions list ------------------------------------------------------------------

@dataclass
class ListForm:
    """The sessions list's query string, checked."""

    status: str | None
    agent: str | None
    range: str
    q: str | None
    sort: str
    order: str
    cursor: str | None
    mass_sim: str | None = None    # the runs of one mass simulation

    @classmethod
    def parse(cls, request: Request) -> ListForm:
        p = request.query_params

        def text(name: str, limit: int = 500) -> str | None:
            value = (p.get(name) or "").strip()
            return value[:limit] or None

        status = text("status")
        sort = text("sort") or "started"
        order = text("order") or "desc"
        chosen = text("range") or "all"
        return cls(status=status if status in STATUSES else None, agent=text("agent", 256),
                   range=chosen if chosen in RANGES else "all",
                   q=text("q"), sort=sort if sort in SORTS else "started",
                   order=order if order in ("asc", "desc") else "desc",
                   cursor=text("cursor", 2048), mass_sim=text("mass_sim", 256))

    def query(self, project: str | None, now: float) -> SessionQuery:
        return SessionQuery(project=project, status=self.status, agent_id=self.agent,
                            started_after=now - RANGES[self.range] if self.range in RANGES
                            else None, search=self.q, sort=self.sort,
                            descending=self.order == "desc", limit=PAGE_SIZE,
                            cursor=self.cursor, mass_sim_id=self.mass_sim)

    def link(self, **changes: Any) -> str:
        values = {"status": self.status, "agent": self.agent,
                  "range": None if self.range == "all" else self.range, "q": self.q,
                  "sort": None if self.sort == "started" else self.sort,
                  "order": None if self.order == "desc" else self.order, "cursor": self.cursor,
                  "mass_sim": self.mass_sim}
        values.update(changes)
        kept = {k: v for k, v in values.items() if v is not None}
        return "/" + ("?" + urlencode(kept) if kept else "")

    def sort_link(self, key: str) -> str:
        if self.sort == key:
            return self.link(order="asc" if self.order == "desc" else None, cursor=None)
        return self.link(sort=None if key == "started" else key, order=None, cursor=None)


def _list_context(reader: Reader, form: ListForm, who: auth.Viewer) -> dict[str, Any]:
    now = time.time()
    try:
        page = reader.sessions(form.query(who.project, now))
        problem = None
    except InvalidQueryError as exc:
        form.cursor = None
        page = reader.sessions(form.query(who.project, now))
        problem = str(exc)
    fingerprint = hashlib.sha256(json.dumps(
        [page.sessions, page.next_cursor, page.total], sort_keys=True, default=str
    ).encode()).hexdigest()[:16]
    query = form.link().partition("?")[2]
    live_url = "/ui/sessions?" + (query + "&" if query else "") + urlencode(
        {"version": fingerprint})
    return {"page": page, "form": form, "now": now, "version": fingerprint,
            "problem": problem, "columns": _COLUMNS, "statuses": STATUSES, "ranges": RANGES,
            "live_url": live_url}


@router.get("/", response_class=HTMLResponse)
def sessions_page(request: Request, db: Db, who: Who) -> HTMLResponse:
    reader = Reader(db)
    context = _list_context(reader, ListForm.parse(request), who)
    return _page(request, "sessions.html", viewer=who, agents=reader.agents(who.project),
                 **context)


@router.get("/ui/sessions", response_class=HTMLResponse)
def sessions_fragment(request: Request, db: Db, who: Who) -> Response:
    """The list's table alone, for live updates: 204 when nothing changed."""
    context = _list_context(Reader(db), ListForm.parse(request), who)
    if request.query_params.get("version") == context["version"]:
        return Response(status_code=204)
    return _page(request, "_sessions_table.html", viewer=who, **context)


# -- a session ------------------------------------------------------------------------------

def _session_or_404(request: Request, reader: Reader, session_id: str,
                    who: auth.Viewer) -> dict[str, Any] | HTMLResponse:
    known = 0 < len(session_id) <= MAX_ID_LENGTH
    session = reader.session(session_id, who.project) if known else None
    if session is None:
        if known and reader.store.deleted_among([session_id], who.project):
            return _page(request, "missing.html", status=410, viewer=who, what="session",
                         ident=session_id, deleted=True)
        return _page(request, "missing.html", status=404, viewer=who, what="session",
                     ident=session_id)
    return session


def _session_context(reader: Reader, session: dict[str, Any], loaded: int) -> dict[str, Any]:
    now = time.time()
    session = reader.judgement(session, session.get("project"))
    outline = reader.outline(session, 0, max(loaded, TREE_WINDOW), now=now)
    colours = {w["key"]: w["index"] % 8 for w in outline.writers}
    return {"session": session, "outline": outline, "now": now, "colours": colours,
            "version": reader.session_version(session["id"])}


@router.get("/sessions/{session_id:path}/outline", response_class=HTMLResponse)
def outline_rows(request: Request, session_id: str, db: Db, who: Who,
                 offset: int = 0) -> HTMLResponse:
    """More rows of the tree (the window after ``offset``)."""
    reader = Reader(db)
    session = _session_or_404(request, reader, session_id, who)
    if isinstance(session, HTMLResponse):
        return session
    outline = reader.outline(session, max(0, offset), TREE_WINDOW, now=time.time())
    colours = {w["key"]: w["index"] % 8 for w in outline.writers}
    return _page(request, "_outline_rows.html", viewer=who, session=session, outline=outline,
                 colours=colours)


@router.get("/sessions/{session_id:path}/live", response_class=HTMLResponse)
def session_live(request: Request, session_id: str, db: Db, who: Who,
                 version: str = "", loaded: int = TREE_WINDOW) -> Response:
    """The session's changing parts (totals, writers, tree), or 204 if the
    database holds nothing new since ``version``."""
    reader = Reader(db)
    if reader.session(session_id, who.project) is None:
        if 0 < len(session_id) <= MAX_ID_LENGTH and db.deleted_among([session_id], who.project):
            # The page says so, and stops polling.
            return _page(request, "_session_deleted.html", viewer=who, session_id=session_id)
        return Response(status_code=204)
    if reader.session_version(session_id) == version:
        return Response(status_code=204)
    session = reader.session(session_id, who.project)
    assert session is not None
    context = _session_context(reader, session, min(max(loaded, 0), 50_000))
    return _page(request, "_session_live.html", viewer=who, **context)


@router.get("/sessions/{session_id:path}", response_class=HTMLResponse)
def session_page(request: Request, session_id: str, db: Db, who: Who,
                 delete: str = "") -> HTMLResponse:
    reader = Reader(db)
    session = _session_or_404(request, reader, session_id, who)
    if isinstance(session, HTMLResponse):
        return session
    return _page(request, "session.html", viewer=who, still_written=delete == "running",
                 recent_minutes=f"{RECENT_WRITES / 60:g}",
                 **_session_context(reader, session, 0))


@router.post("/sessions/{session_id:path}/delete")
async def delete_session(request: Request, session_id: str, db: Db, who: Who) -> Response:
    """`lucidic ui`'s delete button (the server's pages have none: its API
    deletes, with a key). A session still being written to is deleted only
    when the form says force, which the page asks for apart."""
    if request.app.state.ui_signin or not 0 < len(session_id) <= MAX_ID_LENGTH:
        return _page(request, "missing.html", status=404, viewer=who, what="page",
                     ident=request.url.path)
    form = parse_qs((await request.body())[:1024].decode("utf-8", "replace"))
    # In a worker thread, as every sync route's work: a deletion waits for
    # the store's write lock, and the event loop serves the other pages meanwhile.
    done = await run_in_threadpool(delete_sessions, db, [session_id], project=who.project,
                                   force=(form.get("force") or [""])[0] == "1")
    page = f"/sessions/{quote(session_id, safe='')}"
    if done.running:
        return RedirectResponse(page + "?delete=running", status_code=303)
    # (deleted, or gone already: its page says it was deleted, or never was)
    return RedirectResponse(page, status_code=303)


# -- one event or step -------------------------------------------------------------------

def _record_page(request: Request, kind: str, record_id: str, db: Store,
                 who: auth.Viewer) -> HTMLResponse:
    """An event's or step's details: a fragment for the session page's
    detail pane (htmx), else a page of its own."""
    reader = Reader(db)
    find = reader.event if kind == "event" else reader.step
    record = find(record_id, who.project) if 0 < len(record_id) <= MAX_ID_LENGTH else None
    if record is None:
        return _page(request, "missing.html", status=404, viewer=who, what=kind,
                     ident=record_id)
    template = f"_{kind}.html" if _fragment(request) else "record.html"
    return _page(request, template, viewer=who, kind=kind,
                 event=record if kind == "event" else None,
                 step=record if kind == "step" else None,
                 session=reader.session(record["session_id"], who.project))


@router.get("/events/{event_id:path}", response_class=HTMLResponse)
def event_page(request: Request, event_id: str, db: Db, who: Who) -> HTMLResponse:
    return _record_page(request, "event", event_id, db, who)


@router.get("/steps/{step_id:path}", response_class=HTMLResponse)
def step_page(request: Request, step_id: str, db: Db, who: Who) -> HTMLResponse:
    return _record_page(request, "step", step_id, db, who)


# -- the dashboard ------------------------------------------------------------------------

@router.get("/dashboard", response_class=HTMLResponse)
def dashboard_page(request: Request, db: Db, who: Who) -> HTMLResponse:
    from .charts import dashboard_charts

    chosen = request.query_params.get("range") or "7d"
    chosen = chosen if chosen in RANGES and chosen != "1h" else "7d"
    until = time.time()
    board = Reader(db).dashboard(who.project, until - RANGES[chosen], until)
    return _page(request, "dashboard.html", viewer=who, board=board, chosen=chosen,
                 ranges=[r for r in RANGES if r != "1h"], charts=dashboard_charts(board))


# -- sign-in (lucidic server only) ---------------------------------------------------------

def _next_path(value: str | None) -> str:
    """Where to go after signing in: a path on this site only."""
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/"


@router.get("/sign-in", response_class=HTMLResponse)
def sign_in_page(request: Request) -> Response:
    if not request.app.state.ui_signin:
        return RedirectResponse("/", status_code=303)
    return _page(request, "signin.html", next=_next_path(request.query_params.get("next")))


@router.post("/sign-in", response_class=HTMLResponse)
async def sign_in(request: Request) -> Response:
    if not request.app.state.ui_signin:
        return RedirectResponse("/", status_code=303)
    body = (await request.body())[:8192].decode("utf-8", "replace")
    form = parse_qs(body)
    key = (form.get("api_key") or [""])[0]
    target = _next_path((form.get("next") or [""])[0])
    with request.app.state.pool.store() as db:
        result = auth.sign_in(db, key)
    if result is None:
        return _page(request, "signin.html", status=401, next=target,
                     error="That API key is not valid: it is unknown or was revoked. Make "
                           "one with `lucidic keys create --project NAME`.")
    token, _ = result
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(auth.COOKIE, token, max_age=auth.SIGNIN_SECONDS, httponly=True,
                        samesite="strict", secure=request.url.scheme == "https", path="/")
    return response


@router.post("/sign-out")
def sign_out(request: Request, db: Db) -> Response:
    auth.sign_out(db, request.cookies.get(auth.COOKIE))
    response = RedirectResponse("/sign-in", status_code=303)
    response.delete_cookie(auth.COOKIE, path="/", httponly=True, samesite="strict")
    return response


@router.get("/docs", response_class=HTMLResponse)
def api_docs(request: Request) -> HTMLResponse:
    """The API reference (Swagger UI, served from this package: works offline)."""
    if not request.app.state.ui_signin:
        return _page(request, "missing.html", status=404, what="page", ident="/docs")
    return HTMLResponse(render("docs.html", title=request.app.title,
                               spec_url=request.app.openapi_url or "/openapi.json"))


def install(app: Any) -> None:
    """Add the pages, their static files and the sign-in redirect to ``app``."""
    from fastapi.staticfiles import StaticFiles

    from .assets import PREFIX, STATIC_DIR

    async def needs_sign_in(request: Request, exc: Exception) -> Response:
        target = "/sign-in?" + urlencode({"next": request.url.path})
        if _fragment(request):
            # htmx follows HX-Redirect with a full page load.
            return Response(status_code=401, headers={"HX-Redirect": target})
        return RedirectResponse(target, status_code=303)

    from .experiments import router as experiments_router

    app.add_exception_handler(SignInRequiredError, needs_sign_in)
    app.mount(PREFIX, StaticFiles(directory=STATIC_DIR), name="static")
    app.include_router(router)
    app.include_router(experiments_router)
    if not hasattr(app.state, "ui_signin"):
        app.state.ui_signin = True
    if not hasattr(app.state, "ui_store_name"):
        app.state.ui_store_name = None  # (the header names the project signed in to)


__all__ = ["MAX_LIMIT", "install", "router"]
