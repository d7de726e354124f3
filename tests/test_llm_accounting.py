"""What an LLM call cost: cache reads, prompt-cache writes by cache lifetime,
and the schema migration that gave cache writes and estimated counts their
own columns."""

from __future__ import annotations

import json
import sqlite3

import pytest

from helpers import ReadableStore
from lucidic.pricing import cost_of
from lucidic.store import MIGRATIONS, SCHEMA_VERSION

SONNET = "claude-sonnet-4-20250514"  # input $3, reads $0.30, writes $3.75 / $6 per million


def test_cache_writes_are_priced_at_the_5_minute_rate_unless_the_1_hour_part_is_named():
    # 1,000 uncached + 2,000 read + 4,000 written, 100 out
    five_minutes = cost_of("anthropic", SONNET, 7_000, 100, 2_000, 4_000)
    assert five_minutes == pytest.approx((1_000 * 3 + 2_000 * 0.30 + 4_000 * 3.75
                                          + 100 * 15) / 1e6)
    mixed = cost_of("anthropic", SONNET, 7_000, 100, 2_000, 4_000, cache_write_1h_tokens=1_000)
    assert mixed == pytest.approx((1_000 * 3 + 2_000 * 0.30 + 3_000 * 3.75 + 1_000 * 6
                                   + 100 * 15) / 1e6)


def test_a_model_with_no_cache_write_rate_pays_the_input_rate_for_writes():
    with_writes = cost_of("openai", "gpt-4o", 1_000, 10, 0, 400)
    assert with_writes == cost_of("openai", "gpt-4o", 1_000, 10)


def test_counts_that_do_not_add_up_never_make_a_negative_cost():
    # more reads and writes claimed than input tokens: capped at the input
    cost = cost_of("anthropic", SONNET, 100, 0, 80, 500, cache_write_1h_tokens=900)
    assert cost == pytest.approx((80 * 0.30 + 20 * 6) / 1e6)


def test_the_price_table_knows_anthropics_cache_write_rates():
    from lucidic.pricing import price_of

    for model in ("claude-3-5-haiku-20241022", "claude-sonnet-4-20250514", "claude-opus-4-1"):
        price = price_of("anthropic", model)
        assert price["cache_write"] == pytest.approx(price["input"] * 1.25)
        assert price["cache_write_1h"] == pytest.approx(price["input"] * 2)


def test_a_version_2_store_gains_the_accounting_columns_and_keeps_its_events(tmp_path):
    path = tmp_path / "v2.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE lucidic_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    for version, statements in MIGRATIONS:
        if version <= 2:
            for statement in statements:
                conn.execute(statement)
    conn.execute("INSERT INTO lucidic_meta VALUES ('schema_version', '2')")
    conn.execute("INSERT INTO sessions (id, project, started_at, updated_at) "
                 "VALUES ('s', 'default', 1, 1)")
    conn.execute("INSERT INTO events (id, session_id, type, input_tokens, cached_tokens, cost, "
                 "updated_at) VALUES ('old', 's', 'llm', 100, 20, 0.5, 1)")
    conn.close()

    store = ReadableStore(path)
    assert store.schema_version() == SCHEMA_VERSION >= 3
    old = store.get_event("old")
    assert old["input_tokens"] == 100 and old["cached_tokens"] == 20
    assert old["cache_write_tokens"] is None and old["tokens_estimated"] is None
    store.write([("event", "new", 2.0, {"session_id": "s", "type": "llm", "input_tokens": 50,
                                         "cache_write_tokens": 30, "tokens_estimated": True})])
    new = store.get_event("new")
    assert new["cache_write_tokens"] == 30 and new["tokens_estimated"] is True
    summary = store.session_summary("s")
    assert summary["cache_write_tokens"] == 30 and summary["cached_tokens"] == 20
    store.close()
    assert json.loads(json.dumps(ReadableStore(path).session_tree("s")))["events"]  # reopens as is
