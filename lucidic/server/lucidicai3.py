"""The rest of what lucidicai 3.x (the hosted SDK's newest releases) asks
of ``/api``, beside the recording routes they share with 1.x in
lucidic.server.lucidicai: reading sessions and events back, amending an
event, evals (stored as scores), and an answer for each feature only the
hosted platform has.

Those features (datasets, feature flags, prompt writes, training modules,
evolutionary simulations, mock calls, tool catalogs, experiments) get a 404
whose ``detail`` (and ``error``, which some of the client's resources read
instead) names the feature and what this server offers in its place: the
client logs it at error level, then raises it, or, in its production mode,
logs it and goes on. (The client treats every error status alike; a 404
rather than a 501 because nothing the server does wrong is involved: a 5xx
would count against the server in every monitor, and it never answers one on
purpose.) A feature flag is the exception: its lookup takes a
default, and a flag this server does not have is a flag not found, so it
answers 200 without a value (the client returns the default) and logs a
warning on the server's side.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Annotated, Any, Literal, Optional, Union

from fastapi import APIRouter, Depends, Query
from pydantic import field_validator

from .. import _scores
from ..errors import InvalidOperationError
from ..reading import MAX_LIMIT, Reader, SessionQuery
from ..store import Store
from .app import Auth, Db, matches_nothing, read_or_404
from .lucidicai import (
    _Body,
    _fold,
    _present,
    _session,
    _span,
    _write,
    attributes_of,
    their_type,
    typed_event_fields,
)
from .models import Duration, FiniteFloat, Id, Name, ShortText, Text
from .problems import ApiError, JSONOut

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api", tags=["lucidicai 3.x"])


def _event(db: Store, event_id: str, project: str) -> dict[str, Any]:
    return read_or_404(Reader(db).event, "event", event_id, project)


def _as_theirs(row: dict[str, Any]) -> dict[str, Any]:
    """An event as our read API shows it, with the names the client uses
    for its id, type and parent beside ours."""
    attributes = attributes_of(row.get("attributes"))
    return {**row, "event_id": row["id"],
            "type": their_type(row.get("type"), attributes),
            "client_parent_event_id": attributes.get("parent_event_id"),
            "event_type": row.get("type")}


# -- reading back ------------------------------------------------------------------------

@router.get("/sessions/{session_id}", summary="One session with its totals "
                                              "(client.sessions.get)")
def get_session(session_id: str, who: Auth, db: Db) -> JSONOut:
    row = read_or_404(Reader(db).session, "session", session_id, who.project)
    return JSONOut({"session_id": row["id"], **row})


#: The most sessions or events one list call answers. The client sends the
#: limit its caller gives as it is (its default is 100), and returns the
#: answer as the caller's: a list of up to this many is answered whole.
MAX_LISTED = 10_000


@router.get("/sessions", summary="This project's sessions, newest first "
                                 "(client.sessions.list)")
def list_sessions(who: Auth, db: Db,
                  agent_id: Annotated[Optional[str], Query(max_length=256)] = None,  # noqa: UP045
                  experiment_id: Annotated[Optional[str], Query(max_length=256)] = None,  # noqa: UP045
                  limit: Annotated[int, Query(ge=1, le=MAX_LISTED)] = 100,
                  offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0) -> JSONOut:
    if matches_nothing(agent_id, experiment_id):
        return JSONOut({"sessions": [], "total": 0, "limit": limit, "offset": offset})
    # Read a page (of the read API's largest) at a time, each from where the
    # last ended: what one page's totals cost stays bounded. The matching
    # sessions are counted once, with the first.
    reader = Reader(db)
    query = SessionQuery(project=who.project, agent_id=agent_id, experiment_id=experiment_id,
                         limit=min(limit, MAX_LIMIT), offset=offset)
    page = reader.sessions(query)
    total, sessions = page.total, list(page.sessions)
    while len(sessions) < limit and page.next_cursor is not None:
        query = replace(query, cursor=page.next_cursor, counted=False,
                        limit=min(limit - len(sessions), MAX_LIMIT))
        page = reader.sessions(query)
        sessions.extend(page.sessions)
    return JSONOut({"sessions": [{"session_id": s["id"], **s} for s in sessions],
                    "total": total, "limit": limit, "offset": offset})


def _walk(node: dict[str, Any]) -> list[dict[str, Any]]:
    events = list(node.get("events") or [])
    for step in node.get("steps") or []:
        events.extend(_walk(step))
    return events


@router.get("/events", summary="A session's events in the order they began "
                               "(client.events.list)")
def list_events(who: Auth, db: Db,
                session_id: Annotated[Optional[str], Query(max_length=256)] = None,  # noqa: UP045
                type: Annotated[Optional[str], Query(max_length=64)] = None,  # noqa: UP045, A002
                limit: Annotated[int, Query(ge=1, le=MAX_LISTED)] = 100,
                offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0) -> JSONOut:
    if session_id is None:
        raise ApiError(422, "name the session whose events to list: session_id=...")
    tree = read_or_404(Reader(db).tree, "session", session_id, who.project)
    events = [_as_theirs(e) for e in _walk(tree)]
    if type is not None:
        events = [e for e in events if type in (e["type"], e["event_type"])]
    events.sort(key=lambda e: (e.get("started_at") or 0.0, e["event_id"]))
    return JSONOut({"events": events[offset:offset + limit], "total": len(events),
                    "limit": limit, "offset": offset})


@router.get("/events/{event_id}", summary="One event (client.events.get)")
def get_event(event_id: str, who: Auth, db: Db) -> JSONOut:
    return JSONOut(_as_theirs(_event(db, event_id, who.project)))


class EventUpdate(_Body):
    """What ``client.events.update(event_id, **fields)`` may change: the
    payload (read as the event's type reads it), tags and metadata."""

    payload: Optional[dict[str, Any]] = None  # noqa: UP045
    duration: Optional[Duration] = None  # noqa: UP045
    tags: Optional[list[ShortText]] = None  # noqa: UP045
    metadata: Optional[dict[str, Any]] = None  # noqa: UP045


@router.put("/events/{event_id}", summary="Amend an event's payload, duration, tags or "
                                          "metadata (client.events.update)")
def update_event(event_id: str, body: EventUpdate, who: Auth, db: Db) -> JSONOut:
    row = _event(db, event_id, who.project)
    stored = row.get("attributes")
    if stored is not None and not isinstance(stored, dict):
        # Written by another client as a JSON value that is not an object:
        # there is nowhere to put tags or a type beside it without losing it.
        raise ApiError(409, f"event {event_id!r} was recorded by another client with "
                            "attributes that are not a JSON object; it cannot be amended "
                            "through this API")
    attributes = dict(stored or {})
    kind = their_type(row.get("type"), attributes)
    fields: dict[str, Any] = {}
    if body.payload is not None:
        fields = typed_event_fields(kind, body.payload)
        attributes.update(fields.pop("attributes", None) or {})
        fields.pop("type", None)
    attributes.update(_present({"tags": body.tags, "metadata": body.metadata}))
    if body.duration is not None:
        fields["duration"] = body.duration
        # When it was stamped, read as _span reads it: a function_call's
        # stamp is its end (its start if it came with no duration).
        stamped = row.get("started_at")
        if kind == "function_call" and row.get("ended_at") is not None:
            stamped = row["ended_at"]
        if stamped is not None:
            fields["started_at"], fields["ended_at"] = _span(kind, stamped, body.duration)
    fields.update(session_id=row["session_id"], attributes=attributes or None)
    when = max(time.time(), float(row.get("updated_at") or 0.0)) + 0.001
    _write(db, who.project, ("event", event_id, when, _present(fields)))
    _fold(db, who.project, row["session_id"], event_id)  # (its step, if others nest in it)
    return JSONOut(_as_theirs(_event(db, event_id, who.project)))


# -- evals -------------------------------------------------------------------------------

class Eval(_Body):
    session_id: Id
    result: Union[bool, FiniteFloat, Text]  # noqa: UP007
    result_type: Optional[Literal["boolean", "number", "string"]] = None  # noqa: UP045
    name: Optional[Name] = None  # noqa: UP045
    description: Optional[Text] = None  # noqa: UP045

    @field_validator("name", mode="before")
    @classmethod
    def _unnamed(cls, name: Any) -> Any:
        return None if name == "" else name  # named after its result type, as with none


_RESULT_TYPES = {"boolean": bool, "number": float, "string": str}


@router.post("/sdk/evals", summary="An eval of a session (client.evals.emit): stored as "
                                   "the session's score of that name")
def create_eval(body: Eval, who: Auth, db: Db) -> JSONOut:
    _session(db, body.session_id, who.project)
    value = body.result
    result_type = body.result_type or ("boolean" if isinstance(value, bool) else
                                       "string" if isinstance(value, str) else "number")
    wanted = _RESULT_TYPES[result_type]
    if not isinstance(value, wanted) or (wanted is float and isinstance(value, bool)):
        raise ApiError(422, f"the result {value!r:.80} is not of result_type {result_type!r}")
    try:
        score = _scores.Score(body.name or f"{result_type} eval", value, body.description)
    except InvalidOperationError as exc:
        raise ApiError(422, str(exc)) from exc
    record = _scores.score_record(score, body.session_id, source="lucidicai")
    _write(db, who.project, record)
    return JSONOut({"score_id": record[1], "name": score.name}, status_code=201)


# -- what only the hosted platform has -----------------------------------------------------

_HOSTED: list[tuple[str, str, str, str]] = [
    # (method, path, the feature, what to do instead)
    *((m, p, "datasets", "keep cases in code and run them with lucidic.evals.run_experiment")
      for m, p in (("GET", "sdk/datasets"), ("POST", "sdk/datasets/create"),
                   ("GET", "getdataset"), ("PUT", "sdk/datasets/update"),
                   ("DELETE", "sdk/datasets/delete"), ("POST", "sdk/datasets/items/create"),
                   ("GET", "sdk/datasets/items/get"), ("PUT", "sdk/datasets/items/update"),
                   ("DELETE", "sdk/datasets/items/delete"),
                   ("GET", "sdk/datasets/items/sessions"))),
    *(("POST", p, "feature flags", "read the setting from your own configuration")
      for p in ("evaluatefeatureflag", "evaluatefeatureflagstateless",
                "evaluatebatchfeatureflags", "evaluatebatchfeatureflagsstateless")),
    *((m, "sdk/prompts", "writing prompts through the API",
       "set them with `lucidic prompts set NAME --label LABEL FILE --project P`; "
       "client.prompts.get reads them") for m in ("PUT", "PATCH")),
    *((m, p, "training modules", "no counterpart here") for m, p in (
        ("GET", "sdk/training-modules/tools"), ("POST", "sdk/training-modules/inferences"),
        ("GET", "sdk/training-modules/inferences/{inference_run_id}"))),
    ("POST", "sdk/evosim/training-run", "evolutionary simulations", "no counterpart here"),
    ("POST", "sdk/mock-call", "mock calls", "call the tool itself, or replay recorded LLM "
     "calls with lucidic.evals"),
    ("POST", "sdk/agent-tools/sync", "tool catalogs", "none needed: the calls of "
     "decorated tools are recorded as events without it"),
    ("POST", "sdk/session-init-fixtures", "dataset fixtures", "none needed: the session "
     "itself is recorded"),
    ("POST", "createexperiment", "creating experiments through the API",
     "run one with lucidic.evals.run_experiment; sessions may name an experiment_id"),
]


def _unsupported(feature: str, instead: str) -> Callable[..., JSONOut]:
    """The answer of a hosted-only route: a 404 saying what to use instead."""
    detail = (f"not available on a self-hosted lucidic server: {feature} (a feature of the "
              f"hosted Lucidic platform; this server records sessions, events and evals); "
              f"instead: {instead}")

    def answer(who: Auth) -> JSONOut:
        raise ApiError(404, detail, error=detail)
    return answer


def _inference_run_id(inference_run_id: str) -> None:
    """Declares the one hosted-only route's path parameter (for the OpenAPI spec)."""


for _method, _path, _feature, _instead in _HOSTED:
    router.add_api_route(f"/{_path}", _unsupported(_feature, _instead), methods=[_method],
                         summary=f"Not here: {_feature} (hosted platform only); answers 404",
                         dependencies=[Depends(_inference_run_id)]
                         if "{inference_run_id}" in _path else None)


@router.get("/featureflags", summary="Feature flags are the hosted platform's: answers no "
                                     "value, so client.feature_flags.get returns its default")
def feature_flag(who: Auth, flag_name: Annotated[str, Query(max_length=256)] = "",
                 agent_id: Annotated[Optional[str], Query(max_length=256)] = None  # noqa: UP045
                 ) -> JSONOut:
    log.warning("lucidicai asked for feature flag %r: this server has no feature flags "
                "(a hosted Lucidic platform feature); the client uses its default", flag_name)
    return JSONOut({"flag_name": flag_name, "found": False,
                    "detail": "this self-hosted lucidic server has no feature flags (a hosted "
                              "Lucidic platform feature): the client's default applies"})
