"""What an Anthropic messages call records: the request's system prompt and
messages, and the output (text, tool uses, thinking), model and token counts
from a Message or from raw stream events."""

from __future__ import annotations

import json
from typing import Any

_NOT_ARGUMENTS = frozenset({"messages", "system", "model", "extra_headers", "extra_query",
                            "extra_body", "timeout"})


def given(value: Any) -> bool:
    """False for the library's omit/NOT_GIVEN sentinels (and None)."""
    return value is not None and type(value).__name__ not in ("Omit", "NotGiven")


def arguments(kwargs: dict[str, Any]) -> dict[str, Any] | None:
    args = {k: v for k, v in kwargs.items() if k not in _NOT_ARGUMENTS and given(v)}
    return args or None


def messages_input(kwargs: dict[str, Any]) -> Any:
    messages = kwargs.get("messages")
    # Not a list: perhaps a generator, which reading would consume.
    items: list[Any] = list(messages) if isinstance(messages, (list, tuple)) else []
    system = kwargs.get("system")
    if given(system):
        items.insert(0, {"role": "system", "content": system})
    return items or None


def usage_fields(usage: Any) -> dict[str, Any]:
    """From a Usage (or the counts gathered from a stream's events):
    Anthropic counts cache reads and writes apart from input_tokens; Lucidic's
    input_tokens include them, cached_tokens are the reads and
    cache_write_tokens the writes, of which the 1-hour cache's are priced
    higher (``cache_creation`` breaks the writes down by cache lifetime)."""
    if usage is None:
        return {}
    read = getattr(usage, "cache_read_input_tokens", None)
    written = getattr(usage, "cache_creation_input_tokens", None)
    fields: dict[str, Any] = {"output_tokens": usage.output_tokens, "cached_tokens": read,
                              "cache_write_tokens": written}
    breakdown = getattr(usage, "cache_creation", None)
    if breakdown is not None:
        fields["cache_write_1h_tokens"] = getattr(breakdown, "ephemeral_1h_input_tokens", None)
    if usage.input_tokens is not None:
        fields["input_tokens"] = usage.input_tokens + (read or 0) + (written or 0)
    return fields


def _output(texts: list[str], tools: list[dict[str, Any]], thinking: list[str],
            stop_reason: str | None) -> dict[str, Any]:
    output: dict[str, Any] = {"role": "assistant"}
    if texts:
        output["content"] = "".join(texts)
    if tools:
        output["tool_calls"] = tools
    if thinking:
        output["thinking"] = "\n".join(thinking)
    if stop_reason:
        output["finish_reason"] = stop_reason
    return output


def message_result(message: Any) -> dict[str, Any]:
    texts: list[str] = []
    tools: list[dict[str, Any]] = []
    thinking: list[str] = []
    for block in message.content or ():
        kind = getattr(block, "type", None)
        if kind == "text":
            texts.append(block.text)
        elif kind in ("tool_use", "server_tool_use"):
            tools.append({"id": block.id, "name": block.name, "arguments": block.input})
        elif kind == "thinking":
            thinking.append(block.thinking)
        elif kind == "redacted_thinking":
            thinking.append("[redacted thinking]")
    return {"model": message.model,
            "output": _output(texts, tools, thinking, message.stop_reason),
            **usage_fields(message.usage)}


class _StreamUsage:
    """The usage a stream reports piecewise: message_start carries a Usage
    (with the cache-write breakdown), each message_delta cumulative counts."""

    __slots__ = ("cache_creation", "cache_creation_input_tokens", "cache_read_input_tokens",
                 "input_tokens", "output_tokens")

    def __init__(self) -> None:
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.cache_read_input_tokens: int | None = None
        self.cache_creation_input_tokens: int | None = None
        self.cache_creation: Any = None

    def seen(self) -> bool:
        return self.input_tokens is not None or self.output_tokens is not None


class MessageEvents:
    """Accumulates raw message stream events into the message they spell."""

    __slots__ = ("blocks", "finished", "model", "stop_reason", "usage")

    def __init__(self) -> None:
        self.model: str | None = None
        self.usage = _StreamUsage()
        self.blocks: dict[int, dict[str, Any]] = {}
        self.stop_reason: str | None = None
        self.finished = False

    def add(self, event: Any) -> bool:
        kind = event.type
        if kind == "content_block_delta":
            block = self.blocks.setdefault(event.index, {"type": "text", "parts": []})
            delta = event.delta
            part = (getattr(delta, "text", None) or getattr(delta, "partial_json", None)
                    or getattr(delta, "thinking", None))
            if part:
                block["parts"].append(part)
            return True
        if kind == "content_block_start":
            block = event.content_block
            self.blocks[event.index] = {"type": block.type, "parts": [],
                                        "id": getattr(block, "id", None),
                                        "name": getattr(block, "name", None)}
        elif kind == "message_start":
            message = event.message
            self.model = message.model
            # Its output count is a placeholder (1, say), not what the
            # answer took: a stream cut before message_delta has none.
            self._usage(message.usage, skip="output_tokens")
        elif kind == "message_delta":
            if event.delta.stop_reason:
                self.stop_reason = event.delta.stop_reason
            self._usage(event.usage)
        elif kind == "message_stop":
            self.finished = True
        return False

    def _usage(self, usage: Any, skip: str | None = None) -> None:
        if usage is None:
            return
        for name in _StreamUsage.__slots__:
            value = getattr(usage, name, None) if name != skip else None
            if value is not None:  # message_delta carries cumulative counts
                setattr(self.usage, name, value)

    def result(self) -> dict[str, Any]:
        texts: list[str] = []
        tools: list[dict[str, Any]] = []
        thinking: list[str] = []
        for _, block in sorted(self.blocks.items()):
            text = "".join(block["parts"])
            kind = block["type"]
            if kind == "text":
                texts.append(text)
            elif kind in ("tool_use", "server_tool_use"):
                try:
                    value: Any = json.loads(text) if text else {}
                except ValueError:
                    value = text  # cut short: keep what arrived
                tools.append({"id": block["id"], "name": block["name"], "arguments": value})
            elif kind == "thinking":
                thinking.append(text)
            elif kind == "redacted_thinking":
                thinking.append("[redacted thinking]")
        said = self.blocks or self.stop_reason  # else closed before the answer began
        fields: dict[str, Any] = {
            "model": self.model,
            "output": _output(texts, tools, thinking, self.stop_reason) if said else None}
        if self.usage.seen():
            fields.update(usage_fields(self.usage))
        return fields
