"""The API's request and response shapes, built from the store's columns so
the schema is written once (in ``lucidic.store``)."""

from __future__ import annotations

import email.message
import json
import math
from typing import Annotated, Any, Literal, Optional, Union, cast

from fastapi import HTTPException
from fastapi.exceptions import RequestValidationError
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    create_model,
    model_validator,
)
from typing_extensions import NotRequired, Required, TypedDict

from ..limits import INT_MAX, INT_MIN, MAX_BATCH_RECORDS, MAX_ID_LENGTH, MAX_TEXT_CHARS
from ..store import (
    BOOL_COLUMNS,
    EVENT_COLUMNS,
    JSON_COLUMNS,
    SESSION_COLUMNS,
    STEP_COLUMNS,
)

MAX_BATCH = MAX_BATCH_RECORDS
_MAX_DEPTH = 64


def valid_id(value: str) -> bool:
    return 0 < len(value) <= MAX_ID_LENGTH and value.isprintable()


#: str.isprintable() as a pattern (checked in Rust, not per id in Python):
#: no control, format, private-use, unassigned or separator characters but space.
PRINTABLE = r"^(?:[^\p{C}\p{Z}]| )+$"
Id = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH, pattern=PRINTABLE,
                          description="a client-made id: 1 to 256 printable characters")]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
Int64 = Annotated[int, Field(ge=INT_MIN, le=INT_MAX)]


def check_json_text(value: Any, path: str = "body", depth: int = 0) -> str | None:
    """Where in a parsed JSON document a value no backend can store sits: a
    string with a NUL character or an unpaired surrogate, a number that is
    not finite, or nesting deeper than 64 levels. None if there is none."""
    if isinstance(value, str):
        if "\x00" in value:
            return f"{path} contains a NUL character (\\u0000), which cannot be stored"
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return f"{path} contains an unpaired UTF-16 surrogate, which is not valid Unicode"
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{path} is not a finite number"
    if depth > _MAX_DEPTH:
        return f"{path} is nested more than {_MAX_DEPTH} levels deep"
    if isinstance(value, dict):
        for key, item in value.items():
            problem = (check_json_text(key, f"{path} key", depth + 1)
                       or check_json_text(item, f"{path}.{key}", depth + 1))
            if problem:
                return problem
    elif isinstance(value, list):
        for index, item in enumerate(value):
            problem = check_json_text(item, f"{path}[{index}]", depth + 1)
            if problem:
                return problem
    return None


_FLOATS = {"started_at", "ended_at", "eval_score", "session_eval", "cost", "duration",
           "time_to_first_token"}
_INTS = {"input_tokens", "output_tokens", "cached_tokens", "cache_write_tokens",
         "reasoning_tokens", "writer_pid", "repeat"}
_STRING_LISTS = {"tags", "screenshots"}
_IDS = {"session_id", "parent_step_id", "step_id", "experiment_id", "mass_sim_id",
        "replayed_from"}


def _column_type(column: str) -> Any:
    if column in _FLOATS:
        return FiniteFloat
    if column in _INTS:
        return Int64
    if column in BOOL_COLUMNS:
        return bool
    if column in _STRING_LISTS:
        return list[str]
    if column in JSON_COLUMNS:
        return Any
    if column in _IDS:
        return Id
    return str


def _fields_model(name: str, columns: tuple[str, ...], required: str | None) -> Any:
    definitions: dict[str, Any] = {}
    for column in columns:
        kind = _column_type(column)
        if column == required:
            definitions[column] = (kind, ...)
        else:
            definitions[column] = (Optional[kind], None)  # noqa: UP045 - pydantic needs it
    return create_model(name, __config__=ConfigDict(extra="forbid"), **definitions)


SessionFields = _fields_model("SessionFields", SESSION_COLUMNS, None)
StepFields = _fields_model("StepFields", STEP_COLUMNS, "session_id")
EventFields = _fields_model("EventFields", EVENT_COLUMNS, "session_id")


class _RecordBase(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: Id
    ts: FiniteFloat = Field(description="when the client made this version of the record "
                                        "(seconds since the epoch); the newest value of "
                                        "each field wins, whatever the arrival order")


class SessionRecord(_RecordBase):
    kind: Literal["session"]
    fields: SessionFields  # type: ignore[valid-type]


class StepRecord(_RecordBase):
    kind: Literal["step"]
    fields: StepFields  # type: ignore[valid-type]


class EventRecord(_RecordBase):
    kind: Literal["event"]
    fields: EventFields  # type: ignore[valid-type]


# -- evaluation records (lucidic.evalstore) ----------------------------------------

Name = Annotated[str, Field(min_length=1, max_length=200)]
Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS)]
Count = Annotated[int, Field(ge=0, le=INT_MAX)]

#: Each evaluation kind's fields: (type, required).
_EVALUATION_FIELDS: dict[str, dict[str, tuple[Any, bool]]] = {
    "experiment": {
        "project": (Name, False), "name": (Text, False), "rubrics": (list[Name], False),
        "evaluators": (list[Any], False), "summary_evaluators": (list[Text], False),
        "metadata": (Any, False), "tags": (list[str], False), "repeats": (Count, False),
        "max_concurrency": (Count, False), "case_count": (Count, False),
        "replay_of": (Id, False), "replay_mode": (Name, False), "summary": (Any, False),
        "created_at": (FiniteFloat, False)},
    "mass_sim": {
        "project": (Name, False), "name": (Text, False), "task": (Text, False),
        "tags": (list[str], False), "total_num_sims": (Count, False),
        "agent_id": (Text, False), "created_at": (FiniteFloat, False)},
    "score": {
        "session_id": (Id, True), "step_id": (Id, False), "event_id": (Id, False),
        "name": (Name, True), "kind": (Literal["number", "bool", "label"], False),
        "value": (FiniteFloat, False), "label": (Text, False), "comment": (Text, False),
        "passed": (bool, False), "source": (Name, False), "evaluator": (Name, False),
        "evaluator_session_id": (Id, False), "created_at": (FiniteFloat, False)},
}


def _evaluation_fields(kind: str) -> Any:
    fields: dict[str, Any] = {
        column: (kind_, ...) if required else (Optional[kind_], None)  # noqa: UP045
        for column, (kind_, required) in _EVALUATION_FIELDS[kind].items()}
    return create_model(f"{kind.title().replace('_', '')}Fields",
                        __config__=ConfigDict(extra="forbid"), **fields)


ExperimentFields = _evaluation_fields("experiment")
MassSimFields = _evaluation_fields("mass_sim")
ScoreFields = _evaluation_fields("score")


class ExperimentRecord(_RecordBase):
    kind: Literal["experiment"]
    fields: ExperimentFields  # type: ignore[valid-type]


class MassSimRecord(_RecordBase):
    kind: Literal["mass_sim"]
    fields: MassSimFields  # type: ignore[valid-type]


class ScoreRecord(_RecordBase):
    kind: Literal["score"]
    fields: ScoreFields  # type: ignore[valid-type]


def _evaluation_dicts() -> list[Any]:
    """The evaluation records for the raw-body road (see below)."""
    out = []
    for kind, columns in _EVALUATION_FIELDS.items():
        items = {column: Required[kind_] if required else NotRequired[Optional[kind_]]  # noqa: UP045
                 for column, (kind_, required) in columns.items()}
        name = kind.title().replace("_", "")
        out.append(_record_dict(f"_{name}Record", kind, _typed_dict(f"_{name}Fields", items)))
    return out


AnyRecord = Annotated[Union[SessionRecord, StepRecord, EventRecord,  # noqa: UP007
                            ExperimentRecord, MassSimRecord, ScoreRecord],
                      Field(discriminator="kind")]


class Batch(BaseModel):
    """Records to apply. Idempotent: each record is an upsert keyed by its id,
    so a retried batch never duplicates anything, and batches from several
    processes may arrive in any order. A session record creates or updates a
    session of the key's project; every step, event and score must name a
    session of that project (existing, or created in the same batch).
    Experiment and mass simulation records create or update the project's."""

    model_config = ConfigDict(extra="forbid")
    records: list[AnyRecord] = Field(max_length=MAX_BATCH)

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        if not _clean_quickly(data):
            problem = check_json_text(data)
            if problem:
                raise ValueError(problem)
        return data


def _clean_quickly(data: Any) -> bool:
    """True when check_json_text would find nothing, found at C speed for the
    usual batch: serialise it (refusing NaN), look for NUL and surrogates in
    the text, and walk only the free-form JSON documents for their depth."""
    try:
        text = json.dumps(data, ensure_ascii=False, allow_nan=False)
        text.encode("utf-8")
    except (ValueError, TypeError):  # NaN/inf, lone surrogates, non-JSON input
        return False
    if "\\u0000" in text:
        return False
    records = data.get("records") if isinstance(data, dict) else None
    if not isinstance(records, list):
        return True
    for record in records:
        fields = record.get("fields") if isinstance(record, dict) else None
        if isinstance(fields, dict):
            for column in _DOCUMENTS:
                value = fields.get(column)
                if isinstance(value, (dict, list)) and _depth(value) > _MAX_DEPTH:
                    return False
    return True


_DOCUMENTS = tuple(JSON_COLUMNS)


def _depth(value: Any, level: int = 1) -> int:
    if level > _MAX_DEPTH:
        return level
    items = value.values() if isinstance(value, dict) else value
    deepest = level
    for item in items:
        if isinstance(item, (dict, list)):
            deepest = max(deepest, _depth(item, level + 1))
            if deepest > _MAX_DEPTH:
                break
    return deepest


# -- the ingest path ------------------------------------------------------------
#
# ``Batch`` documents the body and reports its errors. Accepting a body takes
# a faster road: the same rules as TypedDicts, validated by pydantic straight
# from the raw bytes (no json.loads, no model instances, no model_dump), then
# only the checks those rules cannot express. Whatever that road refuses (or
# cannot vouch for) is judged again by ``Batch`` exactly as FastAPI would, so
# every error reads as before.

#: TypedDict, called with keys known only at run time (which type checkers
#: cannot follow, hence Any).
_make_typed_dict: Any = TypedDict


def _typed_dict(name: str, items: dict[str, Any]) -> Any:
    shape = _make_typed_dict(name, items)
    shape.__pydantic_config__ = ConfigDict(extra="forbid")  # as the models
    return shape


def _fields_dict(name: str, columns: tuple[str, ...], required: str | None) -> Any:
    items: dict[str, Any] = {}
    for column in columns:
        kind = _column_type(column)
        items[column] = Required[kind] if column == required else NotRequired[Optional[kind]]  # noqa: UP045
    return _typed_dict(name, items)


def _record_dict(name: str, kind: str, fields: Any) -> Any:
    return _typed_dict(name, {"kind": Literal[kind], "id": Id, "ts": FiniteFloat,
                              "fields": fields})


def _batch_dict() -> Any:
    shapes = (
        _record_dict("_SessionRecord", "session",
                     _fields_dict("_SessionFields", SESSION_COLUMNS, None)),
        _record_dict("_StepRecord", "step",
                     _fields_dict("_StepFields", STEP_COLUMNS, "session_id")),
        _record_dict("_EventRecord", "event",
                     _fields_dict("_EventFields", EVENT_COLUMNS, "session_id")),
        *_evaluation_dicts(),
    )
    records: Any = Union[shapes]  # noqa: UP007
    return _typed_dict("_BatchDict", {
        "records": Annotated[list[Annotated[records, Field(discriminator="kind")]],
                             Field(max_length=MAX_BATCH)]})


_FAST_BATCH: TypeAdapter[Any] = TypeAdapter(_batch_dict())

#: (kind, id, ts, fields): lucidic.store.Record, as the ingest path hands it on.
IngestRecord = tuple[str, str, float, dict[str, Any]]


def parse_batch(body: bytes, content_type: str | None) -> list[IngestRecord]:
    """The records of an ingest request body, or the error FastAPI would have
    raised for a ``Batch`` body parameter (RequestValidationError, or an
    HTTPException for a body that cannot be decoded at all)."""
    if body and _is_json(content_type):
        try:
            records = _FAST_BATCH.validate_json(body)["records"]
        except ValidationError:
            pass
        else:
            if _storable(body, records):
                return [(r["kind"], r["id"], r["ts"], r["fields"]) for r in records]
    batch = _validate_as_fastapi_would(body, content_type)
    return [(r.kind, r.id, r.ts, cast(Any, r.fields).model_dump(exclude_none=True))
            for r in batch.records]


def _is_json(content_type: str | None) -> bool:
    """FastAPI's rule for parsing a body as JSON (strict: a Content-Type is required)."""
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    if message.get_content_maintype() != "application":
        return False
    subtype = message.get_content_subtype()
    return subtype == "json" or subtype.endswith("+json")


def _storable(body: bytes, records: list[dict[str, Any]]) -> bool:
    """What ``Batch._storable`` checks, for a body the fast road accepted.
    Its JSON parser already refuses raw control characters and unpaired
    surrogates, and the typed fields refuse non-finite numbers, so what is
    left is a NUL (only ever sent as the escape ``\\u0000``) anywhere, and
    non-finite numbers or excessive depth inside the free-form documents."""
    if b"\\u0000" in body:
        return False
    for record in records:
        fields = record["fields"]
        for column in _DOCUMENTS:
            value = fields.get(column)
            if value is None or isinstance(value, (str, bool, int)):
                continue
            if isinstance(value, float):
                if not math.isfinite(value):
                    return False
                continue
            try:
                json.dumps(value, allow_nan=False)
            except (ValueError, TypeError):
                return False
            if _depth(value) > _MAX_DEPTH:
                return False
    return True


def _validate_as_fastapi_would(body: bytes, content_type: str | None) -> Batch:
    """Validate ``body`` as FastAPI validates a ``Batch`` body parameter, with
    the same errors (which the problem handlers turn into 400/415/422)."""
    if not body:
        raise RequestValidationError([{"type": "missing", "loc": ("body",),
                                       "msg": "Field required", "input": None}])
    data: Any = body
    if _is_json(content_type):
        try:
            data = json.loads(body)
        except json.JSONDecodeError as exc:
            raise RequestValidationError([{"type": "json_invalid", "loc": ("body", exc.pos),
                                           "msg": "JSON decode error", "input": {},
                                           "ctx": {"error": exc.msg}}]) from exc
        except Exception as exc:  # undecodable bytes, say
            raise HTTPException(status_code=400,
                                detail="There was an error parsing the body") from exc
    try:
        return Batch.model_validate(data, from_attributes=True)  # as FastAPI does
    except ValidationError as exc:
        raise RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])}
             for error in exc.errors(include_url=False)]) from exc


class Accepted(BaseModel):
    accepted: int = Field(description="how many records were applied")


class Identity(BaseModel):
    project: str
    key_id: str


class Problem(BaseModel):
    """An error, as RFC 9457 application/problem+json."""

    model_config = ConfigDict(extra="allow")
    type: str = "about:blank"
    title: str
    status: int
    detail: str


class Totals(BaseModel):
    step_count: int = 0
    event_count: int = 0
    error_count: int = 0
    total_cost: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0


def _row_model(name: str, columns: tuple[str, ...], base: type[BaseModel]) -> Any:
    definitions: dict[str, Any] = {"id": (str, ...), "updated_at": (float, ...)}
    for column in columns:
        kind = _column_type(column)
        definitions[column] = (Optional[kind], None)  # noqa: UP045
    return create_model(name, __base__=base, **definitions)


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


Session = _row_model("Session", SESSION_COLUMNS, Totals)
Step = _row_model("Step", STEP_COLUMNS, _Open)
Event = _row_model("Event", EVENT_COLUMNS, _Open)


class StepNode(Step):  # type: ignore[misc, valid-type]
    steps: list[StepNode] = []
    events: list[Event] = []  # type: ignore[valid-type]


class SessionTree(Session):  # type: ignore[misc, valid-type]
    steps: list[StepNode] = []
    events: list[Event] = []  # type: ignore[valid-type]


class SessionPage(BaseModel):
    sessions: list[Session]  # type: ignore[valid-type]
    limit: int
    offset: int
    next_offset: Optional[int] = Field(  # noqa: UP045
        description="the offset of the next page, or null on the last one (offset paging)")
    next_cursor: Optional[str] = Field(  # noqa: UP045
        None, description="pass as `cursor` for the next page; null on the last one")
    total: Optional[int] = Field(  # noqa: UP045
        None, description="how many sessions match; null when searching")


class Continuable(BaseModel):
    session_id: str
    continuable: Literal[True] = True
    agent_id: Optional[str] = None  # noqa: UP045
