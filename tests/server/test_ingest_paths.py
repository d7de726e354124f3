"""The ingest body: one schema (``models.Batch``), validated by FastAPI as it
validates any body, that hands the store its records as they are; and
PostgreSQL's one-statement upserts (rows as one JSON document)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError
from server_support import Api, make_key

from lucidic.columns import COLUMN_TYPES, ColumnType
from lucidic.server import models
from lucidic.store import IdInUseError, Store

_BATCH: TypeAdapter[Any] = TypeAdapter(models.Batch)

_PYTHON_TYPES = {ColumnType.TEXT: str, ColumnType.ID: str, ColumnType.REAL: float,
                 ColumnType.INT: int, ColumnType.BOOL: bool, ColumnType.TEXT_LIST: list}


def _records(document: Any) -> list[tuple[str, str, float, dict[str, Any]]]:
    """The records the ingest route hands the store, for a parsed JSON body."""
    batch = _BATCH.validate_python(document)
    return [(r["kind"], r["id"], r["ts"], r["fields"]) for r in batch["records"]]


def test_a_batch_validates_into_the_stores_records_each_field_of_its_columns_type() -> None:
    document = {"records": [
        {"kind": "session", "id": "s", "ts": 1,
         "fields": {"name": "n", "tags": ["a", "é"], "is_finished": None, "session_eval": 1}},
        {"kind": "step", "id": "st", "ts": "2.5",
         "fields": {"session_id": "s", "eval_score": "4.5", "is_finished": "true"}},
        {"kind": "event", "id": "e", "ts": 3,
         "fields": {"session_id": "s", "input": [{"role": "user", "content": "hé 😀\t"}],
                    "output": {"a": [1, 2.5, None, True, {"x": "\\u0000 as text"}]},
                    "arguments": "plain", "input_tokens": 5.0, "cost": 3, "step_id": None}},
    ]}
    records = _records(document)
    assert [(kind, rid, ts) for kind, rid, ts, _ in records] == [
        ("session", "s", 1.0), ("step", "st", 2.5), ("event", "e", 3.0)]
    for _, _, ts, fields in records:
        assert type(ts) is float
        for column, value in fields.items():
            kind = COLUMN_TYPES[column]
            if value is not None and kind is not ColumnType.JSON:
                assert type(value) is _PYTHON_TYPES[kind], (column, value)
    session, step, event = (r[3] for r in records)
    assert session["session_eval"] == 1.0 and session["tags"] == ["a", "é"]
    assert step["is_finished"] is True and step["eval_score"] == 4.5
    assert event["input_tokens"] == 5 and event["cost"] == 3.0
    assert event["output"] == {"a": [1, 2.5, None, True, {"x": "\\u0000 as text"}]}


def _nested_event(levels: int, leaf: Any = "bottom") -> dict[str, Any]:
    value = leaf
    for _ in range(levels):
        value = [value]
    return {"records": [{"kind": "event", "id": "e", "ts": 1,
                         "fields": {"session_id": "s", "arguments": value}}]}


def _refused(document: Any) -> str | None:
    try:
        _BATCH.validate_python(document)
    except ValidationError as exc:
        return str(exc)
    return None


def test_the_schema_refuses_exactly_what_no_backend_can_store() -> None:
    # Around the depth limit (where the quick screen hands over to the walk)
    # the schema refuses exactly the documents check_json_text refuses.
    verdicts = {levels: _refused(_nested_event(levels)) for levels in range(40, 70)}
    assert {levels for levels, problem in verdicts.items() if problem} == {
        levels for levels in verdicts if models.check_json_text(_nested_event(levels))}
    assert any(verdicts.values()) and not all(verdicts.values())
    assert "nested more than 64 levels" in next(p for p in verdicts.values() if p)
    for leaf, word in (("a\x00b", "NUL"), ("lone \ud800", "surrogate"),
                       (math.nan, "finite"), (-math.inf, "finite")):
        problem = _refused(_nested_event(3, leaf))
        assert problem is not None and word in problem, (leaf, problem)
    # Any nested value is measured, not only the events' documents.
    metadata = _nested_event(100)["records"][0]["fields"]["arguments"]
    problem = _refused({"records": [{"kind": "experiment", "id": "x", "ts": 1, "fields": {
        "project": "p", "metadata": metadata}}]})
    assert problem is not None and "nested more than 64 levels" in problem
    # Text that only looks like a problem is stored as it is.
    for text in ("NaN", "-Infinity", "\\u0000", "tab\tnewline\n"):
        assert _refused(_nested_event(3, text)) is None, text
        assert _refused({"records": [{"kind": "step", "id": "s", "ts": 1, "fields": {
            "session_id": "x", "state": text}}]}) is None, text


def test_the_server_takes_any_json_encoding_fastapi_reads(sqlite_url: str,
                                                           start_server) -> None:
    server = start_server(sqlite_url)
    api = Api(server.url, make_key(sqlite_url, "encodings"))
    session = {"records": [{"kind": "session", "id": "enc", "ts": 1, "fields": {"name": "é"}}]}
    text = json.dumps(session, ensure_ascii=False)
    for body in (text.encode("utf-16"), b"\xef\xbb\xbf" + text.encode(), text.encode()):
        response = api.post("/api/v1/records", data=body,
                            headers={"Content-Type": "application/json"})
        assert response.status_code == 200 and response.json() == {"accepted": 1}, body[:8]
    assert api.tree("enc")["name"] == "é"


def test_postgresql_applies_a_repeated_id_in_order_and_stores_non_finite_numbers_as_null(
        pg_url: str) -> None:
    store = Store(pg_url)
    records = [("session", "S", 1.0, {"project": "p", "name": "n"}),
               # the same step id claimed by another session, then by its own
               # again: one statement could not upsert it twice
               ("step", "st", 2.0, {"session_id": "S", "state": "first"}),
               ("step", "st", 3.0, {"session_id": "other", "state": "foreign"}),
               ("step", "st", 4.0, {"session_id": "S", "state": "last"}),
               ("event", "e", 2.0, {"session_id": "S", "cost": math.nan,
                                    "description": "NaN, Infinity"}),
               ("event", "f", 2.0, {"session_id": "S", "description": "a\"b\\c\n😀"})]
    try:
        # write() refuses the foreign claim, and with it the whole batch...
        with pytest.raises(IdInUseError, match="step 'st'"):
            store.write(records)
        assert store.count("steps") == store.count("sessions") == 0
        # ...which the protocol modules' apply() (whose callers made their own
        # checks) takes, the foreign claim skipped by the guard.
        store.transaction(lambda cur: store.apply(cur, records))
        step = store.get_step("st")
        assert step is not None and (step["session_id"], step["state"]) == ("S", "last")
        event = store.get_event("e")
        assert event is not None and event["cost"] is None  # as on SQLite
        assert event["description"] == "NaN, Infinity"
        other = store.get_event("f")
        assert other is not None and other["description"] == "a\"b\\c\n😀"
    finally:
        store.close()


def test_a_column_none_in_every_row_and_a_text_every_row_shares_store_as_written(
        db_url: str) -> None:
    # The store leaves out of a statement a column None in every row of a
    # batch, and binds once a text every row has alike: what is stored must
    # be what each record says, whichever rows had stored values before.
    store = Store(db_url)
    try:
        store.write([("step", f"s{i}", 1.0, {"session_id": "x", "action": "first",
                                             "goal": f"goal {i}", "writer_agent": "agent"})
                     for i in range(150)])
        batch = [("step", f"s{i}", 2.0 + i, {
            "session_id": "x", "action": "other" if i == 700 else "same", "goal": None,
            "writer_agent": None, "writer_host": "h", "state": f"state {i}",
            "function_name": "g" if i == 1099 else "f",
            "eval_description": "e0" if i == 0 else "e"}) for i in range(1100)]
        store.write(batch)
        rows = {row["id"]: row for row in store.query(
            "SELECT id, session_id, action, goal, writer_agent, writer_host, state, "
            "function_name, eval_description, updated_at FROM steps")}
        assert len(rows) == 1100
        for i in range(1100):
            assert rows[f"s{i}"] == {
                "id": f"s{i}", "session_id": "x", "action": "other" if i == 700 else "same",
                "goal": f"goal {i}" if i < 150 else None,
                "writer_agent": "agent" if i < 150 else None, "writer_host": "h",
                "state": f"state {i}", "function_name": "g" if i == 1099 else "f",
                "eval_description": "e0" if i == 0 else "e", "updated_at": 2.0 + i}
    finally:
        store.close()
