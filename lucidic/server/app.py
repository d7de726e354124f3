"""The ASGI app: authentication, ingest, and the read API."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal, Optional, TypeVar
from urllib.parse import urlsplit, urlunsplit

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .. import _config, _continuation
from ..limits import MAX_BODY_BYTES
from ..reading import MAX_LIMIT, SORTS, InvalidQueryError, Reader, SessionQuery
from ..reading.derived import Refresher
from ..reading.retention import RECENT_WRITES, Pruner, delete_sessions
from ..reading.search import MAX_QUERY_CHARS as MAX_SEARCH
from ..store import DeletedSessionError, Store
from ..ui.db import StorePool
from ..ui.pages import install as install_ui
from ..ui.security import SecurityMiddleware
from . import models
from .problems import PROBLEM, ApiError, BodyLimit, JSONOut, install_error_handlers

logger = logging.getLogger("lucidic.server")

#: Largest request body accepted, unless --max-body-mb says otherwise.
DEFAULT_MAX_BODY_BYTES = MAX_BODY_BYTES
DEFAULT_PORT = 8765


def default_database_url() -> str:
    """LUCIDIC_DATABASE_URL, else the embedded store's file."""
    return _config.env("LUCIDIC_DATABASE_URL") or f"sqlite:///{_config.store_path()}"


def redact_url(url: str) -> str:
    """The URL with any password hidden, for logs."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


_PROBLEMS: dict[int | str, dict[str, Any]] = {
    status: {"model": models.Problem, "description": text,
             "content": {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}}}
    for status, text in ((401, "missing, unknown or revoked API key"),
                         (404, "not found in this API key's project"),
                         (503, "the database is busy or unreachable (retry after "
                               "Retry-After), or failing on the server's side (retry later; "
                               "the server's log says why); nothing was written, unless the "
                               "connection was lost while committing, which the detail says: "
                               "a retry is safe either way, as every write is idempotent"))
}


router = APIRouter()


def project_key(request: Request) -> HTTPAuthorizationCredentials | None:
    """The project key from ``Authorization: Bearer KEY``, or from
    ``Authorization: Api-Key KEY`` (what the lucidicai client sends)."""
    return credentials_in(request.headers.get("Authorization", ""))


def credentials_in(authorization: str) -> HTTPAuthorizationCredentials | None:
    """The project key in an Authorization header's (or gRPC metadata's) value."""
    scheme, _, credentials = authorization.strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() not in ("bearer", "api-key") or not credentials:
        return None
    return HTTPAuthorizationCredentials(scheme=scheme, credentials=credentials)


class _ProjectKey(HTTPBearer):
    """HTTPBearer in the OpenAPI spec; accepts Api-Key as well."""

    async def __call__(self, request: Request) -> HTTPAuthorizationCredentials | None:  # type: ignore[override]
        return project_key(request)


_bearer = _ProjectKey(auto_error=False, scheme_name="HTTPBearer",
                      description="an API key from `lucidic keys create`, as "
                                  "`Authorization: Bearer KEY` or `Authorization: Api-Key KEY`")


def _store(request: Request) -> Iterator[Store]:
    pool: StorePool = request.app.state.pool
    with pool.store() as s:
        yield s


Db = Annotated[Store, Depends(_store)]


def identity(credentials: Annotated[Optional[HTTPAuthorizationCredentials],  # noqa: UP045
                                    Depends(_bearer)], db: Db) -> models.Identity:
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None:
        raise ApiError(401, "no API key: send the header 'Authorization: Bearer <key>' (or "
                            "'Api-Key <key>') with a key from `lucidic keys create`",
                       headers=challenge)
    found = db.authenticate(credentials.credentials)
    if found is None:
        raise ApiError(401, "the API key is not valid: it is unknown or was revoked",
                       headers=challenge)
    return models.Identity(project=found["project"], key_id=found["id"])


Auth = Annotated[models.Identity, Depends(identity)]
#: What a read finds (a row, a screenshot...).
Found = TypeVar("Found")


def not_found(what: str, record_id: str) -> ApiError:
    return ApiError(404, f"{what} {record_id!r} was not found in this project")


def read_or_404(read: Callable[[str, str], Found | None], what: str,
                record_id: str, project: str) -> Found:
    """What ``read(record_id, project)`` finds, else a 404 naming the
    ``what``; an id no client could have made is not looked up. Every read
    route's 404 is this one."""
    row = read(record_id, project) if models.valid_id(record_id) else None
    if row is None:
        raise not_found(what, record_id)
    return row


def matches_nothing(*texts: str | None) -> bool:
    """Whether a filter's text is one no database can hold (a NUL, an
    unpaired surrogate), so no row matches it: PostgreSQL refuses to even
    compare it, where SQLite finds nothing."""
    return any(text is not None and models.check_json_text(text) for text in texts)


@router.get("/healthz", tags=["meta"], summary="Liveness and database reachability")
def healthz(db: Db) -> dict[str, Any]:
    return {"status": "ok", "schema_version": db.schema_version()}


@router.get("/api/v1/auth", tags=["auth"], response_model=models.Identity,
            summary="Check an API key; returns its project")
def auth(who: Auth) -> models.Identity:
    return who


@router.post("/api/v1/records", tags=["ingest"], response_model=models.Accepted,
             responses={413: _PROBLEMS[404] | {"description": "the body is too large"},
                        422: {"model": models.Problem, "description": "invalid records"}},
             summary="Apply a batch of session, step and event records (idempotent)")
def ingest(batch: models.Batch, who: Auth, db: Db) -> JSONOut:  # type: ignore[valid-type]
    records = [(r["kind"], r["id"], r["ts"], r["fields"]) for r in batch["records"]]
    if records:
        db.write_for_project(records, who.project)
    return JSONOut({"accepted": len(records)})


@router.get("/api/v1/sessions", tags=["read"], response_model=models.SessionPage,
            summary="Sessions of this project with their totals: filtered, searched, sorted, "
                    "one page at a time")
def list_sessions(
    who: Auth, db: Db,
    agent_id: Annotated[Optional[str], Query(max_length=256)] = None,  # noqa: UP045
    mass_sim_id: Annotated[Optional[str], Query(  # noqa: UP045
        max_length=256, description="only the sessions of this mass simulation")] = None,
    status: Annotated[Optional[Literal["running", "successful", "failed", "finished"]],  # noqa: UP045
                      Query(description="running; or ended as successful, failed, or "
                                        "finished (no outcome given)")] = None,
    started_after: Annotated[Optional[float],  # noqa: UP045
                             Query(allow_inf_nan=False,
                                   description="epoch seconds, inclusive")] = None,
    started_before: Annotated[Optional[float],  # noqa: UP045
                              Query(allow_inf_nan=False,
                                    description="epoch seconds, exclusive")] = None,
    search: Annotated[Optional[str], Query(  # noqa: UP045
        max_length=MAX_SEARCH, description="case-insensitive text found in the session's "
        "name, task, tags, steps or events (LLM messages, models and errors included)")] = None,
    id_prefix: Annotated[Optional[str], Query(  # noqa: UP045
        min_length=1, max_length=256,
        description="only sessions whose id starts with this (the CLI resolves a short id "
                    "with it)")] = None,
    sort: Annotated[Literal[tuple(SORTS)], Query()] = "started",  # type: ignore[valid-type]
    order: Literal["desc", "asc"] = "desc",
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
    cursor: Annotated[Optional[str], Query(  # noqa: UP045
        max_length=2048, description="next_cursor of the previous page")] = None,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000, description=(
        "rows to skip (slower on deep pages than cursor; ignored with a cursor)"))] = 0,
) -> JSONOut:
    if matches_nothing(agent_id, search, id_prefix, mass_sim_id):
        return JSONOut({"sessions": [], "limit": limit, "offset": offset, "next_offset": None,
                        "next_cursor": None, "total": 0})
    try:
        query = SessionQuery(project=who.project, agent_id=agent_id, status=status,
                             started_after=started_after, started_before=started_before,
                             search=search or None, id_prefix=id_prefix,
                             mass_sim_id=mass_sim_id, sort=sort,
                             descending=order == "desc", limit=limit, cursor=cursor,
                             offset=offset)
    except InvalidQueryError as exc:
        raise ApiError(422, str(exc)) from exc
    page = Reader(db).sessions(query)
    more = page.next_cursor is not None
    return JSONOut({"sessions": page.sessions, "limit": limit, "offset": offset,
                    "next_offset": offset + len(page.sessions) if more and cursor is None
                    else None,
                    "next_cursor": page.next_cursor, "total": page.total})


@router.get("/api/v1/sessions/{session_id:path}/tree", tags=["read"],
            response_model=models.SessionTree,
            summary="A session with its steps (nested) and events")
def session_tree(session_id: str, who: Auth, db: Db,
                 if_none_match: Annotated[Optional[str], Header(  # noqa: UP045
                     max_length=256, description="the ETag of a tree read before: "
                     "304 while nothing of the session changed")] = None) -> Response:
    version, tree = "", None
    if models.valid_id(session_id):
        seen = if_none_match.strip().strip('"') if if_none_match else None
        version, tree = Reader(db).tree_if_changed(session_id, seen, who.project)
    if not version:
        raise not_found("session", session_id)
    etag = {"ETag": f'"{version}"'}
    if tree is None:
        return Response(status_code=304, headers=etag)
    return JSONOut(tree, headers=etag)


@router.get("/api/v1/sessions/{session_id:path}/continuable", tags=["read"],
            response_model=models.Continuable,
            responses={409: {"model": models.Problem,
                             "description": "finished, or another agent's"},
                       410: {"model": models.Problem, "description": "deleted"}},
            summary="The check behind continue_session (the SDK asks it): the session "
                    "exists in this project, is not finished, and belongs to the agent "
                    "given (if any)")
def continuable(session_id: str, who: Auth, db: Db,
                agent_id: Annotated[Optional[str],  # noqa: UP045
                                    Query(max_length=256)] = None) -> JSONOut:
    valid = models.valid_id(session_id)
    row = db.get_session(session_id, who.project) if valid else None
    if row is None:
        if valid and db.deleted_among([session_id], who.project):
            raise ApiError(410, _continuation.deleted_message(session_id))
        raise not_found("session", session_id)
    check_continuable(row, session_id, agent_id)
    return JSONOut({"session_id": session_id, "continuable": True,
                    "agent_id": row.get("agent_id"), "experiment_id": row.get("experiment_id"),
                    "rubrics": row.get("rubrics")})


def check_continuable(row: dict[str, Any], session_id: str, agent_id: str | None) -> None:
    """Refuse (409) continuing a finished session, or another agent's: the
    rule of lucidic._continuation, which the SDK applies over the embedded store."""
    refused = _continuation.refusal(row, session_id, agent_id)
    if refused:
        raise ApiError(409, refused)


@router.post("/api/v1/sessions", tags=["ingest"], status_code=201,
             response_model=models.Created,
             responses={409: {"model": models.Problem,
                              "description": "a session with this id already exists "
                                             "(whichever project holds it)"},
                        422: {"model": models.Problem, "description": "invalid record"}},
             summary="Create a session under the id given, unless the id is taken "
                     "(what lai.init(session_id=...) asks)")
def create_session(record: models.NewSession, who: Auth,  # type: ignore[valid-type]
                   db: Db) -> JSONOut:
    session_id = record["id"]
    try:
        created = db.create_session(("session", session_id, record["ts"], record["fields"]),
                                    who.project)
    except DeletedSessionError as exc:
        raise ApiError(409, f"{exc}: a deleted session's id cannot be used again") from exc
    if not created:
        raise ApiError(409, _continuation.in_use_message(session_id))
    return JSONOut({"session_id": session_id}, status_code=201)


@router.get("/api/v1/sessions/{session_id:path}", tags=["read"], response_model=models.Session,
            summary="One session with its totals")
def get_session(session_id: str, who: Auth, db: Db) -> JSONOut:
    return JSONOut(read_or_404(Reader(db).session, "session", session_id, who.project))


@router.delete("/api/v1/sessions/{session_id:path}", tags=["write"],
               response_model=models.Deleted,
               responses={409: {"model": models.Problem,
                                "description": "unfinished and written to in the last "
                                               f"{RECENT_WRITES / 60:g} minutes (force=true "
                                               "deletes it all the same)"}},
               summary="Delete a session with its steps, events, scores and uploads, for "
                       "good; records for it that arrive later are refused")
def delete_session(session_id: str, who: Auth, db: Db,
                   force: Annotated[bool, Query(description=(
                       "delete it even if it is still being written to (a process still "
                       "writing to it has its records refused)"))] = False) -> JSONOut:
    if not models.valid_id(session_id):
        raise not_found("session", session_id)
    done = delete_sessions(db, [session_id], project=who.project, force=force)
    if done.running:
        raise ApiError(409, f"session {session_id!r} is still being written to (unfinished, "
                            f"written to in the last {RECENT_WRITES / 60:g} minutes): end it "
                            "first, or ask again with force=true")
    if not done.deleted:
        raise not_found("session", session_id)
    return JSONOut({"session_id": session_id, "deleted": True})


@router.get("/api/v1/steps/{step_id:path}", tags=["read"], response_model=models.Step,
            summary="One step")
def get_step(step_id: str, who: Auth, db: Db) -> JSONOut:
    return JSONOut(read_or_404(Reader(db).step, "step", step_id, who.project))


@router.get("/api/v1/events/{event_id:path}", tags=["read"], response_model=models.Event,
            summary="One event")
def get_event(event_id: str, who: Auth, db: Db) -> JSONOut:
    return JSONOut(read_or_404(Reader(db).event, "event", event_id, who.project))


def create_app(database_url: str | None = None, *,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, pool_size: int = 8,
               max_upload_bytes: int | None = None, upload_ttl: float | None = None,
               otlp_grpc: tuple[str, int] | None = None,
               retention_days: float | None = None) -> FastAPI:
    """The server's ASGI app over the database at ``database_url`` (opened,
    and its schema migrated, right away). Uploads (screenshots) are at most
    ``max_upload_bytes`` and their signed URLs live ``upload_ttl`` seconds.
    With ``otlp_grpc`` (host, port), an OTLP/gRPC trace receiver is bound
    there now (OSError if it cannot be), and serves while the app does; its
    port is ``app.state.otlp_grpc_port``. With ``retention_days``, sessions
    nothing was written to for that many days are deleted in the background
    (lucidic.reading.retention.Pruner)."""
    # The protocol modules build on this one's Auth and Db, hence imported here.
    from . import experiments, langfuse, lucidicai, lucidicai3, masssims, otlp, uploads

    url = database_url or default_database_url()
    pool = StorePool(url, size=pool_size)
    with pool.store() as store:
        signing_key = uploads.signing_key(store)

    refresher = Refresher(pool.store)
    pruner = None if retention_days is None else Pruner(pool.store, retention_days * 86400)
    grpc_server, grpc_port = None, None
    if otlp_grpc is not None:
        from . import otlp_grpc as grpc_receiver

        try:
            grpc_server, grpc_port = grpc_receiver.receiver(
                pool, *otlp_grpc, max_message_bytes=max_body_bytes)
        except OSError:
            pool.close()
            raise

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        refresher.start()
        if pruner is not None:
            pruner.start()
        if grpc_server is not None:
            grpc_server.start()
        yield
        if grpc_server is not None:
            # Calls under way finish (for a few seconds) before the pool closes.
            grpc_server.stop(grace=5).wait()
        refresher.stop()
        if pruner is not None:
            pruner.stop()
        pool.close()

    from .. import __version__

    app = FastAPI(
        title="Lucidic server",
        version=__version__,
        description="Sessions, steps and events of AI agents, recorded by the `lucidic` SDK, "
                    "by the lucidicai client (its wire protocol under /api), by any "
                    "OpenTelemetry exporter (OTLP/HTTP at /v1/traces) and by Langfuse's SDKs "
                    "(under /api/public, the key as the Basic credentials' password). Every "
                    "request needs `Authorization: Bearer <API key>` (or `Api-Key <API key>`; "
                    "make one "
                    "with `lucidic keys create --project NAME`), but uploads to a signed URL; "
                    "everything it reads or writes is scoped to that key's project. Errors "
                    "are application/problem+json (google.rpc.Status on /v1/traces).",
        lifespan=lifespan,
        default_response_class=JSONOut,
        responses=_PROBLEMS,
        docs_url=None,   # the UI serves /docs from vendored files (no CDN)
        redoc_url=None,
    )
    app.state.pool = pool
    app.state.otlp_grpc_port = grpc_port
    app.state.uploads = uploads.UploadConfig(
        signing_key, max_bytes=max_upload_bytes or uploads.DEFAULT_MAX_UPLOAD_BYTES,
        ttl=upload_ttl or uploads.DEFAULT_UPLOAD_TTL)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    install_error_handlers(app)
    for routes in (router, masssims.router, experiments.router, lucidicai.router,
                   lucidicai3.router,
                   uploads.router, otlp.router, langfuse.router):
        app.include_router(routes)
    # The web UI at / (sign-in with an API key), /docs, and the security
    # headers every response carries; see lucidic.ui.
    app.state.ui_signin = True
    install_ui(app)
    app.add_middleware(SecurityMiddleware)
    return app


def run(database_url: str | None = None, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, log_level: str = "info",
        max_upload_bytes: int | None = None, upload_ttl: float | None = None,
        otlp_grpc_port: int | None = None, retention_days: float | None = None) -> None:
    """Serve the API until interrupted; OTLP/gRPC too, on ``otlp_grpc_port``
    of the same host, when given (OSError if that port cannot be bound);
    pruning sessions older than ``retention_days`` when given."""
    import uvicorn

    url = database_url or default_database_url()
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    app = create_app(url, max_body_bytes=max_body_bytes, max_upload_bytes=max_upload_bytes,
                     upload_ttl=upload_ttl, retention_days=retention_days,
                     otlp_grpc=None if otlp_grpc_port is None else (host, otlp_grpc_port))
    logger.info("lucidic server: database %s, listening on http://%s:%d (web UI at /, "
                "API docs at /docs)",
                redact_url(url), host, port)
    if retention_days is not None:
        logger.info("lucidic server: deleting sessions nothing was written to for %g days, "
                    "at start and every hour", retention_days)
    if app.state.otlp_grpc_port is not None:
        logger.info("lucidic server: OTLP/gRPC traces on %s:%d", host, app.state.otlp_grpc_port)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False,
                server_header=False, timeout_keep_alive=30)
