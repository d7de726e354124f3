"""Session semantics (DESIGN section 3): continuing, detaching, ending, scopes."""

from __future__ import annotations

import asyncio

import pytest

import lucidic as lai
from lucidic._context import current_binding
from lucidic.errors import InvalidOperationError, LucidicError, LucidicNotInitializedError


def test_init_returns_a_random_uuid4_session_id_and_stores_the_session_at_once(store):
    sid = lai.init(session_name="first", task="answer", tags=["a", "b"], agent_id="agent-1")
    other = lai.init(session_name="second")
    assert sid != other and len(sid) == 36 and sid[14] == "4"
    row = store.get_session(sid)  # no flush: init writes the session synchronously
    assert row["name"] == "first" and row["task"] == "answer"
    assert row["tags"] == ["a", "b"] and row["agent_id"] == "agent-1"
    assert row["is_finished"] is False


def test_environment_supplies_agent_id(store, monkeypatch):
    monkeypatch.setenv("LUCIDIC_AGENT_ID", "from-env")
    sid = lai.init()
    assert store.get_session(sid)["agent_id"] == "from-env"


def test_continue_session_returns_the_id_and_records_into_it(store):
    sid = lai.init(session_name="handover")
    lai.detach()
    assert lai.continue_session(session_id=sid) == sid
    step_id = lai.create_step(state="resumed", action="more work")
    lai.end_step()
    lai.end_session()
    assert lai.flush()
    tree = store.session_tree(sid)
    assert [s["id"] for s in tree["steps"]] == [step_id]
    assert tree["steps"][0]["state"] == "resumed" and tree["is_finished"]


def test_continuing_an_unknown_session_says_it_does_not_exist():
    with pytest.raises(InvalidOperationError, match="does not exist"):
        lai.continue_session("no-such-session")
    with pytest.raises(InvalidOperationError, match="does not exist"):
        with lai.continued("no-such-session"):
            pass


def test_continuing_a_finished_session_explains_detach_instead():
    sid = lai.init()
    lai.end_session()
    with pytest.raises(InvalidOperationError) as raised:
        lai.continue_session(sid)
    message = str(raised.value)
    assert "has finished" in message and "lai.detach()" in message
    with pytest.raises(InvalidOperationError, match="has finished"):
        with lai.continued(sid):
            pass


def test_continuing_a_session_finished_by_another_process_is_refused(lucidic_home):
    from helpers import run_python

    result = run_python("""
        import lucidic as lai
        print(lai.init(session_name="elsewhere"))
        lai.end_session()
    """, home=lucidic_home)
    sid = result.stdout.strip()
    with pytest.raises(InvalidOperationError, match="has finished"):
        lai.continue_session(sid)


def test_continuing_another_agents_session_is_refused():
    sid = lai.init(agent_id="planner")
    lai.detach()
    with pytest.raises(InvalidOperationError, match="belongs to agent 'planner'"):
        lai.continue_session(sid, agent_id="executor")
    assert lai.continue_session(sid, agent_id="planner") == sid


def test_continue_session_while_another_is_current_raises_but_reentry_does_not():
    first = lai.init()
    lai.detach()
    second = lai.init()
    with pytest.raises(InvalidOperationError, match="already current"):
        lai.continue_session(first)
    assert lai.continue_session(second) == second  # the same session: fine


def test_continued_inside_another_continued_block_raises_but_same_session_nests():
    a = lai.init()
    lai.detach()
    b = lai.init()
    lai.detach()
    with lai.continued(a):
        with pytest.raises(InvalidOperationError, match="already current in this scope"):
            with lai.continued(b):
                pass
        with lai.continued(a):
            lai.create_event(description="inner")
        lai.create_event(description="still in a after the inner block")
    assert lai.flush()


def test_errors_are_lucidic_errors_with_the_seed_import_path():
    from lucidic.errors import APIKeyVerificationError

    assert issubclass(InvalidOperationError, LucidicError)
    assert issubclass(APIKeyVerificationError, LucidicError)
    assert issubclass(LucidicNotInitializedError, LucidicError)


def test_detach_leaves_the_session_open_for_others(store):
    sid = lai.init()
    lai.create_event(description="before handover")
    lai.detach()
    assert store.get_session(sid)["is_finished"] is False
    # Nothing is current any more: recording calls are no-ops, session calls raise.
    assert lai.create_event(description="lost?") is None
    with pytest.raises(LucidicNotInitializedError):
        lai.end_session()
    with pytest.raises(LucidicNotInitializedError):
        lai.detach()
    assert lai.flush()
    assert store.session_tree(sid)["event_count"] == 1


def test_continued_block_detaches_on_exit_and_ends_with_end_true(store):
    sid = lai.init()
    lai.detach()
    with lai.continued(sid) as bound:
        assert bound == sid
        lai.create_event(description="one")
    assert store.get_session(sid)["is_finished"] is False  # detached, flushed
    assert store.session_tree(sid)["event_count"] == 1
    with lai.continued(sid, end=True):
        lai.create_event(description="two")
    row = store.get_session(sid)
    assert row["is_finished"] is True and row["is_successful"] is True


def test_continued_end_true_records_an_escaping_exception_as_failure(store):
    sid = lai.init()
    lai.detach()
    with pytest.raises(KeyError):
        with lai.continued(sid, end=True):
            raise KeyError("missing")
    row = store.get_session(sid)
    assert row["is_finished"] and row["is_successful"] is False
    assert "KeyError" in row["is_successful_reason"]


def test_session_block_ends_successfully_or_as_failed(store):
    with lai.session("ok") as ok:
        lai.create_event(description="fine")
    with pytest.raises(RuntimeError):
        with lai.session("bad") as bad:
            raise RuntimeError("broke")
    assert store.get_session(ok)["is_successful"] is True
    failed = store.get_session(bad)
    assert failed["is_successful"] is False
    assert "RuntimeError: broke" in failed["is_successful_reason"]


def test_session_block_keeps_the_outcome_the_code_set(store):
    with lai.session("judged") as sid:
        lai.update_session(is_successful=False, is_successful_reason="wrong answer")
    row = store.get_session(sid)
    assert row["is_successful"] is False and row["is_successful_reason"] == "wrong answer"


def test_scoped_sessions_do_not_leak_out_of_their_block():
    process_sid = lai.init(session_name="process")
    with lai.session("scoped") as scoped:
        lai.create_event(description="in scoped")
    event_id = lai.create_event(description="in process")
    assert lai.flush()
    assert scoped != process_sid and event_id is not None


def test_continued_works_as_a_decorator_for_functions_and_coroutines(store):
    sid = lai.init()
    lai.detach()

    @lai.continued(sid)
    def sync_work():
        lai.create_event(description="sync")

    @lai.continued(sid)
    async def async_work():
        lai.create_event(description="async")

    @lai.continued(sid)
    def gen_work():
        lai.create_event(description="gen")
        yield 1

    sync_work()
    asyncio.run(async_work())
    assert list(gen_work()) == [1]
    sync_work()  # a fresh scope per call
    assert lai.flush()
    descriptions = sorted(e["description"] for e in store.session_tree(sid)["events"])
    assert descriptions == ["async", "gen", "sync", "sync"]


def test_end_session_ends_steps_left_open(store):
    sid = lai.init()
    lai.create_step(action="never ended")
    lai.end_session()
    (step,) = store.session_tree(sid)["steps"]
    assert step["is_finished"] is True and step["ended_at"] is not None


def test_update_session_sets_results(store):
    sid = lai.init()
    lai.update_session(task="t2", session_eval=0.5, session_eval_reason="half",
                       is_successful=True, is_successful_reason="done")
    lai.end_session(session_eval=0.9)
    row = store.get_session(sid)
    assert row["task"] == "t2" and row["session_eval"] == 0.9
    assert row["session_eval_reason"] == "half" and row["is_successful"] is True


def test_init_with_an_existing_custom_id_refuses():
    lai.init(session_id="custom-1")
    lai.detach()
    with pytest.raises(InvalidOperationError, match="already exists"):
        lai.init(session_id="custom-1")


def test_continuing_in_another_thread_of_the_same_process_still_checks_the_agent():
    import threading

    sid = lai.init(agent_id="planner")
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with lai.continued(sid, agent_id="executor"):
                pass
        except InvalidOperationError as exc:
            errors.append(exc)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert len(errors) == 1 and "belongs to agent 'planner'" in str(errors[0])


def test_shutdown_stops_the_workers_and_a_later_flush_still_delivers(store):
    sid = lai.init()
    assert lai.shutdown(timeout=5)
    lai.create_event(description="after shutdown")
    assert lai.flush(timeout=5)
    assert store.session_tree(sid)["event_count"] == 1


# -- scoped generators ----------------------------------------------------------------

def _current_session_or_none():
    """The current session here, as lai's calls see it: none when
    update_session refuses (LucidicNotInitializedError), else its id."""
    try:
        lai.update_session()
    except LucidicNotInitializedError:
        assert current_binding() is None
        return None
    return current_binding().session_id


def test_a_session_generator_is_current_only_while_its_own_code_runs(store):
    seen_inside = []
    producer = lai.session("producer")

    @producer
    def produce():
        seen_inside.append(_current_session_or_none())
        lai.create_event(description="item 1")
        yield 1
        seen_inside.append(_current_session_or_none())
        lai.create_event(description="item 2")
        yield 2

    gen = produce()
    assert next(gen) == 1
    # the consumer's code between items is not in the producer's session
    assert _current_session_or_none() is None
    assert lai.create_event(description="consumer") is None
    assert next(gen) == 2
    assert _current_session_or_none() is None
    assert list(gen) == []
    (sid,) = set(seen_inside)
    assert sid is not None
    assert [e["description"] for e in store.session_tree(sid)["events"]] == [
        "item 1", "item 2"]


def test_a_session_generator_does_not_take_over_the_consumers_session(store):
    @lai.session("producer")
    def produce():
        lai.create_event(description="produced")
        yield 1

    @lai.session("async producer")
    async def aproduce():
        lai.create_event(description="produced async")
        yield 1

    async def consume_async():
        async for _ in aproduce():
            lai.create_event(description="consumed async")

    with lai.session("consumer") as consumer:
        for _ in produce():
            lai.create_event(description="consumed")
        asyncio.run(consume_async())
    assert lai.flush()
    assert sorted(e["description"] for e in store.session_tree(consumer)["events"]) == [
        "consumed", "consumed async"]


def test_a_continued_generator_binds_its_session_only_while_it_runs(store):
    sid = lai.init()
    lai.detach()

    @lai.continued(sid)
    def produce():
        lai.create_event(description="inside")
        yield 1
        lai.create_event(description="inside again")
        yield 2

    @lai.continued(sid)
    async def aproduce():
        lai.create_event(description="inside async")
        yield 1

    async def consume_async():
        async for _ in aproduce():
            assert _current_session_or_none() is None
            assert lai.create_event(description="consumer async") is None

    for _ in produce():
        assert _current_session_or_none() is None
        assert lai.create_event(description="consumer") is None
    asyncio.run(consume_async())
    assert lai.flush()
    assert sorted(e["description"] for e in store.session_tree(sid)["events"]) == [
        "inside", "inside again", "inside async"]


def _sessions_named(store, name):
    assert lai.flush()
    rows = store.query("SELECT id FROM sessions WHERE name = ? ORDER BY started_at", (name,))
    return [store.get_session(row["id"]) for row in rows]


def test_a_session_generator_closed_early_by_its_consumer_ends_successful(store):
    @lai.session("gen")
    def endless():
        while True:
            lai.create_event(description="item")
            yield 1

    for _ in endless():
        break  # the consumer has had enough
    gen = endless()
    next(gen)
    gen.close()
    rows = _sessions_named(store, "gen")
    assert len(rows) == 2
    for row in rows:
        assert row["is_finished"] and row["is_successful"] is True, row


def test_an_async_session_generator_closed_early_ends_successful(store):
    @lai.session("gen")
    async def endless():
        while True:
            yield 1

    async def consume():
        gen = endless()
        await gen.asend(None)
        await gen.aclose()

    asyncio.run(consume())
    (row,) = _sessions_named(store, "gen")
    assert row["is_finished"] and row["is_successful"] is True


def test_a_session_generator_that_raises_ends_failed(store):
    @lai.session("gen")
    def broken():
        yield 1
        raise ValueError("bad item")

    with pytest.raises(ValueError, match="bad item"):
        list(broken())
    (row,) = _sessions_named(store, "gen")
    assert row["is_finished"] and row["is_successful"] is False
    assert "ValueError: bad item" in row["is_successful_reason"]


def test_a_continued_end_true_generator_closed_early_ends_successful(store):
    sid = lai.init(session_name="gen")
    lai.detach()

    @lai.continued(sid, end=True)
    def endless():
        while True:
            yield 1

    for _ in endless():
        break
    assert lai.flush()
    row = store.get_session(sid)
    assert row["is_finished"] and row["is_successful"] is True
