"""The langchain adapter: runs become steps, tools become events and model
calls become llm events, through langchain-core's callbacks, replaying real
recorded traffic where a model is called over HTTP."""

from __future__ import annotations

import asyncio
import gc
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from _cassettes import (
    expected_cost,
    own_path,
    replay,
    request_body,
    response_json,
    shared_path,
)
from _framework_helpers import chain_of_actions, only, price_file, steps_by_action
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.chat_models import generate_from_stream
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import AIMessageChunk, HumanMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.outputs import ChatGenerationChunk
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda
from langchain_core.tools import tool
from langchain_core.tracers import context as tracer_context
from pydantic import BaseModel

import lucidic as lai
from lucidic import plugins
from lucidic.testing import capture

pytestmark = pytest.mark.usefixtures("restore_adapters")


def socks_chain(**model_args):
    from langchain_openai import ChatOpenAI

    prompt = ChatPromptTemplate.from_messages([("user", "write 10 lines of random text "
                                                        "about ${product}")])
    model = ChatOpenAI(model="gpt-4", temperature=0, api_key="sk-test", max_retries=0,
                       **model_args)
    return prompt | model | StrOutputParser()


def math_messages():
    return [("system", "You are a mathematician."), ("user", "What's 5 + 5?")]


def gpt4o():
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(model="gpt-4o", api_key="sk-test", max_retries=0)


def streamed_text(path) -> str:
    from _cassettes import response_events

    return "".join(e["choices"][0]["delta"].get("content") or "" for e in response_events(path)
                   if e.get("choices"))


def test_lcel_invoke_records_the_chain_as_steps_and_the_model_call_once():
    path = shared_path("langchain/lcel_invoke_openai.yaml")
    assert request_body(path)["stream"] is True
    with capture() as captured:
        lai.init("lcel", providers=["langchain"])
        with replay(path):
            text = socks_chain(streaming=True).invoke({"product": "colorful socks"})
    assert text == streamed_text(path)
    steps = steps_by_action(captured)
    sequence = steps["RunnableSequence"]
    assert sequence["parent_step_id"] is None and sequence["is_finished"]
    assert steps["ChatPromptTemplate"]["parent_step_id"] == sequence["id"]
    assert steps["StrOutputParser"]["parent_step_id"] == sequence["id"]
    event = only(captured.events("llm"))
    assert event["step_id"] == sequence["id"]
    assert event["provider"] == "openai"
    assert event["request_model"] == "gpt-4"
    assert event["model"] == "gpt-4-0613"  # as the recording answered
    assert event["input"] == [{"role": "user", "content": "write 10 lines of random text "
                                                          "about $colorful socks"}]
    assert event["output"]["content"] == text
    assert event["arguments"]["temperature"] == 0
    # The recording streamed no usage, so there are no tokens to price.
    assert event["input_tokens"] is None and event["output_tokens"] is None
    assert event["cost"] is None
    assert event["duration"] > 0 and event["time_to_first_token"] is not None
    assert event["time_to_first_token"] <= event["duration"]


def test_lcel_stream_records_the_streamed_output_when_the_stream_ends():
    path = shared_path("langchain/lcel_stream_openai.yaml")
    with capture() as captured:
        lai.init("lcel stream", providers=["langchain"])
        with replay(path):
            chunks = list(socks_chain().stream({"product": "colorful socks"}))
    assert len(chunks) > 10
    text = "".join(chunks)
    assert text == streamed_text(path)
    event = only(captured.events("llm"))
    assert event["model"] == "gpt-4-0613" and event["request_model"] == "gpt-4"
    assert event["output"]["content"] == text
    assert event["time_to_first_token"] is not None
    assert steps_by_action(captured)["RunnableSequence"]["is_finished"]


def assert_recorded_cut(event, path, partial):
    """The model stream of ``path`` closed early, after ``partial``: what
    arrived, no error."""
    assert partial and streamed_text(path).startswith(partial)
    assert event["error"] is None
    assert event["output"] == {"role": "assistant", "content": partial}
    assert event["result"] == "stream closed before its end"


def socks_messages():
    return [("user", "write 10 lines of random text about $colorful socks")]


def test_a_streamed_model_answer_is_recorded_with_the_assistant_role():
    # model.stream() hands the callbacks AIMessageChunks, whose type is
    # "AIMessageChunk": the role recorded is still the assistant's
    path = shared_path("langchain/lcel_stream_openai.yaml")
    from langchain_openai import ChatOpenAI

    with capture() as captured:
        lai.init("stream role", providers=["langchain"])
        with replay(path):
            model = ChatOpenAI(model="gpt-4", temperature=0, api_key="sk-test", max_retries=0)
            text = "".join(chunk.content for chunk in model.stream(socks_messages()))
    assert text == streamed_text(path)
    event = only(captured.events("llm"))
    assert event["output"] == {"role": "assistant", "content": text}
    assert event["error"] is None


def test_breaking_out_of_a_stream_early_records_what_arrived_not_an_error():
    path = shared_path("langchain/lcel_stream_openai.yaml")
    from langchain_openai import ChatOpenAI

    with capture() as captured:
        lai.init("stream break", providers=["langchain"])
        with replay(path):
            model = ChatOpenAI(model="gpt-4", temperature=0, api_key="sk-test", max_retries=0)
            received = []
            for chunk in model.stream(socks_messages()):
                received.append(chunk.content)
                if len(received) == 5:
                    break  # the generator is dropped here, and closed (GeneratorExit)
    event = only(captured.events("llm"))
    assert_recorded_cut(event, path, "".join(received))
    # (langchain-openai names the answering model in the last chunk only)
    assert event["request_model"] == "gpt-4" and event["time_to_first_token"] is not None


def test_breaking_out_of_an_async_stream_early_records_what_arrived():
    path = shared_path("langchain/lcel_stream_openai.yaml")
    from langchain_openai import ChatOpenAI

    async def main():
        lai.init("astream break", providers=["langchain"])
        model = ChatOpenAI(model="gpt-4", temperature=0, api_key="sk-test", max_retries=0)
        received = []
        stream = model.astream(socks_messages())
        async for chunk in stream:
            received.append(chunk.content)
            if len(received) == 5:
                break
        await stream.aclose()  # what `async with aclosing(...)` does
        return "".join(received)

    with capture() as captured:
        with replay(path):
            partial = asyncio.run(main())
    event = only(captured.events("llm"))
    assert event["error"] is None
    assert event["output"] == {"role": "assistant", "content": partial}
    assert event["result"] == "stream closed before its end"


class CallersError(Exception):
    """The caller's own exception."""


@pytest.mark.parametrize("asynchronous", [False, True])
def test_an_exception_thrown_into_a_model_stream_records_what_arrived_not_an_error(
        asynchronous):
    """throw() / athrow() of the caller's own exception into model.stream():
    the caller stopped the stream, as when it closes it early; langchain-core
    reports the exception as the run's error, but it is none of the model's."""
    path = shared_path("langchain/lcel_stream_openai.yaml")
    from langchain_openai import ChatOpenAI

    async def read_async(model):
        stream = model.astream(socks_messages())
        received = [(await anext(stream)).content for _ in range(5)]
        with pytest.raises(CallersError):
            await stream.athrow(CallersError())
        return received

    def read(model):
        stream = model.stream(socks_messages())
        received = [next(stream).content for _ in range(5)]
        with pytest.raises(CallersError):
            stream.throw(CallersError())
        return received

    with capture() as captured:
        lai.init("stream thrown", providers=["langchain", "openai"])
        with replay(path):
            model = ChatOpenAI(model="gpt-4", temperature=0, api_key="sk-test", max_retries=0)
            received = asyncio.run(read_async(model)) if asynchronous else read(model)
    event = only(captured.events("llm"))
    assert_recorded_cut(event, path, "".join(received))
    assert event["model"] == "gpt-4-0613"


def test_an_exception_in_the_callers_loop_over_a_model_stream_is_no_error_of_the_model():
    """The caller's code raising inside ``for chunk in model.stream()``: the
    stream is dropped, and closed, as on a break."""
    path = shared_path("langchain/lcel_stream_openai.yaml")
    from langchain_openai import ChatOpenAI

    received = []
    with capture() as captured:
        lai.init("stream loop raised", providers=["langchain", "openai"])
        with replay(path):
            model = ChatOpenAI(model="gpt-4", temperature=0, api_key="sk-test", max_retries=0)
            with pytest.raises(CallersError):
                for chunk in model.stream(socks_messages()):
                    received.append(chunk.content)
                    if len(received) == 5:
                        raise CallersError
    event = only(captured.events("llm"))
    assert event["error"] is None
    assert event["output"] == {"role": "assistant", "content": "".join(received)}
    assert event["result"] == "stream closed before its end"


@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_model_stream_failing_midway_records_its_error_and_what_arrived(asynchronous):
    """An error the provider's stream raises midway is the model call's
    failure, recorded with what arrived before it and the model its chunks
    named, as the openai plugin records it."""
    path = own_path("openai/chat_stream_error.yaml")
    from langchain_openai import ChatOpenAI

    async def read_async(model):
        return [chunk.content async for chunk in model.astream(request_body(path)["messages"])]

    received = []
    with capture() as captured:
        lai.init("stream failed", providers=["langchain", "openai"])
        with replay(path):
            model = ChatOpenAI(model="gpt-4o-mini", api_key="sk-test", max_retries=0)
            with pytest.raises(openai.APIError, match="server had an error"):
                if asynchronous:
                    asyncio.run(read_async(model))
                else:
                    received.extend(chunk.content
                                    for chunk in model.stream(request_body(path)["messages"]))
    event = only(captured.events("llm"))
    assert event["error"] == "APIError: The server had an error while processing your " \
                             "request. Sorry about that!"
    assert event["output"] == {"role": "assistant", "content": "One, two,"}
    assert event["model"] == "gpt-4o-mini-2024-07-18"
    assert event["result"] is None


def read_five_chunks_then_stop(model, question, asynchronous, **kwargs):
    """Stream the model's answer (``kwargs``: the call's), and stop reading
    after five chunks (async: closing the stream, as ``async with
    aclosing(...)`` does)."""
    async def read_async():
        stream = model.astream(question, **kwargs)
        received = 0
        async for _ in stream:
            received += 1
            if received == 5:
                break
        await stream.aclose()

    if asynchronous:
        asyncio.run(read_async())
        return
    for received, _ in enumerate(model.stream(question, **kwargs), 1):
        if received == 5:
            return


@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_stream_cut_early_records_the_model_the_provider_named_in_its_chunks(asynchronous):
    """langchain-openai passes the answering model on in the stream's last
    chunk only; the chunks that did arrive named it."""
    path = shared_path("langchain/lcel_stream_openai.yaml")
    from _cassettes import response_events
    from langchain_openai import ChatOpenAI

    with capture() as captured:
        lai.init("stream cut", providers=["langchain"])
        with replay(path):
            model = ChatOpenAI(model="gpt-4", temperature=0, api_key="sk-test", max_retries=0)
            read_five_chunks_then_stop(model, socks_messages(), asynchronous)
    event = only(captured.events("llm"))
    assert event["result"] == "stream closed before its end"
    assert event["request_model"] == "gpt-4"
    assert event["model"] == response_events(path)[0]["model"] == "gpt-4-0613"


@pytest.mark.parametrize("asynchronous", [False, True])
@pytest.mark.parametrize("responses_api", [{"use_responses_api": True},
                                           {"output_version": "responses/v1"}])
def test_a_responses_api_stream_cut_early_records_the_model_its_first_event_named(
        responses_api, asynchronous):
    """Over the Responses API langchain-openai passes the answering model on
    in the stream's last chunk only; response.created named it."""
    path = shared_path("openai/responses_streaming.yaml")
    from _cassettes import response_events
    from langchain_openai import ChatOpenAI

    model = ChatOpenAI(model="gpt-4.1-nano", api_key="sk-test", max_retries=0, **responses_api)
    with capture() as captured:
        lai.init("stream cut", providers=["langchain"])
        with replay(path):
            read_five_chunks_then_stop(model, request_body(path)["input"], asynchronous)
    event = only(captured.events("llm"))
    assert event["result"] == "stream closed before its end"
    assert event["request_model"] == "gpt-4.1-nano"
    assert event["model"] == response_events(path)[0]["response"]["model"] \
        == "gpt-4.1-nano-2025-04-14"


class Sock(BaseModel):
    """A sock."""

    colour: str
    pattern: str


def sock_model():
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(model="gpt-4o", api_key="sk-test", max_retries=0)


@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_structured_output_stream_cut_early_records_the_model_its_chunks_named(asynchronous):
    """A response format asked for (as with_structured_output asks for it)
    streams through the client's beta.chat.completions.stream(), whose
    events carry each chunk of the completion under "chunk"; langchain-openai
    names the answering model in the stream's last chunk only."""
    path = own_path("openai/chat_structured_output_streaming.yaml")
    from _cassettes import response_events

    with capture() as captured:
        lai.init("structured cut", providers=["langchain"])
        with replay(path):
            read_five_chunks_then_stop(sock_model(), [("user", "Describe a colourful sock.")],
                                       asynchronous, response_format=Sock)
    event = only(captured.events("llm"))
    assert event["result"] == "stream closed before its end"
    assert event["request_model"] == "gpt-4o"
    assert event["model"] == response_events(path)[0]["model"] == "gpt-4o-2024-08-06"


@pytest.mark.parametrize("include_raw", [False, True])
def test_a_structured_output_stream_read_to_its_end_records_model_tokens_and_cost(
        include_raw):
    """(with_structured_output streams its answer, raw or not, once the model's
    stream has ended)"""
    path = own_path("openai/chat_structured_output_streaming.yaml")
    from _cassettes import response_events

    usage = response_events(path)[-1]["usage"]
    with capture() as captured:
        lai.init("structured", providers=["langchain"])
        with replay(path):
            answers = list(sock_model().with_structured_output(Sock, include_raw=include_raw)
                           .stream([("user", "Describe a colourful sock.")]))
    sock = Sock(colour="red", pattern="polka dots")
    if include_raw:  # its keys streamed one by one
        assert {key: value for answer in answers for key, value in answer.items()
                if key != "raw"} == {"parsed": sock, "parsing_error": None}
    else:
        assert answers == [sock]
    event = only(captured.events("llm"))
    assert event["result"] is None and event["model"] == "gpt-4o-2024-08-06"
    assert event["output"]["content"] == '{"colour":"red","pattern":"polka dots"}'
    assert (event["input_tokens"], event["output_tokens"]) == \
        (usage["prompt_tokens"], usage["completion_tokens"]) == (68, 12)
    assert event["cost"] == pytest.approx(expected_cost("openai", "gpt-4o-2024-08-06", 68, 12))


def test_a_stream_of_events_left_early_records_what_the_model_streamed_not_an_error():
    """astream_events runs the chain in a task of its own and cancels it when
    the caller stops reading: the model's stream ends with CancelledError
    there, which is its caller leaving, as a stream closed early is."""
    path = shared_path("langchain/lcel_stream_openai.yaml")

    async def read_three_tokens():
        streamed = []
        events = socks_chain().astream_events({"product": "colorful socks"}, version="v2")
        async for event in events:
            if event["event"] == "on_chat_model_stream":
                streamed.append(event["data"]["chunk"].content)
                if len(streamed) == 3:
                    break
        await events.aclose()
        return "".join(streamed)

    with capture() as captured:
        lai.init("events left", providers=["langchain"])
        with replay(path):
            streamed = asyncio.run(read_three_tokens())
    event = only(captured.events("llm"))
    assert event["error"] is None
    assert event["result"] == "stream closed before its end"
    # what the model had streamed when its task was cancelled: its reader may
    # have been a token ahead (langchain collects a token after its callbacks)
    # or behind (the chain's task runs ahead of its reader)
    arrived = event["output"]["content"]
    assert streamed and arrived and streamed_text(path).startswith(arrived)
    assert len(arrived) < len(streamed_text(path))
    assert event["model"] == "gpt-4-0613"


def read_two_streams_in_turn(asynchronous):
    """Two model streams read in turn in one thread (or one task), with the
    openai plugin active too, then closed before their ends:
    langchain-openai's, and Azure's through
    AzureChatOpenAI, whose first chunk names no model (only the prompt's
    filter results). The events captured, and the text read of each stream,
    by the request model of its model."""
    from _cassettes import event_stream_in_steps
    from langchain_openai import AzureChatOpenAI, ChatOpenAI

    order = ["gpt-4", "gpt-4o", "gpt-4", "gpt-4o", "gpt-4o"]
    read = {"gpt-4": "", "gpt-4o": ""}

    async def read_in_turn_async(streams):
        for name in order:
            read[name] += (await anext(streams[name])).content
        for stream in streams.values():
            await stream.aclose()

    with capture() as captured, \
            event_stream_in_steps(shared_path("langchain/lcel_stream_openai.yaml"),
                                  first=8) as openai_url, \
            event_stream_in_steps(own_path("openai/azure_chat_streaming.yaml"),
                                  first=6) as azure_url:
        lai.init("two streams", providers=["langchain", "openai"])
        models = {"gpt-4": ChatOpenAI(model="gpt-4", api_key="sk-test", max_retries=0,
                                      base_url=f"{openai_url}/v1"),
                  "gpt-4o": AzureChatOpenAI(model="gpt-4o", azure_endpoint=azure_url,
                                            azure_deployment="gpt-4o",
                                            api_version="2024-10-21", api_key="sk-test",
                                            max_retries=0)}
        if asynchronous:
            asyncio.run(read_in_turn_async(
                {name: model.astream(socks_messages()) for name, model in models.items()}))
        else:
            streams = {name: model.stream(socks_messages()) for name, model in models.items()}
            for name in order:
                read[name] += next(streams[name]).content
            for stream in streams.values():
                stream.close()
    return captured.events("llm"), read


@pytest.mark.parametrize("asynchronous", [False, True])
def test_two_streams_read_in_turn_in_one_thread_are_each_recorded_with_what_they_read(
        asynchronous):
    events, read = read_two_streams_in_turn(asynchronous)
    assert all(read.values())
    assert len(events) == 2  # by the langchain plugin, not again by the openai one
    assert {event["request_model"]: event["output"] for event in events} == {
        name: {"role": "assistant", "content": text} for name, text in read.items()}
    assert [event["result"] for event in events] == ["stream closed before its end"] * 2


@pytest.mark.parametrize("asynchronous", [False, True])
def test_two_streams_read_in_turn_in_one_thread_each_record_the_model_that_answered_it(
        asynchronous):
    """The model a chunk names is its stream's, not that of the model run
    started last: the Azure stream started after the other one's first
    chunk, and its own first chunk named no model."""
    from _cassettes import response_events

    events, _ = read_two_streams_in_turn(asynchronous)
    assert {event["request_model"]: event["model"] for event in events} == {
        "gpt-4": response_events(shared_path("langchain/lcel_stream_openai.yaml"))[0]["model"],
        "gpt-4o": response_events(own_path("openai/azure_chat_streaming.yaml"))[1]["model"]}
    assert {event["model"] for event in events} == {"gpt-4-0613", "gpt-4o-2024-08-06"}


@pytest.mark.parametrize("asynchronous", [False, True])
@pytest.mark.parametrize("stream_usage", [True, False])
def test_a_chat_anthropic_stream_cut_early_records_the_model_and_input_its_first_event_named(
        stream_usage, asynchronous):
    """Anthropic's first event (message_start) names the model and counts the
    input tokens; langchain-anthropic passes on the model only (and only with
    stream_usage), and the input tokens in the stream's last chunk."""
    path = shared_path("anthropic/messages_streaming.yaml")
    from _cassettes import response_events
    from langchain_anthropic import ChatAnthropic

    message_start = response_events(path)[0]["message"]
    with capture() as captured:
        lai.init("stream cut", providers=["langchain"])
        with replay(path):
            model = ChatAnthropic(model="claude-3-haiku", api_key="sk-test", max_retries=0,
                                  stream_usage=stream_usage)
            read_five_chunks_then_stop(model, socks_messages(), asynchronous)
    event = only(captured.events("llm"))
    assert event["result"] == "stream closed before its end"
    assert event["request_model"] == "claude-3-haiku"
    assert event["model"] == message_start["model"] == "claude-3-haiku-20240307"
    # as the anthropic plugin records a stream cut before its message_delta:
    # message_start's output count is a placeholder (test_anthropic.py)
    assert event["input_tokens"] == message_start["usage"]["input_tokens"] == 17
    assert event["output_tokens"] is None  # counted in the stream's last event only
    assert event["cost"] == pytest.approx(expected_cost("anthropic", message_start["model"], 17))


class AskingTwice(BaseChatModel):
    """A chat model of the user's own over the openai client that asks twice
    and streams both answers (as one that continues an answer cut at
    max_tokens would): its second request is made after its first token."""

    @property
    def _llm_type(self) -> str:
        return "asking-twice"

    def _request(self):
        return {"model": "gpt-4", "stream": True, "messages": [
            {"role": "user", "content": "write 10 lines of random text about $colorful socks"}]}

    def _stream(self, messages, stop=None, run_manager=None, **kwargs):
        client = openai.OpenAI(api_key="sk-test", max_retries=0)
        for _ in range(2):
            for chunk in client.chat.completions.create(**self._request()):
                if chunk.choices and chunk.choices[0].delta.content:
                    text = chunk.choices[0].delta.content
                    generated = ChatGenerationChunk(message=AIMessageChunk(content=text))
                    if run_manager:  # as the integrations report their tokens
                        run_manager.on_llm_new_token(text, chunk=generated)
                    yield generated

    async def _astream(self, messages, stop=None, run_manager=None, **kwargs):
        client = openai.AsyncOpenAI(api_key="sk-test", max_retries=0)
        for _ in range(2):
            async for chunk in await client.chat.completions.create(**self._request()):
                if chunk.choices and chunk.choices[0].delta.content:
                    text = chunk.choices[0].delta.content
                    generated = ChatGenerationChunk(message=AIMessageChunk(content=text))
                    if run_manager:
                        await run_manager.on_llm_new_token(text, chunk=generated)
                    yield generated

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        return generate_from_stream(self._stream(messages))


class Reviewing(BaseChatModel):
    """A chat model of the user's own that streams a heading, then runs a
    langchain model (gpt-4, streamed) for the rest of its answer."""

    @property
    def _llm_type(self) -> str:
        return "reviewing"

    def _inner(self):
        from langchain_openai import ChatOpenAI

        return ChatOpenAI(model="gpt-4", api_key="sk-test", max_retries=0, streaming=True)

    def _stream(self, messages, stop=None, run_manager=None, **kwargs):
        yield ChatGenerationChunk(message=AIMessageChunk(content="Reviewed: "))
        answer = self._inner().invoke(messages)
        yield ChatGenerationChunk(message=AIMessageChunk(content=answer.content))

    async def _astream(self, messages, stop=None, run_manager=None, **kwargs):
        yield ChatGenerationChunk(message=AIMessageChunk(content="Reviewed: "))
        answer = await self._inner().ainvoke(messages)
        yield ChatGenerationChunk(message=AIMessageChunk(content=answer.content))

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        return generate_from_stream(self._stream(messages))


#: langchain-core's event streams of a chat model (stream_events(version="v3"),
#: its async astream_events), where the library has them: made through
#: methods of their own, not stream() or astream()
V3 = [pytest.param(how, marks=pytest.mark.skipif(
    not hasattr(BaseChatModel, "_chat_model_stream_v3"),
    reason="this langchain-core has no stream_events(version='v3')"))
      for how in ("stream_events v3", "astream_events v3")]


def text_of(output):
    """The text of a recorded assistant message: its content, or the text of
    its content blocks (v3 streams assemble v1 content blocks)."""
    assert output["role"] == "assistant"
    content = output["content"]
    if isinstance(content, list):
        return "".join(block["text"] for block in content if block.get("type") == "text")
    return content


def run_model(model, how):
    """The model's answer to socks_messages(), asked as ``how`` says."""
    async def astream():
        return "".join([chunk.content async for chunk in model.astream(socks_messages())])

    async def astream_events_v3():
        return "".join([text async for text in
                        (await model.astream_events(socks_messages(), version="v3")).text])

    if how == "stream":
        return "".join(chunk.content for chunk in model.stream(socks_messages()))
    if how == "astream":
        return asyncio.run(astream())
    if how == "stream_events v3":
        return "".join(model.stream_events(socks_messages(), version="v3").text)
    if how == "astream_events v3":
        return asyncio.run(astream_events_v3())
    # ("streamed": invoked with stream=True, langchain streams the answer
    # through the model's _stream and hands back the whole of it)
    streamed = {"stream": True} if how.endswith(" streamed") else {}
    if how.startswith("ainvoke"):
        return asyncio.run(model.ainvoke(socks_messages(), **streamed)).content
    return model.invoke(socks_messages(), **streamed).content


@pytest.mark.parametrize("how", ["stream", "astream", "invoke", "ainvoke", "invoke streamed",
                                 "ainvoke streamed", *V3])
@pytest.mark.parametrize("model_class", [AskingTwice, Reviewing])
def test_a_model_whose_own_code_calls_a_model_after_its_first_token_is_recorded_once(
        model_class, how):
    """What a model's own code calls, a client or another langchain model, is
    that model's call, before its first token or after it: streamed, as
    invoked, the model run is the one event (the provider plugins used to be
    held off until the first token only, so a request made later was
    recorded again by the openai plugin, or as a model run of its own)."""
    path = shared_path("langchain/lcel_stream_openai.yaml")
    with capture() as captured:
        lai.init("own model", providers=["langchain", "openai"])
        with replay(path, allow_repeats=True):
            answer = run_model(model_class(), how)
    text = streamed_text(path)
    assert answer == (text * 2 if model_class is AskingTwice else "Reviewed: " + text)
    event = only(captured.events("llm"))
    assert event["description"] == model_class.__name__
    assert text_of(event["output"]) == answer


@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_client_call_made_between_a_streams_chunks_is_the_provider_plugins(asynchronous):
    """Code the caller runs while it holds a chunk is not the model's: a
    client call made there is recorded by the openai plugin, once."""
    path = shared_path("langchain/lcel_stream_openai.yaml")
    from langchain_openai import ChatOpenAI

    request = AskingTwice()._request()

    async def read_async(model):
        read = []
        async for chunk in model.astream(socks_messages()):
            if len(read) == 3:
                client = openai.AsyncOpenAI(api_key="sk-test", max_retries=0)
                async for _ in await client.chat.completions.create(**request):
                    pass
            read.append(chunk.content)
        return read

    with capture() as captured:
        lai.init("between chunks", providers=["langchain", "openai"])
        with replay(path, allow_repeats=True):
            model = ChatOpenAI(model="gpt-4", api_key="sk-test", max_retries=0)
            if asynchronous:
                read = asyncio.run(read_async(model))
            else:
                read = []
                for chunk in model.stream(socks_messages()):
                    if len(read) == 3:
                        list(openai.OpenAI(api_key="sk-test",
                                           max_retries=0).chat.completions.create(**request))
                    read.append(chunk.content)
    assert "".join(read) == streamed_text(path)
    events = captured.events("llm")
    assert sorted(event["description"] for event in events) == ["ChatOpenAI", "openai chat"]
    assert all(event["output"]["content"] == streamed_text(path) for event in events)


@pytest.mark.parametrize("how", V3)
def test_a_v3_event_stream_is_recorded_once_with_its_model_and_first_token(how):
    path = shared_path("langchain/lcel_stream_openai.yaml")
    from langchain_openai import ChatOpenAI

    with capture() as captured:
        lai.init("v3", providers=["langchain", "openai"])
        with replay(path):
            text = run_model(ChatOpenAI(model="gpt-4", api_key="sk-test", max_retries=0), how)
    assert text == streamed_text(path)
    event = only(captured.events("llm"))
    assert event["description"] == "ChatOpenAI" and event["model"] == "gpt-4-0613"
    assert text_of(event["output"]) == text
    assert event["result"] is None and event["error"] is None
    assert 0 < event["time_to_first_token"] <= event["duration"]


@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_client_call_made_between_a_v3_streams_events_is_the_provider_plugins(asynchronous):
    """Code the caller runs between the events of a v3 stream (of a model
    that reports no tokens: its events are its stream) is not the model's:
    a client call made there is recorded by the openai plugin."""
    if not hasattr(BaseChatModel, "_chat_model_stream_v3"):
        pytest.skip("this langchain-core has no stream_events(version='v3')")
    path = shared_path("langchain/lcel_stream_openai.yaml")
    request = AskingTwice()._request()
    model = FakeListChatModel(responses=["one two three"])

    async def read_async():
        read = []
        async for text in (await model.astream_events("hi", version="v3")).text:
            if len(read) == 2:
                client = openai.AsyncOpenAI(api_key="sk-test", max_retries=0)
                async for _ in await client.chat.completions.create(**request):
                    pass
            read.append(text)
        return read

    def read():
        read = []
        for text in model.stream_events("hi", version="v3").text:
            if len(read) == 2:
                list(openai.OpenAI(api_key="sk-test",
                                   max_retries=0).chat.completions.create(**request))
            read.append(text)
        return read

    with capture() as captured:
        lai.init("v3 between events", providers=["langchain", "openai"])
        with replay(path):
            received = asyncio.run(read_async()) if asynchronous else read()
    assert "".join(received) == "one two three"
    fake, client_call = sorted(captured.events("llm"),
                               key=lambda event: event["description"] != "FakeListChatModel")
    assert fake["description"] == "FakeListChatModel"
    assert text_of(fake["output"]) == "one two three"
    assert client_call["description"] == "openai chat"
    assert client_call["output"]["content"] == streamed_text(path)


def test_a_v3_stream_left_early_records_what_arrived():
    """stream_events(version="v3") read in part and dropped: langchain-core
    ends nothing (it just stops pulling), so the call was never recorded."""
    if not hasattr(BaseChatModel, "_chat_model_stream_v3"):
        pytest.skip("this langchain-core has no stream_events(version='v3')")
    path = shared_path("langchain/lcel_stream_openai.yaml")
    from langchain_openai import ChatOpenAI

    with capture() as captured:
        lai.init("v3 left", providers=["langchain", "openai"])
        with replay(path):
            model = ChatOpenAI(model="gpt-4", api_key="sk-test", max_retries=0)
            received = []
            for text in model.stream_events(socks_messages(), version="v3").text:
                received.append(text)
                if len(received) == 3:
                    break  # the stream is dropped here
            gc.collect()
            (event,) = captured.events("llm")
    partial = "".join(received)
    assert partial and streamed_text(path).startswith(partial)
    assert text_of(event["output"]) == partial
    assert event["result"] == "stream closed before its end" and event["error"] is None
    assert event["model"] == "gpt-4-0613"


def test_an_async_v3_stream_closed_early_records_what_arrived():
    """astream_events(version="v3") closed early: its producer task is
    cancelled, and langchain-core reports the cancellation with none of
    what arrived; the events that did are the call's output. (A model that
    pauses between its chunks: a ChatOpenAI stream whose server stalls
    cannot be closed here, langchain-openai's chunk timeout waiting on the
    read the cancellation leaves running.)"""
    if not hasattr(BaseChatModel, "_chat_model_stream_v3"):
        pytest.skip("this langchain-core has no stream_events(version='v3')")
    answer = "a sock of many colours, striped and spotted"  # a chunk per character

    async def read_three():
        model = FakeListChatModel(responses=[answer], sleep=0.2)
        stream = await model.astream_events("hi", version="v3")
        received = []
        async for text in stream.text:
            received.append(text)
            if len(received) == 3:
                break
        await stream.aclose()
        return received

    with capture() as captured:
        lai.init("v3 closed", providers=["langchain"])
        received = asyncio.run(read_three())
    partial = "".join(received)
    event = only(captured.events("llm"))
    # what the model's task had when it was cancelled: at least what its
    # reader read, and not all of it
    arrived = text_of(event["output"])
    assert partial == "a s" and arrived.startswith(partial) and answer.startswith(arrived)
    assert len(arrived) < len(answer)
    assert event["result"] == "stream closed before its end" and event["error"] is None
    assert event["description"] == "FakeListChatModel"


def test_a_call_asking_for_several_choices_counts_its_tokens_once():
    """langchain-openai puts the response's one usage on every choice's message."""
    from langchain_openai import ChatOpenAI

    path = own_path("openai/chat_two_choices.yaml")
    usage = response_json(path)["usage"]
    with capture() as captured:
        lai.init("two choices", providers=["langchain"])
        with replay(path):
            model = ChatOpenAI(model="gpt-4o-mini", n=2, api_key="sk-test", max_retries=0)
            result = model.generate([[HumanMessage("Name a colour.")]])
    assert [g.text for g in result.generations[0]] == ["Blue.", "Green."]
    event = only(captured.events("llm"))
    assert [o["content"] for o in event["output"]] == ["Blue.", "Green."]
    assert (event["input_tokens"], event["output_tokens"]) == \
        (usage["prompt_tokens"], usage["completion_tokens"])
    assert event["cost"] == pytest.approx(expected_cost(
        "openai", "gpt-4o-mini-2024-07-18", usage["prompt_tokens"], usage["completion_tokens"]))


def test_chat_anthropic_records_tokens_and_the_cost_the_price_table_gives(tmp_path,
                                                                           monkeypatch):
    from langchain_anthropic import ChatAnthropic

    path = shared_path("langchain/chat_anthropic.yaml")
    body = request_body(path)
    recorded = response_json(path)
    # claude-2.1 is retired and not in the built-in table: price it through
    # the user's override file, as a user would.
    monkeypatch.setenv("LUCIDIC_PRICES", str(price_file(tmp_path, "anthropic", "claude-2.1",
                                                         8.0, 24.0)))
    with capture() as captured:
        lai.init("anthropic", providers=["langchain"])
        with replay(path):
            model = ChatAnthropic(model=body["model"], max_tokens=body["max_tokens"],
                                  api_key="sk-ant-test", max_retries=0)
            answer = model.invoke([("system", body["system"]),
                                   ("user", body["messages"][0]["content"])])
    assert answer.content == recorded["content"][0]["text"]
    event = only(captured.events("llm"))
    assert event["step_id"] is None  # a bare model call: no chain around it
    assert event["provider"] == "anthropic"
    assert event["request_model"] == "claude-2.1" and event["model"] == "claude-2.1"
    assert event["input"] == [{"role": "system", "content": body["system"]},
                              {"role": "user", "content": body["messages"][0]["content"]}]
    assert event["output"]["content"] == recorded["content"][0]["text"]
    usage = recorded["usage"]
    assert (event["input_tokens"], event["output_tokens"]) == (usage["input_tokens"],
                                                               usage["output_tokens"])
    expected = (usage["input_tokens"] * 8.0 + usage["output_tokens"] * 24.0) / 1_000_000
    assert event["cost"] == pytest.approx(expected)


def math_graph():
    from langgraph.graph import END, START, MessagesState, StateGraph

    model = gpt4o()

    def call_model(state: MessagesState):
        return {"messages": [model.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("calculate", call_model)
    graph.add_edge(START, "calculate")
    graph.add_edge("calculate", END)
    return graph.compile()


def assert_math_event(event):
    path = shared_path("langchain/langgraph_invoke_openai.yaml")
    usage = response_json(path)["usage"]
    assert event["provider"] == "openai"
    assert event["request_model"] == "gpt-4o" and event["model"] == "gpt-4o-2024-08-06"
    assert event["input"] == [{"role": "system", "content": "You are a mathematician."},
                              {"role": "user", "content": "What's 5 + 5?"}]
    assert event["output"]["content"] == "\\(5 + 5 = 10\\)."
    assert event["input_tokens"] == usage["prompt_tokens"] == 24
    assert event["output_tokens"] == usage["completion_tokens"] == 11
    assert event["cached_tokens"] == 0 and event["reasoning_tokens"] == 0
    assert event["cost"] == pytest.approx(expected_cost("openai", "gpt-4o-2024-08-06", 24, 11))


def test_langgraph_nodes_nest_under_the_graph_and_hold_their_model_call():
    path = shared_path("langchain/langgraph_invoke_openai.yaml")
    with capture() as captured:
        lai.init("graph", providers=["langchain"])
        step_id = lai.create_step(action="outer")
        with replay(path):
            result = math_graph().invoke({"messages": math_messages()})
        lai.end_step(step_id)
    assert result["messages"][-1].content == "\\(5 + 5 = 10\\)."
    event = only(captured.events("llm"))
    assert_math_event(event)
    assert chain_of_actions(captured, event["step_id"]) == ["calculate", "LangGraph", "outer"]
    assert all(step["is_finished"] for step in captured.steps())


def test_with_the_openai_adapter_active_one_call_is_recorded_once():
    path = shared_path("langchain/langgraph_invoke_openai.yaml")
    with capture() as captured:
        lai.init("both", providers=["openai", "langchain"])
        with replay(path):
            gpt4o().invoke(math_messages())
            chain = RunnableLambda(lambda messages: gpt4o().invoke(messages), name="ask")
    event = only(captured.events("llm"))
    assert_math_event(event)
    assert event["description"] == "ChatOpenAI"  # recorded by the langchain adapter
    # ... while the openai adapter alone does see (and record) the same call:
    with capture() as captured:
        lai.init("openai only", providers=["openai"])
        plugins.get_adapter("langchain").uninstrument()
        with replay(path):
            gpt4o().invoke(math_messages())
    assert only(captured.events("llm"))["input_tokens"] == 24
    del chain


def test_async_runs_in_tasks_land_in_their_sessions_and_release_the_provider():
    graph_path = shared_path("langchain/langgraph_invoke_openai.yaml")
    chat_path = shared_path("openai/chat.yaml")
    chat_body = request_body(chat_path)
    with capture() as captured:
        lai.init("setup", providers=["openai", "langchain"])
        first, second = lai.init("first"), lai.init("second")

        async def graph_run(session_id):
            async with lai.continued(session_id):
                with replay(graph_path):
                    await math_graph().ainvoke({"messages": math_messages()})
                # The model call is over: a direct call in this same task is
                # the openai adapter's to record again.
                with replay(chat_path):
                    client = openai.AsyncOpenAI(api_key="sk-test", max_retries=0)
                    await client.chat.completions.create(model=chat_body["model"],
                                                         messages=chat_body["messages"])

        async def main():
            await graph_run(first)
            await asyncio.create_task(graph_run(second))

        asyncio.run(main())
    for session_id in (first, second):
        events = [e for e in captured.events("llm") if e["session_id"] == session_id]
        assert len(events) == 2, events
        assert_math_event(events[0])
        assert events[1]["request_model"] == chat_body["model"]
        assert events[1]["description"] != "ChatOpenAI"


def fake_chain(reply: str):
    model = FakeListChatModel(responses=[reply])
    return (ChatPromptTemplate.from_messages([("user", "{q}")]) | model
            | StrOutputParser()).with_config(run_name=f"chain-{reply}")


def test_runs_in_threads_and_executors_inside_continued_land_in_that_session():
    with capture() as captured:
        lai.init("setup", providers=["langchain"])
        session_id = lai.init("threads")
        lai.detach()

        def work(i):
            return fake_chain(f"r{i}").invoke({"q": f"q{i}"})

        with lai.continued(session_id):
            with ThreadPoolExecutor(4) as pool:
                results = list(pool.map(work, range(8)))
            results += [fake_chain("direct").batch([{"q": "a"}, {"q": "b"}])[0]]
    assert results[:8] == [f"r{i}" for i in range(8)]
    events = captured.events("llm")
    assert len(events) == 10 and {e["session_id"] for e in events} == {session_id}
    by_id = {s["id"]: s for s in captured.steps()}
    for event in events:
        reply = event["output"]["content"]
        assert by_id[event["step_id"]]["action"] == f"chain-{reply}"


def test_with_no_session_current_chains_run_untouched():
    with capture() as captured:
        plugins.activate(["langchain"])
        assert fake_chain("hi").invoke({"q": "x"}) == "hi"
    assert captured.records == []


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"It's cloudy in {city}"


@tool
def broken(city: str) -> str:
    """Always fails."""
    raise RuntimeError(f"no weather for {city}")


def test_tools_become_tool_events_and_nested_chains_nest():
    inner = fake_chain("inner")

    @tool
    def ask_inner(question: str) -> str:
        """Runs another chain."""
        return inner.invoke({"q": question})

    def plan(inputs):
        weather = get_weather.invoke({"city": inputs["city"]})
        return ask_inner.invoke({"question": weather})

    with capture() as captured:
        lai.init("tools", providers=["langchain"])
        outer = RunnableLambda(plan, name="plan")
        assert outer.invoke({"city": "London"}) == "inner"
        with pytest.raises(RuntimeError, match="no weather for Paris"):
            broken.invoke({"city": "Paris"})
    steps = steps_by_action(captured)
    tools = {e["function_name"]: e for e in captured.events("tool")}
    assert tools["get_weather"]["arguments"] == {"city": "London"}
    assert tools["get_weather"]["output"] == "It's cloudy in London"
    assert tools["get_weather"]["step_id"] == steps["plan"]["id"]
    assert tools["get_weather"]["duration"] >= 0
    assert tools["ask_inner"]["output"] == "inner"
    assert tools["broken"]["error"] == "RuntimeError: no weather for Paris"
    assert tools["broken"]["step_id"] is None
    # the chain a tool ran nests in the step the tool was called from
    assert chain_of_actions(captured, steps["chain-inner"]["id"]) == ["chain-inner", "plan"]
    assert only(captured.events("llm"))["step_id"] == steps["chain-inner"]["id"]


def test_what_a_tool_called_outside_any_chain_runs_is_recorded():
    """A tool invoked by the caller's own code, with no chain around it, is
    recorded at the top; the chain and the model call it runs are recorded
    too, the model call once (they were taken for the runs of a part left
    unrecorded, and the openai plugin recorded the call instead)."""
    path = shared_path("langchain/langgraph_invoke_openai.yaml")

    @tool
    def ask_a_mathematician(question: str) -> str:
        """Asks gpt-4o, as a mathematician."""
        chain = RunnableLambda(lambda q: [("system", "You are a mathematician."),
                                          ("user", q)], name="as_mathematician") | gpt4o()
        return chain.invoke(question).content

    with capture() as captured:
        lai.init("root tool", providers=["langchain", "openai"])
        with replay(path):
            answer = ask_a_mathematician.invoke({"question": "What's 5 + 5?"})
    assert answer == "\\(5 + 5 = 10\\)."
    tool_event = only(captured.events("tool"))
    assert tool_event["step_id"] is None and tool_event["output"] == answer
    event = only(captured.events("llm"))
    assert_math_event(event)
    assert event["description"] == "ChatOpenAI"  # the langchain plugin's
    assert chain_of_actions(captured, event["step_id"]) == ["RunnableSequence"]
    assert "as_mathematician" in steps_by_action(captured)


def test_a_failing_chain_finishes_its_step_with_the_error():
    def fail(_):
        raise ValueError("bad input")

    with capture() as captured:
        lai.init("errors", providers=["langchain"])
        with pytest.raises(ValueError, match="bad input"):
            (RunnableLambda(fail, name="fails") | StrOutputParser()).invoke("x")
    steps = steps_by_action(captured)
    assert steps["fails"]["error"] == "ValueError: bad input"
    assert steps["RunnableSequence"]["error"] == "ValueError: bad input"


@pytest.mark.allow_internal_errors
def test_a_fault_in_the_adapter_never_breaks_the_users_call(monkeypatch):
    import lucidic_langchain._handler as handler_module

    def explode(*args, **kwargs):
        raise RuntimeError("adapter bug")

    with capture():
        lai.init("faults", providers=["langchain"])
        monkeypatch.setattr(handler_module, "_run_name", explode)
        monkeypatch.setattr(handler_module, "_llm_result", explode)
        assert fake_chain("still fine").invoke({"q": "x"}) == "still fine"
        assert FakeListChatModel(responses=["ok"]).invoke("x").content == "ok"
    from lucidic.testing import internal_errors

    assert any(kind.startswith("langchain_") for kind in internal_errors)


def test_uninstrument_restores_langchain_exactly():
    from langchain_core.language_models import BaseLLM

    methods = [(cls, name) for cls in (BaseChatModel, BaseLLM)
               for name in ("generate", "agenerate", "stream", "astream")]
    originals = [vars(cls)[name] for cls, name in methods]
    before = list(tracer_context._configure_hooks)
    adapter = plugins.get_adapter("langchain")
    adapter.instrument()
    adapter.instrument()  # idempotent
    assert len(tracer_context._configure_hooks) == len(before) + 1
    assert all(vars(cls)[name] is not original
               for (cls, name), original in zip(methods, originals, strict=True))
    adapter.uninstrument()
    adapter.uninstrument()
    after = tracer_context._configure_hooks
    assert len(after) == len(before) and all(a is b for a, b in zip(after, before, strict=True))
    assert all(vars(cls)[name] is original
               for (cls, name), original in zip(methods, originals, strict=True))
    with capture() as captured:
        lai.init("after")
        assert fake_chain("x").invoke({"q": "y"}) == "x"
    assert captured.events() == [] and captured.steps() == []


def test_uninstrument_restores_langchain_openais_chunk_readers_exactly():
    """The chunk readers patched when a langchain-openai model first runs."""
    from langchain_openai.chat_models import base
    from langchain_openai.chat_models.base import BaseChatOpenAI

    original = vars(BaseChatOpenAI)["_convert_chunk_to_generation_chunk"]
    original_responses = vars(base)["_convert_responses_chunk_to_generation_chunk"]
    path = shared_path("langchain/lcel_stream_openai.yaml")
    with capture():
        lai.init("patched", providers=["langchain"])
        with replay(path):
            from langchain_openai import ChatOpenAI

            model = ChatOpenAI(model="gpt-4", api_key="sk-test", max_retries=0)
            list(model.stream(socks_messages()))
    assert vars(BaseChatOpenAI)["_convert_chunk_to_generation_chunk"] is not original
    assert vars(base)["_convert_responses_chunk_to_generation_chunk"] is not original_responses
    plugins.get_adapter("langchain").uninstrument()
    assert vars(BaseChatOpenAI)["_convert_chunk_to_generation_chunk"] is original
    assert vars(base)["_convert_responses_chunk_to_generation_chunk"] is original_responses


def test_uninstrument_restores_langchain_anthropics_event_reader_exactly():
    """The event reader patched when a langchain-anthropic model first runs."""
    from langchain_anthropic import ChatAnthropic

    original = vars(ChatAnthropic)["_make_message_chunk_from_anthropic_event"]
    path = shared_path("anthropic/messages_streaming.yaml")
    with capture():
        lai.init("patched", providers=["langchain"])
        with replay(path):
            model = ChatAnthropic(model="claude-3-haiku", api_key="sk-test", max_retries=0)
            list(model.stream(socks_messages()))
    assert vars(ChatAnthropic)["_make_message_chunk_from_anthropic_event"] is not original
    plugins.get_adapter("langchain").uninstrument()
    assert vars(ChatAnthropic)["_make_message_chunk_from_anthropic_event"] is original


@pytest.mark.parametrize("asynchronous", [False, True])
@pytest.mark.parametrize("stream_usage", [True, False])
def test_a_complete_chat_anthropic_stream_records_the_input_its_first_event_counted(
        stream_usage, asynchronous):
    """The recording's message_delta does not repeat the input tokens (the
    older event format): langchain-anthropic's usage for the stream then
    says 0 input tokens, which is not what message_start counted. Without
    stream_usage it reports no usage at all: the tokens are those
    message_start and message_delta counted, as the anthropic plugin's."""
    path = shared_path("anthropic/messages_streaming.yaml")
    from _cassettes import response_events
    from langchain_anthropic import ChatAnthropic

    events = response_events(path)
    start = events[0]["message"]
    delta = next(e for e in events if e["type"] == "message_delta")
    assert "input_tokens" not in delta["usage"]

    async def read_async(model):
        return [chunk async for chunk in model.astream(socks_messages())]

    with capture() as captured:
        lai.init("stream", providers=["langchain"])
        with replay(path):
            model = ChatAnthropic(model="claude-3-haiku", api_key="sk-test", max_retries=0,
                                  stream_usage=stream_usage)
            chunks = (asyncio.run(read_async(model)) if asynchronous
                      else list(model.stream(socks_messages())))
    usage = sum(chunks[1:], chunks[0]).usage_metadata  # langchain's own
    assert (usage["input_tokens"] == 0) if stream_usage else usage is None
    event = only(captured.events("llm"))
    assert event["result"] is None and event["model"] == start["model"]
    assert (event["input_tokens"], event["output_tokens"]) == \
        (start["usage"]["input_tokens"], delta["usage"]["output_tokens"]) == (17, 171)
    assert event["cost"] == pytest.approx(expected_cost("anthropic", start["model"], 17, 171))


def anthropic_cached_model(path):
    from langchain_anthropic import ChatAnthropic

    body = request_body(path)
    return ChatAnthropic(model=body["model"], max_tokens=body["max_tokens"],
                         api_key="sk-ant-test", max_retries=0)


@pytest.mark.parametrize("streamed", [False, True])
def test_chat_anthropic_prompt_cache_writes_are_recorded_and_priced_by_lifetime(streamed):
    """langchain-anthropic reports the cache writes by lifetime in
    usage_metadata.input_token_details; the handler records them as the
    anthropic adapter does. Streamed, message_start alone breaks them down
    (message_delta's cumulative counts do not)."""
    from _cassettes import own_path

    from lucidic.pricing import cost_of

    path = own_path("anthropic/messages_prompt_cache_streaming.yaml" if streamed
                    else "anthropic/messages_prompt_cache.yaml")
    body = request_body(path)
    with capture() as captured:
        lai.init("cached", providers=["langchain"])
        with replay(path):
            model = anthropic_cached_model(path)
            question = [("system", body["system"]), ("user", body["messages"][0]["content"])]
            if streamed:
                list(model.stream(question))
            else:
                model.invoke(question)
    event = only(captured.events("llm"))
    assert (event["input_tokens"], event["cached_tokens"], event["cache_write_tokens"]) == (
        14 + 2048 + 3072, 2048, 3072)
    assert event["cost"] == pytest.approx(cost_of("anthropic", body["model"], 5134, 12, 2048,
                                                  3072, cache_write_1h_tokens=2048))
    assert event["cost"] > cost_of("anthropic", body["model"], 5134, 12, 2048, 3072)
