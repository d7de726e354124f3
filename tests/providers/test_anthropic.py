"""The anthropic adapter against the real client library, replaying recorded
traffic: each messages call made in a session becomes one "llm" event carrying
the model, tokens and cost the recording implies."""

from __future__ import annotations

import asyncio
import gc
import threading
from concurrent.futures import ThreadPoolExecutor

import anthropic
import pytest
from _cassettes import (
    as_read,
    assert_recorded_alike,
    assert_recorded_as_not_json,
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

def client(base_url: str | None = None) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key="sk-ant-test", max_retries=0, timeout=60.0,
                               base_url=base_url)


def async_client(base_url: str | None = None) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(api_key="sk-ant-test", max_retries=0, timeout=60.0,
                                    base_url=base_url)


def only_llm_event(captured):
    (event,) = captured.events("llm")
    return event


def assert_usage(event, recorded):
    usage = recorded["usage"]
    assert event["provider"] == "anthropic"
    assert event["model"] == recorded["model"]
    assert event["input_tokens"] == usage["input_tokens"]
    assert event["output_tokens"] == usage["output_tokens"]
    assert event["cost"] == pytest.approx(expected_cost(
        "anthropic", recorded["model"], usage["input_tokens"], usage["output_tokens"]))
    assert event["duration"] > 0
    assert event["error"] is None


def test_messages_create_is_one_event_with_model_tokens_and_cost():
    path = shared_path("anthropic/messages_create.yaml")
    body = request_body(path)
    recorded = response_json(path)
    with capture() as captured, replay(path):
        session_id = lai.init(providers=["anthropic"])
        message = client().messages.create(**body)
    assert message.content[0].text == recorded["content"][0]["text"]
    event = only_llm_event(captured)
    assert_usage(event, recorded)
    assert event["session_id"] == session_id
    assert event["request_model"] == body["model"]
    assert event["input"] == body["messages"]
    assert event["arguments"] == {"max_tokens": 1024}
    assert event["output"] == {"role": "assistant", "content": recorded["content"][0]["text"],
                               "finish_reason": "end_turn"}
    assert event["time_to_first_token"] is None


def test_system_prompt_is_recorded_as_the_first_input_message():
    path = shared_path("anthropic/messages_create.yaml")
    body = request_body(path)
    with capture() as captured, replay(path):
        lai.init(providers=["anthropic"])
        client().messages.create(system="You are terse.", **body)
    assert only_llm_event(captured)["input"] == [{"role": "system", "content": "You are terse."},
                                                 *body["messages"]]


def test_async_messages_create_is_recorded():
    path = shared_path("anthropic/messages_create_async.yaml")
    body = request_body(path)
    recorded = response_json(path)

    async def main():
        lai.init(providers=["anthropic"])
        return await async_client().messages.create(**body)

    with capture() as captured, replay(path):
        message = asyncio.run(main())
    assert message.usage.output_tokens == recorded["usage"]["output_tokens"]
    assert_usage(only_llm_event(captured), recorded)


def test_tool_use_is_recorded_in_the_output():
    path = shared_path("anthropic/messages_tools.yaml")
    body = request_body(path)
    recorded = response_json(path)
    with capture() as captured, replay(path):
        lai.init(providers=["anthropic"])
        client().messages.create(**body)
    event = only_llm_event(captured)
    assert_usage(event, recorded)
    assert event["output"]["tool_calls"] == [
        {"id": block["id"], "name": block["name"], "arguments": block["input"]}
        for block in recorded["content"] if block["type"] == "tool_use"]
    assert [t["name"] for t in event["output"]["tool_calls"]] == ["get_weather", "get_time"]
    assert event["output"]["finish_reason"] == "tool_use"
    assert event["arguments"]["tools"] == body["tools"]


def test_extended_thinking_is_recorded_apart_from_the_answer():
    path = shared_path("anthropic/messages_thinking.yaml")
    body = request_body(path)
    recorded = response_json(path)
    thinking, text = recorded["content"]
    with capture() as captured, replay(path):
        lai.init(providers=["anthropic"])
        client().messages.create(**body)
    event = only_llm_event(captured)
    assert_usage(event, recorded)
    assert event["output"]["thinking"] == thinking["thinking"]
    assert event["output"]["content"] == text["text"]
    assert event["cached_tokens"] == recorded["usage"]["cache_read_input_tokens"] == 0
    assert event["arguments"]["thinking"] == {"type": "enabled", "budget_tokens": 1024}


def _streamed(path):
    # the library keeps "ping" keep-alives to itself
    events = [e for e in response_events(path) if e["type"] != "ping"]
    text = "".join(e["delta"].get("text", "") for e in events
                   if e["type"] == "content_block_delta")
    start = next(e for e in events if e["type"] == "message_start")["message"]
    delta = next(e for e in events if e["type"] == "message_delta")
    return events, text, start, delta


def assert_streamed_event(event, path):
    _, text, start, delta = _streamed(path)
    assert event["model"] == start["model"] == "claude-3-haiku-20240307"
    assert event["output"] == {"role": "assistant", "content": text,
                               "finish_reason": "end_turn"}
    # input from message_start, output from the (cumulative) message_delta
    assert (event["input_tokens"], event["output_tokens"]) == \
        (start["usage"]["input_tokens"], delta["usage"]["output_tokens"]) == (17, 171)
    assert event["cost"] == pytest.approx(expected_cost("anthropic", start["model"], 17, 171))
    assert 0 < event["time_to_first_token"] <= event["duration"]
    assert event["result"] is None and event["error"] is None


def test_stream_true_is_recorded_when_the_stream_ends():
    path = shared_path("anthropic/messages_streaming.yaml")
    body = request_body(path)
    events, _, _, _ = _streamed(path)
    with capture() as captured, replay(path):
        lai.init(providers=["anthropic"])
        stream = client().messages.create(**body)
        assert isinstance(stream, anthropic.Stream)
        received = [e.type for e in stream]
    assert received == [e["type"] for e in events]
    assert_streamed_event(only_llm_event(captured), path)


def test_async_stream_true_is_recorded():
    path = shared_path("anthropic/messages_streaming.yaml")
    body = request_body(path)

    async def main():
        lai.init(providers=["anthropic"])
        async with await async_client().messages.create(**body) as stream:
            return [event async for event in stream]

    with capture() as captured, replay(path):
        asyncio.run(main())
    assert_streamed_event(only_llm_event(captured), path)


def test_stream_helper_is_recorded_and_sees_the_same_text():
    path = shared_path("anthropic/messages_streaming.yaml")
    body = {k: v for k, v in request_body(path).items() if k != "stream"}
    _, text, _, _ = _streamed(path)
    with capture() as captured, replay(path):
        lai.init(providers=["anthropic"])
        with client().messages.stream(**body) as stream:
            received = "".join(stream.text_stream)
            final = stream.get_final_message()
    assert received == text == final.content[0].text
    assert_streamed_event(only_llm_event(captured), path)


def test_async_stream_helper_is_recorded():
    path = shared_path("anthropic/messages_streaming.yaml")
    body = {k: v for k, v in request_body(path).items() if k != "stream"}

    async def main():
        lai.init(providers=["anthropic"])
        async with async_client().messages.stream(**body) as stream:
            return await stream.get_final_text()

    with capture() as captured, replay(path):
        text = asyncio.run(main())
    assert text == _streamed(path)[1]
    assert_streamed_event(only_llm_event(captured), path)


def test_stream_read_partly_then_closed_records_what_arrived():
    path = shared_path("anthropic/messages_streaming.yaml")
    body = request_body(path)
    with capture() as captured, replay(path):
        lai.init(providers=["anthropic"])
        stream = client().messages.create(**body)
        seen = [next(stream) for _ in range(5)]
        stream.close()
    assert [e.type for e in seen] == ["message_start", "content_block_start",
                                      "content_block_delta", "content_block_delta",
                                      "content_block_delta"]
    event = only_llm_event(captured)
    assert event["output"]["content"] == "Here's an OpenTelemetry-"
    assert_cut_usage(event, path)
    assert event["result"] == "stream closed before its end"


def assert_recorded_cut(event, path, text):
    """A stream of messages_streaming.yaml closed early, after ``text``."""
    assert text and event["output"] == {"role": "assistant", "content": text}
    assert event["model"] == "claude-3-haiku-20240307"
    assert_cut_usage(event, path)
    assert event["result"] == "stream closed before its end"
    assert event["error"] is None


def assert_cut_usage(event, path):
    """A stream cut before its message_delta: the input tokens (and their
    cost) message_start counted, and no output tokens; message_start's
    output count is a placeholder, not what was generated."""
    start = response_events(path)[0]["message"]
    assert start["usage"]["output_tokens"] == 3  # the placeholder
    assert event["input_tokens"] == start["usage"]["input_tokens"] == 17
    assert event["output_tokens"] is None
    assert event["cost"] == pytest.approx(expected_cost("anthropic", start["model"], 17))


def test_stream_cut_after_its_message_delta_records_its_output_tokens():
    path = shared_path("anthropic/messages_streaming.yaml")
    body = request_body(path)
    _, _, start, delta = _streamed(path)
    with capture() as captured, replay(path):
        lai.init(providers=["anthropic"])
        stream = client().messages.create(**body)
        for event in stream:
            if event.type == "message_delta":
                break
        stream.close()
    event = only_llm_event(captured)
    assert event["result"] == "stream closed before its end"
    assert (event["input_tokens"], event["output_tokens"]) == \
        (start["usage"]["input_tokens"], delta["usage"]["output_tokens"]) == (17, 171)


def test_abandoned_stream_completes_when_garbage_collected():
    path = shared_path("anthropic/messages_streaming.yaml")
    body = request_body(path)
    with capture() as captured, replay(path):
        lai.init(providers=["anthropic"])
        stream = client().messages.create(**body)
        for _ in range(4):
            next(stream)
        del stream
        gc.collect()
        (event,) = captured.events("llm")
    assert event["output"]["content"] == "Here's an OpenTelemet"
    assert_cut_usage(event, path)
    assert event["result"] == "stream closed before its end"


@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_stream_failing_midway_records_its_error_and_what_arrived(asynchronous):
    """An error event mid-stream is a failure of the call, but what arrived
    before it (the text, the model and input tokens message_start named) is
    kept beside the error."""
    path = own_path("anthropic/messages_stream_error.yaml")
    body = request_body(path)
    seen = []

    async def read_async():
        async for event in await async_client().messages.create(**body):
            seen.append(event.type)

    def read():
        for event in client().messages.create(**body):
            seen.append(event.type)

    with capture() as captured, replay(path):
        lai.init(providers=["anthropic"])
        with pytest.raises(anthropic.APIStatusError, match="Overloaded"):
            asyncio.run(read_async()) if asynchronous else read()
    assert seen == ["message_start", "content_block_start", "content_block_delta"]
    event = only_llm_event(captured)
    assert event["error"].startswith("APIStatusError") and "Overloaded" in event["error"]
    assert event["output"] == {"role": "assistant", "content": "One, two,"}
    assert event["model"] == "claude-3-5-haiku-20241022"
    assert (event["input_tokens"], event["output_tokens"]) == (11, None)
    assert event["result"] is None


@pytest.mark.parametrize("asynchronous", [False, True])
def test_an_exception_in_the_callers_loop_closes_the_stream_as_cut_not_failed(asynchronous):
    """The caller's own code raising while it reads the stream helper (its
    with block then closes the stream) is no failure of the call."""
    path = shared_path("anthropic/messages_streaming.yaml")
    body = {k: v for k, v in request_body(path).items() if k != "stream"}

    class CallersError(Exception):
        pass

    async def read_async():
        async with async_client().messages.stream(**body) as stream:
            async for text in stream.text_stream:
                if text == "ry-":
                    raise CallersError

    def read():
        with client().messages.stream(**body) as stream:
            for text in stream.text_stream:
                if text == "ry-":
                    raise CallersError

    with capture() as captured, replay(path):
        lai.init(providers=["anthropic"])
        with pytest.raises(CallersError):
            asyncio.run(read_async()) if asynchronous else read()
        # recorded as the with block exits (its close() closes the recorded stream)
        assert captured.events("llm")
    assert_recorded_cut(only_llm_event(captured), path, "Here's an OpenTelemetry-")


@pytest.mark.parametrize("how", ["cancel", "wait_for"])
@pytest.mark.parametrize("api", ["create", "stream helper"])
def test_a_stream_whose_reading_task_is_cancelled_records_what_arrived(api, how):
    """The task reading a stream cancelled after its first events: the
    caller stopped reading, as when it closes the stream early (what
    arrived, the model and input tokens message_start named), not a
    failure with nothing; the CancelledError (or wait_for's TimeoutError)
    reaches the caller untouched."""
    path = shared_path("anthropic/messages_streaming.yaml")
    body = request_body(path)
    sent = response_events(path)[:6]  # the library's keep-alive "ping" among them
    text = "".join(e["delta"]["text"] for e in sent if e["type"] == "content_block_delta")

    async def main(url):
        lai.init(providers=["anthropic"])
        if api == "create":
            stream = await async_client(url).messages.create(**body)
            read, raised = await read_then_stop(stream, 5, how)
            return [event.type for event in read], raised
        plain = {key: value for key, value in body.items() if key != "stream"}
        async with async_client(url).messages.stream(**plain) as stream:
            read, raised = await read_then_stop(stream, 8, how)  # (a "text" after each delta)
        return [event.type for event in read if event.type != "text"], raised

    with event_stream_in_steps(path, first=6) as url, capture() as captured:
        types, raised = asyncio.run(main(url))
    assert types == [e["type"] for e in sent if e["type"] != "ping"]
    if how == "cancel":
        assert raised.args == ("the caller's own reason",)
    event = only_llm_event(captured)
    assert_recorded_cut(event, path, text)
    assert 0 < event["time_to_first_token"] <= event["duration"]


# -- with_raw_response / with_streaming_response ------------------------------------------
#
# The caller gets the library's own response object and reads the body later
# (.parse(), or iterating the stream .parse() returns): the call is recorded
# with what the plain call would record.

def test_raw_and_streaming_responses_record_the_output_tokens_and_cost_of_the_plain_call():
    path = shared_path("anthropic/messages_create.yaml")
    body = request_body(path)
    recorded = response_json(path)
    with capture() as captured, replay(path, allow_repeats=True):
        lai.init(providers=["anthropic"])
        raw = client().messages.with_raw_response.create(**body)
        assert type(raw) is anthropic._response.APIResponse
        messages = [raw.parse()]
        assert raw.parse() is messages[0]  # the library's own cache, as it was
        with client().messages.with_streaming_response.create(**body) as response:
            assert type(response) is anthropic._response.APIResponse
            messages.append(response.parse())
    for message in messages:
        assert type(message) is anthropic.types.Message
        assert message.content[0].text == recorded["content"][0]["text"]
    events = captured.events("llm")
    assert len(events) == 2
    for event in events:
        assert_usage(event, recorded)
        assert event["output"] == {"role": "assistant", "finish_reason": "end_turn",
                                   "content": recorded["content"][0]["text"]}


def test_async_raw_and_streaming_responses_record_the_plain_calls_fields():
    path = shared_path("anthropic/messages_create_async.yaml")
    body = request_body(path)
    recorded = response_json(path)

    async def main():
        lai.init(providers=["anthropic"])
        raw = await async_client().messages.with_raw_response.create(**body)
        assert type(raw) is anthropic._response.AsyncAPIResponse
        first = await raw.parse()
        async with async_client().messages.with_streaming_response.create(**body) as response:
            second = await response.parse()
        return first, second

    with capture() as captured, replay(path, allow_repeats=True):
        messages = asyncio.run(main())
    assert all(type(m) is anthropic.types.Message for m in messages)
    events = captured.events("llm")
    assert len(events) == 2
    for event in events:
        assert_usage(event, recorded)


@pytest.mark.parametrize("way", ["with_raw_response", "with_streaming_response"])
def test_a_raw_stream_is_recorded_as_it_is_iterated(way):
    path = shared_path("anthropic/messages_streaming.yaml")
    body = request_body(path)
    events, _, _, _ = _streamed(path)
    with capture() as captured, replay(path):
        lai.init(providers=["anthropic"])
        if way == "with_raw_response":
            raw = client().messages.with_raw_response.create(**body)
            assert type(raw) is anthropic._response.APIResponse
            assert not captured.events("llm")  # the body is still to be read
            received = [e.type for e in raw.parse()]
        else:
            with client().messages.with_streaming_response.create(**body) as response:
                stream = response.parse()
                assert isinstance(stream, anthropic.Stream)
                received = [e.type for e in stream]
    assert received == [e["type"] for e in events]
    assert_streamed_event(only_llm_event(captured), path)


@pytest.mark.parametrize("way", ["with_raw_response", "with_streaming_response"])
def test_an_async_raw_stream_is_recorded_as_it_is_iterated(way):
    path = shared_path("anthropic/messages_streaming.yaml")
    body = request_body(path)

    async def main():
        lai.init(providers=["anthropic"])
        if way == "with_raw_response":
            raw = await async_client().messages.with_raw_response.create(**body)
            return [e async for e in await raw.parse()]
        async with async_client().messages.with_streaming_response.create(**body) as response:
            stream = await response.parse()
            assert isinstance(stream, anthropic.AsyncStream)
            return [e async for e in stream]

    with capture() as captured, replay(path):
        asyncio.run(main())
    assert_streamed_event(only_llm_event(captured), path)


def test_a_raw_stream_dropped_unread_is_recorded_as_closed_before_its_end():
    path = shared_path("anthropic/messages_streaming.yaml")
    body = request_body(path)
    with capture() as captured, replay(path):
        lai.init(providers=["anthropic"])
        raw = client().messages.with_raw_response.create(**body)
        raw.http_response.close()
        del raw
        gc.collect()
        event = only_llm_event(captured)
    assert event["result"] == "stream closed before its end"
    assert event["output"] is None and event["error"] is None


# A raw stream read by hand (its lines, bytes or text, not .parse()): the
# events in the bytes read are recorded as the parsed stream's would be; the
# caller reads exactly what it would read without Lucidic.

HAND_READS = ["iter_lines", "iter_bytes", "iter_text", "read", "text"]


@pytest.mark.parametrize("how", HAND_READS)
@pytest.mark.parametrize("way", ["with_raw_response", "with_streaming_response"])
def test_a_raw_stream_read_by_hand_is_recorded_like_the_parsed_one(way, how):
    path = shared_path("anthropic/messages_streaming.yaml")
    body = request_body(path)
    with capture() as captured, replay(path):
        lai.init(providers=["anthropic"])
        if way == "with_raw_response":
            raw = client().messages.with_raw_response.create(**body)
            read = read_by_hand(raw, how)
        else:
            with client().messages.with_streaming_response.create(**body) as response:
                read = read_by_hand(response, how)
    assert read == as_read(response_text(path), how)
    assert_streamed_event(only_llm_event(captured), path)


@pytest.mark.parametrize("how", HAND_READS)
@pytest.mark.parametrize("way", ["with_raw_response", "with_streaming_response"])
def test_an_async_raw_stream_read_by_hand_is_recorded_like_the_parsed_one(way, how):
    path = shared_path("anthropic/messages_streaming.yaml")
    body = request_body(path)

    async def main():
        lai.init(providers=["anthropic"])
        if way == "with_raw_response":
            raw = await async_client().messages.with_raw_response.create(**body)
            return await read_by_hand_async(raw, how)
        async with async_client().messages.with_streaming_response.create(**body) as response:
            return await read_by_hand_async(response, how)

    with capture() as captured, replay(path):
        assert asyncio.run(main()) == as_read(response_text(path), how)
    assert_streamed_event(only_llm_event(captured), path)


# A message that is not streamed, read by hand (its bytes, text or lines, not
# .parse(), .json() or .read()): once its body has been read to its end, the
# call is recorded as the parsed message is.

@pytest.mark.parametrize("how", ["iter_bytes", "iter_text", "iter_lines"])
@pytest.mark.parametrize("of", ["response", "http_response"])
def test_a_message_read_by_hand_is_recorded_like_the_parsed_one(of, how):
    path = shared_path("anthropic/messages_create.yaml")
    body = request_body(path)
    with capture() as captured, replay(path, allow_repeats=True):
        lai.init(providers=["anthropic"])
        read = parse_then_read_by_hand(client().messages.with_streaming_response, body, of, how)
    assert read == as_read(response_text(path), how)
    parsed, by_hand = captured.events("llm")
    assert_recorded_alike(by_hand, parsed)


@pytest.mark.parametrize("how", ["iter_bytes", "iter_text", "iter_lines"])
@pytest.mark.parametrize("of", ["response", "http_response"])
def test_an_async_message_read_by_hand_is_recorded_like_the_parsed_one(of, how):
    path = shared_path("anthropic/messages_create_async.yaml")
    body = request_body(path)

    async def main():
        lai.init(providers=["anthropic"])
        return await parse_then_read_by_hand_async(
            async_client().messages.with_streaming_response, body, of, how)

    with capture() as captured, replay(path, allow_repeats=True):
        assert asyncio.run(main()) == as_read(response_text(path), how)
    parsed, by_hand = captured.events("llm")
    assert_recorded_alike(by_hand, parsed)


# A message body that is not the JSON it claims to be (cut short on its way):
# the caller gets the bytes as sent, and the call records them, with an error
# saying the body is not JSON (not a fault of the recording).

@pytest.mark.parametrize("how", ["iter_bytes", "iter_text", "iter_lines", "read"])
@pytest.mark.parametrize("of", ["response", "http_response"])
def test_a_message_body_read_by_hand_that_is_not_json_is_recorded_as_sent_with_an_error(
        of, how):
    path = own_path("anthropic/messages_body_not_json.yaml")
    with capture() as captured, replay(path):
        lai.init(providers=["anthropic"])
        read = read_once_by_hand(client().messages.with_streaming_response, request_body(path),
                                 of, how)
    assert read == as_read(response_text(path), how)
    assert_recorded_as_not_json(only_llm_event(captured), response_text(path))


@pytest.mark.parametrize("how", ["iter_bytes", "iter_text", "iter_lines"])
@pytest.mark.parametrize("of", ["response", "http_response"])
def test_an_async_message_body_read_by_hand_that_is_not_json_is_recorded_as_sent_with_an_error(
        of, how):
    path = own_path("anthropic/messages_body_not_json.yaml")

    async def main():
        lai.init(providers=["anthropic"])
        return await read_once_by_hand_async(async_client().messages.with_streaming_response,
                                             request_body(path), of, how)

    with capture() as captured, replay(path):
        assert asyncio.run(main()) == as_read(response_text(path), how)
    assert_recorded_as_not_json(only_llm_event(captured), response_text(path))


def test_a_raw_message_whose_body_is_not_json_is_recorded_as_sent_with_an_error():
    path = own_path("anthropic/messages_body_not_json.yaml")
    with capture() as captured, replay(path):
        lai.init(providers=["anthropic"])
        raw = client().messages.with_raw_response.create(**request_body(path))
        assert raw.text() == response_text(path)
    assert_recorded_as_not_json(only_llm_event(captured), response_text(path))


def test_an_async_raw_message_whose_body_is_not_json_is_recorded_as_sent_with_an_error():
    path = own_path("anthropic/messages_body_not_json.yaml")

    async def main():
        lai.init(providers=["anthropic"])
        raw = await async_client().messages.with_raw_response.create(**request_body(path))
        return await raw.text()

    with capture() as captured, replay(path):
        assert asyncio.run(main()) == response_text(path)
    assert_recorded_as_not_json(only_llm_event(captured), response_text(path))


def test_a_message_body_that_is_not_json_parsed_by_the_caller_is_recorded_as_sent_with_an_error():
    path = own_path("anthropic/messages_body_not_json.yaml")
    with capture() as captured, replay(path):
        lai.init(providers=["anthropic"])
        parse_body_not_json(client().messages.with_streaming_response, request_body(path))
    assert_recorded_as_not_json(only_llm_event(captured), response_text(path))


def test_an_async_message_body_not_json_parsed_by_the_caller_is_recorded_as_sent_with_an_error():
    path = own_path("anthropic/messages_body_not_json.yaml")

    async def main():
        lai.init(providers=["anthropic"])
        await parse_body_not_json_async(async_client().messages.with_streaming_response,
                                        request_body(path))

    with capture() as captured, replay(path):
        asyncio.run(main())
    assert_recorded_as_not_json(only_llm_event(captured), response_text(path))


def test_a_raw_stream_read_by_hand_in_part_then_closed_records_what_arrived():
    path = shared_path("anthropic/messages_streaming.yaml")
    body = request_body(path)
    first = response_events(path)[:6]  # the library's keep-alive "ping" among them
    text = "".join(e["delta"]["text"] for e in first if e["type"] == "content_block_delta")
    with event_stream_in_steps(path, first=6) as url, capture() as captured:
        lai.init(providers=["anthropic"])
        with client(url).messages.with_streaming_response.create(**body) as response:
            lines = response.iter_lines()  # (dropped, it would close the response)
            read = lines_of_events(lines, 6)
            assert not captured.events("llm")  # still open
    assert read[0] == "event: message_start" and read[-1] == ""
    event = only_llm_event(captured)
    assert_recorded_cut(event, path, text)


def test_an_error_event_in_a_raw_stream_read_by_hand_is_recorded_as_parsing_raises_it():
    path = own_path("anthropic/messages_stream_error.yaml")
    body = request_body(path)
    with capture() as captured, replay(path, allow_repeats=True):
        lai.init(providers=["anthropic"])
        with client().messages.with_streaming_response.create(**body) as response:
            with pytest.raises(anthropic.APIStatusError, match="Overloaded"):
                list(response.parse())
        with client().messages.with_streaming_response.create(**body) as response:
            read = read_by_hand(response, "iter_lines")  # bytes: nothing raised
    assert read == as_read(response_text(path), "iter_lines")
    parsed, by_hand = captured.events("llm")
    assert "Overloaded" in parsed["error"]
    assert by_hand["error"] == parsed["error"]
    # what arrived before the error, both ways
    assert by_hand["output"] == parsed["output"] == {"role": "assistant",
                                                     "content": "One, two,"}


# -- methods bound before lai.init: recorded through the client's request method ------

@pytest.mark.parametrize("way", ["with_raw_response", "with_streaming_response"])
def test_a_raw_accessor_bound_before_init_is_recorded(way):
    path = shared_path("anthropic/messages_create.yaml")
    body = request_body(path)
    recorded = response_json(path)
    create = getattr(client().messages, way).create
    beta_create = getattr(client().beta.messages, way).create
    with capture() as captured, replay(path, allow_repeats=True):
        lai.init(providers=["anthropic"])
        if way == "with_raw_response":
            messages = [create(**body).parse(), beta_create(**body).parse()]
        else:
            with create(**body) as response, beta_create(**body) as beta_response:
                messages = [response.parse(), beta_response.parse()]
    assert [type(m) for m in messages] == [anthropic.types.Message,
                                           anthropic.types.beta.BetaMessage]
    plain, beta = captured.events("llm")
    assert (plain["description"], beta["description"]) == ("anthropic messages",
                                                           "anthropic beta.messages")
    for event in (plain, beta):
        assert_usage(event, recorded)
        assert event["input"] == body["messages"]
        assert event["output"]["content"] == recorded["content"][0]["text"]


@pytest.mark.parametrize("way", ["with_raw_response", "with_streaming_response"])
def test_an_async_raw_stream_bound_before_init_is_recorded(way):
    path = shared_path("anthropic/messages_streaming.yaml")
    body = request_body(path)
    create = getattr(async_client().messages, way).create

    async def main():
        lai.init(providers=["anthropic"])
        if way == "with_raw_response":
            return [e async for e in await (await create(**body)).parse()]
        async with create(**body) as response:
            return await read_by_hand_async(response, "iter_lines")

    with capture() as captured, replay(path):
        asyncio.run(main())
    assert_streamed_event(only_llm_event(captured), path)


def test_the_stream_helper_bound_before_init_is_recorded():
    path = shared_path("anthropic/messages_streaming.yaml")
    body = {k: v for k, v in request_body(path).items() if k != "stream"}
    stream = client().messages.stream
    with capture() as captured, replay(path):
        lai.init(providers=["anthropic"])
        with stream(**body) as message_stream:
            text = "".join(message_stream.text_stream)
    assert text == _streamed(path)[1]
    assert_streamed_event(only_llm_event(captured), path)


def test_api_error_is_raised_unchanged_and_recorded():
    path = own_path("anthropic/messages_error_400.yaml")
    with capture() as captured, replay(path):
        lai.init(providers=["anthropic"])
        with pytest.raises(anthropic.BadRequestError) as raised:
            client().messages.create(**request_body(path))
    assert raised.value.status_code == 400
    event = only_llm_event(captured)
    assert event["error"].startswith("BadRequestError: Error code: 400")
    assert "invalid_request_error" in event["error"]
    assert event["output"] is None and event["cost"] is None


def test_rate_limit_429_is_recorded_with_the_error():
    path = own_path("anthropic/messages_rate_limit_429.yaml")
    with capture() as captured, replay(path):
        lai.init(providers=["anthropic"])
        with pytest.raises(anthropic.RateLimitError) as raised:
            client().messages.create(**request_body(path))
    assert raised.value.response.headers["retry-after"] == "1"
    event = only_llm_event(captured)
    assert "RateLimitError: Error code: 429" in event["error"]
    assert "rate_limit_error" in event["error"]


def test_refusal_is_recorded_with_its_stop_reason():
    path = own_path("anthropic/messages_refusal.yaml")
    recorded = response_json(path)
    with capture() as captured, replay(path):
        lai.init(providers=["anthropic"])
        client().messages.create(**request_body(path))
    event = only_llm_event(captured)
    assert event["output"] == {"role": "assistant", "content": "I can't help with that.",
                               "finish_reason": "refusal"}
    assert_usage(event, recorded)


# -- beta.messages: the same /v1/messages endpoint, so the same recordings --------------

def test_beta_messages_create_is_recorded_like_messages_create():
    from anthropic.types.beta import BetaMessage

    path = shared_path("anthropic/messages_create.yaml")
    body = request_body(path)
    recorded = response_json(path)
    sent = []
    beta_client = anthropic.Anthropic(
        api_key="sk-ant-test", max_retries=0,
        http_client=anthropic.DefaultHttpxClient(event_hooks={"request": [sent.append]}))
    with capture() as captured, replay(path):
        lai.init(providers=["anthropic"])
        message = beta_client.beta.messages.create(**body)
    # beta.messages posts to the same endpoint the recording was made against
    (request,) = sent
    assert (request.method, request.url.path) == ("POST", "/v1/messages")
    assert isinstance(message, BetaMessage)
    assert message.content[0].text == recorded["content"][0]["text"]
    event = only_llm_event(captured)
    assert_usage(event, recorded)
    assert event["description"] == "anthropic beta.messages"
    assert event["request_model"] == body["model"]
    assert event["input"] == body["messages"]
    assert event["output"] == {"role": "assistant", "content": recorded["content"][0]["text"],
                               "finish_reason": "end_turn"}


def test_async_beta_messages_create_with_tools_is_recorded():
    path = shared_path("anthropic/messages_tools.yaml")
    body = request_body(path)
    recorded = response_json(path)

    async def main():
        lai.init(providers=["anthropic"])
        return await async_client().beta.messages.create(**body)

    with capture() as captured, replay(path):
        message = asyncio.run(main())
    assert message.stop_reason == "tool_use"
    event = only_llm_event(captured)
    assert_usage(event, recorded)
    assert event["description"] == "anthropic beta.messages"
    assert [t["name"] for t in event["output"]["tool_calls"]] == ["get_weather", "get_time"]


@pytest.mark.parametrize("how", ["stream=True", "stream()", "async stream()"])
def test_beta_streams_are_recorded_when_they_end(how):
    path = shared_path("anthropic/messages_streaming.yaml")
    body = request_body(path)
    helper_body = {k: v for k, v in body.items() if k != "stream"}

    async def async_helper():
        async with async_client().beta.messages.stream(**helper_body) as stream:
            return await stream.get_final_text()

    with capture() as captured, replay(path):
        lai.init(providers=["anthropic"])
        if how == "stream=True":
            stream = client().beta.messages.create(**body)
            assert isinstance(stream, anthropic.Stream)
            text = "".join(e.delta.text for e in stream if e.type == "content_block_delta")
        elif how == "stream()":
            with client().beta.messages.stream(**helper_body) as stream:
                text = "".join(stream.text_stream)
        else:
            text = asyncio.run(async_helper())
    assert text == _streamed(path)[1]
    event = only_llm_event(captured)
    assert_streamed_event(event, path)
    assert event["description"] == "anthropic beta.messages"


def test_the_beta_tool_runner_is_recorded_through_beta_messages():
    from anthropic import beta_tool

    path = shared_path("anthropic/messages_tools.yaml")
    body = request_body(path)

    @beta_tool
    def get_weather(location: str, unit: str = "fahrenheit") -> str:
        """The weather in a location."""
        return "sunny"

    @beta_tool
    def get_time(timezone: str) -> str:
        """The time in a timezone."""
        return "noon"

    with capture() as captured, replay(path):
        lai.init(providers=["anthropic"])
        runner = client().beta.messages.tool_runner(
            model=body["model"], max_tokens=body["max_tokens"], messages=body["messages"],
            tools=[get_weather, get_time], max_iterations=1)
        (message,) = list(runner)
    event = only_llm_event(captured)
    assert event["description"] == "anthropic beta.messages"
    assert_usage(event, response_json(path))
    assert [t["id"] for t in event["output"]["tool_calls"]] == [
        block.id for block in message.content if block.type == "tool_use"]


def test_calls_in_threads_executors_and_tasks_land_in_the_continued_session():
    path = shared_path("anthropic/messages_create.yaml")
    body = request_body(path)
    with capture() as captured, replay(path, allow_repeats=True):
        session_id = lai.init("owner", providers=["anthropic"])
        lai.detach()
        shared = client()

        def call():
            shared.messages.create(**body)

        async def tasks():
            aclient = async_client()
            await asyncio.gather(*(aclient.messages.create(**body) for _ in range(2)))

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


def test_masking_applies_to_messages_and_output():
    path = shared_path("anthropic/messages_create.yaml")
    with capture() as captured, replay(path):
        lai.init(providers=["anthropic"],
                 masking_function=lambda text: text.replace("OpenTelemetry", "[MASKED]"))
        message = client().messages.create(**request_body(path))
    assert "OpenTelemetry" in message.content[0].text
    event = only_llm_event(captured)
    assert event["input"] == [{"role": "user", "content": "Tell me a joke about [MASKED]"}]
    assert "OpenTelemetry" not in event["output"]["content"]
    assert "[MASKED]" in event["output"]["content"]


@pytest.mark.allow_internal_errors
def test_a_failure_inside_the_adapter_never_breaks_the_call(monkeypatch):
    import lucidic_anthropic._extract as extract

    from lucidic._internal import internal_errors

    def broken(*args, **kwargs):
        raise RuntimeError("adapter bug")

    path = shared_path("anthropic/messages_streaming.yaml")
    monkeypatch.setattr(extract.MessageEvents, "add", broken)
    monkeypatch.setattr(extract.MessageEvents, "result", broken)
    before = sum(internal_errors.values())
    with capture() as captured, replay(path):
        lai.init(providers=["anthropic"])
        received = list(client().messages.create(**request_body(path)))
    assert len(received) == len(_streamed(path)[0])
    assert sum(internal_errors.values()) > before
    (event,) = captured.events("llm")  # still one event, without the details
    assert event["error"] is None


def test_without_a_session_calls_go_straight_through():
    path = shared_path("anthropic/messages_streaming.yaml")
    with capture() as captured, replay(path):
        lai.init(providers=["anthropic"])
        lai.end_session()
        stream = client().messages.create(**request_body(path))
        assert type(stream) is anthropic.Stream
        list(stream)
    assert captured.events("llm") == []


def _prompt_cache_price() -> dict[str, float]:
    from lucidic.pricing import price_of

    return price_of("anthropic", "claude-sonnet-4-20250514")


@pytest.mark.parametrize("streamed", [False, True], ids=["plain", "stream"])
def test_prompt_cache_writes_are_counted_apart_and_priced_by_cache_lifetime(streamed):
    """Anthropic reports cache reads and writes apart from input_tokens, and
    breaks the writes down by cache lifetime: the 5-minute cache's cost 1.25
    times the input rate, the 1-hour cache's twice it, reads a tenth."""
    name = "messages_prompt_cache_streaming" if streamed else "messages_prompt_cache"
    path = own_path(f"anthropic/{name}.yaml")
    with capture() as captured, replay(path):
        lai.init(providers=["anthropic"])
        result = client().messages.create(**request_body(path))
        if streamed:
            for _ in result:
                pass
    event = only_llm_event(captured)
    # 14 uncached + 2048 read + 3072 written (1024 for 5 minutes, 2048 for an hour)
    assert event["input_tokens"] == 14 + 2048 + 3072
    assert event["cached_tokens"] == 2048
    assert event["cache_write_tokens"] == 3072
    assert event["output_tokens"] == 12
    assert not event["tokens_estimated"]
    price = _prompt_cache_price()
    assert price["cache_write"] == price["input"] * 1.25
    assert price["cache_write_1h"] == price["input"] * 2
    expected = (14 * price["input"] + 2048 * price["cached_input"]
                + 1024 * price["input"] * 1.25 + 2048 * price["input"] * 2
                + 12 * price["output"]) / 1_000_000
    assert event["cost"] == pytest.approx(expected)
    (session,) = captured.sessions()
    assert session["cache_write_tokens"] == 3072 and session["cached_tokens"] == 2048
