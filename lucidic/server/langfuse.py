"""What Langfuse's own SDKs (v3 and newer, which are OpenTelemetry-based) ask
of ``/api/public``, so that ``LANGFUSE_HOST=http://this-server`` (with
``LANGFUSE_SECRET_KEY`` a key from ``lucidic keys create``) records into
this server with no change to the program.

- ``POST /api/public/otel/v1/traces``: the SDK's OTLP/HTTP exporter. The
  request goes through the one ingest path of ``/v1/traces``
  (otlp.answer_export: the same decoding, mapping, idempotence, limits,
  ``partial_success`` and google.rpc.Status errors); the ``langfuse.*``
  attributes are mapped in otlp_mapping.
- ``GET /api/public/projects`` (``langfuse.auth_check()``, trace URLs): the
  key's project.
- ``GET /api/public/v2/prompts/{name}`` (``langfuse.get_prompt``): the
  prompt store of ``lucidic prompts set``, as Langfuse text prompts.
- ``POST /api/public/scores`` (``create_score``, ``score_current_trace``,
  ``span.score``...): a score of the session the trace (or the session id)
  names, or of the observation's step or event; a trace whose spans have not
  arrived yet is given its session now, which they join.
- ``GET /api/public/health``.
- Everything else under ``/api/public`` (datasets, media uploads, reading
  traces or scores back through Langfuse's API, prompt writes...) is the
  Langfuse platform's: a 404 whose ``detail`` (and ``message``, which
  Langfuse's own errors carry) names the feature and what to use instead,
  as lucidicai3 answers the hosted Lucidic platform's features.

Credentials are HTTP Basic, ``public_key:secret_key``, as every Langfuse SDK
sends them: the secret key is a Lucidic API key (its project is where
everything goes); the public key is not checked (Langfuse's SDK only needs
one to be set; any text will do). ``Authorization: Bearer KEY`` works too.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from typing import Annotated, Any, Optional

from fastapi import APIRouter, Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials
from starlette.responses import Response

from .. import __version__, _scores, prompts
from ..errors import InvalidOperationError
from ..store import Record, Store
from .app import Db, credentials_in, identity
from .models import valid_id
from .otlp import OPENAPI_BODY, OPENAPI_RESPONSES, answer_export, raw_body
from .otlp import PATH as OTLP_PATH
from .otlp_ingest import deleted_reason, lock_traces, trace_rows
from .problems import ApiError, JSONOut, error_forms

router = APIRouter(prefix="/api/public", tags=["langfuse"])

TRACES_PATH = "/api/public/otel/v1/traces"
#: Errors of the OTLP route are google.rpc.Status messages there too.
error_forms[TRACES_PATH] = error_forms[OTLP_PATH]

_NO_KEY = ("no Lucidic API key: Langfuse's SDK sends its keys as HTTP Basic credentials; set "
           "LANGFUSE_SECRET_KEY to a key from `lucidic keys create` (LANGFUSE_PUBLIC_KEY "
           "may be any text)")


def langfuse_key(request: Request) -> HTTPAuthorizationCredentials | None:
    """The Lucidic API key a Langfuse client sends: the secret key (the
    password) of ``Authorization: Basic base64(public_key:secret_key)``, or
    the key of ``Bearer``/``Api-Key``."""
    header = request.headers.get("Authorization", "")
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return credentials_in(header)
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    secret = decoded.partition(":")[2].strip()
    return HTTPAuthorizationCredentials(scheme="Basic", credentials=secret) if secret else None


def _key_refused(detail: str | None = None) -> ApiError:
    """A 401 saying what to set: the key is missing, or ``detail`` says why
    it was refused. (``message`` is where Langfuse's SDK looks for the words.)"""
    detail = _NO_KEY if detail is None else (
        f"{detail} (set LANGFUSE_SECRET_KEY to a key from `lucidic keys create`)")
    return ApiError(401, detail, headers={"WWW-Authenticate": "Basic"}, message=detail)


def _project(request: Request, db: Db) -> str:
    """The project of the key the request carries, or a 401 saying what to set."""
    credentials = langfuse_key(request)
    if credentials is None:
        raise _key_refused()
    try:
        return identity(credentials, db).project
    except ApiError as exc:
        raise _key_refused(exc.detail) from exc


Project = Annotated[str, Depends(_project)]


@router.post("/otel/v1/traces", summary="OTLP/HTTP trace export of Langfuse's SDKs (v3 and "
                                        "newer): as /v1/traces, with Basic credentials",
             response_class=Response, openapi_extra=OPENAPI_BODY, responses=OPENAPI_RESPONSES)
def export_traces(request: Request, db: Db, body: Annotated[bytes, Depends(raw_body)]
                  ) -> Response:
    credentials = langfuse_key(request)
    if credentials is None:
        raise _key_refused()
    try:
        return answer_export(request, db, body, credentials)
    except ApiError as exc:
        if exc.status != 401:
            raise
        raise _key_refused(exc.detail) from exc


@router.get("/projects", summary="The key's project (langfuse.auth_check())")
def projects(project: Project) -> JSONOut:
    return JSONOut({"data": [{"id": project, "name": project, "metadata": {},
                              "organization": {"id": "lucidic", "name": "lucidic"}}]})


@router.get("/health", summary="Liveness, as Langfuse's health check answers it")
def health(db: Db) -> JSONOut:
    db.schema_version()  # the database answers
    return JSONOut({"status": "OK", "version": __version__})


@router.get("/v2/prompts/{prompt_name:path}",
            summary="A prompt of `lucidic prompts set`, as a Langfuse text prompt "
                    "(langfuse.get_prompt)")
def get_prompt(project: Project, db: Db, prompt_name: str,
               label: Annotated[Optional[str], Query(max_length=64)] = None,  # noqa: UP045
               version: Annotated[Optional[int], Query(ge=1, le=2**31)] = None  # noqa: UP045
               ) -> JSONOut:
    if label is None and version is None:
        label = "production"  # Langfuse's default
    found = prompts.get_prompt(db, project, prompt_name, label=label, version=version) \
        if 0 < len(prompt_name) <= 256 else None
    if found is None:
        which = f"version {version}" if version is not None else f"label {label!r}"
        detail = (f"prompt {prompt_name!r} has no {which} in this project; set it with "
                  f"`lucidic prompts set NAME --label LABEL FILE --project {project}`")
        raise ApiError(404, detail, message=detail, error="LangfuseNotFoundError")
    return JSONOut({"type": "text", "name": found["name"], "version": found["version"],
                    "prompt": found["content"], "config": {}, "labels": found["labels"],
                    "tags": [], "commitMessage": None})


# -- scores -------------------------------------------------------------------------------

_HEX = frozenset("0123456789abcdef")


def _hex(value: Any, size: int) -> str | None:
    text = value.lower() if isinstance(value, str) else ""
    return text if len(text) == size and set(text) <= _HEX and set(text) != {"0"} else None


def _score_value(item: dict[str, Any]) -> _scores.ScoreValue:
    """A Langfuse score's value as ours: BOOLEAN 1 or 0 as a bool, CATEGORICAL
    (and any text) as a label, the rest a number."""
    value, kind = item.get("value"), item.get("dataType")
    if kind == "BOOLEAN":
        if value not in (0, 1) or isinstance(value, str):
            raise ValueError(f"a BOOLEAN score's value is 1 or 0, not {value!r:.80}")
        return bool(value)
    if kind in (None, "NUMERIC"):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(f"a score's value is a number or a text, not {value!r:.80}")
        if kind == "NUMERIC" and isinstance(value, str):
            raise ValueError(f"a NUMERIC score's value is a number, not {value!r:.80}")
        return value
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise ValueError(f"a {kind} score's value is a text, not {value!r:.80}")
    return str(value)


def _score_record(db: Store, cur: Any, project: str, item: Any) -> Record:
    """One Langfuse score as our score record on the session its trace (or
    session) landed in, or on the step or event of its observation;
    ValueError says why it cannot be."""
    if not isinstance(item, dict):
        raise ValueError(f"a score is a JSON object, not {type(item).__name__}")
    try:
        score = _scores.Score(item.get("name"), _score_value(item),  # type: ignore[arg-type]
                              item.get("comment") if isinstance(item.get("comment"), str)
                              else None)
    except InvalidOperationError as exc:
        raise ValueError(str(exc)) from exc
    trace_id, session_id = item.get("traceId"), item.get("sessionId")
    if trace_id is not None:
        trace = _hex(trace_id, 32)
        if trace is None:
            raise ValueError(f"traceId {str(trace_id)[:80]!r} is not an OpenTelemetry trace "
                             "id (32 hexadecimal digits)")
        observation = item.get("observationId")
        span = None if observation is None else _hex(observation, 16)
        if observation is not None and span is None:
            raise ValueError(f"observationId {str(observation)[:80]!r} is not an "
                             "OpenTelemetry span id (16 hexadecimal digits)")
        session, rows = trace_rows(db, cur, project, trace, [span] if span else [])
        kind, row = rows[span] if span else (None, None)
        return _scores.score_record(score, session, source="langfuse",
                                    step_id=row if kind == "step" else None,
                                    event_id=row if kind == "event" else None)
    if session_id is not None:
        if not isinstance(session_id, str) or not valid_id(session_id):
            raise ValueError(f"sessionId {str(session_id)[:80]!r} is not 1 to 256 printable "
                             "characters")
        ph = db.placeholder
        if db.deleted_in(cur, [session_id]):
            raise ValueError(deleted_reason(session_id))
        # A session its traces have not named yet is made now; they join it.
        now = time.time()
        cur.execute(f"INSERT INTO sessions (id, project, started_at, updated_at) VALUES ({ph}, "
                    f"{ph}, {ph}, {ph}) ON CONFLICT (id) DO NOTHING",
                    (session_id, project, now, now))
        cur.execute(f"SELECT project FROM sessions WHERE id = {ph}", (session_id,))
        if cur.fetchone()[0] != project:
            raise ValueError(f"session {session_id!r} belongs to another project")
        db.note_changed(cur, [session_id])
        return _scores.score_record(score, session_id, source="langfuse")
    raise ValueError("a score here names a traceId or a sessionId (a dataset run's scores "
                     "are the Langfuse platform's)")


@router.post("/scores", summary="Langfuse scores (create_score, score_current_trace, "
                                "span.score...): scores of the session, step or event",
             status_code=202)
def create_scores(project: Project, db: Db, body: Annotated[bytes, Depends(raw_body)]
                  ) -> JSONOut:
    try:
        items = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, f"the body is not valid JSON ({exc})", message=str(exc)) from exc
    batch = items if isinstance(items, list) else [items]
    errors: list[str] = []

    def run(cur: Any) -> None:
        # The traces named, locked in one order for every request (as ingest does).
        lock_traces(db, cur, project, sorted({
            trace for trace in (_hex(item.get("traceId"), 32) for item in batch
                                if isinstance(item, dict)) if trace is not None}))
        records = []
        for n, item in enumerate(batch):
            try:
                records.append(_score_record(db, cur, project, item))
            except ValueError as exc:
                errors.append(f"score {n} was refused: {exc}")
        if records:
            db.apply(cur, records, project)

    db.transaction(run)
    if not errors:
        return JSONOut({"message": "Accepted"}, status_code=202)
    # Langfuse's answer when some scores were refused: its client logs the reasons.
    return JSONOut({"accepted": len(batch) - len(errors), "rejected": len(errors),
                    "errors": [{"message": e} for e in errors]}, status_code=207)


# -- what only the Langfuse platform has ---------------------------------------------------

_READING = ("GET /api/v1/sessions/{id}/tree, `lucidic sessions show ID`, or the web UI "
            "(a Langfuse session is a Lucidic session; a trace without one is a session "
            "of its own)")
#: (the first segment of the path under /api/public, the feature, what to do instead)
_PLATFORM: list[tuple[tuple[str, ...], str, str]] = [
    (("scores", "score-configs"), "reading scores or score configurations through "
     "Langfuse's API", "GET /api/v1/sessions/{id}/tree (its scores), or the web UI"),
    (("media",), "media uploads", "set LANGFUSE_MEDIA_UPLOAD_ENABLED=false so that images "
     "and files stay in the observation's input and output (up to 4 MiB a value)"),
    (("datasets", "dataset-items", "dataset-run-items", "experiments"), "datasets",
     "keep cases in code and run them with lucidic.evals.run_experiment"),
    (("prompts",), "writing or listing prompts through the API",
     "set them with `lucidic prompts set NAME --label LABEL FILE --project P`; "
     "langfuse.get_prompt reads them"),
    (("traces", "observations", "sessions", "metrics", "comments"),
     "reading traces back through Langfuse's API", _READING),
    (("ingestion",), "the ingestion API of Langfuse SDKs before v3", "upgrade the Langfuse "
     "SDK to v3 or newer, which sends OpenTelemetry (or export OTLP to /v1/traces)"),
]


def _platform_feature(path: str) -> tuple[str, str]:
    segments = path.strip("/").split("/")
    if segments[0] in ("v1", "v2", "v3") and len(segments) > 1:
        segments = segments[1:]
    first = segments[0]
    for heads, feature, instead in _PLATFORM:
        if first in heads:
            return feature, instead
    return (f"/api/public/{path.strip('/')}", "this server records traces (OTLP at "
            "/api/public/otel/v1/traces), answers auth_check and get_prompt, and nothing else "
            "of Langfuse's API")


@router.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                  summary="Not here: the Langfuse platform's own features; answers 404 "
                          "saying what to use instead")
def platform_only(path: str, project: Project) -> Any:
    feature, instead = _platform_feature(path)
    detail = (f"not available on a self-hosted lucidic server: {feature} (a feature of the "
              f"Langfuse platform; this server records Langfuse traces as sessions, steps "
              f"and events); instead: {instead}")
    raise ApiError(404, detail, message=detail, error="LangfuseNotFoundError")
