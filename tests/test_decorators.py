"""@lai.step and @lai.event on every kind of callable."""

from __future__ import annotations

import asyncio
import functools
import inspect

import pytest

import lucidic as lai


def _steps(store, sid):
    assert lai.flush()
    return store.session_tree(sid)["steps"]


def test_decorated_functions_keep_signature_name_doc_and_kind():
    @lai.step(action="x")
    def plain(a: int, b: str = "b", *, c: float = 1.0) -> str:
        """Docstring."""
        return f"{a}{b}{c}"

    @lai.step
    async def coro(x: int) -> int:
        return x

    @lai.step
    def gen(n: int):
        yield from range(n)

    @lai.step
    async def agen(n: int):
        for i in range(n):
            yield i

    @lai.event
    def ev(q: list[int]) -> int:
        return len(q)

    def twin(a: int, b: str = "b", *, c: float = 1.0) -> str: ...

    assert inspect.signature(plain) == inspect.signature(twin)
    assert list(inspect.signature(plain).parameters) == ["a", "b", "c"]
    assert plain.__name__ == "plain" and plain.__doc__ == "Docstring."
    assert inspect.iscoroutinefunction(coro)
    assert inspect.isgeneratorfunction(gen)
    assert inspect.isasyncgenfunction(agen)
    assert list(inspect.signature(ev).parameters) == ["q"]


def test_without_a_session_decorated_code_runs_untracked(store):
    calls = []

    @lai.step
    def f(x):
        calls.append(x)
        return x + 1

    @lai.event
    async def g(x):
        return x * 2

    @lai.step
    def h(n):
        yield from range(n)

    assert f(1) == 2 and asyncio.run(g(3)) == 6 and list(h(3)) == [0, 1, 2]
    assert calls == [1]
    assert lai.flush()  # nothing was queued: trivially delivered
    assert not (store.count("steps") or store.count("events"))


def test_methods_classmethods_and_staticmethods(store):
    sid = lai.init()

    class Agent:
        def __init__(self, name):
            self.name = name

        @lai.step(action="method")
        def act(self, x):
            return f"{self.name}:{x}"

        @lai.step(action="classmethod")
        @classmethod
        def build(cls, name):
            return cls(name)

        @lai.step(action="staticmethod")
        @staticmethod
        def helper(x):
            return x * 3

    agent = Agent.build("a")
    assert agent.act(1) == "a:1" and Agent.helper(2) == 6 and agent.helper(1) == 3
    actions = sorted(s["action"] for s in _steps(store, sid))
    assert actions == ["classmethod", "method", "staticmethod", "staticmethod"]


def test_step_defaults_action_to_the_function_name_and_records_function_name(store):
    sid = lai.init()

    @lai.step
    def fetch_weather():
        return 1

    fetch_weather()
    (step,) = _steps(store, sid)
    assert step["action"] == "fetch_weather"
    assert step["function_name"].endswith("fetch_weather")


def test_coroutine_steps_nest_and_keep_return_values(store):
    sid = lai.init()

    @lai.step(action="outer")
    async def outer():
        return [await inner(i) for i in range(2)]

    @lai.step(action="inner")
    async def inner(i):
        await asyncio.sleep(0)
        return i * 10

    assert asyncio.run(outer()) == [0, 10]
    (top,) = _steps(store, sid)
    assert [s["action"] for s in top["steps"]] == ["inner", "inner"]


def test_generator_step_is_lazy_current_only_while_it_runs_and_ends_when_exhausted(store):
    sid = lai.init()
    seen_inside = []

    @lai.step(action="producer")
    def producer(n):
        for i in range(n):
            lai.create_event(description=f"item {i}")
            seen_inside.append(i)
            yield i
        return "done"

    gen = producer(2)
    assert lai.flush() and store.count("steps") == 0  # lazy: nothing until first next()
    assert next(gen) == 0
    lai.create_event(description="consumer")  # not inside the producer's step
    assert list(gen) == [1]
    (step,) = _steps(store, sid)
    assert step["is_finished"] and [e["description"] for e in step["events"]] == [
        "item 0", "item 1"]
    assert [e["description"] for e in store.session_tree(sid)["events"]] == ["consumer"]


def test_generator_step_return_value_send_throw_and_close():
    lai.init()

    @lai.step
    def echo():
        received = []
        try:
            while True:
                value = yield len(received)
                received.append(value)
        except KeyError:
            yield "caught"
        return received

    gen = echo()
    assert next(gen) == 0
    assert gen.send("a") == 1
    assert gen.throw(KeyError("k")) == "caught"
    with pytest.raises(StopIteration) as stop:
        next(gen)
    assert stop.value.value == ["a"]

    abandoned = echo()
    next(abandoned)
    abandoned.close()  # consumer walks away: the step ends, no error


def test_generator_step_that_raises_is_failed_and_exception_passes(store):
    sid = lai.init()

    @lai.step
    def broken():
        yield 1
        raise ValueError("bad item")

    with pytest.raises(ValueError, match="bad item"):
        list(broken())
    (step,) = _steps(store, sid)
    assert "ValueError: bad item" in step["error"]


def test_abandoned_generator_step_is_finished_without_error(store):
    sid = lai.init()

    @lai.step
    def endless():
        i = 0
        while True:
            yield i
            i += 1

    gen = endless()
    assert [next(gen) for _ in range(3)] == [0, 1, 2]
    gen.close()
    (step,) = _steps(store, sid)
    assert step["is_finished"] and step["error"] is None


def test_async_generator_steps(store):
    sid = lai.init()

    @lai.step(action="stream")
    async def stream(n):
        for i in range(n):
            lai.create_event(description=f"chunk {i}")
            await asyncio.sleep(0)
            yield i

    @lai.step(action="failing stream")
    async def failing():
        yield 1
        raise OSError("connection reset")

    async def main():
        items = [i async for i in stream(3)]
        with pytest.raises(OSError):
            async for _ in failing():
                pass
        return items

    assert asyncio.run(main()) == [0, 1, 2]
    steps = {s["action"]: s for s in _steps(store, sid)}
    assert [e["description"] for e in steps["stream"]["events"]] == [
        "chunk 0", "chunk 1", "chunk 2"]
    assert "OSError: connection reset" in steps["failing stream"]["error"]


def test_event_decorator_records_arguments_result_error_and_duration(store):
    sid = lai.init()

    @lai.event(description="lookup")
    def lookup(city: str, units: str = "metric") -> dict:
        return {"city": city, "t": 21}

    @lai.event
    async def flaky(x):
        raise TimeoutError("slow")

    assert lookup("Oslo") == {"city": "Oslo", "t": 21}
    with pytest.raises(TimeoutError):
        asyncio.run(flaky(1))
    assert lai.flush()
    events = {e["function_name"].rsplit(".", 1)[-1]: e
              for e in store.session_tree(sid)["events"]}
    ok = events["lookup"]
    assert ok["type"] == "function" and ok["description"] == "lookup"
    assert ok["arguments"] == {"city": "Oslo"} and "'t': 21" in ok["result"]
    assert ok["duration"] >= 0
    assert "TimeoutError: slow" in events["flaky"]["error"]


def test_decorator_arguments_are_validated_at_decoration_time():
    with pytest.raises(lai.InvalidOperationError, match="eval_score must be a number"):
        lai.step(eval_score="high")


def _named_target(a, b):
    return a + b


class _Adder:
    def __init__(self, base):
        self.base = base

    def __call__(self, x):
        return self.base + x


class _AsyncAdder:
    async def __call__(self, x):
        await asyncio.sleep(0)
        lai.create_event(description="inside the awaited call")
        return x + 1


def test_partials_and_callable_objects_are_named_after_their_target(store):
    sid = lai.init()
    add_one = lai.step(functools.partial(_named_target, 1))
    nested = functools.partial(functools.partial(_named_target), 2)
    add_two = lai.step(action=None, goal="g")(nested)
    adder = lai.step(_Adder(10))
    logged = lai.event(functools.partial(_named_target, 5))
    logged_object = lai.event(description="obj")(_Adder(1))

    assert add_one(2) == 3 and add_two(3) == 5 and adder(1) == 11
    assert logged(1) == 6 and logged_object(1) == 2
    steps = _steps(store, sid)
    assert [s["action"] for s in steps] == ["_named_target", "_named_target", "_Adder"]
    assert steps[0]["function_name"] == f"{__name__}._named_target"
    assert steps[2]["function_name"] == f"{__name__}._Adder"
    names = sorted(e["function_name"] for e in store.session_tree(sid)["events"])
    assert names == [f"{__name__}._Adder", f"{__name__}._named_target"]


def test_a_callable_object_with_an_async_call_is_recorded_around_its_await(store):
    sid = lai.init()
    adder = lai.step(_AsyncAdder())
    assert asyncio.run(adder(1)) == 2
    (step,) = _steps(store, sid)
    assert step["action"] == "_AsyncAdder"
    # the event made inside the awaited __call__ belongs to the step
    assert [e["description"] for e in step["events"]] == ["inside the awaited call"]


def test_decorating_odd_callables_never_raises():
    class NoNames:
        __call__ = staticmethod(lambda: "ok")

        def __getattr__(self, name):
            raise RuntimeError(name)

    lai.init()
    for decorate in (lai.step, lai.event, lai.step(goal="x"), lai.event(description="d")):
        assert decorate(NoNames())() == "ok"
        assert decorate(functools.partial(len))([1]) == 1
        assert decorate(print) is not None  # a builtin


def test_bare_decorators_over_classmethods_record_and_return_the_result(store):
    sid = lai.init()

    class Agent:
        @lai.step
        @classmethod
        def build(cls, name):
            return f"{cls.__name__}:{name}"

        @lai.event
        @classmethod
        def lookup(cls, key, default=None):
            return key

    assert Agent.build("a") == "Agent:a" and Agent.lookup("k") == "k"
    (step,) = _steps(store, sid)
    assert step["action"] == "build" and step["function_name"].endswith("Agent.build")
    (event,) = store.session_tree(sid)["events"]
    assert event["function_name"].endswith("Agent.lookup")
    assert event["arguments"]["key"] == "k"  # named from the method's signature


# -- generators: what the consumer sends, throws and closes reaches the user's code ----

def _decorators():
    """Every decorator a generator function can get, by name: each makes a
    fresh decorator (a session for the scopes to continue is made here)."""
    def continued():
        sid = lai.init()
        lai.detach()
        return lai.continued(sid)

    return {
        "step without a session": lambda: lai.step,
        "step": lambda: (lai.init(), lai.step)[1],
        "event": lambda: (lai.init(), lai.event(description="gen"))[1],
        "session": lambda: lai.session("gen"),
        "continued": continued,
        "continued end=True": lambda: lai.continued(lai.init(), end=True),
    }


DECORATORS = list(_decorators())


@pytest.mark.parametrize("kind", DECORATORS)
def test_a_decorated_generator_gets_what_is_sent_thrown_and_closed(kind):
    decorate = _decorators()[kind]()
    log = []

    @decorate
    def echo():
        try:
            while True:
                try:
                    value = yield len(log)
                    log.append(("sent", value))
                except KeyError as exc:
                    log.append(("caught", exc.args[0]))
        finally:
            log.append("finally")

    gen = echo()
    assert next(gen) == 0
    assert gen.send("a") == 1
    assert gen.throw(KeyError("k")) == 2  # caught by the user's code, which goes on
    assert gen.send("b") == 3
    gen.close()
    assert log == [("sent", "a"), ("caught", "k"), ("sent", "b"), "finally"]


@pytest.mark.parametrize("kind", DECORATORS)
def test_a_decorated_generator_returns_its_value_and_passes_what_it_does_not_catch(kind):
    def sums():
        total = 0
        while (value := (yield total)) is not None:
            total += value
        return total

    gen = _decorators()[kind]()(sums)()
    next(gen)
    gen.send(2)
    gen.send(3)
    with pytest.raises(StopIteration) as stop:
        gen.send(None)
    assert stop.value.value == 5

    uncaught = _decorators()[kind]()(sums)()  # (a session that ended is not continued)
    next(uncaught)
    with pytest.raises(KeyError, match="nobody"):
        uncaught.throw(KeyError("nobody"))
    with pytest.raises(StopIteration):
        next(uncaught)  # finished by the exception


@pytest.mark.parametrize("kind", DECORATORS)
def test_a_decorated_async_generator_gets_what_is_sent_thrown_and_closed(kind):
    decorate = _decorators()[kind]()
    log = []

    @decorate
    async def echo():
        try:
            while True:
                try:
                    value = yield len(log)
                    log.append(("sent", value))
                except KeyError as exc:
                    log.append(("caught", exc.args[0]))
                await asyncio.sleep(0)
        finally:
            await asyncio.sleep(0)
            log.append("finally")

    async def consume():
        gen = echo()
        assert await gen.asend(None) == 0
        assert await gen.asend("a") == 1
        assert await gen.athrow(KeyError("k")) == 2
        assert await gen.asend("b") == 3
        await gen.aclose()

    asyncio.run(consume())
    assert log == [("sent", "a"), ("caught", "k"), ("sent", "b"), "finally"]


@pytest.mark.parametrize("kind", DECORATORS)
def test_a_decorated_async_generator_passes_what_it_does_not_catch(kind):
    decorate = _decorators()[kind]()

    @decorate
    async def items():
        yield 1
        yield 2

    async def consume():
        gen = items()
        assert await gen.asend(None) == 1
        with pytest.raises(KeyError, match="nobody"):
            await gen.athrow(KeyError("nobody"))
        with pytest.raises(StopAsyncIteration):
            await gen.asend(None)

    asyncio.run(consume())


def test_a_closed_generator_steps_finally_runs_inside_its_step(store):
    sid = lai.init()

    @lai.step(action="producer")
    def producer():
        try:
            yield 1
            yield 2
        finally:
            lai.create_event(description="cleanup")

    @lai.step(action="stream")
    async def stream():
        try:
            yield 1
            yield 2
        finally:
            lai.create_event(description="async cleanup")

    async def consume():
        gen = stream()
        await gen.asend(None)
        await gen.aclose()

    gen = producer()
    next(gen)
    gen.close()
    asyncio.run(consume())
    steps = {s["action"]: s for s in _steps(store, sid)}
    assert [e["description"] for e in steps["producer"]["events"]] == ["cleanup"]
    assert [e["description"] for e in steps["stream"]["events"]] == ["async cleanup"]
    assert all(s["is_finished"] and s["error"] is None for s in steps.values())
    assert not store.session_tree(sid)["events"]  # none landed outside the steps
