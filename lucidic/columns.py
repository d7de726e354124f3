"""The columns of sessions, steps and events, each with its type: written once.

Everything that needs a column's type reads it here: the store's schema (its
SQL type, whether it holds a JSON document or a flag), the server's request
and response models (``lucidic.server.models``), and the plugin API's field
coercion (``lucidic.plugins``). A column has one type in every table that
has it.

Which table has which columns, in which order, is the store's (its column
lists and the migrations that made them, which are history and never
change). A new column is added here, to its table's list in ``lucidic.store``,
and by a new migration there that takes its SQL type from :func:`sql_type`.

Imports nothing of Lucidic: the SDK and the server both read it.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["BOOL_COLUMNS", "COLUMN_TYPES", "JSON_COLUMNS", "ColumnType", "sql_type"]


class ColumnType(Enum):
    """What a column holds."""

    TEXT = "text"
    #: Text that names a row (a session, step, experiment...): the server
    #: holds it to the rules of a client-made id.
    ID = "id"
    REAL = "real"
    INT = "int"
    #: True or false, stored as 0 or 1.
    BOOL = "bool"
    #: A JSON document (any JSON value), stored as its text.
    JSON = "json"
    #: A JSON list of strings (tags, screenshot references), stored as its text.
    TEXT_LIST = "text list"

    @property
    def sql(self) -> str:
        """The SQL type: a name both SQLite (by affinity) and PostgreSQL understand."""
        return _SQL_TYPES[self]

    @property
    def is_json(self) -> bool:
        return self in (ColumnType.JSON, ColumnType.TEXT_LIST)


_SQL_TYPES = {
    ColumnType.TEXT: "TEXT", ColumnType.ID: "TEXT", ColumnType.REAL: "DOUBLE PRECISION",
    ColumnType.INT: "BIGINT", ColumnType.BOOL: "SMALLINT", ColumnType.JSON: "TEXT",
    ColumnType.TEXT_LIST: "TEXT",
}

_T, _ID, _REAL, _INT, _BOOL, _JSON, _LIST = (
    ColumnType.TEXT, ColumnType.ID, ColumnType.REAL, ColumnType.INT, ColumnType.BOOL,
    ColumnType.JSON, ColumnType.TEXT_LIST)

#: Every column of the sessions, steps and events tables, by name.
COLUMN_TYPES: dict[str, ColumnType] = {
    # every table's own: the client-made id, and the timestamp of the newest
    # record merged into the row
    "id": _ID, "updated_at": _REAL,
    # what sessions, steps and events share
    "session_id": _ID, "started_at": _REAL, "ended_at": _REAL, "is_finished": _BOOL,
    "error": _T, "function_name": _T, "attributes": _JSON,
    "writer_host": _T, "writer_pid": _INT, "writer_agent": _T,
    # sessions
    "project": _T, "agent_id": _T, "name": _T, "task": _T, "tags": _LIST,
    "is_successful": _BOOL, "is_successful_reason": _T, "session_eval": _REAL,
    "session_eval_reason": _T, "mass_sim_id": _ID, "experiment_id": _ID, "rubrics": _JSON,
    # sessions that are evaluation runs (lucidic.evalstore)
    "case_id": _T, "repeat": _INT, "expected": _JSON, "production_monitoring": _BOOL,
    # steps
    "parent_step_id": _ID, "state": _T, "action": _T, "goal": _T, "eval_score": _REAL,
    "eval_description": _T, "screenshot": _T, "screenshot_path": _T,
    # events
    "step_id": _ID, "type": _T, "description": _T, "result": _T, "model": _T,
    "request_model": _T, "provider": _T, "input": _JSON, "output": _JSON,
    "input_tokens": _INT, "output_tokens": _INT, "cached_tokens": _INT,
    "reasoning_tokens": _INT, "cache_write_tokens": _INT, "tokens_estimated": _BOOL,
    "cost": _REAL, "duration": _REAL, "time_to_first_token": _REAL, "arguments": _JSON,
    "screenshots": _LIST, "replayed_from": _ID,
}

#: Columns holding JSON documents (stored as their text on both backends).
JSON_COLUMNS = frozenset(name for name, kind in COLUMN_TYPES.items() if kind.is_json)
#: Columns holding true or false (stored as 0 or 1).
BOOL_COLUMNS = frozenset(name for name, kind in COLUMN_TYPES.items() if kind is ColumnType.BOOL)


def sql_type(column: str) -> str:
    """The column's SQL type (KeyError for a column this table does not know)."""
    return COLUMN_TYPES[column].sql
