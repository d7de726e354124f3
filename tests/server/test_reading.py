"""The reading layer (lucidic.reading) on both databases: filters, search in
any script, sorting, keyset paging, the outline of a tree with its writers,
and the dashboard's aggregates. (Here beside the server tests for their
SQLite-and-PostgreSQL fixtures.)"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from lucidic.limits import INT_MAX, INT_MIN
from lucidic.reading import InvalidQueryError, Reader, SessionQuery, status_of
from lucidic.reading.derived import refresh
from lucidic.store import Store

T0 = 1_700_000_000.0  # a fixed past instant, so days and ranges are exact


class RefreshedStore(Store):
    """A store whose derived data (lucidic.reading.derived) is rebuilt before
    every read: pages then read it, where a plain store's read every row."""

    _refreshing = False

    def _refreshed(self) -> None:
        if not self._refreshing:
            self._refreshing = True
            try:
                while refresh(self, quiet=-60, limit=1000):
                    pass
            finally:
                self._refreshing = False

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        self._refreshed()
        return super().query(sql, params)

    def query_many(self, statements: Sequence[tuple[str, Sequence[Any]]]
                   ) -> list[list[dict[str, Any]]]:
        self._refreshed()
        return super().query_many(statements)


@pytest.fixture(params=["rows", "derived"])
def store(db_url: str, request: pytest.FixtureRequest) -> Iterator[Store]:
    """Each test reads from every row, and from derived data rebuilt first."""
    s = Store(db_url) if request.param == "rows" else RefreshedStore(db_url)
    yield s
    s.close()


def _session(sid: str, *, at: float, project: str = "p", **fields: Any) -> tuple:
    return ("session", sid, at, {"project": project, "started_at": at, **fields})


def _step(step_id: str, sid: str, *, at: float, **fields: Any) -> tuple:
    return ("step", step_id, at, {"session_id": sid, "started_at": at, **fields})


def _event(event_id: str, sid: str, *, at: float, **fields: Any) -> tuple:
    return ("event", event_id, at, {"session_id": sid, "started_at": at, **fields})


def _ids(store: Store, **query: Any) -> list[str]:
    return [s["id"] for s in Reader(store).sessions(SessionQuery(**query)).sessions]


def test_status_filter_gives_exactly_the_sessions_showing_that_word(store: Store) -> None:
    store.write([
        _session("run", at=T0),
        _session("ok", at=T0 + 1, is_finished=True, is_successful=True, ended_at=T0 + 2),
        _session("bad", at=T0 + 2, is_finished=True, is_successful=False, ended_at=T0 + 3),
        _session("done", at=T0 + 3, is_finished=True, ended_at=T0 + 4),
        # an outcome set while running is still running
        _session("run2", at=T0 + 4, is_successful=False),
    ])
    expected = {"running": ["run2", "run"], "successful": ["ok"], "failed": ["bad"],
                "finished": ["done"]}
    for status, ids in expected.items():
        assert _ids(store, status=status) == ids
    reader = Reader(store)
    assert {status_of(reader.session(sid) or {}) for sid in ("run", "ok", "bad", "done")} == \
        {"running", "successful", "failed", "finished"}
    with pytest.raises(InvalidQueryError, match="status must be one of"):
        SessionQuery(status="lost")


def test_search_is_a_case_insensitive_substring_in_any_script(store: Store) -> None:
    store.write([
        _session("cjk", at=T0, name="说你好吗"),
        _session("cyr", at=T0 + 1, task="Скажи ПРИВЕТ миру"),
        _session("tags", at=T0 + 2, tags=["Nightly-Build"]),
        _session("step", at=T0 + 3),
        _step("st1", "step", at=T0 + 3, action="Ünïcode Steps"),
        _session("llm", at=T0 + 4),
        _event("e1", "llm", at=T0 + 4, type="llm", model="gpt-4o-mini",
               input=[{"role": "user", "content": 'He said "Grüß Gott" twice'}],
               output={"role": "assistant", "content": "Ελληνικά κείμενο"}),
        _session("err", at=T0 + 5),
        _event("e2", "err", at=T0 + 5, error="TimeoutError: upstream 504"),
        _session("plain", at=T0 + 6, name="nothing to see", task="100% sure_thing"),
    ])

    def found(text: str) -> set[str]:
        return set(_ids(store, search=text))

    assert found("你好") == {"cjk"}
    assert found("привет") == {"cyr"}          # Cyrillic, other case
    assert found("nightly-BUILD") == {"tags"}  # tags, ASCII case
    assert found("ÜNÏCODE") == {"step"}        # step text, non-ASCII case
    assert found("GPT-4O") == {"llm"}          # the model
    assert found('"grüß gott"') == {"llm"}     # inside an LLM message, quotes escaped in JSON
    assert found("ελληνικά") == {"llm"}        # the output, Greek
    assert found("timeouterror") == {"err"}    # the error
    assert found("504") == {"err"}             # no cased letters: exact substring
    assert found("100%") == {"plain"}          # LIKE's wildcards are literal
    assert found("s_re") == set()
    assert found("sure_thing") == {"plain"}
    assert found("ll") == {"llm"}              # "llm" is the session's id prefix
    assert found("absent words") == set()


def test_keyset_pages_cover_every_session_once_in_every_sort(store: Store) -> None:
    records = []
    for i in range(130):
        sid = f"s{i:03d}"
        at = T0 + (i // 3)  # ties on started_at, broken by id
        records.append(_session(sid, at=at, name=f"n{i % 7}", is_finished=i % 2 == 0,
                                ended_at=at + (i % 11) if i % 2 == 0 else None))
        for j in range(i % 4):
            records.append(_event(f"e{i}-{j}", sid, at=at, cost=0.001 * (i % 5),
                                  input_tokens=i, output_tokens=j,
                                  error="x" if (i + j) % 9 == 0 else None))
    store.write(records)
    reader = Reader(store)
    for sort in ("started", "name", "duration", "cost", "tokens", "events", "errors"):
        for descending in (True, False):
            seen: list[dict[str, Any]] = []
            cursor = None
            while True:
                page = reader.sessions(SessionQuery(sort=sort, descending=descending, limit=50,
                                                    cursor=cursor))
                seen.extend(page.sessions)
                assert page.total == 130
                cursor = page.next_cursor
                if cursor is None:
                    break
            assert sorted(s["id"] for s in seen) == sorted(r[1] for r in records
                                                           if r[0] == "session"), sort
            keys = [_sort_value(s, sort) for s in seen]
            assert keys == sorted(keys, reverse=descending), (sort, descending)


def _sort_value(session: dict[str, Any], sort: str) -> Any:
    return {"started": session["started_at"], "name": session.get("name") or "",
            "cost": round(session["total_cost"], 9),
            "tokens": session["input_tokens"] + session["output_tokens"],
            "events": session["event_count"], "errors": session["error_count"],
            "duration": (session.get("ended_at") or 1e12) - session["started_at"]}[sort]


def test_filters_combine_and_scope_to_the_project(store: Store) -> None:
    store.write([
        _session("a1", at=T0, agent_id="a"), _session("a2", at=T0 + 100, agent_id="a"),
        _session("b1", at=T0 + 50, agent_id="b"),
        _session("other", at=T0 + 60, agent_id="a", project="q"),
    ])
    assert _ids(store, project="p", agent_id="a") == ["a2", "a1"]
    assert _ids(store, project="p", started_after=T0 + 10, started_before=T0 + 100) == ["b1"]
    assert _ids(store, project="q") == ["other"]
    assert Reader(store).session("other", "p") is None
    assert Reader(store).agents("p") == ["a", "b"]


def test_a_cursor_that_was_not_made_here_is_refused(store: Store) -> None:
    for bad in ("not-base64!", "bnVsbA", "WzEsMl0", "WzEsInMiLCJ4Il0"):  # junk, null, [1, 2],
        # [1, "s", "x"]
        with pytest.raises(InvalidQueryError, match="cursor"):
            Reader(store).sessions(SessionQuery(cursor=bad))


def test_outline_orders_a_window_depth_first_and_shows_each_writer(store: Store) -> None:
    store.write([
        _session("s", at=T0, name="handed over"),
        _step("root", "s", at=T0 + 1, action="plan", writer_host="alpha", writer_pid=11,
              writer_agent="agent"),
        _step("child", "s", at=T0 + 2, parent_step_id="root", state="think",
              writer_host="alpha", writer_pid=11),
        _event("e-llm", "s", at=T0 + 3, step_id="child", type="llm", provider="openai",
               model="gpt-4o", writer_host="alpha", writer_pid=11),
        _step("later", "s", at=T0 + 10, action="act", writer_host="beta", writer_pid=22,
              writer_agent="agent"),
        _event("e-tool", "s", at=T0 + 11, step_id="later", type="tool",
               function_name="search", writer_host="beta", writer_pid=22),
        _event("e-top", "s", at=T0 + 0.5, description="before any step"),
        # a cycle of parents (client-made ids): still shown, at the top
        _step("c1", "s", at=T0 + 20, parent_step_id="c2", action="loop1"),
        _step("c2", "s", at=T0 + 21, parent_step_id="c1", action="loop2"),
    ])
    reader = Reader(store)
    session = reader.session("s") or {}
    whole = reader.outline(session)
    assert [(r["id"], r["depth"]) for r in whole.rows] == [
        ("e-top", 0), ("root", 0), ("child", 1), ("e-llm", 2), ("later", 0), ("e-tool", 1),
        ("c1", 0), ("c2", 0)]
    assert [r["label"] for r in whole.rows[:6]] == [
        "before any step", "plan", "think", "openai · gpt-4o", "act", "search"]
    assert (whole.total, whole.step_count, whole.event_count) == (8, 5, 3)
    window = reader.outline(session, offset=2, limit=3)
    assert [r["id"] for r in window.rows] == ["child", "e-llm", "later"]
    assert window.total == 8
    assert [(w["key"], w["steps"], w["events"], w["agents"]) for w in whole.writers] == [
        ("alpha:11", 2, 1, ["agent"]), ("beta:22", 1, 1, ["agent"])]
    assert [(h["from"], h["to"], h["first_id"]) for h in whole.handovers] == [
        ("alpha:11", "beta:22", "later")]


def test_dashboard_sums_per_day_and_model_with_nearest_rank_percentiles(store: Store) -> None:
    day0 = (T0 // 86400) * 86400
    records = [_session("d1", at=day0 + 10, is_finished=True, is_successful=True),
               _session("d2", at=day0 + 86400 + 10, is_finished=True, is_successful=False)]
    for i in range(1, 21):  # 20 calls of model m on day 0: durations 0.1 .. 2.0
        records.append(_event(f"m{i}", "d1", at=day0 + 100 + i, type="llm", model="m",
                              duration=i / 10, time_to_first_token=i / 100, cost=0.01,
                              input_tokens=10, output_tokens=5))
    records.append(_event("n1", "d2", at=day0 + 86400 + 100, type="llm", model="n",
                          duration=3.0, error="RateLimitError", cost=0.5))
    records.append(_event("g1", "d2", at=day0 + 86400 + 200, type="generic", cost=0.03))
    store.write(records)
    board = Reader(store).dashboard(None, day0, day0 + 3 * 86400)
    assert [round(d["cost"], 6) for d in board.days] == [0.2, 0.53, 0.0]
    # All events' costs, and the part the models' calls cost (the models
    # table's sum): the tool's 0.03 is in the one, not the other.
    assert (round(board.total_cost, 6), round(board.llm_cost, 6)) == (0.73, 0.7)
    assert [d["llm_calls"] for d in board.days] == [20, 1, 0]
    models = {m["model"]: m for m in board.models}
    assert models["m"]["calls"] == 20 and models["m"]["input_tokens"] == 200
    assert models["m"]["duration_p50"] == pytest.approx(1.0)   # rank 10 of 20
    assert models["m"]["duration_p95"] == pytest.approx(1.9)   # rank 19 of 20
    assert models["m"]["ttft_p50"] == pytest.approx(0.10)
    assert models["n"]["errors"] == 1 and models["n"]["ttft_p50"] is None
    assert board.llm_calls == 21 and board.llm_errors == 1
    assert board.sessions["failed"] == 1 and board.sessions["failure_rate"] == 0.5
    outside = Reader(store).dashboard(None, day0 + 5 * 86400, day0 + 6 * 86400)
    assert outside.llm_calls == 0 and outside.models == []
    with pytest.raises(ValueError, match="end after"):
        Reader(store).dashboard(None, day0, day0)


def test_events_without_token_counts_add_no_tokens(store: Store) -> None:
    # On PostgreSQL the saturating sum was GREATEST(LEAST(SUM(...), max), min),
    # and GREATEST and LEAST skip a NULL: a day (or a session) whose events
    # carried no token counts showed 9,223,372,036,854,775,807 tokens.
    day0 = (T0 // 86400) * 86400
    store.write([_session("none", at=day0 + 10), _event("n", "none", at=day0 + 11),
                 _session("some", at=day0 + 20),
                 _event("s", "some", at=day0 + 21, input_tokens=3)])
    board = Reader(store).dashboard(None, day0, day0 + 86400)
    assert (board.days[0]["input_tokens"], board.days[0]["output_tokens"]) == (3, 0)
    assert board.total_tokens == 3
    assert _ids(store, sort="tokens") == ["some", "none"]


def test_session_version_changes_when_anything_is_written(store: Store) -> None:
    store.write([_session("v", at=time.time())])
    reader = Reader(store)
    first = reader.session_version("v")
    assert reader.session_version("v") == first
    store.write([_step("v1", "v", at=time.time())])
    second = reader.session_version("v")
    assert second != first
    store.write([("step", "v1", time.time() + 1, {"session_id": "v", "is_finished": True})])
    assert reader.session_version("v") != second


def test_token_totals_saturate_at_the_64_bit_limit_rather_than_fail(store: Store) -> None:
    # Tokens near 2**63-1 are valid one by one; their sum is not. SQLite's
    # SUM raised "integer overflow" and PostgreSQL's bigint addition (the
    # tokens sort) "out of range": the listing, the session and the
    # dashboard failed. They saturate at the limit instead, both ways.
    day0 = (T0 // 86400) * 86400
    records = [_session("big", at=day0 + 10), _session("negative", at=day0 + 20),
               _session("small", at=day0 + 30)]
    for i in range(3):
        records.append(_event(f"big{i}", "big", at=day0 + 11 + i, type="llm", model="m",
                              input_tokens=INT_MAX - i, output_tokens=INT_MAX,
                              cached_tokens=INT_MAX, reasoning_tokens=INT_MAX))
        records.append(_event(f"neg{i}", "negative", at=day0 + 21 + i, input_tokens=INT_MIN))
    records.append(_event("s0", "small", at=day0 + 31, input_tokens=7, output_tokens=5))
    store.write(records)
    reader = Reader(store)
    big = reader.session("big") or {}
    assert (big["input_tokens"], big["output_tokens"], big["cached_tokens"],
            big["reasoning_tokens"]) == (INT_MAX, INT_MAX, INT_MAX, INT_MAX)
    assert (reader.session("negative") or {})["input_tokens"] == INT_MIN
    assert (reader.session("small") or {})["input_tokens"] == 7  # exact below the limit
    for descending in (True, False):
        seen: list[str] = []
        cursor = None
        while True:  # one a page: every cursor carries a saturated sort value
            page = reader.sessions(SessionQuery(sort="tokens", descending=descending,
                                                limit=1, cursor=cursor))
            seen += [s["id"] for s in page.sessions]
            cursor = page.next_cursor
            if cursor is None:
                break
        expected = ["big", "small", "negative"]
        assert seen == (expected if descending else expected[::-1])
    board = reader.dashboard(None, day0, day0 + 86400)
    assert board.total_tokens == INT_MAX
    assert board.days[0]["output_tokens"] == INT_MAX
    # Exact within the range, however far out the rows' partial sums went:
    # INT_MAX + (INT_MAX - 1) + (INT_MAX - 2) + 3 * INT_MIN + 7.
    assert board.days[0]["input_tokens"] == 1
    assert {m["model"]: m["output_tokens"] for m in board.models} == {"m": INT_MAX}


def test_cost_totals_stay_finite_whatever_costs_are_stored(store: Store) -> None:
    # What a server took before costs were bounded at ingest: each finite,
    # their sum not (inf or NaN on SQLite, which JSON cannot carry; an
    # "out of range" error on PostgreSQL).
    day0 = (T0 // 86400) * 86400
    records = [_session("dear", at=day0 + 10), _session("cheap", at=day0 + 20)]
    records += [_event(f"d{i}", "dear", at=day0 + 11 + i, type="llm", model="m",
                       cost=1e308) for i in range(3)]
    records += [_event("minus", "dear", at=day0 + 15, cost=-1e308)]
    records += [_event("c0", "cheap", at=day0 + 21, cost=0.25)]
    store.write(records)
    reader = Reader(store)
    dear = reader.session("dear") or {}
    assert math.isfinite(dear["total_cost"]) and dear["total_cost"] >= 1e15
    assert (reader.session("cheap") or {})["total_cost"] == 0.25
    page = reader.sessions(SessionQuery(sort="cost"))
    assert [s["id"] for s in page.sessions] == ["dear", "cheap"]
    board = reader.dashboard(None, day0, day0 + 86400)
    assert math.isfinite(board.total_cost)
    json.dumps([page.sessions, board.days, board.models], allow_nan=False)  # no inf, no NaN
