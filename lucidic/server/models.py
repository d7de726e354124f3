"""The API's request and response shapes, built from the store's column lists
and the column table (``lucidic.columns``), so the schema is written once."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model
from pydantic_core import PydanticSerializationError, to_json
from typing_extensions import NotRequired, Required, TypedDict

from ..columns import COLUMN_TYPES, ColumnType
from ..limits import (
    INT_MAX,
    INT_MIN,
    MAX_BATCH_RECORDS,
    MAX_COST,
    MAX_ID_LENGTH,
    MAX_TEXT_CHARS,
)
from ..store import EVENT_COLUMNS, SESSION_COLUMNS, STEP_COLUMNS

MAX_BATCH = MAX_BATCH_RECORDS
_MAX_DEPTH = 64


def valid_id(value: str) -> bool:
    return 0 < len(value) <= MAX_ID_LENGTH and value.isprintable()


#: str.isprintable() as a pattern (checked in Rust, not per id in Python):
#: no control, format, private-use, unassigned or separator characters but space.
PRINTABLE = r"^(?:[^\p{C}\p{Z}]| )+$"
PRINTABLE_OR_EMPTY = PRINTABLE.replace("+$", "*$")
Id = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH, pattern=PRINTABLE,
                          description="a client-made id: 1 to 256 printable characters")]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
#: How long something took, in seconds: a duration runs forwards.
Duration = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Int64 = Annotated[int, Field(ge=INT_MIN, le=INT_MAX)]
#: An event's cost in US dollars: bounded (limits.MAX_COST), so that any sum
#: of costs stays finite.
Cost = Annotated[float, Field(allow_inf_nan=False, ge=-MAX_COST, le=MAX_COST)]


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


def storable_json(value: Any, path: str = "value") -> Any:
    """A JSON value of a client's body (a list of tags, an object) as it is
    stored: a NUL character in any of its texts (an object's keys too)
    becomes U+FFFD, as in every text the server stores, plain or nested.
    ValueError names what no rule makes storable: an unpaired surrogate (as
    a plain text field's type refuses it), a number that is not finite,
    nesting deeper than 64 levels."""
    cleaned = _clean_texts(value, 0)
    problem = check_json_text(cleaned, path)
    if problem:
        raise ValueError(problem)
    return cleaned


def _clean_texts(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd") if "\x00" in value else value
    if depth > _MAX_DEPTH:  # left as it is: check_json_text refuses it
        return value
    if isinstance(value, dict):
        return {(_clean_texts(key, depth) if isinstance(key, str) else key):
                _clean_texts(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list):
        return [_clean_texts(item, depth + 1) for item in value]
    return value


#: What the API takes and answers for each type of column (lucidic.columns).
_API_TYPES: dict[ColumnType, Any] = {
    ColumnType.TEXT: str, ColumnType.ID: Id, ColumnType.REAL: FiniteFloat,
    ColumnType.INT: Int64, ColumnType.BOOL: bool, ColumnType.JSON: Any,
    ColumnType.TEXT_LIST: list[str],
}


def _column_type(column: str) -> Any:
    return _API_TYPES[COLUMN_TYPES[column]]


#: Columns a record carries with a tighter type than the column's (a stored
#: row may hold more: costs from before they were bounded, durations from
#: before they were refused below 0, as the lucidicai routes refuse them).
_INPUT_TYPES: dict[str, Any] = {"cost": Cost, "duration": Duration,
                                "time_to_first_token": Duration}


def _input_type(column: str) -> Any:
    """What a record may carry in ``column``."""
    return _INPUT_TYPES.get(column) or _column_type(column)


# -- the ingest body -----------------------------------------------------------------
#
# One schema, which FastAPI validates (the ingest route takes a ``Batch``) and
# documents. Its shapes are TypedDicts, not models: a validated batch is plain
# dicts already, the records the store takes, with no model instances to
# build and dump again (three times the cost per record).

#: TypedDict, called with keys known only at run time (which type checkers
#: cannot follow, hence Any).
_make_typed_dict: Any = TypedDict


def _shape(name: str, items: dict[str, Any], doc: str | None = None) -> Any:
    shape = _make_typed_dict(name, items)
    shape.__pydantic_config__ = ConfigDict(extra="forbid")
    if doc:
        shape.__doc__ = doc
    return shape


def _fields_shape(name: str, columns: tuple[str, ...], required: str | None) -> Any:
    return _shape(name, {
        column: Required[_input_type(column)] if column == required
        else NotRequired[Optional[_input_type(column)]]  # noqa: UP045 - pydantic needs it
        for column in columns})


SessionFields = _fields_shape("SessionFields", SESSION_COLUMNS, None)
StepFields = _fields_shape("StepFields", STEP_COLUMNS, "session_id")
EventFields = _fields_shape("EventFields", EVENT_COLUMNS, "session_id")

_Ts = Annotated[float, Field(allow_inf_nan=False,
                             description="when the client made this version of the record "
                                         "(seconds since the epoch); the newest value of "
                                         "each field wins, whatever the arrival order")]


def _record_shape(kind: str, fields: Any) -> Any:
    name = kind.title().replace("_", "")
    return _shape(f"{name}Record", {"kind": Literal[kind], "id": Id, "ts": _Ts,
                                    "fields": fields})


# -- evaluation records (lucidic.evalstore) ----------------------------------------

Name = Annotated[str, Field(min_length=1, max_length=200)]
Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS)]
#: What another client names things with (a tag, an agent id, a model, a
#: function name): a short text, maybe empty.
ShortText = Annotated[str, Field(max_length=4096)]
#: How many of something (the lucidicai routes' counts too): up to what a
#: 64-bit column holds.
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
    return _shape(f"{kind.title().replace('_', '')}Fields", {
        column: Required[type_] if required else NotRequired[Optional[type_]]  # noqa: UP045
        for column, (type_, required) in _EVALUATION_FIELDS[kind].items()})


_RECORD_SHAPES = (
    _record_shape("session", SessionFields), _record_shape("step", StepFields),
    _record_shape("event", EventFields),
    *(_record_shape(kind, _evaluation_fields(kind)) for kind in _EVALUATION_FIELDS))
AnyRecord: Any = Annotated[Union[_RECORD_SHAPES], Field(discriminator="kind")]  # noqa: UP007


def _storable(batch: Any) -> Any:
    """Refuse a batch holding what no backend can store (check_json_text): a
    NUL character or an unpaired surrogate in any text, a number that is not
    finite, or nesting deeper than 64 levels. The typed fields have refused
    non-finite numbers already; this finds the rest. The usual batch is
    cleared by a screen (serialising it in Rust refuses unpaired surrogates;
    a NUL or a non-finite number shows in the text; only nested values are
    measured); only a batch the screen suspects is walked, which names where
    the problem sits."""
    try:
        text = to_json(batch)
    except PydanticSerializationError:  # an unpaired surrogate
        suspect = True
    else:
        suspect = b"\\u0000" in text or b"NaN" in text or b"Infinity" in text
    if suspect or _deeply_nested(batch["records"]):
        problem = check_json_text(batch)
        if problem:
            raise ValueError(problem)
    return batch


#: Values nested deeper than this are walked by check_json_text (which counts
#: the levels of the batch above a field's value too: records, the record,
#: its fields).
_SCREEN_DEPTH = _MAX_DEPTH - 8


def _deeply_nested(records: list[dict[str, Any]]) -> bool:
    for record in records:
        for value in record["fields"].values():
            if isinstance(value, (dict, list)) and _depth(value) > _SCREEN_DEPTH:
                return True
    return False


def _depth(value: Any, level: int = 1) -> int:
    if level > _SCREEN_DEPTH:
        return level
    items = value.values() if isinstance(value, dict) else value
    deepest = level
    for item in items:
        if isinstance(item, (dict, list)):
            deepest = max(deepest, _depth(item, level + 1))
            if deepest > _SCREEN_DEPTH:
                break
    return deepest


Batch: Any = Annotated[
    _shape("Batch", {"records": Annotated[list[AnyRecord], Field(max_length=MAX_BATCH)]},
           doc="Records to apply. Idempotent: each record is an upsert keyed by its id, "
               "so a retried batch never duplicates anything, and batches from several "
               "processes may arrive in any order. A session record creates or updates a "
               "session of the key's project; every step, event and score must name a "
               "session of that project (existing, or created in the same batch). "
               "Experiment and mass simulation records create or update the project's."),
    AfterValidator(_storable)]


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
    #: LLM calls answered without token counts, or without a cost: not in the sums.
    llm_calls_without_tokens: int = 0
    llm_calls_without_cost: int = 0


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
    experiment_id: Optional[str] = None  # noqa: UP045
    rubrics: Optional[list[str]] = None  # noqa: UP045


def _storable_record(record: Any) -> Any:
    _storable({"records": [record]})
    return record


#: One session record, to create under its id (``POST /api/v1/sessions``).
NewSession: Any = Annotated[_RECORD_SHAPES[0], AfterValidator(_storable_record)]


class Created(BaseModel):
    session_id: str


class Deleted(BaseModel):
    session_id: str
    deleted: Literal[True] = True
