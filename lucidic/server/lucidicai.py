"""The lucidicai wire protocol under ``/api``: what the hosted Lucidic AI SDK
sends (lucidicai 1.x, and the newest release as far as it shares these
routes), served from the same sessions, steps and events as our own SDK's
records. A lucidicai 1.3.5 user points the client at this server with
``LUCIDIC_DEBUG=True`` (it then talks to ``http://localhost:8000/api``).

Every request carries ``Authorization: Api-Key KEY``, a project key like any
other, and everything is scoped to the key's project. The ids the server
makes are UUID4s. A refusal is a 4xx with a JSON body whose ``detail`` says
why: lucidicai turns 401/403 into ``APIKeyVerificationError`` and any other
error into ``InvalidOperationError`` carrying that text.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timezone
from typing import Annotated, Any, Optional

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .. import _continuation, pricing
from .._numbers import bounded_cost, finite_float
from ..limits import MAX_TEXT_CHARS
from ..prompts import MAX_LABEL, MAX_NAME
from ..prompts import get_prompt as stored_prompt
from ..store import Record, Store
from . import masssims, uploads
from .app import Auth, Db, check_continuable, read_or_404
from .models import (
    PRINTABLE,
    PRINTABLE_OR_EMPTY,
    Cost,
    Count,
    Duration,
    FiniteFloat,
    Id,
    ShortText,
    Text,
    storable_json,
)
from .problems import ApiError, JSONOut

router = APIRouter(prefix="/api", tags=["lucidicai"])


class _Body(BaseModel):
    """Fields every request may carry. Unset fields come as null and change
    nothing; a field no lucidicai release sends is refused (422)."""

    model_config = ConfigDict(extra="forbid")
    current_time: Optional[str] = Field(None, max_length=64,  # noqa: UP045
                                        description="the client's clock, ISO 8601")

    @field_validator("*", mode="after")
    @classmethod
    def _storable_json(cls, value: Any) -> Any:
        if isinstance(value, (dict, list)):
            value = storable_json(value)  # a NUL in it as in a text: U+FFFD
            if len(json.dumps(value)) > MAX_TEXT_CHARS:
                raise ValueError(f"the value is larger than {MAX_TEXT_CHARS} characters as JSON")
        return value


class InitSession(_Body):
    session_id: Optional[Id] = None  # noqa: UP045
    session_name: Optional[Text] = None  # noqa: UP045
    agent_id: Optional[ShortText] = None  # noqa: UP045
    task: Optional[Text] = None  # noqa: UP045
    tags: Optional[list[ShortText]] = None  # noqa: UP045
    mass_sim_id: Optional[Id] = None  # noqa: UP045
    experiment_id: Optional[Id] = None  # noqa: UP045
    rubrics: Optional[list[Any]] = None  # noqa: UP045
    # Sent by the newest release; kept in the session's attributes.
    production_monitoring: Optional[bool] = None  # noqa: UP045
    datasetitem_id: Optional[Id] = None  # noqa: UP045
    checkpoint_id: Optional[Id] = None  # noqa: UP045
    evaluators: Optional[list[Any]] = None  # noqa: UP045


class ContinueSession(_Body):
    session_id: Id


class UpdateSession(_Body):
    session_id: Id
    is_finished: Optional[bool] = None  # noqa: UP045
    task: Optional[Text] = None  # noqa: UP045
    is_successful: Optional[bool] = None  # noqa: UP045
    is_successful_reason: Optional[Text] = None  # noqa: UP045
    session_eval: Optional[FiniteFloat] = None  # noqa: UP045
    session_eval_reason: Optional[Text] = None  # noqa: UP045
    tags: Optional[list[ShortText]] = None  # noqa: UP045


class InitStep(_Body):
    session_id: Id


class UpdateStep(_Body):
    step_id: Id
    state: Optional[Text] = None  # noqa: UP045
    action: Optional[Text] = None  # noqa: UP045
    goal: Optional[Text] = None  # noqa: UP045
    eval_score: Optional[FiniteFloat] = None  # noqa: UP045
    eval_description: Optional[Text] = None  # noqa: UP045
    is_finished: Optional[bool] = None  # noqa: UP045
    has_screenshot: Optional[bool] = None  # noqa: UP045


class _EventFields(_Body):
    description: Optional[Text] = None  # noqa: UP045
    result: Optional[Text] = None  # noqa: UP045
    is_finished: Optional[bool] = None  # noqa: UP045
    cost_added: Optional[Cost] = None  # noqa: UP045
    model: Optional[ShortText] = None  # noqa: UP045
    nscreenshots: Optional[Count] = None  # noqa: UP045
    duration: Optional[Duration] = None  # noqa: UP045
    function_name: Optional[ShortText] = None  # noqa: UP045
    arguments: Optional[Any] = None  # noqa: UP045


class InitEvent(_EventFields):
    step_id: Optional[Id] = None  # noqa: UP045
    session_id: Optional[Id] = None  # noqa: UP045


class UpdateEvent(_EventFields):
    event_id: Id


class InitMassSim(_Body):
    mass_sim_name: Optional[Text] = None  # noqa: UP045
    total_num_sims: Optional[Count] = None  # noqa: UP045
    task: Optional[Text] = None  # noqa: UP045
    tags: Optional[list[ShortText]] = None  # noqa: UP045
    agent_id: Optional[ShortText] = None  # noqa: UP045


class TypedEvent(_Body):
    """An event of the newest lucidicai release (``POST /api/events``)."""

    type: ShortText = "generic"
    session_id: Id
    client_event_id: Optional[Id] = None  # noqa: UP045
    client_parent_event_id: Optional[Id] = None  # noqa: UP045
    occurred_at: Optional[str] = Field(None, max_length=64)  # noqa: UP045
    duration: Optional[Duration] = None  # noqa: UP045
    tags: Optional[list[ShortText]] = None  # noqa: UP045
    metadata: Optional[dict[str, Any]] = None  # noqa: UP045
    payload: dict[str, Any] = Field(default_factory=dict)
    needs_blob: Optional[bool] = None  # noqa: UP045
    defer_count: Optional[Count] = None  # noqa: UP045


# -- helpers ------------------------------------------------------------------------------

def _when(text: str | None, field: str = "current_time") -> float:
    """The client's ISO 8601 time as epoch seconds, else the server's clock."""
    if text is None:
        return time.time()
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ApiError(422, f"{field} must be an ISO 8601 date and time, not {text!r}") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _session(db: Store, session_id: str, project: str) -> dict[str, Any]:
    return read_or_404(db.get_session, "session", session_id, project)


def _refuse_if_finished(row: dict[str, Any], what: str) -> None:
    if row.get("is_finished"):
        raise ApiError(409, f"session {row['id']!r} has finished: no {what} can be added to "
                            "it; start a new session")


def _present(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


def _write(db: Store, project: str, *records: Record) -> None:
    db.write_for_project(list(records), project)


def _agent(request: Request, given: str | None = None) -> str | None:
    return given or request.headers.get("x-agent-id") or None


def _check_query(request: Request, allowed: set[str]) -> None:
    unknown = sorted(set(request.query_params) - allowed - {"current_time"})
    if unknown:
        raise ApiError(422, f"unknown query parameter(s) {', '.join(unknown)}; this route "
                            f"takes {', '.join(sorted(allowed))}")


# -- sessions -----------------------------------------------------------------------------

@router.get("/verifyapikey", summary="Check the key; returns its project")
def verify_api_key(request: Request, who: Auth) -> JSONOut:
    _check_query(request, set())
    return JSONOut({"project": who.project, "project_id": who.project})


@router.post("/initsession", summary="Start a session (or join the unfinished one named by "
                                     "session_id)")
def init_session(body: InitSession, request: Request, who: Auth, db: Db) -> JSONOut:
    if body.session_id is not None:
        existing = db.get_session(body.session_id)
        if existing is not None:
            if existing["project"] != who.project:
                raise ApiError(409, _continuation.in_use_message(body.session_id))
            check_continuable(existing, body.session_id, _agent(request, body.agent_id))
            return JSONOut({"session_id": body.session_id})  # lucidicai's shared-id join
    session_id = body.session_id or str(uuid.uuid4())
    started = _when(body.current_time)
    extras = _present({"production_monitoring": body.production_monitoring,
                       "datasetitem_id": body.datasetitem_id,
                       "checkpoint_id": body.checkpoint_id, "evaluators": body.evaluators})
    fields = _present({
        "agent_id": _agent(request, body.agent_id), "name": body.session_name,
        "task": body.task, "tags": body.tags, "started_at": started,
        "mass_sim_id": body.mass_sim_id, "experiment_id": body.experiment_id,
        "rubrics": body.rubrics, "attributes": extras or None})
    _write(db, who.project, ("session", session_id, time.time(), fields))
    return JSONOut({"session_id": session_id})


@router.post("/continuesession", summary="Resume an existing, unfinished session")
def continue_session(body: ContinueSession, request: Request, who: Auth, db: Db) -> JSONOut:
    row = _session(db, body.session_id, who.project)
    check_continuable(row, body.session_id, _agent(request))
    return JSONOut({"session_id": body.session_id, "session_name": row.get("name")})


@router.put("/updatesession", summary="Set a session's results; is_finished ends it")
def update_session(body: UpdateSession, who: Auth, db: Db) -> JSONOut:
    row = _session(db, body.session_id, who.project)
    if row.get("is_finished") and body.is_finished is False:
        raise ApiError(409, f"session {body.session_id!r} has finished and cannot be reopened")
    fields = _present({
        "task": body.task, "tags": body.tags, "is_successful": body.is_successful,
        "is_successful_reason": body.is_successful_reason, "session_eval": body.session_eval,
        "session_eval_reason": body.session_eval_reason})
    if body.is_finished and not row.get("is_finished"):
        fields.update(is_finished=True, ended_at=_when(body.current_time))
    if fields:
        _write(db, who.project, ("session", body.session_id, time.time(), fields))
    return JSONOut({"session_id": body.session_id})


# -- steps --------------------------------------------------------------------------------

@router.post("/initstep", summary="Start a step in a session; returns its id")
def init_step(body: InitStep, who: Auth, db: Db) -> JSONOut:
    _refuse_if_finished(_session(db, body.session_id, who.project), "steps")
    step_id = str(uuid.uuid4())
    _write(db, who.project, ("step", step_id, time.time(), {
        "session_id": body.session_id, "started_at": _when(body.current_time)}))
    return JSONOut({"step_id": step_id})


@router.put("/updatestep", summary="Set a step's fields; is_finished ends it")
def update_step(body: UpdateStep, who: Auth, db: Db) -> JSONOut:
    step = read_or_404(db.get_step, "step", body.step_id, who.project)
    fields = _present({"state": body.state, "action": body.action, "goal": body.goal,
                       "eval_score": body.eval_score,
                       "eval_description": body.eval_description})
    if body.is_finished and not step.get("is_finished"):
        fields.update(is_finished=True, ended_at=_when(body.current_time))
    if fields:
        _write(db, who.project, ("step", body.step_id, time.time(),
                                 {"session_id": step["session_id"], **fields}))
    return JSONOut({"step_id": body.step_id})


# -- events -------------------------------------------------------------------------------

def _event_fields(body: _EventFields, when: float, existing: dict[str, Any] | None = None
                  ) -> dict[str, Any]:
    fields = _present({"description": body.description, "result": body.result,
                       "cost": body.cost_added, "model": body.model, "duration": body.duration,
                       "function_name": body.function_name, "arguments": body.arguments})
    kind = (existing or {}).get("type")
    if body.model is not None:
        kind = "llm"
    elif body.function_name is not None and kind in (None, "generic"):
        kind = "function"
    fields["type"] = kind or "generic"
    if body.is_finished and not (existing or {}).get("is_finished"):
        fields.update(is_finished=True, ended_at=when)
    return fields


@router.post("/initevent", summary="Record an event in a step (step_id) or in the session "
                                   "directly (session_id); returns its id")
def init_event(body: InitEvent, who: Auth, db: Db) -> JSONOut:
    if body.step_id is not None:
        step = read_or_404(db.get_step, "step", body.step_id, who.project)
        if body.session_id is not None and body.session_id != step["session_id"]:
            raise ApiError(422, f"step {body.step_id!r} is not in session {body.session_id!r}")
        session_id = step["session_id"]
    elif body.session_id is not None:
        session_id = body.session_id
    else:
        raise ApiError(422, "an event needs the step_id of its step or the session_id of its "
                            "session")
    _refuse_if_finished(_session(db, session_id, who.project), "events")
    when = _when(body.current_time)
    event_id = str(uuid.uuid4())
    fields = {"session_id": session_id, "step_id": body.step_id, "started_at": when,
              **_event_fields(body, when)}
    _write(db, who.project, ("event", event_id, time.time(), _present(fields)))
    return JSONOut({"event_id": event_id, "step_id": body.step_id})


@router.put("/updateevent", summary="Set an event's fields; is_finished ends it")
def update_event(body: UpdateEvent, who: Auth, db: Db) -> JSONOut:
    event = read_or_404(db.get_event, "event", body.event_id, who.project)
    fields = _event_fields(body, _when(body.current_time), event)
    _write(db, who.project, ("event", body.event_id, time.time(),
                             {"session_id": event["session_id"], **fields}))
    return JSONOut({"event_id": body.event_id, "step_id": event.get("step_id")})


#: The newest release's event types, as our event types.
_TYPES = {"llm_generation": "llm", "function_call": "function", "error_traceback": "error",
          "generic": "generic"}
_THEIR_TYPES = {ours: theirs for theirs, ours in _TYPES.items()}


def their_type(our_type: str | None, attributes: dict[str, Any]) -> str:
    """An event's type as the newest release names it: the one it sent
    (kept in attributes), else ours named its way."""
    return attributes.get("type") or _THEIR_TYPES.get(our_type or "", "generic")


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def _number(value: Any) -> float | None:
    """A payload's number as a float; None for anything else, and for a
    number no float holds (10**400 is valid JSON)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return finite_float(value)


def _cost(value: Any) -> float | None:
    """A payload's cost, or None beyond MAX_COST (as tokens beyond their range)."""
    number = _number(value)
    return None if number is None else bounded_cost(number)


def _tokens(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None and 0 <= number < 2**62 else None


def typed_event_fields(kind: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Event fields from the payload of a typed event (llm_generation,
    function_call, error_traceback, generic); what has no column of its own
    is kept in ``attributes``."""
    payload = dict(payload)
    fields: dict[str, Any] = {"type": _TYPES.get(kind, "generic")}
    if kind == "llm_generation":
        request = payload.pop("request", None) or {}
        response = payload.pop("response", None) or {}
        usage = payload.pop("usage", None) or {}
        if not isinstance(request, dict) or not isinstance(response, dict) \
                or not isinstance(usage, dict):
            raise ApiError(422, "an llm_generation payload's request, response and usage "
                                "must be objects")
        provider = request.pop("provider", None)
        model = request.pop("model", None)
        fields.update(provider=None if provider == "unknown" else _text(provider),
                      model=None if model == "unknown" else _text(model),
                      input=request.pop("messages", None), output=response.pop("output", None),
                      input_tokens=_tokens(usage.pop("input_tokens", None)),
                      output_tokens=_tokens(usage.pop("output_tokens", None)),
                      cost=_cost(usage.pop("cost", None)))
        cache = usage.pop("cache", None)
        fields["cached_tokens"] = _tokens(cache.get("read") if isinstance(cache, dict)
                                          else cache)
        if fields["cost"] is None:
            fields["cost"] = pricing.cost_of(fields["provider"], fields["model"],
                                             fields["input_tokens"], fields["output_tokens"],
                                             fields["cached_tokens"])
        for key in ("tool_calls", "thinking"):
            if key in response:
                payload[key] = response.pop(key)
        payload.update({f"request.{k}": v for k, v in request.items()})
        payload.update({f"response.{k}": v for k, v in response.items()})
        payload.update({f"usage.{k}": v for k, v in usage.items()})
        fields["error"] = _text(payload.pop("error", None))
    elif kind == "function_call":
        fields.update(function_name=_text(payload.pop("function_name", None)),
                      arguments=payload.pop("arguments", None),
                      result=_text(payload.pop("return_value", None)),
                      error=_text(payload.pop("error", None)))
        fields["description"] = fields["function_name"]
    elif kind == "error_traceback":
        error = _text(payload.pop("error", None))
        fields.update(description=error, error=error,
                      result=_text(payload.pop("traceback", None)))
    else:
        details = payload.pop("details", None)
        fields["description"] = _text(details if details is not None else payload.pop("data",
                                                                                        None))
    if kind not in _TYPES:
        payload["type"] = kind
    fields["attributes"] = payload or None
    return _present(fields)


@router.post("/events", summary="Record a typed event (the newest lucidicai release's "
                                "events; idempotent by client_event_id)")
def typed_event(body: TypedEvent, request: Request, who: Auth, db: Db) -> JSONOut:
    _session(db, body.session_id, who.project)
    event_id = body.client_event_id or str(uuid.uuid4())
    parent = body.client_parent_event_id
    if parent is not None and parent == event_id:
        raise ApiError(422, f"event {event_id!r} names itself as its parent "
                            "(client_parent_event_id)")
    existing = db.get_event(event_id)
    if existing is not None and existing["session_id"] != body.session_id:
        raise ApiError(409, f"event id {event_id!r} is already in use by another session")
    occurred = _when(body.occurred_at, "occurred_at")
    fields = typed_event_fields(body.type, body.payload)
    attributes = dict(fields.pop("attributes", None) or {})
    attributes.update(_present({"parent_event_id": parent,
                                "tags": body.tags, "metadata": body.metadata,
                                "payload_pending": True if body.needs_blob else None}))
    started, ended = _span(body.type, occurred, body.duration)
    fields.update(session_id=body.session_id, step_id=parent, started_at=started,
                  ended_at=ended, duration=body.duration, attributes=attributes or None,
                  is_finished=True)
    records: list[Record] = []
    parent_event = None
    if parent is not None:
        step, parent_event = _parent_step(db, body.session_id, parent, started)
        records.append(step)
    records.append(("event", event_id, occurred, _present(fields)))
    _write(db, who.project, *records)
    # An event others name as parent is a step holding it and them; they
    # arrive in any order (the client sends each from its own thread), so
    # each side looks for the other once its own write is committed: the
    # step of this event's id, and the parent's event (unless it was there
    # before this write, when folding it is this request's to do).
    _fold(db, who.project, body.session_id, event_id)
    if parent is not None:
        if parent_event is None:
            parent_event = db.get_event(parent, who.project)
        if parent_event is not None:
            _fold(db, who.project, body.session_id, parent, parent_event)
    answer: dict[str, Any] = {"event_id": event_id}
    if body.needs_blob:
        answer["blob_url"] = uploads.presign(db, request, who.project, purpose="event_payload",
                                             session_id=body.session_id,
                                             event_id=event_id)["presigned_url"]
    return JSONOut(answer)


def _span(kind: str, occurred: float, duration: float | None) -> tuple[float, float | None]:
    """An event's start and end. A function_call is sent when the call
    returns, stamped then: its occurred_at is its end. Any other event is
    stamped when it began (an LLM span's start)."""
    if duration is None:
        return occurred, None
    if kind == "function_call":
        return occurred - duration, occurred
    return occurred, occurred + duration


def _parent_step(db: Store, session_id: str, parent: str,
                 started: float) -> tuple[Record, dict[str, Any] | None]:
    """The step standing for a parent event, as far as a child knows it: in
    the child's session, begun no later than the child. Written as of time
    0, it fills only what the step lacks (the parent's own event, once
    folded in, says the rest). With it, the parent's event if it is here."""
    step, event = db.get_step(parent), db.get_event(parent)
    if any(row is not None and row["session_id"] != session_id for row in (step, event)):
        raise ApiError(409, f"parent event {parent!r} (client_parent_event_id) belongs to "
                            "another session")
    fields: dict[str, Any] = {"session_id": session_id}
    if step is None or (step.get("started_at") or started) > started:
        fields["started_at"] = started
    return ("step", parent, 0.0, fields), event


def _fold(db: Store, project: str, session_id: str, event_id: str,
          event: dict[str, Any] | None = None) -> None:
    """When event ``event_id`` has children (a step of its id exists) and
    has arrived itself: the step takes the event's name, times, error and
    parent, and the event moves into it. Idempotent. ``event``: the event's
    row when the caller has read it (else read here, once the step is found)."""
    step = db.get_step(event_id, project)
    if step is None:
        return
    if event is None:
        event = db.get_event(event_id, project)
    if event is None or event["session_id"] != session_id or step["session_id"] != session_id:
        return
    attributes = attributes_of(event.get("attributes"))
    step_fields = _present({
        "session_id": session_id, "action": event.get("function_name")
        or event.get("description") or event.get("type"),
        "function_name": event.get("function_name"), "started_at": event.get("started_at"),
        "ended_at": event.get("ended_at") or event.get("started_at"),
        "error": event.get("error"), "is_finished": True,
        "parent_step_id": attributes.get("parent_event_id")})
    if event.get("step_id") == event_id and all(
            step.get(k) == v for k, v in step_fields.items() if k != "is_finished") \
            and step.get("is_finished"):
        return
    when = max(time.time(), float(step["updated_at"]), float(event["updated_at"])) + 0.001
    _write(db, project, ("step", event_id, when, step_fields),
           ("event", event_id, when, {"session_id": session_id, "step_id": event_id}))


def attributes_of(stored: Any) -> dict[str, Any]:
    """An event's stored attributes (as the store reads them back) as the
    object this protocol keeps there (its type, parent, tags...). Another
    client may have stored any JSON value (our records API and OTLP take
    them as given): that is no object of ours, read as empty."""
    return stored if isinstance(stored, dict) else {}


def _apply_payload(store: Store, cur: Any, upload: dict[str, Any], payload: Any) -> None:
    """A large event payload uploaded to its blob_url replaces the preview
    the event was created with."""
    if not isinstance(payload, dict):
        raise ApiError(422, "an event payload must be a JSON object")
    try:
        payload = storable_json(payload, "payload")
    except ValueError as exc:
        raise ApiError(422, str(exc)) from exc
    ph = store.placeholder
    cur.execute(f"SELECT type, attributes, updated_at FROM events WHERE id = {ph}",
                (upload["event_id"],))
    found = cur.fetchone()
    if found is None:
        raise ApiError(404, f"event {upload['event_id']!r} no longer exists")
    try:  # (read raw: the column's JSON text)
        attributes = dict(attributes_of(json.loads(found[1]) if found[1] else None))
    except ValueError:
        attributes = {}
    kind = their_type(found[0], attributes)
    attributes.pop("type", None)
    attributes.pop("payload_pending", None)
    fields = typed_event_fields(kind, payload)
    # Empty is written as empty: None would leave the stored attributes (and
    # their payload_pending) as they were.
    fields["attributes"] = {**attributes, **(fields.get("attributes") or {})}
    # A millisecond newer than the preview: a retried preview (same time) then
    # cannot overwrite the full payload.
    store.apply(cur, [("event", upload["event_id"], float(found[2]) + 0.001,
                       {"session_id": upload["session_id"], **fields})], upload["project"])


uploads.payload_handlers["event_payload"] = _apply_payload


# -- screenshots, prompts, mass simulations -----------------------------------------------

@router.get("/getpresigneduploadurl", summary="A signed URL to PUT a step's screenshot "
                                              "(step_id) or an event's nth screenshot to")
def presigned_upload_url(request: Request, who: Auth, db: Db,
                         agent_id: Annotated[Optional[ShortText], Query()] = None,  # noqa: UP045
                         step_id: Annotated[Optional[Id], Query()] = None,  # noqa: UP045
                         session_id: Annotated[Optional[Id], Query()] = None,  # noqa: UP045
                         event_id: Annotated[Optional[Id], Query()] = None,  # noqa: UP045
                         nth_screenshot: Optional[int] = None,  # noqa: UP045
                         current_time: Annotated[Optional[str],  # noqa: UP045
                                                 Query(max_length=64)] = None) -> JSONOut:
    _check_query(request, {"agent_id", "step_id", "session_id", "event_id", "nth_screenshot"})
    if event_id is not None:
        event = read_or_404(db.get_event, "event", event_id, who.project)
        if session_id is not None and session_id != event["session_id"]:
            raise ApiError(422, f"event {event_id!r} is not in the session named by "
                                f"session_id ({session_id!r})")
        if nth_screenshot is None or not 0 <= nth_screenshot < 10_000:
            raise ApiError(422, "an event's screenshot needs nth_screenshot, from 0")
        return JSONOut(uploads.presign(db, request, who.project, purpose="screenshot",
                                       session_id=event["session_id"], event_id=event_id,
                                       nth=nth_screenshot))
    if step_id is not None:
        step = read_or_404(db.get_step, "step", step_id, who.project)
        return JSONOut(uploads.presign(db, request, who.project, purpose="screenshot",
                                       session_id=step["session_id"], step_id=step_id))
    raise ApiError(422, "name the screenshot's step (step_id) or event (event_id with "
                        "nth_screenshot)")


def _prompt(request: Request, who: Auth, db: Db, prompt_name: str, label: str) -> JSONOut:
    _check_query(request, {"agent_id", "prompt_name", "label"})
    found = stored_prompt(db, who.project, prompt_name, label or "production")
    if found is None:
        raise ApiError(404, f"no prompt {prompt_name!r} with label {label!r} in this project; "
                            f"set one with `lucidic prompts set {prompt_name} --label {label} "
                            f"--project {who.project} FILE`")
    metadata = {"version": found["version"], "label": label, "labels": found["labels"]}
    return JSONOut({"prompt_content": found["content"], "prompt_name": prompt_name,
                    "label": label, "version": found["version"], "metadata": metadata})


#: A prompt's name and label as the prompt store takes them (printable; an
#: empty label means production).
PromptName = Annotated[str, Query(min_length=1, max_length=MAX_NAME, pattern=PRINTABLE)]
PromptLabel = Annotated[str, Query(max_length=MAX_LABEL, pattern=PRINTABLE_OR_EMPTY)]


@router.get("/getprompt", summary="A prompt's content by name and label (lai.get_prompt)")
def get_prompt(request: Request, who: Auth, db: Db, prompt_name: PromptName,
               label: PromptLabel = "production",
               agent_id: Annotated[Optional[ShortText], Query()] = None,  # noqa: UP045
               current_time: Annotated[Optional[str],  # noqa: UP045
                                       Query(max_length=64)] = None) -> JSONOut:
    return _prompt(request, who, db, prompt_name, label)


@router.get("/sdk/prompts", summary="The same, as the newest lucidicai release asks for it")
def get_prompt_newest(request: Request, who: Auth, db: Db, prompt_name: PromptName,
                      label: PromptLabel = "production",
                      agent_id: Annotated[Optional[ShortText],  # noqa: UP045
                                          Query()] = None) -> JSONOut:
    return _prompt(request, who, db, prompt_name, label)


@router.post("/initmasssim", summary="Record a mass simulation; returns its id")
def init_mass_sim(body: InitMassSim, request: Request, who: Auth, db: Db) -> JSONOut:
    mass_sim_id = masssims.create_mass_sim(
        db, who.project, name=body.mass_sim_name, task=body.task, tags=body.tags,
        total_num_sims=body.total_num_sims, agent_id=_agent(request, body.agent_id))
    return JSONOut({"mass_sim_id": mass_sim_id})
