"""What an OpenAI call records: request input and parameters, and output,
model and token counts from responses and from stream chunks."""

from __future__ import annotations

from functools import partial
from typing import Any

#: Request keywords that are not model parameters (or are recorded elsewhere).
_NOT_ARGUMENTS = frozenset({"messages", "input", "model", "instructions", "extra_headers",
                            "extra_query", "extra_body", "timeout"})


def given(value: Any) -> bool:
    """False for the library's omit/NOT_GIVEN sentinels (and None)."""
    return value is not None and type(value).__name__ not in ("Omit", "NotGiven")


def arguments(kwargs: dict[str, Any]) -> dict[str, Any] | None:
    args = {k: v for k, v in kwargs.items() if k not in _NOT_ARGUMENTS and given(v)}
    return args or None


def _listed(value: Any) -> Any:
    # An iterable that is not a list may be a generator: reading it would
    # consume what the library is about to send.
    return value if isinstance(value, (list, tuple, str)) else None


def chat_input(kwargs: dict[str, Any]) -> Any:
    return _listed(kwargs.get("messages"))


def responses_input(kwargs: dict[str, Any]) -> Any:
    items: list[Any] = []
    instructions = kwargs.get("instructions")
    if given(instructions):
        items.append({"role": "system", "content": instructions})
    value = kwargs.get("input")
    if isinstance(value, str):
        items.append({"role": "user", "content": value})
    elif isinstance(value, (list, tuple)):
        items.extend(value)
    return items or None


def embeddings_input(kwargs: dict[str, Any]) -> Any:
    return _listed(kwargs.get("input"))


def _clean(message: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in message.items() if v not in (None, [], "")}


# -- chat completions ----------------------------------------------------------------

def _tool_call(call: Any) -> dict[str, Any]:
    function = getattr(call, "function", None)
    if function is not None:
        return {"id": call.id, "name": function.name, "arguments": function.arguments}
    custom = getattr(call, "custom", None)  # custom (free-form) tools
    if custom is not None:
        return {"id": call.id, "name": custom.name, "arguments": custom.input}
    return {"id": getattr(call, "id", None), "type": getattr(call, "type", None)}


def chat_usage(usage: Any) -> dict[str, Any]:
    if usage is None:
        return {}
    prompt = getattr(usage, "prompt_tokens_details", None)
    completion = getattr(usage, "completion_tokens_details", None)
    return {"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens,
            "cached_tokens": getattr(prompt, "cached_tokens", None),
            "reasoning_tokens": getattr(completion, "reasoning_tokens", None)}


def _one_or_many(messages: list[dict[str, Any]]) -> Any:
    return messages[0] if len(messages) == 1 else messages


def chat_result(completion: Any) -> dict[str, Any]:
    messages = []
    for choice in completion.choices or ():
        message = choice.message
        messages.append(_clean({
            "role": message.role or "assistant", "content": message.content,
            "refusal": getattr(message, "refusal", None),
            "tool_calls": [_tool_call(c) for c in message.tool_calls or ()],
            "finish_reason": choice.finish_reason}))
    return {"model": completion.model, "output": _one_or_many(messages),
            **chat_usage(completion.usage)}


class ChatChunks:
    """Accumulates chat.completion.chunk objects into the message they spell.
    With an ``estimate``, a stream that reports no usage gets its tokens
    counted from the request and what the stream spelled (on Lucidic's
    background thread, once the call is recorded)."""

    __slots__ = ("choices", "estimate", "expected_choices", "finished", "model", "usage")

    def __init__(self, estimate: Any = None, *, choices: Any = None) -> None:
        self.estimate = estimate
        self.model: str | None = None
        self.usage: Any = None
        self.choices: dict[int, dict[str, Any]] = {}
        #: The request's ``n``: the stream is whole once that many choices ended.
        self.expected_choices = choices if isinstance(choices, int) and choices > 1 else 1
        self.finished = False

    def add(self, chunk: Any) -> bool:
        if chunk.model:
            self.model = chunk.model
        if chunk.usage is not None:
            self.usage = chunk.usage
        content = False
        for choice in chunk.choices or ():
            state = self.choices.get(choice.index)
            if state is None:
                state = self.choices[choice.index] = {"role": None, "text": [], "refusal": [],
                                                      "tools": {}, "finish_reason": None}
            delta = choice.delta
            if delta is not None:
                if delta.role:
                    state["role"] = delta.role
                if delta.content:
                    state["text"].append(delta.content)
                    content = True
                refusal = getattr(delta, "refusal", None)
                if refusal:
                    state["refusal"].append(refusal)
                    content = True
                for call in delta.tool_calls or ():
                    slot = state["tools"].get(call.index)
                    if slot is None:
                        slot = state["tools"][call.index] = {"id": None, "name": None,
                                                             "arguments": []}
                    if call.id:
                        slot["id"] = call.id
                    if call.function is not None:
                        if call.function.name:
                            slot["name"] = call.function.name
                        if call.function.arguments:
                            slot["arguments"].append(call.function.arguments)
                    content = True
            if choice.finish_reason:
                state["finish_reason"] = choice.finish_reason
                self.finished = len(self.choices) >= self.expected_choices and all(
                    other["finish_reason"] for other in self.choices.values())
        return content

    def result(self) -> dict[str, Any]:
        messages = []
        for _, state in sorted(self.choices.items()):
            messages.append(_clean({
                "role": state["role"] or "assistant",
                "content": "".join(state["text"]) or None,
                "refusal": "".join(state["refusal"]) or None,
                "tool_calls": [{"id": t["id"], "name": t["name"],
                                "arguments": "".join(t["arguments"])}
                               for _, t in sorted(state["tools"].items())],
                "finish_reason": state["finish_reason"]}))
        output = _one_or_many(messages) if messages else None
        if self.usage is None and self.estimate is not None:
            # counted later, off the caller's thread (LLMCall.finish's estimate)
            return {"model": self.model, "output": output,
                    "estimate": partial(self.estimate.count, output)}
        return {"model": self.model, "output": output, **chat_usage(self.usage)}


# -- Responses API -------------------------------------------------------------------

def responses_usage(usage: Any) -> dict[str, Any]:
    if usage is None:
        return {}
    prompt = getattr(usage, "input_tokens_details", None)
    completion = getattr(usage, "output_tokens_details", None)
    return {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens,
            "cached_tokens": getattr(prompt, "cached_tokens", None),
            "reasoning_tokens": getattr(completion, "reasoning_tokens", None)}


def responses_result(response: Any) -> dict[str, Any]:
    texts: list[str] = []
    refusals: list[str] = []
    tools: list[dict[str, Any]] = []
    reasoning: list[str] = []
    for item in response.output or ():
        kind = getattr(item, "type", None)
        if kind == "message":
            for part in item.content or ():
                if part.type == "output_text":
                    texts.append(part.text)
                elif part.type == "refusal":
                    refusals.append(part.refusal)
        elif kind == "function_call":
            tools.append({"id": item.call_id, "name": item.name, "arguments": item.arguments})
        elif kind == "reasoning":
            reasoning.extend(s.text for s in getattr(item, "summary", None) or ())
        elif kind is not None:
            tools.append({"id": getattr(item, "id", None), "type": kind})
    status = getattr(response, "status", None)
    incomplete = getattr(response, "incomplete_details", None)
    error = getattr(response, "error", None)
    output = _clean({
        "role": "assistant", "content": "".join(texts) or None,
        "refusal": "".join(refusals) or None, "tool_calls": tools,
        "reasoning": "\n".join(reasoning) or None,
        "finish_reason": getattr(incomplete, "reason", None) or (
            status if status not in (None, "completed") else None),
        "error": getattr(error, "message", None)})
    return {"model": response.model, "output": output, **responses_usage(response.usage)}


_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})


class ResponseEvents:
    """Accumulates Responses API stream events; the terminal event carries the
    whole response, which then gives the output and usage."""

    __slots__ = ("final", "finished", "model", "text")

    def __init__(self) -> None:
        self.model: str | None = None
        self.text: list[str] = []
        self.final: Any = None
        self.finished = False

    def add(self, event: Any) -> bool:
        kind = getattr(event, "type", "")
        if kind == "response.output_text.delta":
            self.text.append(event.delta)
            return True
        if kind in _TERMINAL:
            self.final = event.response
            self.finished = True
        elif kind in ("response.created", "response.in_progress"):
            self.model = event.response.model
        return kind.endswith(".delta")

    def result(self) -> dict[str, Any]:
        if self.final is not None:
            return responses_result(self.final)
        text = "".join(self.text)
        return {"model": self.model,
                "output": {"role": "assistant", "content": text} if text else None}


# -- embeddings ----------------------------------------------------------------------

def _dimensions(vector: Any) -> int | None:
    """How many numbers an embedding holds: a list of floats, or (asked with
    ``encoding_format="base64"``) base64 of little-endian float32s, 4 bytes each."""
    if isinstance(vector, str):
        # Its decoded size, without decoding: 3 bytes a 4 characters, less the padding.
        text = vector.rstrip("=")
        return (len(text) * 3 // 4) // 4 or None
    return len(vector) if vector else None


def embeddings_result(response: Any) -> dict[str, Any]:
    data = response.data or []
    usage = response.usage
    return {"model": response.model,
            "output": {"embeddings": len(data),
                       "dimensions": _dimensions(data[0].embedding) if data else None},
            "input_tokens": getattr(usage, "prompt_tokens", None)}
