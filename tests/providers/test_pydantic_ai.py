"""The pydantic_ai adapter: agent runs become steps, tool calls tool events
and model requests llm events, with pydantic-ai's own test models and with
its OpenAI model replaying real recorded traffic."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
from _cassettes import (
    expected_cost,
    replay,
    request_body,
    response_events,
    response_json,
    shared_path,
)
from _framework_helpers import chain_of_actions, only, steps_by_action
from pydantic_ai import Agent
from pydantic_ai.messages import ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, FunctionModel
from pydantic_ai.models.test import TestModel

import lucidic as lai
from lucidic import plugins
from lucidic.testing import capture

pytestmark = pytest.mark.usefixtures("restore_adapters")

CHAT = "openai/chat.yaml"
CHAT_STREAMING = "openai/chat_async_streaming.yaml"


def weather_agent(model=None) -> Agent:
    agent = Agent(model or TestModel(), name="weather", instructions="Be brief.")

    @agent.tool_plain
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return f"cloudy in {city}"

    return agent


def test_a_run_with_the_test_model_records_the_run_its_requests_and_its_tool():
    with capture() as captured:
        lai.init("test model", providers=["pydantic_ai"])
        result = weather_agent().run_sync("What is the weather in London?")
    run = only(captured.steps())
    assert run["action"] == "agent run: weather" and run["is_finished"]
    first, second = captured.events("llm")
    assert first["step_id"] == second["step_id"] == run["id"]
    assert first["provider"] == "test" and first["request_model"] == "test"
    assert first["input"] == [{"role": "system", "content": "Be brief."},
                              {"role": "user", "content": "What is the weather in London?"}]
    assert first["output"]["tool_calls"][0]["name"] == "get_weather"
    assert first["arguments"] == {"tools": ["get_weather"]}
    assert first["input_tokens"] > 0 and first["output_tokens"] > 0
    assert second["output"]["content"] == result.output
    assert second["input"][-1]["role"] == "tool"
    tool = only(captured.events("tool"))
    assert tool["function_name"] == "get_weather" and tool["step_id"] == run["id"]
    assert tool["output"] == f"cloudy in {tool['arguments']['city']}"


def test_a_function_model_run_records_what_the_model_answered_and_tool_errors():
    def answer(messages, info: AgentInfo) -> ModelResponse:
        if len(messages) == 1:
            return ModelResponse(parts=[ToolCallPart("explode", {"why": "testing"})],
                                 model_name="my-function")
        return ModelResponse(parts=[TextPart("recovered")], model_name="my-function")

    agent = Agent(FunctionModel(answer), name="fragile")

    @agent.tool_plain(retries=0)
    def explode(why: str) -> str:
        """Fails."""
        raise RuntimeError(why)

    with capture() as captured:
        lai.init("function model", providers=["pydantic_ai"])
        with pytest.raises(RuntimeError, match="testing"):
            agent.run_sync("go")
    run = only(captured.steps())
    assert run["error"] == "RuntimeError: testing"
    event = only(captured.events("llm"))
    # FunctionModel reports its own name for what it answered
    assert event["model"] == event["request_model"] == "function:answer:"
    assert event["provider"] == "function"
    assert event["output"]["tool_calls"] == [{"id": event["output"]["tool_calls"][0]["id"],
                                              "name": "explode",
                                              "arguments": {"why": "testing"}}]
    tool = only(captured.events("tool"))
    assert tool["error"] == "RuntimeError: testing" and tool["output"] is None


def openai_agent() -> Agent:
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    body = request_body(shared_path(CHAT))
    model = OpenAIChatModel(body["model"], provider=OpenAIProvider(api_key="sk-test"))
    return Agent(model, name="joker")


def assert_joke_event(event):
    path = shared_path(CHAT)
    recorded = response_json(path)
    usage = recorded["usage"]
    assert event["provider"] == "openai"
    assert event["request_model"] == "gpt-3.5-turbo"
    assert event["model"] == recorded["model"] == "gpt-3.5-turbo-0125"
    assert event["input"] == request_body(path)["messages"]
    assert event["output"]["content"] == recorded["choices"][0]["message"]["content"]
    assert (event["input_tokens"], event["output_tokens"]) == (usage["prompt_tokens"],
                                                               usage["completion_tokens"])
    assert event["cost"] == pytest.approx(expected_cost(
        "openai", recorded["model"], usage["prompt_tokens"], usage["completion_tokens"]))


def test_the_openai_model_over_a_recording():
    path = shared_path(CHAT)
    with capture() as captured:
        lai.init("openai", providers=["pydantic_ai"])
        with replay(path):
            result = openai_agent().run_sync(request_body(path)["messages"][0]["content"])
    assert result.output == response_json(path)["choices"][0]["message"]["content"]
    event = only(captured.events("llm"))
    assert_joke_event(event)
    assert event["step_id"] == only(captured.steps())["id"]


def test_with_the_openai_adapter_active_one_request_is_recorded_once():
    path = shared_path(CHAT)
    prompt = request_body(path)["messages"][0]["content"]
    with capture() as captured:
        lai.init("both", providers=["openai", "pydantic_ai"])
        with replay(path):
            openai_agent().run_sync(prompt)
    event = only(captured.events("llm"))
    assert_joke_event(event)
    assert event["description"] == "pydantic_ai openai"
    plugins.get_adapter("pydantic_ai").uninstrument()
    with capture() as captured:
        lai.init("openai only", providers=["openai"])
        with replay(path):
            openai_agent().run_sync(prompt)
    assert only(captured.events("llm"))["input_tokens"] == 15


# -- streamed runs ------------------------------------------------------------------------

WORDS = ["It ", "is ", "cloudy ", "in ", "Paris."]


async def stream_weather(messages, info: AgentInfo):
    """Streams a tool call first, then the answer word by word."""
    if len(messages) == 1:
        yield {0: DeltaToolCall(name="get_weather", json_args='{"city": "Paris"}',
                                tool_call_id="call-1")}
        return
    for word in WORDS:
        yield word


def streaming_weather_agent() -> Agent:
    return weather_agent(FunctionModel(stream_function=stream_weather))


def assert_streamed_weather_run(captured):
    run = only(captured.steps())
    assert run["action"] == "agent run: weather" and run["is_finished"]
    assert run["error"] is None
    asked, answered = captured.events("llm")
    assert asked["step_id"] == answered["step_id"] == run["id"]
    assert asked["request_model"] == asked["model"] == "function::stream_weather"
    assert asked["output"]["tool_calls"] == [
        {"id": "call-1", "name": "get_weather", "arguments": '{"city": "Paris"}'}]
    assert answered["output"] == {"role": "assistant", "content": "".join(WORDS)}
    assert answered["input"][-1] == {"role": "tool", "name": "get_weather",
                                     "tool_call_id": "call-1", "content": "cloudy in Paris"}
    assert asked["result"] is None and answered["result"] is None
    assert asked["error"] is None and answered["error"] is None
    tool = only(captured.events("tool"))
    assert tool["step_id"] == run["id"] and tool["output"] == "cloudy in Paris"


def test_a_streamed_run_records_one_run_step_with_each_streamed_request():
    async def main():
        async with streaming_weather_agent().run_stream("weather in Paris?") as result:
            return [text async for text in result.stream_text(delta=True, debounce_by=None)]

    with capture() as captured:
        lai.init("streamed", providers=["pydantic_ai"])
        chunks = asyncio.run(main())
    assert "".join(chunks) == "".join(WORDS)
    assert_streamed_weather_run(captured)


def test_a_run_driven_through_iter_streaming_each_node_records_the_same():
    async def main():
        async with streaming_weather_agent().iter("weather in Paris?") as run:
            async for node in run:
                if Agent.is_model_request_node(node):
                    async with node.stream(run.ctx) as events:
                        async for _ in events:
                            pass
        return run.result.output

    with capture() as captured:
        lai.init("iter", providers=["pydantic_ai"])
        assert asyncio.run(main()) == "".join(WORDS)
    assert_streamed_weather_run(captured)


def test_a_run_driven_through_iter_node_by_node_records_the_same():
    async def main():
        async with weather_agent().iter("weather?") as run:
            async for _ in run:
                pass
        return run.result.output

    with capture() as captured:
        lai.init("iter", providers=["pydantic_ai"])
        output = asyncio.run(main())
    run = only(captured.steps())
    first, second = captured.events("llm")
    assert first["step_id"] == second["step_id"] == only(captured.events("tool"))["step_id"] \
        == run["id"]
    assert second["output"]["content"] == output


def test_a_streamed_run_left_early_records_what_arrived_and_says_so():
    async def words(messages, info: AgentInfo):
        for word in WORDS:
            yield word

    async def main():
        agent = Agent(FunctionModel(stream_function=words), name="talker")
        async with agent.run_stream("go") as result:
            async for text in result.stream_text(delta=True, debounce_by=None):
                return text

    with capture() as captured:
        lai.init("left early", providers=["pydantic_ai"])
        assert asyncio.run(main()) == WORDS[0]
    run = only(captured.steps())
    assert run["is_finished"]
    event = only(captured.events("llm"))
    assert event["step_id"] == run["id"]
    assert event["output"]["content"] == WORDS[0]
    assert event["result"] == "stream closed before its end"


def streaming_openai_agent() -> Agent:
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    body = request_body(shared_path(CHAT_STREAMING))
    model = OpenAIChatModel(body["model"], provider=OpenAIProvider(api_key="sk-test"))
    return Agent(model, name="joker")


def recorded_stream_text(path) -> str:
    return "".join(chunk["choices"][0]["delta"].get("content") or ""
                   for chunk in response_events(path) if chunk["choices"])


def assert_streamed_joke_event(event, path):
    chunks = response_events(path)
    assert event["provider"] == "openai" and event["description"] == "pydantic_ai openai"
    assert event["request_model"] == request_body(path)["model"] == "gpt-3.5-turbo"
    assert event["model"] == chunks[0]["model"] == "gpt-3.5-turbo-0125"
    assert event["input"] == request_body(path)["messages"]
    assert event["output"]["content"] == recorded_stream_text(path)
    # the recording was made without stream_options.include_usage: no usage came back
    assert not any(chunk.get("usage") for chunk in chunks)
    assert event["input_tokens"] is None and event["output_tokens"] is None
    assert event["cost"] is None and event["error"] is None


@pytest.mark.parametrize("how", ["run_stream", "iter"])
def test_a_streamed_openai_run_with_the_openai_adapter_active_is_recorded_once(how):
    path = shared_path(CHAT_STREAMING)
    prompt = request_body(path)["messages"][0]["content"]

    async def main():
        agent = streaming_openai_agent()
        if how == "run_stream":
            async with agent.run_stream(prompt) as result:
                return await result.get_output()
        async with agent.iter(prompt) as run:
            async for node in run:
                if Agent.is_model_request_node(node):
                    async with node.stream(run.ctx) as events:
                        async for _ in events:
                            pass
        return run.result.output

    with capture() as captured:
        lai.init("both", providers=["openai", "pydantic_ai"])
        with replay(path):
            assert asyncio.run(main()) == recorded_stream_text(path)
    event = only(captured.events("llm"))
    assert_streamed_joke_event(event, path)
    assert event["step_id"] == only(captured.steps())["id"]
    # the same run with the openai adapter alone: that adapter does see this call
    plugins.get_adapter("pydantic_ai").uninstrument()
    with capture() as captured:
        lai.init("openai only", providers=["openai"])
        with replay(path):
            asyncio.run(main())
    event = only(captured.events("llm"))
    assert event["description"] != "pydantic_ai openai"
    assert event["output"]["content"] == recorded_stream_text(path)


@pytest.mark.parametrize("recording, streamed", [("anthropic/messages_create.yaml", False),
                                                  ("anthropic/messages_streaming.yaml", True)])
def test_the_anthropic_model_with_the_anthropic_adapter_active_is_recorded_once(recording,
                                                                                 streamed):
    pytest.importorskip("anthropic")
    from pydantic_ai.models.anthropic import AnthropicModel
    from pydantic_ai.providers.anthropic import AnthropicProvider

    path = shared_path(recording)
    body = request_body(path)

    async def main():
        # pydantic-ai's Anthropic model calls client.beta.messages
        agent = Agent(AnthropicModel(body["model"],
                                     provider=AnthropicProvider(api_key="sk-ant-test")),
                      name="joker")
        prompt = body["messages"][0]["content"]
        if streamed:
            async with agent.run_stream(prompt) as result:
                return await result.get_output()
        return (await agent.run(prompt)).output

    with capture() as captured:
        lai.init("both", providers=["anthropic", "pydantic_ai"])
        with replay(path):
            asyncio.run(main())
    event = only(captured.events("llm"))
    assert event["description"] == "pydantic_ai anthropic"
    assert event["request_model"] == event["model"] == body["model"]
    assert event["input_tokens"] == 17 and event["output_tokens"] > 0
    plugins.get_adapter("pydantic_ai").uninstrument()
    with capture() as captured:
        lai.init("anthropic only", providers=["anthropic"])
        with replay(path):
            asyncio.run(main())
    assert only(captured.events("llm"))["description"] == "anthropic beta.messages"


def test_a_call_a_tool_makes_during_a_streamed_run_is_the_openai_adapters_to_record():
    import openai

    path = shared_path(CHAT)
    body = request_body(path)
    agent = Agent(FunctionModel(stream_function=stream_weather), name="weather")

    @agent.tool_plain
    def get_weather(city: str) -> str:
        """The weather in a city, asked of another model."""
        client = openai.OpenAI(api_key="sk-test", max_retries=0)
        return client.chat.completions.create(**body).choices[0].message.content

    async def main():
        async with agent.run_stream("weather in Paris?") as result:
            await result.get_output()
        # after the run, in the same task: recorded again, outside any step
        openai.OpenAI(api_key="sk-test", max_retries=0).chat.completions.create(**body)

    with capture() as captured:
        lai.init("tool calls openai", providers=["openai", "pydantic_ai"])
        with replay(path, allow_repeats=True):
            asyncio.run(main())
    run = only(captured.steps())
    by_tool, after = [e for e in captured.events("llm") if e["provider"] == "openai"]
    assert by_tool["step_id"] == run["id"] and by_tool["description"] != "pydantic_ai openai"
    assert by_tool["output"]["content"] == response_json(path)["choices"][0]["message"]["content"]
    assert after["step_id"] is None
    assert [e["provider"] for e in captured.events("llm")].count("function") == 2


def test_an_agent_run_inside_a_tool_nests_in_the_calling_run():
    inner = Agent(TestModel(custom_output_text="inner answer"), name="inner")
    outer = Agent(TestModel(), name="outer")

    @outer.tool_plain
    async def delegate(question: str) -> str:
        """Ask the inner agent."""
        return (await inner.run(question)).output

    with capture() as captured:
        lai.init("nested", providers=["pydantic_ai"])
        outer.run_sync("go")
    steps = steps_by_action(captured)
    assert chain_of_actions(captured, steps["agent run: inner"]["id"]) == [
        "agent run: inner", "agent run: outer"]
    inner_event = [e for e in captured.events("llm")
                   if e["output"]["content"] == "inner answer"]
    assert only(inner_event)["step_id"] == steps["agent run: inner"]["id"]


def test_runs_in_tasks_threads_and_executors_inside_continued_land_in_that_session():
    with capture() as captured:
        lai.init("setup", providers=["pydantic_ai"])
        session_id = lai.init("concurrent")
        lai.detach()

        async def in_tasks():
            async with lai.continued(session_id):
                await asyncio.gather(*(weather_agent().run(f"q{i}") for i in range(3)))

        asyncio.run(in_tasks())
        with lai.continued(session_id):
            with ThreadPoolExecutor(3) as pool:
                list(pool.map(lambda i: weather_agent().run_sync(f"t{i}"), range(3)))
    runs = captured.steps()
    assert len(runs) == 6 and {s["session_id"] for s in runs} == {session_id}
    assert all(s["parent_step_id"] is None for s in runs)
    run_ids = {s["id"] for s in runs}
    events = captured.events()
    assert len(events) == 18 and {e["step_id"] for e in events} == run_ids


def test_with_no_session_current_runs_are_untouched():
    with capture() as captured:
        plugins.activate(["pydantic_ai"])
        assert weather_agent().run_sync("x").output
    assert captured.records == []


@pytest.mark.allow_internal_errors
def test_a_fault_in_the_adapter_never_breaks_the_users_run(monkeypatch):
    import lucidic_pydantic_ai._capability as capability

    def explode(*args, **kwargs):
        raise RuntimeError("adapter bug")

    monkeypatch.setattr(capability, "_messages", explode)
    monkeypatch.setattr(capability, "_response_fields", explode)
    with capture() as captured:
        lai.init("faults", providers=["pydantic_ai"])
        assert weather_agent().run_sync("x").output
    assert only(captured.steps())["is_finished"]


def test_uninstrument_restores_pydantic_ai_exactly():
    original = Agent.__dict__["iter"]
    adapter = plugins.get_adapter("pydantic_ai")
    adapter.instrument()
    adapter.instrument()
    assert Agent.__dict__["iter"].__lucidic_original__ is original
    adapter.uninstrument()
    adapter.uninstrument()
    assert Agent.__dict__["iter"] is original
    with capture() as captured:
        lai.init("after")
        weather_agent().run_sync("x")
    assert captured.events() == [] and captured.steps() == []


def test_the_anthropic_models_prompt_cache_writes_are_recorded_and_priced_by_lifetime():
    pytest.importorskip("anthropic")
    from _cassettes import own_path
    from pydantic_ai.models.anthropic import AnthropicModel
    from pydantic_ai.providers.anthropic import AnthropicProvider

    from lucidic.pricing import cost_of

    path = own_path("anthropic/messages_prompt_cache.yaml")
    body = request_body(path)
    agent = Agent(AnthropicModel(body["model"], provider=AnthropicProvider(api_key="sk-ant-test")))
    with capture() as captured:
        lai.init("cached", providers=["pydantic_ai"])
        with replay(path):
            agent.run_sync(body["messages"][0]["content"])
    event = only(captured.events("llm"))
    assert (event["input_tokens"], event["cached_tokens"], event["cache_write_tokens"]) == (
        14 + 2048 + 3072, 2048, 3072)
    assert event["cost"] == pytest.approx(cost_of("anthropic", body["model"], 5134, 12, 2048,
                                                  3072, cache_write_1h_tokens=2048))
