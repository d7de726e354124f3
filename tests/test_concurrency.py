"""The current session follows threads, executors and asyncio tasks."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

import lucidic as lai

WORKERS = 8
RECORDS_EACH = 50


def _new_detached_sessions(count: int) -> list[str]:
    ids = []
    for index in range(count):
        ids.append(lai.init(session_name=f"worker {index}"))
        lai.detach()
    return ids


def _assert_each_session_holds_only_its_own(store, ids: list[str]) -> None:
    assert lai.flush()
    for index, sid in enumerate(ids):
        tree = store.session_tree(sid)
        (step,) = tree["steps"]
        descriptions = [e["description"] for e in step["events"]]
        assert len(descriptions) == RECORDS_EACH
        assert set(descriptions) == {f"worker {index}"}, f"records crossed into {sid}"
        assert tree["event_count"] == RECORDS_EACH


def test_eight_threads_each_in_its_own_continued_session_never_cross(store):
    ids = _new_detached_sessions(WORKERS)
    barrier = threading.Barrier(WORKERS)
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            with lai.continued(ids[index]):
                barrier.wait()  # released together
                lai.create_step(action=f"step {index}")
                for _ in range(RECORDS_EACH):
                    lai.create_event(description=f"worker {index}")
                lai.end_step()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    _assert_each_session_holds_only_its_own(store, ids)


def test_eight_asyncio_tasks_each_in_its_own_continued_session_never_cross(store):
    ids = _new_detached_sessions(WORKERS)

    @lai.step(action="task work")
    async def work(index: int, start: asyncio.Event) -> None:
        await start.wait()
        for _ in range(RECORDS_EACH):
            lai.create_event(description=f"worker {index}")
            await asyncio.sleep(0)  # interleave with the other tasks

    async def task(index: int, start: asyncio.Event) -> None:
        async with lai.continued(ids[index]):
            await work(index, start)

    async def main() -> None:
        start = asyncio.Event()
        tasks = [asyncio.create_task(task(i, start)) for i in range(WORKERS)]
        await asyncio.sleep(0.01)
        start.set()  # released together
        await asyncio.gather(*tasks)

    asyncio.run(main())
    _assert_each_session_holds_only_its_own(store, ids)


def test_thread_pool_inside_continued_records_into_that_session_with_parents(store):
    sid = lai.init()
    lai.detach()

    @lai.step(action="child")
    def child(n: int) -> int:
        lai.create_event(description=f"child {n}")
        return n * n

    with lai.continued(sid):
        @lai.step(action="parent")
        def parent() -> list[int]:
            with ThreadPoolExecutor(max_workers=4) as pool:
                return list(pool.map(child, range(6)))

        assert parent() == [0, 1, 4, 9, 16, 25]
    # Outside any scope the same pool records nothing.
    with ThreadPoolExecutor(max_workers=2) as pool:
        assert list(pool.map(child, range(2))) == [0, 1]
    assert lai.flush()
    tree = store.session_tree(sid)
    (parent_step,) = tree["steps"]
    assert parent_step["action"] == "parent"
    children = parent_step["steps"]
    assert len(children) == 6 and all(c["parent_step_id"] == parent_step["id"] for c in children)
    assert sorted(c["events"][0]["description"] for c in children) == [
        f"child {n}" for n in range(6)]
    assert tree["step_count"] == 7


def test_plain_threads_started_in_a_scope_carry_it(store):
    sid = lai.init()
    lai.detach()
    with lai.continued(sid):
        t = threading.Thread(target=lambda: lai.create_event(description="from thread"))
        t.start()
        t.join()
    outside = threading.Thread(target=lambda: lai.create_event(description="outside"))
    outside.start()
    outside.join()
    assert lai.flush()
    assert [e["description"] for e in store.session_tree(sid)["events"]] == ["from thread"]


def test_executor_threads_started_in_a_scope_do_not_keep_it_for_later_jobs(store):
    sid = lai.init()
    lai.detach()
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        with lai.continued(sid):
            pool.submit(lai.create_event, description="inside").result()
        # The worker thread was started inside the scope; a job submitted
        # outside it must not land in the session.
        assert pool.submit(lai.create_event, description="outside").result() is None
    finally:
        pool.shutdown()
    assert lai.flush()
    assert [e["description"] for e in store.session_tree(sid)["events"]] == ["inside"]


def test_a_failing_step_is_recorded_failed_and_the_exception_reaches_the_caller_unchanged(store):
    sid = lai.init()

    class BoomError(Exception):
        pass

    original = BoomError("exploded")

    @lai.step(action="outer")
    def outer():
        return inner()

    @lai.step(action="inner")
    def inner():
        raise original

    with pytest.raises(BoomError) as raised:
        outer()
    assert raised.value is original
    assert lai.flush()
    (outer_step,) = store.session_tree(sid)["steps"]
    (inner_step,) = outer_step["steps"]
    assert "BoomError: exploded" in inner_step["error"] and "BoomError" in outer_step["error"]
    assert inner_step["is_finished"] and outer_step["is_finished"]
    assert store.session_tree(sid)["error_count"] == 2


def test_async_continued_checks_the_session_off_the_event_loop(store, monkeypatch):
    sid = lai.init()
    lai.detach()
    loop_threads: list[int] = []
    check_threads: list[int] = []

    from lucidic import _api

    original = _api._continue

    def spying_continue(*args, **kwargs):
        check_threads.append(threading.get_ident())
        return original(*args, **kwargs)

    async def main() -> None:
        loop_threads.append(threading.get_ident())
        async with lai.continued(sid):
            lai.create_event(description="in task")

    monkeypatch.setattr(_api, "_continue", spying_continue)
    asyncio.run(main())
    assert check_threads and check_threads[0] != loop_threads[0]
    assert lai.flush()
    assert [e["description"] for e in store.session_tree(sid)["events"]] == ["in task"]


def _in_two_threads_interleaved(shared, record):
    """Thread A enters ``shared``, then B; A leaves while B is still inside,
    then B records and leaves. Returns what each thread's block returned and
    what B recorded after A left."""
    entered_a, entered_b, left_a = threading.Event(), threading.Event(), threading.Event()
    results: dict[str, object] = {}
    errors: list[BaseException] = []

    def thread_a() -> None:
        try:
            with shared as sid:
                results["a"] = sid
                entered_a.set()
                assert entered_b.wait(10)
            left_a.set()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            left_a.set()

    def thread_b() -> None:
        try:
            assert entered_a.wait(10)
            with shared as sid:
                results["b"] = sid
                entered_b.set()
                assert left_a.wait(10)
                results["recorded"] = record()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
            entered_b.set()

    threads = [threading.Thread(target=thread_a), threading.Thread(target=thread_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    return results


def test_one_continued_object_entered_in_two_threads_keeps_each_threads_entry(store):
    sid = lai.init()
    lai.detach()
    shared = lai.continued(sid)
    results = _in_two_threads_interleaved(
        shared, lambda: lai.create_event(description="b after a left"))
    # A leaving did not detach B's binding: B still records into the session
    assert results["recorded"] is not None
    assert lai.flush()
    assert [e["description"] for e in store.session_tree(sid)["events"]] == ["b after a left"]


def test_one_session_object_entered_in_two_threads_ends_each_threads_own_session(store):
    shared = lai.session("shared")
    results = _in_two_threads_interleaved(
        shared, lambda: lai.create_event(description="b after a left"))
    a, b = results["a"], results["b"]
    assert a != b and results["recorded"] is not None
    assert lai.flush()
    tree_a, tree_b = store.session_tree(a), store.session_tree(b)
    assert tree_a["is_finished"] and tree_a["is_successful"] and not tree_a["events"]
    assert tree_b["is_finished"] and tree_b["is_successful"]
    assert [e["description"] for e in tree_b["events"]] == ["b after a left"]


def test_one_session_objects_session_id_is_each_threads_own_block(store):
    # It was the session of whichever thread entered last: read inside a
    # block, the other thread got a session that was not its own.
    shared = lai.session("shared")
    inside = threading.Barrier(2, timeout=10)
    seen: dict[str, tuple[str, str | None]] = {}
    entered: list[str] = []

    def worker(name: str) -> None:
        with shared as sid:
            entered.append(sid)
            inside.wait()  # both blocks open, in either order
            seen[name] = (sid, shared.session_id)
            inside.wait()

    threads = [threading.Thread(target=worker, args=(name,)) for name in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen["a"][0] != seen["b"][0]
    assert all(sid == read for sid, read in seen.values()), seen
    # Outside any block of it: the session its latest block opened.
    assert shared.session_id == entered[-1]


def test_one_continued_object_entered_in_two_asyncio_tasks_keeps_each_tasks_entry(store):
    sid = lai.init()
    lai.detach()
    shared = lai.continued(sid)

    async def main():
        entered_a, entered_b, left_a = asyncio.Event(), asyncio.Event(), asyncio.Event()

        async def task_a():
            async with shared:
                entered_a.set()
                await entered_b.wait()
            left_a.set()

        async def task_b():
            await entered_a.wait()
            async with shared:
                entered_b.set()
                await left_a.wait()
                return lai.create_event(description="b after a left")

        _, recorded = await asyncio.gather(task_a(), task_b())
        return recorded

    assert asyncio.run(main()) is not None
    assert lai.flush()
    assert [e["description"] for e in store.session_tree(sid)["events"]] == ["b after a left"]
