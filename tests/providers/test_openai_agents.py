"""The openai_agents adapter: a trace processor added beside the SDK's own
records runs, agents, tools, handoffs and model calls, replaying the real
recorded Responses API traffic of a run with a function tool and one with a
handoff."""

from __future__ import annotations

import asyncio
import inspect
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
from agents import Agent, RunConfig, Runner, function_tool, set_trace_processors
from agents.models.openai_responses import OpenAIResponsesModel
from agents.tracing import TracingProcessor, get_trace_provider
from openai import AsyncOpenAI

import lucidic as lai
from lucidic import plugins
from lucidic.testing import capture

pytestmark = pytest.mark.usefixtures("restore_adapters")

WEATHER = "openai_agents/agent_function_tool.yaml"
HANDOFF = "openai_agents/agent_handoff.yaml"
STORY = "openai/responses_streaming.yaml"


class Recorder(TracingProcessor):
    """Stands where the SDK's default exporter stands (which would send the
    traces to OpenAI), so the tests show ours is added beside it."""

    def __init__(self) -> None:
        self.ended: list[str] = []

    def on_trace_start(self, trace): pass
    def on_trace_end(self, trace): pass
    def on_span_start(self, span): pass
    def on_span_end(self, span): self.ended.append(span.span_data.type)
    def shutdown(self): pass
    def force_flush(self): pass


@pytest.fixture(autouse=True)
def own_processor():
    multi = get_trace_provider()._multi_processor
    saved = multi._processors
    recorder = Recorder()
    set_trace_processors([recorder])
    yield recorder
    plugins.get_adapter("openai_agents").uninstrument()
    set_trace_processors(list(saved))


def model(name: str = "gpt-4.1") -> OpenAIResponsesModel:
    return OpenAIResponsesModel(model=name,
                                openai_client=AsyncOpenAI(api_key="sk-test", max_retries=0))


@function_tool
def get_weather(city: str) -> str:
    """Gets the current weather for a specified city."""
    return "It's cloudy with 15°C"


def weather_agent() -> Agent:
    body = request_body(shared_path(WEATHER))
    return Agent(name="testAgent", instructions=body["instructions"], model=model(),
                 tools=[get_weather])


def expected_llm(path, index):
    recorded = response_json(path, index)
    usage = recorded["usage"]
    return recorded, usage


def assert_llm(event, path, index):
    recorded, usage = expected_llm(path, index)
    assert event["provider"] == "openai"
    # the model the request asked for, and the one that answered
    assert event["request_model"] == request_body(path, index)["model"] == "gpt-4.1"
    assert event["model"] == recorded["model"] == "gpt-4.1-2025-04-14"
    assert event["input_tokens"] == usage["input_tokens"]
    assert event["output_tokens"] == usage["output_tokens"]
    assert event["cached_tokens"] == usage["input_tokens_details"]["cached_tokens"]
    assert event["reasoning_tokens"] == usage["output_tokens_details"]["reasoning_tokens"]
    assert event["cost"] == pytest.approx(expected_cost(
        "openai", recorded["model"], usage["input_tokens"], usage["output_tokens"]))
    assert event["duration"] > 0


def test_a_run_with_a_function_tool(own_processor):
    path = shared_path(WEATHER)
    with capture() as captured:
        lai.init("weather", providers=["openai_agents"])
        with replay(path):
            result = Runner.run_sync(weather_agent(), "What is the weather in London?")
    recorded_answer = response_json(path, 2)["output"][0]["content"][0]["text"]
    assert result.final_output == recorded_answer
    steps = steps_by_action(captured)
    agent_step = steps["agent: testAgent"]
    assert chain_of_actions(captured, agent_step["id"]) == ["agent: testAgent",
                                                            "task: Agent workflow"]
    assert all(step["is_finished"] for step in captured.steps())
    first, second = captured.events("llm")
    assert_llm(first, path, 0)
    assert_llm(second, path, 2)
    assert first["step_id"] == second["step_id"] == agent_step["id"]
    assert first["input"] == [
        {"role": "system", "content": request_body(path)["instructions"]},
        {"role": "user", "content": "What is the weather in London?"}]
    (call,) = first["output"]
    assert (call["type"], call["name"], call["arguments"]) == ("function_call", "get_weather",
                                                              '{"city":"London"}')
    assert second["output"][0]["content"][0]["text"] == recorded_answer
    tool = only(captured.events("tool"))
    assert tool["function_name"] == "get_weather"
    assert tool["arguments"] == {"city": "London"}
    assert tool["output"] == "It's cloudy with 15°C"
    assert tool["step_id"] == agent_step["id"]
    # the SDK's own processor still saw every span
    assert {"agent", "response", "function"} <= set(own_processor.ended)


def test_a_run_with_a_handoff():
    path = shared_path(HANDOFF)
    agent_a = Agent(name="AgentA", instructions="Agent A does something.", model=model())
    agent_b = Agent(name="AgentB", instructions="Agent B does something else.", model=model())

    @function_tool(name_override="handoff_to_agent_a",
                   description_override="Handoff to Agent A for specific tasks")
    def to_a(input: str) -> str:  # noqa: A002 - the recorded tool's parameter name
        return input

    @function_tool(name_override="handoff_to_agent_b",
                   description_override="Handoff to Agent B for different tasks")
    def to_b(input: str) -> str:  # noqa: A002
        return input

    triage = Agent(name="TriageAgent", instructions="You decide which agent to handoff to.",
                   model=model(), tools=[to_a, to_b], handoffs=[agent_a, agent_b])
    with capture() as captured:
        lai.init("handoff", providers=["openai_agents"])
        with replay(path):
            result = Runner.run_sync(
                triage, "Please handle this task by delegating to another agent.")
    assert result.last_agent is agent_a
    steps = steps_by_action(captured)
    task = steps["task: Agent workflow"]
    assert steps["agent: TriageAgent"]["parent_step_id"] == task["id"]
    assert steps["agent: AgentA"]["parent_step_id"] == task["id"]
    first, second = captured.events("llm")
    assert_llm(first, path, 0)
    assert_llm(second, path, 1)
    assert first["step_id"] == steps["agent: TriageAgent"]["id"]
    assert second["step_id"] == steps["agent: AgentA"]["id"]
    assert second["input"][0] == {"role": "system", "content": "Agent A does something."}
    handoff = only([e for e in captured.events("generic")
                    if (e["description"] or "").startswith("handoff")])
    assert handoff["description"] == "handoff: TriageAgent -> AgentA"
    assert handoff["step_id"] == steps["agent: TriageAgent"]["id"]


def test_with_the_openai_adapter_active_each_model_call_is_recorded_once():
    path = shared_path(WEATHER)
    with capture() as captured:
        lai.init("both", providers=["openai", "openai_agents"])
        with replay(path):
            Runner.run_sync(weather_agent(), "What is the weather in London?")
    events = captured.events("llm")
    assert len(events) == 2
    assert {e["description"] for e in events} == {"openai_agents response"}
    # ... and the openai adapter alone does see (and record) those calls.
    plugins.get_adapter("openai_agents").uninstrument()
    with capture() as captured:
        lai.init("openai only", providers=["openai"])
        with replay(path):
            Runner.run_sync(weather_agent(), "What is the weather in London?")
    assert [e["input_tokens"] for e in captured.events("llm")] == [72, 101]


def test_the_requested_model_is_the_one_the_run_config_puts_in_place_of_the_agents():
    path = shared_path(WEATHER)
    agent = weather_agent()
    agent.model = "o3"  # overridden by the run config below: not what is asked for
    with capture() as captured:
        lai.init("run config", providers=["openai_agents"])
        with replay(path):
            Runner.run_sync(agent, "What is the weather in London?",
                            run_config=RunConfig(model=model("gpt-4.1")))
    assert [e["request_model"] for e in captured.events("llm")] == ["gpt-4.1", "gpt-4.1"]


def test_a_streamed_run_records_its_model_call_once_with_the_requested_model():
    path = shared_path(STORY)
    body = request_body(path)
    completed = response_events(path)[-1]["response"]
    usage = completed["usage"]
    agent = Agent(name="storyteller", model=model(body["model"]))

    async def main():
        result = Runner.run_streamed(agent, body["input"])
        async for _ in result.stream_events():
            pass
        return result.final_output

    with capture() as captured:
        lai.init("streamed", providers=["openai", "openai_agents"])
        with replay(path):
            output = asyncio.run(main())
    event = only(captured.events("llm"))
    assert event["description"] == "openai_agents response"
    assert event["request_model"] == body["model"] == "gpt-4.1-nano"
    assert event["model"] == completed["model"] == "gpt-4.1-nano-2025-04-14"
    assert (event["input_tokens"], event["output_tokens"]) == (usage["input_tokens"],
                                                               usage["output_tokens"])
    assert event["cost"] == pytest.approx(expected_cost(
        "openai", completed["model"], usage["input_tokens"], usage["output_tokens"]))
    assert event["output"][0]["content"][0]["text"] == output
    assert event["input"] == [{"role": "user", "content": body["input"]}]
    assert event["step_id"] == steps_by_action(captured)["agent: storyteller"]["id"]


def test_runs_in_tasks_and_executors_inside_continued_land_in_that_session():
    path = shared_path(WEATHER)
    with capture() as captured:
        lai.init("setup", providers=["openai_agents"])
        in_task, in_executor = lai.init("task"), lai.init("executor")
        lai.detach()

        async def run_in(session_id):
            async with lai.continued(session_id):
                return await Runner.run(weather_agent(), "What is the weather in London?")

        def run_sync_in(session_id):
            with lai.continued(session_id):
                with ThreadPoolExecutor(1) as pool:
                    return pool.submit(Runner.run_sync, weather_agent(),
                                       "What is the weather in London?").result()

        async def main():
            return await asyncio.create_task(run_in(in_task))

        with replay(path):
            asyncio.run(main())
        with replay(path):
            run_sync_in(in_executor)
    for session_id in (in_task, in_executor):
        events = [e for e in captured.events() if e["session_id"] == session_id]
        assert sorted(e["type"] for e in events) == ["llm", "llm", "tool"]
        steps = [s for s in captured.steps() if s["session_id"] == session_id]
        assert {s["action"] for s in steps} == {"task: Agent workflow", "agent: testAgent"}


def test_with_no_session_current_runs_are_untouched(own_processor):
    path = shared_path(WEATHER)
    with capture() as captured:
        plugins.activate(["openai_agents"])
        with replay(path):
            result = Runner.run_sync(weather_agent(), "What is the weather in London?")
    assert result.final_output.startswith("The weather in London")
    assert captured.records == []
    assert "response" in own_processor.ended


@pytest.mark.allow_internal_errors
def test_a_fault_in_the_adapter_never_breaks_the_users_run(monkeypatch):
    import lucidic_openai_agents._processor as processor_module

    def explode(*args, **kwargs):
        raise RuntimeError("adapter bug")

    path = shared_path(WEATHER)
    monkeypatch.setattr(processor_module, "_response_fields", explode)
    monkeypatch.setattr(processor_module, "_json_or_text", explode)
    with capture() as captured:
        lai.init("faults", providers=["openai_agents", "openai"])
        with replay(path):
            result = Runner.run_sync(weather_agent(), "What is the weather in London?")
    assert result.final_output.startswith("The weather in London")
    # the steps still closed
    assert all(step["is_finished"] for step in captured.steps())


def test_added_beside_the_sdks_processors_and_uninstrument_restores_them(own_processor):
    multi = get_trace_provider()._multi_processor
    before = multi._processors
    methods = {name: vars(OpenAIResponsesModel)[name]
               for name in ("get_response", "stream_response")}
    adapter = plugins.get_adapter("openai_agents")
    adapter.instrument()
    adapter.instrument()
    assert multi._processors[:-1] == before and len(multi._processors) == len(before) + 1
    for name, original in methods.items():
        patched = vars(OpenAIResponsesModel)[name]
        assert patched is not original and patched.__wrapped__ is original
    assert inspect.iscoroutinefunction(OpenAIResponsesModel.get_response)
    assert inspect.isasyncgenfunction(OpenAIResponsesModel.stream_response)
    adapter.uninstrument()
    adapter.uninstrument()
    assert multi._processors == before
    assert all(a is b for a, b in zip(multi._processors, before, strict=True))
    assert all(vars(OpenAIResponsesModel)[name] is original
               for name, original in methods.items())
