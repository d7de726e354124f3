"""The openai adapter against the real client library, replaying recorded
traffic: each call made in a session becomes one "llm" event carrying the
model, tokens and cost the recording implies."""

from __future__ import annotations

import asyncio
import base64
import gc
import inspect
import json
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from _cassettes import (
    as_read,
    assert_recorded_alike,
    assert_recorded_as_not_json,
    decodable,
    event_stream_in_steps,
    expected_cost,
    lines_of_events,
    own_path,
    parse_body_not_json,
    parse_body_not_json_async,
    parse_then_read_by_hand,
    parse_then_read_by_hand_async,
    read_by_hand,
    read_by_hand_async,
    read_once_by_hand,
    read_once_by_hand_async,
    read_then_stop,
    replay,
    request_body,
    response_events,
    response_json,
    response_text,
    shared_path,
)

import lucidic as lai
from lucidic.testing import capture

pytestmark = pytest.mark.usefixtures("restore_adapters")


# base_url: a loopback server (event_stream_in_steps), whose stalls, if a
# read went further than it may, fail the test instead of hanging it.

def client(base_url: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(api_key="sk-test", max_retries=0, timeout=60.0,
                         base_url=base_url and f"{base_url}/v1")


def async_client(base_url: str | None = None) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key="sk-test", max_retries=0, timeout=60.0,
                              base_url=base_url and f"{base_url}/v1")


def only_llm_event(captured):
    (event,) = captured.events("llm")
    return event


def assert_chat_usage(event, recorded):
    usage = recorded["usage"]
    assert event["provider"] == "openai"
    assert event["model"] == recorded["model"]
    assert event["input_tokens"] == usage["prompt_tokens"]
    assert event["output_tokens"] == usage["completion_tokens"]
    assert event["cost"] == pytest.approx(expected_cost(
        "openai", recorded["model"], usage["prompt_tokens"], usage["completion_tokens"]))
    assert event["duration"] > 0
    assert event["error"] is None


# -- chat completions ------------------------------------------------------------------

def test_chat_completion_is_one_event_with_model_tokens_and_cost():
    path = shared_path("openai/chat.yaml")
    body = request_body(path)
    recorded = response_json(path)
    with capture() as captured, replay(path):
        session_id = lai.init(providers=["openai"])
        completion = client().chat.completions.create(**body)
    assert completion.choices[0].message.content == \
        recorded["choices"][0]["message"]["content"]
    event = only_llm_event(captured)
    assert_chat_usage(event, recorded)
    assert event["session_id"] == session_id
    assert event["request_model"] == body["model"] == "gpt-3.5-turbo"
    assert event["model"] == "gpt-3.5-turbo-0125"
    assert event["input"] == body["messages"]
    assert event["output"]["content"] == recorded["choices"][0]["message"]["content"]
    assert event["output"]["role"] == "assistant"
    assert event["output"]["finish_reason"] == "stop"
    assert event["time_to_first_token"] is None


def test_chat_with_tool_calls_in_the_history_records_them_as_input():
    path = shared_path("openai/chat_tool_calls.yaml")
    body = request_body(path)
    recorded = response_json(path)
    with capture() as captured, replay(path):
        lai.init(providers=["openai"])
        client().chat.completions.create(**body)
    event = only_llm_event(captured)
    assert_chat_usage(event, recorded)
    assert event["input"][0]["tool_calls"][0]["function"]["name"] == "get_current_weather"
    assert event["input"][1] == {"role": "tool", "tool_call_id": "1", "content":
                                 "The weather in San Francisco is 70 degrees and sunny."}


def test_async_chat_completion_is_recorded():
    path = shared_path("openai/chat.yaml")
    body = request_body(path)
    recorded = response_json(path)

    async def main():
        lai.init(providers=["openai"])
        return await async_client().chat.completions.create(**body)

    with capture() as captured, replay(path):
        completion = asyncio.run(main())
    assert completion.usage.completion_tokens == recorded["usage"]["completion_tokens"]
    assert_chat_usage(only_llm_event(captured), recorded)


def test_streamed_tool_call_is_assembled_from_its_chunks():
    path = shared_path("openai/chat_tools_streaming.yaml")
    body = request_body(path)
    chunks = response_events(path)
    with capture() as captured, replay(path):
        lai.init(providers=["openai"])
        stream = client().chat.completions.create(**body)
        assert isinstance(stream, openai.Stream)
        received = [chunk.model_dump(exclude_unset=True) for chunk in stream]
    # the caller sees exactly the recorded chunks
    assert [c["id"] for c in received] == [c["id"] for c in chunks]
    assert len(received) == len(chunks)
    event = only_llm_event(captured)
    expected_arguments = "".join(
        c["choices"][0]["delta"].get("tool_calls", [{}])[0].get("function", {})
        .get("arguments", "") for c in chunks)
    assert json.loads(expected_arguments) == {"location": "San Francisco"}
    (tool_call,) = event["output"]["tool_calls"]
    assert tool_call == {"id": "call_P9Ayqu3UQNYuTBVAg2sLimh9", "name": "get_current_weather",
                         "arguments": expected_arguments}
    assert event["output"]["finish_reason"] == "tool_calls"
    assert event["model"] == chunks[0]["model"]
    assert event["arguments"]["tools"] == body["tools"]
    assert event["arguments"]["stream"] is True
    # the recording carries no usage (no stream_options): counted, and marked so
    # (tests/providers/test_openai_tokens.py checks the counts)
    assert event["tokens_estimated"] is True and event["output_tokens"] > 0
    assert 0 <= event["time_to_first_token"] <= event["duration"]
    assert event["result"] is None


def test_async_stream_records_the_full_text_and_time_to_first_token():
    path = shared_path("openai/chat_async_streaming.yaml")
    body = request_body(path)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in response_events(path))

    async def main():
        lai.init(providers=["openai"])
        stream = await async_client().chat.completions.create(**body)
        assert isinstance(stream, openai.AsyncStream)
        return "".join([chunk.choices[0].delta.content or "" async for chunk in stream])

    with capture() as captured, replay(path):
        received = asyncio.run(main())
    assert received == text
    event = only_llm_event(captured)
    assert event["output"] == {"role": "assistant", "content": text, "finish_reason": "stop"}
    assert event["model"] == "gpt-3.5-turbo-0125"
    assert 0 < event["time_to_first_token"] <= event["duration"]


def test_partially_read_stream_closed_early_records_what_was_read():
    path = shared_path("openai/chat_async_streaming.yaml")
    body = request_body(path)
    with capture() as captured, replay(path):
        lai.init(providers=["openai"])
        stream = client().chat.completions.create(**body)
        first = [next(stream).choices[0].delta.content for _ in range(3)]
        assert not captured.events("llm")  # still open
        stream.close()
    event = only_llm_event(captured)
    assert event["output"]["content"] == "".join(first)
    assert event["result"] == "stream closed before its end"
    assert event["error"] is None


def test_a_stream_of_several_choices_closed_after_the_first_ended_is_recorded_as_cut():
    """n=2: the first choice's finish_reason is not the stream's end."""
    path = own_path("openai/chat_two_choices_streaming.yaml")
    body = request_body(path)
    with event_stream_in_steps(path, first=5) as url, capture() as captured:
        lai.init(providers=["openai"])
        stream = client(url).chat.completions.create(**body)
        chunks = [next(stream) for _ in range(5)]
        assert chunks[-1].choices[0].finish_reason == "stop"  # the first choice's
        stream.close()
    event = only_llm_event(captured)
    assert event["result"] == "stream closed before its end"
    assert event["output"] == [
        {"role": "assistant", "content": "Blue.", "finish_reason": "stop"},
        {"role": "assistant", "content": "Green"}]


def test_a_stream_of_several_choices_read_to_its_end_is_complete():
    path = own_path("openai/chat_two_choices_streaming.yaml")
    with capture() as captured, replay(path):
        lai.init(providers=["openai"])
        list(client().chat.completions.create(**request_body(path)))
    event = only_llm_event(captured)
    assert event["result"] is None and event["model"] == "gpt-4o-mini-2024-07-18"
    assert [o["content"] for o in event["output"]] == ["Blue.", "Green."]


def test_stream_used_as_context_manager_completes_on_exit():
    path = shared_path("openai/chat_async_streaming.yaml")
    body = request_body(path)
    with capture() as captured, replay(path):
        lai.init(providers=["openai"])
        with client().chat.completions.create(**body) as stream:
            assert isinstance(stream, openai.Stream)
            chunk = next(iter(stream))
    assert chunk.choices[0].delta.role == "assistant"
    event = only_llm_event(captured)
    assert event["result"] == "stream closed before its end"


def test_abandoned_stream_completes_when_garbage_collected():
    path = shared_path("openai/chat_async_streaming.yaml")
    body = request_body(path)
    with capture() as captured, replay(path):
        lai.init(providers=["openai"])
        stream = client().chat.completions.create(**body)
        next(stream)
        next(stream)
        del stream
        gc.collect()
        (event,) = captured.events("llm")
    assert event["output"]["content"] == "Why"
    assert event["result"] == "stream closed before its end"


def test_error_mid_stream_reaches_the_caller_and_is_recorded():
    path = own_path("openai/chat_stream_error.yaml")
    body = request_body(path)
    seen = []
    with capture() as captured, replay(path):
        lai.init(providers=["openai"])
        stream = client().chat.completions.create(**body)
        with pytest.raises(openai.APIError, match="server had an error"):
            for chunk in stream:
                seen.append(chunk.choices[0].delta.content)
    assert seen == ["", "One, two,"]
    event = only_llm_event(captured)
    assert "APIError" in event["error"] and "server had an error" in event["error"]
    # a failure, with what arrived before it and the model its chunks named
    assert event["output"] == {"role": "assistant", "content": "One, two,"}
    assert event["model"] == "gpt-4o-mini-2024-07-18"
    assert event["result"] is None


@pytest.mark.parametrize("asynchronous", [False, True])
def test_an_exception_in_the_callers_loop_closes_the_stream_as_cut_not_failed(asynchronous):
    """The caller's own code raising while it reads (its with block then
    closes the stream) is no failure of the call: what arrived, no error."""
    path = shared_path("openai/chat_async_streaming.yaml")
    body = request_body(path)

    class CallersError(Exception):
        pass

    async def read_async():
        async with await async_client().chat.completions.create(**body) as stream:
            async for chunk in stream:
                if chunk.choices[0].delta.content == " did":
                    raise CallersError

    def read():
        with client().chat.completions.create(**body) as stream:
            for chunk in stream:
                if chunk.choices[0].delta.content == " did":
                    raise CallersError

    with capture() as captured, replay(path):
        lai.init(providers=["openai"])
        with pytest.raises(CallersError):
            asyncio.run(read_async()) if asynchronous else read()
    event = only_llm_event(captured)
    assert event["output"] == {"role": "assistant", "content": "Why did"}
    assert event["model"] == "gpt-3.5-turbo-0125"
    assert event["result"] == "stream closed before its end"
    assert event["error"] is None


#: Each stream helper: its resource, the cassette it replays, the event of
#: the helper's stream its caller raises at, and the content recorded up to it.
STREAM_HELPERS = {
    "chat.completions": (lambda client: client.chat.completions,
                         "openai/chat_async_streaming.yaml",
                         lambda event: event.type == "content.delta" and event.delta == " did",
                         "Why did"),
    "responses": (lambda client: client.responses, "openai/responses_streaming.yaml",
                  lambda event: event.type == "response.output_text.delta"
                  and event.delta == " time", "Once upon a time"),
}


@pytest.mark.parametrize("asynchronous", [False, True])
@pytest.mark.parametrize("helper", sorted(STREAM_HELPERS))
def test_an_exception_in_the_callers_loop_over_a_stream_helper_records_the_call_as_it_exits(
        helper, asynchronous):
    """``chat.completions.stream()``, ``responses.stream()``: the caller's
    code raising inside the helper's with block. The helper's exit closes
    only the HTTP response under the stream it reads, so the call was
    recorded only when that stream was garbage collected; it is recorded
    as the block exits, as closed before its end with what arrived, and the
    caller's exception comes through untouched."""
    resource, path, stop_at, content = STREAM_HELPERS[helper]
    path = shared_path(path)
    body = {key: value for key, value in request_body(path).items() if key != "stream"}

    class CallersError(Exception):
        pass

    async def read_async():
        async with resource(async_client()).stream(**body) as stream:
            async for event in stream:
                if stop_at(event):
                    raise CallersError("the caller's own")

    def read():
        with resource(client()).stream(**body) as stream:
            for event in stream:
                if stop_at(event):
                    raise CallersError("the caller's own")

    with capture() as captured, replay(path):
        lai.init(providers=["openai"])
        with pytest.raises(CallersError) as raised:  # (its traceback keeps the stream alive)
            asyncio.run(read_async()) if asynchronous else read()
        assert captured.events("llm"), "recorded when the with block exited"
    assert raised.type is CallersError and str(raised.value) == "the caller's own"
    event = only_llm_event(captured)
    assert event["output"]["content"] == content
    assert event["result"] == "stream closed before its end"
    assert event["error"] is None


@pytest.mark.parametrize("how", ["cancel", "wait_for"])
@pytest.mark.parametrize("api", ["create", "stream helper"])
def test_a_stream_whose_reading_task_is_cancelled_records_what_arrived(api, how):
    """The task reading a stream cancelled after its first chunks: the
    caller stopped reading, as when it closes the stream early (what
    arrived, the model the chunks named), not a failure with nothing; the
    CancelledError (or wait_for's TimeoutError) reaches the caller untouched."""
    path = shared_path("openai/chat_async_streaming.yaml")
    body = request_body(path)

    async def main(url):
        lai.init(providers=["openai"])
        if api == "create":
            stream = await async_client(url).chat.completions.create(**body)
            read, raised = await read_then_stop(stream, 3, how)
            return [chunk.choices[0].delta.content for chunk in read], raised
        plain = {key: value for key, value in body.items() if key != "stream"}
        async with async_client(url).chat.completions.stream(**plain) as stream:
            read, raised = await read_then_stop(stream, 6, how)  # (a "chunk" event, a delta)
        return [event.chunk.choices[0].delta.content for event in read
                if event.type == "chunk"], raised

    with event_stream_in_steps(path, first=3) as url, capture() as captured:
        contents, raised = asyncio.run(main(url))
    assert contents == ["", "Why", " did"]
    if how == "cancel":
        assert raised.args == ("the caller's own reason",)
    event = only_llm_event(captured)
    assert event["output"] == {"role": "assistant", "content": "Why did"}
    assert event["model"] == "gpt-3.5-turbo-0125"
    assert event["result"] == "stream closed before its end"
    assert event["error"] is None
    assert 0 < event["time_to_first_token"] <= event["duration"]


def test_chat_stream_helper_is_recorded_once():
    path = shared_path("openai/chat_async_streaming.yaml")
    body = request_body(path)
    with capture() as captured, replay(path):
        lai.init(providers=["openai"])
        with client().chat.completions.stream(**{k: v for k, v in body.items()
                                                 if k != "stream"}) as stream:
            final = stream.get_final_completion()
    event = only_llm_event(captured)
    assert event["output"]["content"] == final.choices[0].message.content
    assert event["time_to_first_token"] is not None


def test_a_stream_read_in_the_main_thread_interrupted_records_what_arrived():
    """The synchronous counterpart: a KeyboardInterrupt (a real SIGINT) while
    the main thread waits on the socket for the next chunk stops the reading
    from outside the stream: recorded as closed early, and the interrupt
    reaches the caller."""
    path = shared_path("openai/chat_async_streaming.yaml")
    body = request_body(path)
    main = threading.get_ident()
    waiting = threading.Event()

    def interrupt_once_blocked():
        waiting.wait()
        for _ in range(6000):  # until the main thread waits in the HTTP backend's socket read
            frame = sys._current_frames().get(main)
            if frame is not None and frame.f_code.co_name == "read" and \
                    "_backends" in frame.f_code.co_filename:
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.005)
        # never seen there: no interrupt, and the read fails with its timeout

    interrupter = threading.Thread(target=interrupt_once_blocked)
    interrupter.start()
    # Ctrl-C as in a terminal, even when the suite was started with SIGINT
    # ignored (a script's background job), which this process inherited.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with event_stream_in_steps(path, first=3) as url, capture() as captured:
            lai.init(providers=["openai"])
            stream = client(url).chat.completions.create(**body)
            contents = [next(stream).choices[0].delta.content for _ in range(3)]
            waiting.set()
            with pytest.raises(KeyboardInterrupt):
                next(stream)
    finally:
        waiting.set()
        interrupter.join()
        signal.signal(signal.SIGINT, previous)
    assert contents == ["", "Why", " did"]
    event = only_llm_event(captured)
    assert event["output"] == {"role": "assistant", "content": "Why did"}
    assert event["result"] == "stream closed before its end"
    assert event["error"] is None


# -- with_raw_response / with_streaming_response ------------------------------------------
#
# The caller gets the library's own response object (not a proxy) and reads
# the body later, with .parse() (or by iterating the stream .parse() returns):
# the call is recorded with what the plain call would record.

def raw_chat(openai_client, way):
    return getattr(openai_client.chat.completions, way)


def test_raw_and_streaming_responses_record_the_output_tokens_and_cost_of_the_plain_call():
    path = shared_path("openai/chat.yaml")
    body = request_body(path)
    recorded = response_json(path)
    with capture() as captured, replay(path, allow_repeats=True):
        lai.init(providers=["openai"])
        raw = raw_chat(client(), "with_raw_response").create(**body)
        assert type(raw) is openai._legacy_response.LegacyAPIResponse
        completions = [raw.parse()]
        assert raw.parse() is completions[0]  # the library's own cache, as it was
        with raw_chat(client(), "with_streaming_response").create(**body) as response:
            assert type(response) is openai._response.APIResponse
            completions.append(response.parse())
    for completion in completions:
        assert type(completion) is openai.types.chat.ChatCompletion
        assert completion.choices[0].message.content == \
            recorded["choices"][0]["message"]["content"]
    events = captured.events("llm")
    assert len(events) == 2
    for event in events:
        assert_chat_usage(event, recorded)
        assert event["model"] == "gpt-3.5-turbo-0125"
        assert event["output"] == {"role": "assistant", "finish_reason": "stop",
                                   "content": recorded["choices"][0]["message"]["content"]}


def test_async_raw_and_streaming_responses_record_the_plain_calls_fields():
    path = shared_path("openai/chat.yaml")
    body = request_body(path)
    recorded = response_json(path)

    async def main():
        lai.init(providers=["openai"])
        raw = await raw_chat(async_client(), "with_raw_response").create(**body)
        assert type(raw) is openai._legacy_response.LegacyAPIResponse
        first = raw.parse()
        async with raw_chat(async_client(), "with_streaming_response").create(**body) as response:
            assert type(response) is openai._response.AsyncAPIResponse
            second = await response.parse()
        return first, second

    with capture() as captured, replay(path, allow_repeats=True):
        completions = asyncio.run(main())
    assert all(type(c) is openai.types.chat.ChatCompletion for c in completions)
    events = captured.events("llm")
    assert len(events) == 2
    for event in events:
        assert_chat_usage(event, recorded)
        assert event["output"]["content"] == recorded["choices"][0]["message"]["content"]


@pytest.mark.parametrize("way", ["with_raw_response", "with_streaming_response"])
def test_a_raw_stream_is_recorded_as_it_is_iterated(way):
    path = shared_path("openai/chat_tools_streaming.yaml")
    body = request_body(path)
    chunks = response_events(path)
    with capture() as captured, replay(path):
        lai.init(providers=["openai"])
        if way == "with_raw_response":
            raw = raw_chat(client(), way).create(**body)
            assert type(raw) is openai._legacy_response.LegacyAPIResponse
            stream = raw.parse()
            assert isinstance(stream, openai.Stream)
            received = [chunk.id for chunk in stream]
        else:
            with raw_chat(client(), way).create(**body) as response:
                assert type(response) is openai._response.APIResponse
                assert not captured.events("llm")  # the body is still to be read
                received = [chunk.id for chunk in response.parse()]
    assert received == [c["id"] for c in chunks]
    assert_streamed_tool_call(only_llm_event(captured), body, chunks)


def assert_streamed_tool_call(event, body, chunks):
    """The event of chat_tools_streaming.yaml's stream, read to its end."""
    (tool_call,) = event["output"]["tool_calls"]
    assert tool_call["name"] == "get_current_weather"
    assert json.loads(tool_call["arguments"]) == {"location": "San Francisco"}
    assert event["output"]["finish_reason"] == "tool_calls"
    assert event["model"] == chunks[0]["model"] != body["model"]
    assert event["tokens_estimated"] is True and event["output_tokens"] > 0
    assert event["cost"] > 0
    assert 0 <= event["time_to_first_token"] <= event["duration"]
    assert event["result"] is None and event["error"] is None


@pytest.mark.parametrize("way", ["with_raw_response", "with_streaming_response"])
def test_an_async_raw_stream_is_recorded_as_it_is_iterated(way):
    path = shared_path("openai/chat_async_streaming.yaml")
    body = request_body(path)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in response_events(path))

    async def main():
        lai.init(providers=["openai"])
        if way == "with_raw_response":
            raw = await raw_chat(async_client(), way).create(**body)
            stream = raw.parse()  # the legacy response parses synchronously
            assert isinstance(stream, openai.AsyncStream)
            return "".join([c.choices[0].delta.content or "" async for c in stream])
        async with raw_chat(async_client(), way).create(**body) as response:
            stream = await response.parse()
            return "".join([c.choices[0].delta.content or "" async for c in stream])

    with capture() as captured, replay(path):
        assert asyncio.run(main()) == text
    event = only_llm_event(captured)
    assert event["output"] == {"role": "assistant", "content": text, "finish_reason": "stop"}
    assert event["model"] == "gpt-3.5-turbo-0125"
    assert 0 < event["time_to_first_token"] <= event["duration"]


# A raw stream read by hand (its lines, bytes or text, not .parse()): the
# events in the bytes read are recorded as the parsed stream's chunks would
# be; the caller reads exactly what it would read without Lucidic.

@pytest.mark.parametrize(("way", "how"), [
    ("with_streaming_response", "iter_lines"), ("with_streaming_response", "iter_bytes"),
    ("with_streaming_response", "iter_text"), ("with_streaming_response", "read"),
    ("with_streaming_response", "text"),
    # with_raw_response's legacy response: the body is its httpx response
    ("with_raw_response", "iter_lines"), ("with_raw_response", "iter_bytes"),
    ("with_raw_response", "iter_text"), ("with_raw_response", "read")])
def test_a_raw_stream_read_by_hand_is_recorded_like_the_parsed_one(way, how):
    path = shared_path("openai/chat_tools_streaming.yaml")
    body = request_body(path)
    with capture() as captured, replay(path):
        lai.init(providers=["openai"])
        if way == "with_raw_response":
            raw = raw_chat(client(), way).create(**body)
            read = read_by_hand(raw.http_response, how)
        else:
            with raw_chat(client(), way).create(**body) as response:
                read = read_by_hand(response, how)
    assert read == as_read(response_text(path), how)
    assert_streamed_tool_call(only_llm_event(captured), body, response_events(path))


@pytest.mark.parametrize(("way", "how"), [
    ("with_streaming_response", "iter_lines"), ("with_streaming_response", "iter_bytes"),
    ("with_streaming_response", "iter_text"), ("with_streaming_response", "read"),
    ("with_streaming_response", "text"),
    ("with_raw_response", "aiter_lines"), ("with_raw_response", "aiter_bytes"),
    ("with_raw_response", "aiter_text"), ("with_raw_response", "aread")])
def test_an_async_raw_stream_read_by_hand_is_recorded_like_the_parsed_one(way, how):
    path = shared_path("openai/chat_async_streaming.yaml")
    body = request_body(path)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in response_events(path))

    async def main():
        lai.init(providers=["openai"])
        if way == "with_raw_response":
            raw = await raw_chat(async_client(), way).create(**body)
            return await read_by_hand_async(raw.http_response, how)
        async with raw_chat(async_client(), way).create(**body) as response:
            return await read_by_hand_async(response, how)

    with capture() as captured, replay(path):
        assert asyncio.run(main()) == as_read(response_text(path), how)
    event = only_llm_event(captured)
    assert event["output"] == {"role": "assistant", "content": text, "finish_reason": "stop"}
    assert event["model"] == "gpt-3.5-turbo-0125"
    assert event["tokens_estimated"] is True and event["cost"] > 0
    assert 0 < event["time_to_first_token"] <= event["duration"]
    assert event["result"] is None and event["error"] is None


def test_a_raw_stream_read_whole_then_parsed_is_recorded_once():
    path = shared_path("openai/chat_tools_streaming.yaml")
    body = request_body(path)
    chunks = response_events(path)
    with capture() as captured, replay(path):
        lai.init(providers=["openai"])
        with raw_chat(client(), "with_streaming_response").create(**body) as response:
            response.read()
            received = [chunk.id for chunk in response.parse()]  # from the body read
    assert received == [c["id"] for c in chunks]
    assert_streamed_tool_call(only_llm_event(captured), body, chunks)


def test_the_body_of_a_raw_response_dropped_at_once_is_recorded_as_it_is_read():
    """create(...).http_response.iter_lines(): the library's response object is
    gone before the body is read; the body's reading is what counts."""
    path = shared_path("openai/chat_tools_streaming.yaml")
    body = request_body(path)
    with capture() as captured, replay(path):
        lai.init(providers=["openai"])
        lines = raw_chat(client(), "with_raw_response").create(**body).http_response.iter_lines()
        gc.collect()
        assert not captured.events("llm")
        read = list(lines)
    assert read == response_text(path).splitlines()
    assert_streamed_tool_call(only_llm_event(captured), body, response_events(path))


#: The Content-Encodings a compressed event stream is tested with: each
#: that httpx decodes, and two stacked.
COMPRESSED = [decodable(encoding) for encoding in (
    "gzip", "deflate", "raw deflate", "br", "zstd", "gzip, deflate")]


@pytest.mark.parametrize("encoding", COMPRESSED)
@pytest.mark.parametrize("how", ["iter_lines", "iter_bytes", "read"])
def test_a_compressed_raw_stream_read_by_hand_is_recorded_like_the_parsed_one(how, encoding):
    """A compressed event stream (a Content-Encoding these APIs do not send,
    but a proxy may) read by hand to its end: its events are read from the
    bytes as they come, decoded by the client's httpx's own decoders apart
    from the caller's read, which gets them as httpx gives them. Compressed
    with br, zstd or two encodings, it was recorded as closed before its
    end, with nothing."""
    path = shared_path("openai/chat_tools_streaming.yaml")
    body = request_body(path)
    with event_stream_in_steps(path, first=10**6, encoding=encoding) as url, \
            capture() as captured:
        lai.init(providers=["openai"])
        accessor = raw_chat(client(url), "with_streaming_response")
        read = read_once_by_hand(accessor, body, "response", how)
    assert read == as_read(response_text(path), how)
    # as the stream parsed and read to its end records it
    assert_streamed_tool_call(only_llm_event(captured), body, response_events(path))


@pytest.mark.parametrize("encoding", COMPRESSED)
def test_a_compressed_raw_stream_read_by_hand_in_part_then_closed_records_what_arrived(
        encoding):
    path = shared_path("openai/chat_async_streaming.yaml")
    body = request_body(path)
    first = [c["choices"][0]["delta"].get("content") or "" for c in response_events(path)[:4]]
    with event_stream_in_steps(path, first=4, encoding=encoding) as url, \
            capture() as captured:
        lai.init(providers=["openai"])
        with raw_chat(client(url), "with_streaming_response").create(**body) as response:
            read = lines_of_events(response.iter_lines(), 4)
    assert len(read) == 8 and read[-1] == ""
    event = only_llm_event(captured)
    assert event["output"] == {"role": "assistant", "content": "".join(first)}
    assert event["model"] == "gpt-3.5-turbo-0125"
    assert event["result"] == "stream closed before its end"


def test_a_raw_stream_read_by_hand_in_part_then_closed_records_what_arrived():
    path = shared_path("openai/chat_async_streaming.yaml")
    body = request_body(path)
    first = [c["choices"][0]["delta"].get("content") or "" for c in response_events(path)[:4]]
    with event_stream_in_steps(path, first=4) as url, capture() as captured:
        lai.init(providers=["openai"])
        with raw_chat(client(url), "with_streaming_response").create(**body) as response:
            lines = response.iter_lines()  # (dropped, it would close the response)
            read = lines_of_events(lines, 4)
            assert not captured.events("llm")  # still open
    assert len(read) == 8 and read[-1] == ""
    event = only_llm_event(captured)
    assert event["output"] == {"role": "assistant", "content": "".join(first)}
    assert event["result"] == "stream closed before its end"
    assert event["error"] is None
    assert 0 < event["time_to_first_token"] <= event["duration"]


def test_an_async_raw_stream_read_by_hand_in_part_then_closed_records_what_arrived():
    path = shared_path("openai/chat_async_streaming.yaml")
    body = request_body(path)
    first = [c["choices"][0]["delta"].get("content") or "" for c in response_events(path)[:3]]

    async def main(url):
        lai.init(providers=["openai"])
        raw = await raw_chat(async_client(url), "with_raw_response").create(**body)
        lines, blank = [], 0
        async for line in raw.http_response.aiter_lines():
            lines.append(line)
            blank += line == ""
            if blank == 3:
                break
        await raw.http_response.aclose()
        return lines

    with event_stream_in_steps(path, first=3) as url, capture() as captured:
        assert len(asyncio.run(main(url))) == 6
    event = only_llm_event(captured)
    assert event["output"] == {"role": "assistant", "content": "".join(first)}
    assert event["result"] == "stream closed before its end"
    assert event["error"] is None


def test_a_raw_stream_read_by_hand_in_part_then_dropped_records_what_arrived():
    path = shared_path("openai/chat_async_streaming.yaml")
    body = request_body(path)
    first = [c["choices"][0]["delta"].get("content") or "" for c in response_events(path)[:2]]
    with event_stream_in_steps(path, first=2) as url, capture() as captured:
        lai.init(providers=["openai"])
        raw = raw_chat(client(url), "with_raw_response").create(**body)
        lines = raw.http_response.iter_lines()
        lines_of_events(lines, 2)
        del raw, lines
        gc.collect()
        event = only_llm_event(captured)
    assert event["output"] == {"role": "assistant", "content": "".join(first)}
    assert event["result"] == "stream closed before its end"


def test_an_error_in_a_raw_stream_read_by_hand_is_recorded_as_the_stream_would_raise_it():
    path = own_path("openai/chat_stream_error.yaml")
    body = request_body(path)
    with capture() as captured, replay(path):
        lai.init(providers=["openai"])
        with raw_chat(client(), "with_streaming_response").create(**body) as response:
            read = read_by_hand(response, "iter_lines")  # bytes: nothing raised
    assert read == as_read(response_text(path), "iter_lines")
    event = only_llm_event(captured)
    assert event["error"] == "APIError: The server had an error while processing your " \
                             "request. Sorry about that!"
    # what arrived before it, as the parsed stream records it
    assert event["output"] == {"role": "assistant", "content": "One, two,"}
    assert event["model"] == "gpt-4o-mini-2024-07-18"


def test_a_streamed_response_read_by_hand_is_recorded_from_its_completed_event():
    path = shared_path("openai/responses_streaming.yaml")
    body = request_body(path)
    (completed,) = [e for e in response_events(path) if e["type"] == "response.completed"]
    with capture() as captured, replay(path):
        lai.init(providers=["openai"])
        with client().responses.with_streaming_response.create(**body) as response:
            read = read_by_hand(response, "iter_lines")
    assert read == as_read(response_text(path), "iter_lines")
    event = only_llm_event(captured)
    assert event["output"]["content"] == \
        completed["response"]["output"][0]["content"][0]["text"]
    assert event["model"] == completed["response"]["model"]
    assert (event["input_tokens"], event["output_tokens"]) == (18, 79)
    assert event["cost"] == pytest.approx(expected_cost("openai", "gpt-4.1-nano", 18, 79))
    assert 0 < event["time_to_first_token"] <= event["duration"]
    assert event["result"] is None and event["error"] is None


def test_a_streaming_response_read_as_json_is_recorded_when_it_closes():
    path = shared_path("openai/chat.yaml")
    body = request_body(path)
    recorded = response_json(path)
    with capture() as captured, replay(path):
        lai.init(providers=["openai"])
        with raw_chat(client(), "with_streaming_response").create(**body) as response:
            data = response.json()
    assert data["choices"][0]["message"]["content"] == recorded["choices"][0]["message"]["content"]
    assert_chat_usage(only_llm_event(captured), recorded)


# A response that is not a stream, read by hand (its bytes, text or lines, not
# .parse(), .json() or .read()): once its body has been read to its end, the
# call is recorded as the parsed response is.

def resource_of(openai_client, cassette):
    return (openai_client.responses if "responses" in cassette
            else openai_client.chat.completions)


@pytest.mark.parametrize("of", ["response", "http_response"])
@pytest.mark.parametrize("how", ["iter_bytes", "iter_text", "iter_lines"])
@pytest.mark.parametrize("cassette", ["openai/chat.yaml", "openai/responses.yaml"])
def test_a_response_read_by_hand_is_recorded_like_the_parsed_one(cassette, how, of):
    path = shared_path(cassette)
    body = request_body(path)
    with capture() as captured, replay(path, allow_repeats=True):
        lai.init(providers=["openai"])

        def recorded_at_the_bodys_end():
            assert len(captured.events("llm")) == 2

        read = parse_then_read_by_hand(resource_of(client(), cassette).with_streaming_response,
                                       body, of, how, while_open=recorded_at_the_bodys_end)
    assert read == as_read(response_text(path), how)
    parsed, by_hand = captured.events("llm")
    assert_recorded_alike(by_hand, parsed)


@pytest.mark.parametrize("how", ["iter_bytes", "iter_text", "iter_lines"])
@pytest.mark.parametrize("of", ["response", "http_response"])
def test_an_async_response_read_by_hand_is_recorded_like_the_parsed_one(of, how):
    path = shared_path("openai/chat.yaml")
    body = request_body(path)

    async def main():
        lai.init(providers=["openai"])
        return await parse_then_read_by_hand_async(
            async_client().chat.completions.with_streaming_response, body, of, how)

    with capture() as captured, replay(path, allow_repeats=True):
        assert asyncio.run(main()) == as_read(response_text(path), how)
    parsed, by_hand = captured.events("llm")
    assert_recorded_alike(by_hand, parsed)


# A body that is not the JSON it claims to be (cut short on its way): the
# caller gets the bytes as sent, and the call records them, with an error
# saying the body is not JSON (not a fault of the recording).

@pytest.mark.parametrize("of", ["response", "http_response"])
@pytest.mark.parametrize("how", ["iter_bytes", "iter_text", "iter_lines", "read"])
@pytest.mark.parametrize("cassette", ["openai/chat_body_not_json.yaml",
                                      "openai/responses_body_not_json.yaml"])
def test_a_body_read_by_hand_that_is_not_json_is_recorded_as_sent_with_an_error(
        cassette, how, of):
    path = own_path(cassette)
    with capture() as captured, replay(path):
        lai.init(providers=["openai"])
        read = read_once_by_hand(resource_of(client(), cassette).with_streaming_response,
                                 request_body(path), of, how)
    assert read == as_read(response_text(path), how)
    assert_recorded_as_not_json(only_llm_event(captured), response_text(path))


@pytest.mark.parametrize("of", ["response", "http_response"])
@pytest.mark.parametrize("how", ["iter_bytes", "iter_text", "iter_lines"])
@pytest.mark.parametrize("cassette", ["openai/chat_body_not_json.yaml",
                                      "openai/responses_body_not_json.yaml"])
def test_an_async_body_read_by_hand_that_is_not_json_is_recorded_as_sent_with_an_error(
        cassette, how, of):
    path = own_path(cassette)

    async def main():
        lai.init(providers=["openai"])
        return await read_once_by_hand_async(
            resource_of(async_client(), cassette).with_streaming_response,
            request_body(path), of, how)

    with capture() as captured, replay(path):
        assert asyncio.run(main()) == as_read(response_text(path), how)
    assert_recorded_as_not_json(only_llm_event(captured), response_text(path))


@pytest.mark.parametrize("cassette", ["openai/chat_body_not_json.yaml",
                                      "openai/responses_body_not_json.yaml"])
def test_a_raw_response_whose_body_is_not_json_is_recorded_as_sent_with_an_error(cassette):
    path = own_path(cassette)
    with capture() as captured, replay(path):
        lai.init(providers=["openai"])
        raw = resource_of(client(), cassette).with_raw_response.create(**request_body(path))
        assert raw.text == response_text(path)  # read at once, by the library
    assert_recorded_as_not_json(only_llm_event(captured), response_text(path))


def test_an_async_raw_response_whose_body_is_not_json_is_recorded_as_sent_with_an_error():
    path = own_path("openai/chat_body_not_json.yaml")

    async def main():
        lai.init(providers=["openai"])
        raw = await async_client().chat.completions.with_raw_response.create(
            **request_body(path))
        return raw.text

    with capture() as captured, replay(path):
        assert asyncio.run(main()) == response_text(path)
    assert_recorded_as_not_json(only_llm_event(captured), response_text(path))


@pytest.mark.parametrize("cassette", ["openai/chat_body_not_json.yaml",
                                      "openai/responses_body_not_json.yaml"])
def test_a_body_that_is_not_json_parsed_by_the_caller_is_recorded_as_sent_with_an_error(
        cassette):
    path = own_path(cassette)
    with capture() as captured, replay(path):
        lai.init(providers=["openai"])
        parse_body_not_json(resource_of(client(), cassette).with_streaming_response,
                            request_body(path))
    assert_recorded_as_not_json(only_llm_event(captured), response_text(path))


def test_an_async_body_that_is_not_json_parsed_by_the_caller_is_recorded_as_sent_with_an_error():
    path = own_path("openai/chat_body_not_json.yaml")

    async def main():
        lai.init(providers=["openai"])
        await parse_body_not_json_async(async_client().chat.completions.with_streaming_response,
                                        request_body(path))

    with capture() as captured, replay(path):
        asyncio.run(main())
    assert_recorded_as_not_json(only_llm_event(captured), response_text(path))


def test_a_response_read_by_hand_in_part_is_recorded_as_closed_before_its_end():
    path = shared_path("openai/chat.yaml")
    body = request_body(path)
    with capture() as captured, replay(path):
        lai.init(providers=["openai"])
        with raw_chat(client(), "with_streaming_response").create(**body) as response:
            chunks = response.iter_bytes(chunk_size=16)
            assert next(chunks) == response_text(path)[:16].encode()
            assert not captured.events("llm")  # still open
    event = only_llm_event(captured)
    assert event["result"] == "stream closed before its end"
    assert event["output"] is None and event["output_tokens"] is None
    assert event["error"] is None


def test_a_streaming_response_left_unread_is_recorded_as_closed_before_its_end():
    path = shared_path("openai/chat_tools_streaming.yaml")
    body = request_body(path)
    with capture() as captured, replay(path):
        lai.init(providers=["openai"])
        with raw_chat(client(), "with_streaming_response").create(**body):
            pass
    event = only_llm_event(captured)
    assert event["result"] == "stream closed before its end"
    assert event["output"] is None and event["error"] is None


def test_a_raw_stream_dropped_unparsed_is_recorded_as_closed_before_its_end():
    path = shared_path("openai/chat_tools_streaming.yaml")
    body = request_body(path)
    with capture() as captured, replay(path):
        lai.init(providers=["openai"])
        raw = raw_chat(client(), "with_raw_response").create(**body)
        raw.http_response.close()
        del raw
        gc.collect()
        event = only_llm_event(captured)
    assert event["result"] == "stream closed before its end"
    assert event["output"] is None and event["error"] is None


# -- methods bound before lai.init -------------------------------------------------------
#
# with_raw_response and with_streaming_response build their wrapper the first
# time they are accessed (a cached property), binding the method they wrap
# then: accessed before init, they call the method init has not patched yet.
# Every method calls through the client's request method, which init patches
# too: calls that reach it without a patched method above are recorded there.

@pytest.mark.parametrize("way", ["with_raw_response", "with_streaming_response"])
def test_a_raw_accessor_bound_before_init_is_recorded(way):
    path = shared_path("openai/chat.yaml")
    body = request_body(path)
    recorded = response_json(path)
    create = raw_chat(client(), way).create
    with capture() as captured, replay(path):
        lai.init(providers=["openai"])
        if way == "with_raw_response":
            completion = create(**body).parse()
        else:
            with create(**body) as response:
                completion = response.parse()
    assert type(completion) is openai.types.chat.ChatCompletion
    event = only_llm_event(captured)
    assert_chat_usage(event, recorded)
    assert event["description"] == "openai chat"
    assert event["input"] == body["messages"]
    assert event["output"] == {"role": "assistant", "finish_reason": "stop",
                               "content": recorded["choices"][0]["message"]["content"]}


def test_a_client_whose_raw_accessor_was_used_before_init_is_recorded_after_it():
    path = shared_path("openai/chat.yaml")
    body = request_body(path)
    openai_client = client()
    with replay(path, allow_repeats=True):
        openai_client.chat.completions.with_raw_response.create(**body).parse()  # no session
        with capture() as captured:
            lai.init(providers=["openai"])
            openai_client.chat.completions.with_raw_response.create(**body).parse()
    assert_chat_usage(only_llm_event(captured), response_json(path))


@pytest.mark.parametrize("way", ["with_raw_response", "with_streaming_response"])
def test_an_async_raw_accessor_bound_before_init_is_recorded(way):
    path = shared_path("openai/chat_async_streaming.yaml")
    body = request_body(path)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in response_events(path))
    create = raw_chat(async_client(), way).create

    async def main():
        lai.init(providers=["openai"])
        if way == "with_raw_response":
            return "".join([c.choices[0].delta.content or "" async for c in
                            (await create(**body)).parse()])
        async with create(**body) as response:
            return await read_by_hand_async(response, "iter_text")

    with capture() as captured, replay(path):
        asyncio.run(main())
    event = only_llm_event(captured)
    assert event["output"] == {"role": "assistant", "content": text, "finish_reason": "stop"}
    assert 0 < event["time_to_first_token"] <= event["duration"]


def test_methods_bound_before_init_are_recorded_streamed_or_not():
    chat = shared_path("openai/chat.yaml")
    streamed = shared_path("openai/chat_tools_streaming.yaml")
    create = client().chat.completions.create
    responses_create = client().responses.create
    with capture() as captured:
        lai.init(providers=["openai"])
        with replay(chat):
            create(**request_body(chat))
        with replay(streamed):
            stream = create(**request_body(streamed))
            assert isinstance(stream, openai.Stream)
            list(stream)
        with replay(shared_path("openai/responses.yaml")):
            responses_create(**request_body(shared_path("openai/responses.yaml")))
    plain, tool_call, response = captured.events("llm")
    assert_chat_usage(plain, response_json(chat))
    assert_streamed_tool_call(tool_call, request_body(streamed), response_events(streamed))
    assert response["description"] == "openai responses"
    assert response["model"] == "gpt-4.1-nano-2025-04-14" and response["output_tokens"]


# -- Responses API and embeddings --------------------------------------------------------

def test_responses_create_is_recorded():
    path = shared_path("openai/responses.yaml")
    body = request_body(path)
    recorded = response_json(path)
    with capture() as captured, replay(path):
        lai.init(providers=["openai"])
        response = client().responses.create(**body)
    event = only_llm_event(captured)
    usage = recorded["usage"]
    assert event["model"] == recorded["model"] == "gpt-4.1-nano-2025-04-14"
    assert event["request_model"] == "gpt-4.1-nano"
    assert event["input"] == [{"role": "user", "content": body["input"]}]
    assert event["output"] == {"role": "assistant", "content": response.output_text}
    assert (event["input_tokens"], event["output_tokens"]) == \
        (usage["input_tokens"], usage["output_tokens"])
    assert event["cached_tokens"] == usage["input_tokens_details"]["cached_tokens"]
    assert event["reasoning_tokens"] == usage["output_tokens_details"]["reasoning_tokens"]
    assert event["cost"] == pytest.approx(expected_cost(
        "openai", recorded["model"], usage["input_tokens"], usage["output_tokens"]))


def test_streamed_response_is_recorded_from_its_completed_event():
    path = shared_path("openai/responses_streaming.yaml")
    body = request_body(path)
    (completed,) = [e for e in response_events(path) if e["type"] == "response.completed"]
    usage = completed["response"]["usage"]
    with capture() as captured, replay(path):
        lai.init(providers=["openai"])
        deltas = [e.delta for e in client().responses.create(**body)
                  if e.type == "response.output_text.delta"]
    event = only_llm_event(captured)
    assert event["output"]["content"] == "".join(deltas)
    assert event["output"]["content"] == \
        completed["response"]["output"][0]["content"][0]["text"]
    assert (event["input_tokens"], event["output_tokens"]) == (18, 79) == \
        (usage["input_tokens"], usage["output_tokens"])
    assert event["cost"] == pytest.approx(expected_cost("openai", "gpt-4.1-nano", 18, 79))
    assert 0 < event["time_to_first_token"] <= event["duration"]


def test_embeddings_are_recorded_with_input_tokens_and_cost():
    path = shared_path("openai/embeddings.yaml")
    body = request_body(path)
    recorded = response_json(path)
    with capture() as captured, replay(path):
        lai.init(providers=["openai"])
        result = client().embeddings.create(**body)
    event = only_llm_event(captured)
    assert event["model"] == recorded["model"]
    assert event["input"] == body["input"]
    assert event["input_tokens"] == recorded["usage"]["prompt_tokens"] == 8
    # encoding_format="base64": the client hands back the vector as base64 of
    # little-endian float32s; its dimension is the decoded bytes / 4 (1536 for
    # ada-002), not the length of the base64 text
    vector = result.data[0].embedding
    assert isinstance(vector, str)
    dimensions = len(base64.b64decode(vector)) // 4
    assert dimensions == 1536
    assert event["output"] == {"embeddings": 1, "dimensions": dimensions}
    assert event["cost"] == pytest.approx(expected_cost("openai", recorded["model"], 8))


# -- errors, refusals, rate limits (the project's own hand-written cassettes) -------------

def test_api_error_is_raised_unchanged_and_recorded():
    path = own_path("openai/chat_error_400.yaml")
    with capture() as captured, replay(path):
        lai.init(providers=["openai"])
        with pytest.raises(openai.BadRequestError) as raised:
            client().chat.completions.create(**request_body(path))
    assert raised.value.status_code == 400
    event = only_llm_event(captured)
    assert event["error"].startswith("BadRequestError: Error code: 400")
    assert "Invalid 'temperature'" in event["error"]
    assert event["output"] is None and event["cost"] is None
    assert event["request_model"] == "gpt-4o-mini"
    assert event["arguments"] == {"temperature": 7}


def test_refusal_is_recorded_as_the_output():
    path = own_path("openai/chat_refusal.yaml")
    recorded = response_json(path)
    with capture() as captured, replay(path):
        lai.init(providers=["openai"])
        completion = client().chat.completions.create(**request_body(path))
    assert completion.choices[0].message.refusal == "I'm sorry, I can't help with that."
    event = only_llm_event(captured)
    assert event["output"] == {"role": "assistant", "finish_reason": "stop",
                               "refusal": "I'm sorry, I can't help with that."}
    assert_chat_usage(event, recorded)


def test_rate_limited_call_without_retries_records_the_429():
    path = own_path("openai/chat_rate_limit_429.yaml")
    with capture() as captured, replay(path):
        lai.init(providers=["openai"])
        with pytest.raises(openai.RateLimitError) as raised:
            client().chat.completions.create(**request_body(path))
    assert raised.value.response.headers["retry-after"] == "1"
    event = only_llm_event(captured)
    assert "RateLimitError: Error code: 429" in event["error"]
    assert "Rate limit reached" in event["error"]


def test_call_retried_after_429_is_one_event_with_the_final_answer():
    path = own_path("openai/chat_rate_limit_429.yaml")
    recorded = response_json(path, 1)
    with capture() as captured, replay(path) as cassette:
        lai.init(providers=["openai"])
        completion = openai.OpenAI(api_key="sk-test", max_retries=1).chat.completions.create(
            **request_body(path))
        assert cassette.play_count == 2
    assert completion.choices[0].message.content == "Hello!"
    event = only_llm_event(captured)
    assert event["error"] is None
    assert event["duration"] >= 1.0  # the client waited as Retry-After asked
    assert_chat_usage(event, recorded)


# -- context: threads, executors, tasks; no session ---------------------------------------

def test_calls_in_threads_executors_and_tasks_land_in_the_continued_session():
    path = shared_path("openai/chat.yaml")
    body = request_body(path)
    with capture() as captured, replay(path, allow_repeats=True):
        session_id = lai.init("owner", providers=["openai"])
        lai.detach()
        shared = client()

        def call():
            shared.chat.completions.create(**body)

        async def tasks():
            aclient = async_client()
            await asyncio.gather(*(aclient.chat.completions.create(**body) for _ in range(2)))

        with lai.continued(session_id):
            thread = threading.Thread(target=call)
            thread.start()
            thread.join()
            with ThreadPoolExecutor(2) as pool:
                list(pool.map(lambda _: call(), range(2)))
            asyncio.run(tasks())
        call()  # outside any session: untouched
    events = captured.events("llm")
    assert len(events) == 5
    assert {e["session_id"] for e in events} == {session_id}


def test_without_a_session_calls_go_straight_through():
    path = shared_path("openai/chat_async_streaming.yaml")
    body = request_body(path)
    with capture() as captured, replay(path):
        lai.init(providers=["openai"])
        lai.end_session()
        stream = client().chat.completions.create(**body)
        assert type(stream) is openai.Stream  # not even proxied
        list(stream)
    assert captured.events("llm") == []


def test_call_lands_in_the_current_step():
    path = shared_path("openai/chat.yaml")
    with capture() as captured, replay(path):
        lai.init(providers=["openai"])

        @lai.step(action="ask")
        def ask():
            return client().chat.completions.create(**request_body(path))

        ask()
    (step,) = captured.steps()
    assert only_llm_event(captured)["step_id"] == step["id"]


def test_masking_applies_to_messages_and_output():
    path = shared_path("openai/chat.yaml")
    with capture() as captured, replay(path):
        lai.init(providers=["openai"],
                 masking_function=lambda text: text.replace("opentelemetry", "[MASKED]")
                 .replace("Opentelemetry", "[MASKED]"))
        completion = client().chat.completions.create(**request_body(path))
    assert "Opentelemetry" in completion.choices[0].message.content  # the caller's own copy
    event = only_llm_event(captured)
    assert event["input"] == [{"role": "user", "content": "Tell me a joke about [MASKED]"}]
    assert "Opentelemetry" not in event["output"]["content"]
    assert "[MASKED]" in event["output"]["content"]


@pytest.mark.allow_internal_errors
def test_a_failure_inside_the_adapter_never_breaks_the_call(monkeypatch):
    import lucidic_openai._extract as extract

    def broken(*args, **kwargs):
        raise RuntimeError("adapter bug")

    path = shared_path("openai/chat.yaml")
    body = request_body(path)
    monkeypatch.setattr(extract.ChatChunks, "add", broken)
    monkeypatch.setattr(extract, "chat_input", broken)
    from lucidic._internal import internal_errors

    before = sum(internal_errors.values())
    with capture() as captured, replay(path):
        lai.init(providers=["openai"])
        monkeypatch.setattr("lucidic_openai._adapter.CHAT.result", broken)
        monkeypatch.setattr("lucidic_openai._adapter.CHAT.input", broken)
        completion = client().chat.completions.create(**body)
    assert completion.choices[0].message.content
    assert sum(internal_errors.values()) > before
    assert captured.events("llm") == []  # start failed: nothing half-recorded


@pytest.mark.allow_internal_errors
@pytest.mark.parametrize("bug", ["reading an event", "setting up the reading"])
def test_a_failure_recording_a_stream_read_by_hand_never_changes_what_the_caller_reads(
        monkeypatch, bug):
    import lucidic_openai._adapter as adapter

    from lucidic._internal import internal_errors

    def broken(*args, **kwargs):
        raise RuntimeError("adapter bug")

    if bug == "reading an event":
        monkeypatch.setattr(adapter, "_event_reader", lambda *args: broken)
    else:
        monkeypatch.setattr(adapter, "chunk_maker", broken)
    path = shared_path("openai/chat_tools_streaming.yaml")
    body = request_body(path)
    before = dict(internal_errors)
    with capture() as captured, replay(path, allow_repeats=True):
        lai.init(providers=["openai"])
        with raw_chat(client(), "with_streaming_response").create(**body) as response:
            read = read_by_hand(response, "iter_lines")
        with raw_chat(client(), "with_streaming_response").create(**body) as response:
            parsed = [chunk.id for chunk in response.parse()]  # the parsed path unharmed
    assert read == as_read(response_text(path), "iter_lines")
    assert parsed == [c["id"] for c in response_events(path)]
    kind = "response_body_event" if bug == "reading an event" else "response_tap"
    assert internal_errors[kind] > before.get(kind, 0)
    by_hand, parsed_event = captured.events("llm")
    assert by_hand["error"] is None and by_hand["input"] == body["messages"]
    assert_streamed_tool_call(parsed_event, body, response_events(path))


def test_patched_methods_keep_their_signature_and_kind():
    def shape():
        methods = [async_client().chat.completions.create, async_client().responses.create,
                   client().chat.completions.create, client().embeddings.create]
        return [(inspect.signature(m), inspect.iscoroutinefunction(m), m.__doc__, m.__name__)
                for m in methods]

    before = shape()
    with capture():
        lai.init(providers=["openai"])
        assert shape() == before
