"""The column table (lucidic.columns) is the one source of every column's
type: the schema the migrations build agrees with it on both backends, and
the server's models and the plugin API read their types from it."""

from __future__ import annotations

import sqlite3
from typing import Any

from pydantic import TypeAdapter

import lucidic as lai
from lucidic import plugins
from lucidic.columns import COLUMN_TYPES, ColumnType
from lucidic.server import models
from lucidic.store import EVENT_COLUMNS, SESSION_COLUMNS, STEP_COLUMNS, Store
from lucidic.testing import capture

_TABLES = {"sessions": SESSION_COLUMNS, "steps": STEP_COLUMNS, "events": EVENT_COLUMNS}


def _declared_types(db_url: str, table: str) -> dict[str, str]:
    if db_url.startswith("postgresql"):
        import psycopg

        with psycopg.connect(db_url) as conn:
            rows: list[Any] = conn.execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_name = %s AND table_schema = current_schema()", (table,)).fetchall()
        return {name: kind.upper() for name, kind in rows}
    with sqlite3.connect(db_url[len("sqlite:///"):]) as conn:
        return {row[1]: row[2].upper() for row in conn.execute(f"PRAGMA table_info({table})")}


def test_the_schema_the_migrations_build_has_the_column_tables_types(db_url: str) -> None:
    Store(db_url).close()  # a fresh database, migrated from version 1 up
    for table, columns in _TABLES.items():
        declared = _declared_types(db_url, table)
        assert set(declared) == {"id", *columns, "updated_at"}, table
        assert declared == {name: COLUMN_TYPES[name].sql for name in declared}, table
    assert set(COLUMN_TYPES) == {"id", "updated_at", *SESSION_COLUMNS, *STEP_COLUMNS,
                                 *EVENT_COLUMNS}


def test_the_servers_request_models_take_each_column_as_its_type() -> None:
    def field_schema(model: Any, column: str) -> Any:
        prop = TypeAdapter(model).json_schema()["properties"][column]
        return next(p for p in prop.get("anyOf", [prop]) if p.get("type") != "null")

    expected = {ColumnType.TEXT: "string", ColumnType.ID: "string", ColumnType.REAL: "number",
                ColumnType.INT: "integer", ColumnType.BOOL: "boolean",
                ColumnType.TEXT_LIST: "array"}
    for model, columns in ((models.SessionFields, SESSION_COLUMNS),
                           (models.StepFields, STEP_COLUMNS), (models.EventFields, EVENT_COLUMNS)):
        for column in columns:
            kind = COLUMN_TYPES[column]
            schema = field_schema(model, column)
            if kind is ColumnType.JSON:
                assert "type" not in schema, (column, schema)  # any JSON value
            else:
                assert schema["type"] == expected[kind], (column, schema)
            if kind is ColumnType.ID:
                assert schema["maxLength"] == models.MAX_ID_LENGTH, column


def test_record_event_gives_every_field_its_columns_type() -> None:
    with capture() as recorded:
        lai.init(session_name="columns")
        plugins.record_event("generic", input_tokens="7", cost="0.5", tokens_estimated=0,
                             attributes={"k": [1, "v"]},
                             screenshots=("a.png",), description=12)
        lai.end_session()
    (record,) = [r for r in recorded.records if r[0] == "event"]
    fields = record[3]
    assert fields["input_tokens"] == 7 and type(fields["input_tokens"]) is int
    assert fields["cost"] == 0.5 and type(fields["cost"]) is float
    assert fields["tokens_estimated"] is False
    assert fields["attributes"] == {"k": [1, "v"]}  # a JSON document, not its text
    assert fields["screenshots"] == ["a.png"] and fields["description"] == "12"
    (event,) = recorded.events()
    assert event["attributes"] == {"k": [1, "v"]} and event["tokens_estimated"] is False


def test_record_event_drops_a_duration_the_server_would_refuse() -> None:
    # The server refuses a negative duration (or time to first token), as it
    # refuses a cost beyond MAX_COST: a plugin's is dropped (null), not
    # sent to be refused with the rest of its event.
    with capture() as recorded:
        lai.init(session_name="durations")
        plugins.record_event("tool", description="backwards", duration=-1.0,
                             time_to_first_token=-0.25)
        plugins.record_event("tool", description="forwards", duration="2.5",
                             time_to_first_token=0)
        lai.end_session()
    events = {e["description"]: e for e in recorded.events()}
    assert (events["backwards"]["duration"], events["backwards"]["time_to_first_token"]) == (
        None, None)
    assert (events["forwards"]["duration"], events["forwards"]["time_to_first_token"]) == (
        2.5, 0.0)
    for event in events.values():
        fields = {k: v for k, v in event.items() if k in models.EventFields.__annotations__}
        TypeAdapter(models.EventFields).validate_python(fields)  # what the server takes
