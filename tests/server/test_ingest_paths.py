"""The server's fast ingest roads agree with the plain ones they replace: the
raw-body validation with the ``Batch`` model, and PostgreSQL's one-statement
upserts (rows as one JSON document) with row-by-row binding."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from lucidic.server import models
from lucidic.store import IdInUseError, Store


def _by_model(body: bytes) -> list[tuple[str, str, float, dict[str, Any]]]:
    batch = models.Batch.model_validate_json(body)
    return [(r.kind, r.id, r.ts, r.fields.model_dump(exclude_none=True))
            for r in batch.records]


def _without_nulls(records: list[Any]) -> list[Any]:
    return [(k, i, t, {c: v for c, v in f.items() if v is not None}) for k, i, t, f in records]


VALID_BODIES = [
    {"records": []},
    {"records": [
        {"kind": "session", "id": "s", "ts": 1.5,
         "fields": {"name": "n", "tags": ["a", "é"], "is_finished": None, "session_eval": 1}},
        {"kind": "step", "id": "st", "ts": "2.5",
         "fields": {"session_id": "s", "eval_score": "4.5", "is_finished": "true"}},
        {"kind": "event", "id": "e", "ts": 3,
         "fields": {"session_id": "s", "input": [{"role": "user", "content": "hé 😀\t"}],
                    "output": {"a": [1, 2.5, None, True, {"x": "\\u0000 as text"}]},
                    "arguments": "plain", "input_tokens": 5.0, "cost": 3, "step_id": None}},
    ]},
]


@pytest.mark.parametrize("document", VALID_BODIES)
def test_the_raw_body_road_yields_what_the_batch_model_yields(document: dict[str, Any]) -> None:
    body = json.dumps(document, ensure_ascii=False).encode()
    fast = models.parse_batch(body, "application/json")
    assert _without_nulls(fast) == _by_model(body)
    for (*_, mine), (*_, theirs) in zip(_without_nulls(fast), _by_model(body), strict=True):
        assert {c: type(v) for c, v in mine.items()} == {c: type(v) for c, v in theirs.items()}


def test_bodies_the_raw_road_cannot_vouch_for_are_judged_by_the_model() -> None:
    # Accepted by the model although the fast road refuses them (another
    # encoding, a byte-order mark), or cannot tell (an escaped backslash
    # before "u0000" is text, not a NUL).
    for body in ('{"records": []}'.encode("utf-16"), b'\xef\xbb\xbf{"records": []}'):
        assert models.parse_batch(body, "application/json") == []
    text = json.dumps({"records": [{"kind": "step", "id": "s", "ts": 1,
                                    "fields": {"session_id": "x", "state": "\\u0000"}}]})
    assert models.parse_batch(text.encode(), "application/json")[0][3]["state"] == "\\u0000"


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
